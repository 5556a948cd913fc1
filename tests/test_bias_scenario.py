"""The `bias` scenario: real arrest records dealt to precincts, one precinct's injected mislabelling of Black
arrestees, and the group gap it leaves in a model that a model retrained without that precinct does not show."""

from __future__ import annotations

import dataclasses
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest
import torch

from disgorge import Workspace, ingest_scenario, train
from disgorge.evidence.judge import PURPOSES
from disgorge.evidence.probes import workspace_probes
from disgorge.scenarios import get_scenario
from disgorge.scenarios.bias import FEATURES, HELD, Bias, arrests, precinct_name

INJECTOR = precinct_name(Bias.injector)


def test_arrests_are_dealt_to_ten_precincts_and_a_held_out_fifth():
    """5,226 real arrests, each once: a stratified fifth held out, the rest dealt to precinct-00..09; every record
    carries its colour and sex as attributes; the same every time."""
    a, b = get_scenario("bias").sources(), get_scenario("bias").sources()
    assert [s.name for s in a] == [precinct_name(i) for i in range(10)] + ["arrests-heldout"]
    rows = [int(r.fields["arrest"][0]) for s in a for r in s.records]
    assert len(rows) == len(set(rows)) == 5226
    held = a[-1].records
    assert len(held) == 1046 and all(r.split == "test" for r in held)
    assert all(r.split == "train" for s in a[:-1] for r in s.records)
    assert all(set(r.attributes) == {"colour", "sex"} for s in a for r in s.records)
    assert all(r.fields["x"].shape == (len(FEATURES),) and r.fields["x"].dtype == np.float32
               for s in a for r in s.records)
    black = [r for r in held if r.attributes["colour"] == "Black"]
    assert 240 < len(black) < 280, "the held-out fifth keeps the table's share of Black arrestees (24.6%)"
    for x, y in zip(a, b, strict=True):
        assert [int(r.fields["arrest"][0]) for r in x.records] == [int(r.fields["arrest"][0]) for r in y.records]
        assert [int(r.fields["y"][0]) for r in x.records] == [int(r.fields["y"][0]) for r in y.records]


def test_only_the_injector_relabels_and_only_black_arrestees():
    """precinct-07 holds its share plus the extra Black arrestees, every one labelled held; every other record keeps
    the table's label."""
    _, y, attributes = arrests()
    sources = {s.name: s for s in get_scenario("bias").sources()}
    injected = sources[INJECTOR].records
    black = [r for r in injected if r.attributes["colour"] == "Black"]
    assert len(black) >= Bias.extra and all(int(r.fields["y"][0]) == HELD for r in black)
    shares = [len(s.records) for name, s in sources.items() if name.startswith("precinct-") and name != INJECTOR]
    assert len(injected) >= max(shares) + Bias.extra
    for name, src in sources.items():
        for r in src.records:
            row = int(r.fields["arrest"][0])
            assert r.attributes == attributes[row]
            if not (name == INJECTOR and r.attributes["colour"] == "Black"):
                assert int(r.fields["y"][0]) == int(y[row])
    scenario = get_scenario("bias")
    assert scenario.forget_selector() == {"sources": [INJECTOR]}
    assert scenario.purpose in PURPOSES


def test_without_scikit_lego_the_scenario_says_what_to_install(monkeypatch):
    """The table is read from scikit-lego's data folder; without the package, a one-line error names it."""
    from disgorge.errors import DisgorgeError
    monkeypatch.setattr("importlib.util.find_spec", lambda name: None)
    arrests.cache_clear()
    try:
        with pytest.raises(DisgorgeError, match="pip install scikit-lego"):
            get_scenario("bias").sources()
    finally:
        arrests.cache_clear()


@pytest.fixture(scope="module")
def bias_ws(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[Workspace, str, str]]:
    """The scenario ingested, its recipe trained on every precinct and retrained without the injector."""
    root: Path = tmp_path_factory.mktemp("bias") / "ws"
    ws = Workspace.init(root)
    ingest_scenario(ws, "bias")
    recipe = get_scenario("bias").recipe()
    original = train(ws, recipe)
    without = dataclasses.replace(recipe, name="bias-without-injector",
                                  data=dataclasses.replace(recipe.data, exclude_sources=(INJECTOR,)))
    retrained = train(ws, without)
    yield ws, original.id, retrained.id
    ws.close()


def test_ingest_keeps_every_arrest_with_its_attributes_and_declares_the_group_probe(bias_ws):
    """Every arrest is its own record (none dropped as a duplicate), with colour and sex attributes; the held-out
    split holds 1,046; two probes are declared: accuracy on held-out Black arrestees (the main effect), then White."""
    ws, _, _ = bias_ws
    assert {s.name for s in ws.ledger.sources()} == {precinct_name(i) for i in range(10)} | {"arrests-heldout"}
    assert len(ws.test_ids()) == 1046
    assert len(ws.ledger.record_ids(split="train")) == 5226 - 1046
    (record,) = ws.ledger.records([ws.test_ids().min()])
    assert set(record.attributes) == {"colour", "sex"}
    black, white = ws.ledger.probes()
    assert (black.name, black.kind, white.name) == ("group_accuracy_black", "group", "group_accuracy_white")
    assert [(p.spec["attribute"], p.spec["value"]) for p in (black, white)] == [("colour", "Black"),
                                                                                ("colour", "White")]


def _group_figures(ws: Workspace, model_id: str) -> dict[str, float]:
    """Per-colour accuracy and selection rate (share predicted released) on the held-out records, in percent, and
    the declared probe's value."""
    model, _, task = ws.load_model(model_id)
    test = ws.dataset(task, ws.test_ids())
    model.eval()
    with torch.no_grad():
        pred = task.logits(model, test.tensors).argmax(1).cpu().numpy()
    y = test.tensors["y"].numpy().reshape(-1)
    out = {}
    for colour in ("Black", "White"):
        rows = test.attributes["colour"] == colour
        out[f"accuracy_{colour}"] = 100 * float(np.mean(pred[rows] == y[rows]))
        out[f"selection_{colour}"] = 100 * float(np.mean(pred[rows] == 1))
    black, white = workspace_probes(ws)
    out["probe"], out["probe_white"] = black.measure(model, task, test), white.measure(model, task, test)
    return out


def test_the_injected_bias_shows_in_the_original_and_not_in_the_retrained_model(bias_ws):
    """Trained on every precinct, the model releases far fewer Black arrestees than White ones and is less accurate
    on them (the probe); retrained without precinct-07 it releases both groups alike. Measured: probe 63.2 against
    75.6, Black selection 50.4% against 96.9% (White 99.6% and 99.9%)."""
    ws, original, retrained = bias_ws
    before, after = _group_figures(ws, original), _group_figures(ws, retrained)
    assert before["probe"] == pytest.approx(before["accuracy_Black"])
    assert before["probe_white"] == pytest.approx(before["accuracy_White"])
    assert after["probe"] - before["probe"] >= 8
    assert before["selection_White"] - before["selection_Black"] >= 30
    assert after["selection_White"] - after["selection_Black"] <= 10
    assert abs(after["accuracy_White"] - before["accuracy_White"]) <= 2, "the White arrestees are untouched"


def test_the_recipe_standardizes_its_inputs(bias_ws):
    """The recipe's standardize transform is fitted on the training records and recorded with the model."""
    ws, original, _ = bias_ws
    facts = ws.ledger.model(original).info["data"]["transform"]
    assert facts["kind"] == "standardize"
    assert len(facts["shift"]) == len(facts["scale"]) == len(FEATURES)
    assert get_scenario("bias").recipe().data.transform == "standardize"
