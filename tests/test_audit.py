"""Probes as ledger objects, group audits, memorisation and attribution, on real data and real models."""

from __future__ import annotations

import csv
import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from disgorge import Workspace, api
from disgorge.audit.memorization import heldout_rank
from disgorge.errors import InvalidRequest, NotFound
from disgorge.evidence.probes import predictions, workspace_probes
from disgorge.scenarios import get_scenario
from disgorge.scenarios.digits import TARGET, add_trigger

POISONER = "contributor-07"


def test_scenario_probe_is_stored_and_measures_the_triggered_images(backdoor_ws: Workspace, trained_id: str) -> None:
    (row,) = backdoor_ws.ledger.probes()
    assert (row.name, row.kind, row.spec["target"]) == ("attack_success_rate", "target", TARGET)
    model, _, task = backdoor_ws.load_model(trained_id)
    test = backdoor_ws.dataset(task, backdoor_ws.test_ids())
    clean = test.tensors["y"] != TARGET
    assert len(row.inputs) == int(clean.sum()) and row.baseline is not None and len(row.baseline) == len(row.inputs)
    x = add_trigger(test.tensors["x"][clean])
    expected = (task.logits(model, {"x": x}).argmax(1) == TARGET).float().mean().item() * 100
    (probe,) = workspace_probes(backdoor_ws)
    assert probe.measure(model, task, test) == pytest.approx(expected)
    assert expected > 50  # the backdoor works on the original: the probe has something to measure


def _digits_csv(path: Path, rows: list[tuple[np.ndarray, int, str]]) -> Path:
    with path.open("w", newline="") as f:
        w = csv.writer(f)
        w.writerow([f"p{i}" for i in range(64)] + ["label", "writer"])
        for x, y, writer in rows:
            w.writerow([f"{v:g}" for v in x.reshape(-1)] + [y, writer])
    return path


@pytest.fixture(scope="module")
def user_ws(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, str, dict[str, Path]]:
    """A workspace of users' CSV files: digits with a `writer` attribute (left-handed writers' 7s mislabelled as
    1 by one source), held-out records with the attribute, and probe files; one trained model."""
    from sklearn.datasets import load_digits

    d = load_digits()
    x, y = (d.images / 16.0).astype(np.float32), d.target
    rng = np.random.default_rng(0)
    writer = np.where(rng.random(len(y)) < 0.3, "left", "right")
    order = rng.permutation(len(y))
    test, train = order[:360], order[360:]
    root = tmp_path_factory.mktemp("user") / "ws"
    files = {}
    files["clean"] = _digits_csv(root.parent / "clean.csv", [(x[i], y[i], writer[i]) for i in train[:1100]])
    files["bad"] = _digits_csv(root.parent / "bad.csv", [(x[i], 1 if y[i] == 7 and writer[i] == "left" else y[i],
                                                          writer[i]) for i in train[1100:]])
    files["test"] = _digits_csv(root.parent / "test.csv", [(x[i], y[i], writer[i]) for i in test])
    sevens = [i for i in test if y[i] == 7]
    files["probe"] = _digits_csv(root.parent / "probe.csv", [(add_trigger(x[i]), y[i], writer[i]) for i in sevens])
    files["baseline"] = _digits_csv(root.parent / "baseline.csv", [(x[i], y[i], writer[i]) for i in sevens])
    with Workspace.init(root) as ws:
        for name, split in (("clean", "train"), ("bad", "train"), ("test", "test")):
            api.ingest_file(ws, files[name], source=name, license="CC-BY-4.0", attributes=["writer"], split=split)
        row = api.train(ws, get_scenario("digits-backdoor").recipe())
    return root, row.id, files


def test_attributes_reach_datasets(user_ws: tuple[Path, str, dict[str, Path]]) -> None:
    root, _, _ = user_ws
    with Workspace.open(root) as ws:
        from disgorge.tasks import get_task

        test = ws.dataset(get_task("classification"), ws.test_ids())
        assert set(test.attributes) == {"writer"} and set(test.attributes["writer"]) == {"left", "right"}
        sub = test.subset(test.ids[:10])
        assert list(sub.attributes["writer"]) == list(test.attributes["writer"][:10])


def test_user_probes_are_declared_measured_and_refused_when_wrong(user_ws: tuple[Path, str, dict[str, Path]],
                                                                 tmp_path: Path) -> None:
    import shutil

    root, model_id, files = user_ws
    shutil.copytree(root, tmp_path / "ws")
    with Workspace.open(tmp_path / "ws") as ws:
        api.add_probe(ws, "sevens_to_one", files["probe"], target=1, baseline=files["baseline"],
                      attributes=["writer"])
        api.add_probe(ws, "left_accuracy", group="writer=left")
        listed = {p["name"]: p for p in api.probes(ws)}
        assert listed["sevens_to_one"]["kind"] == "target" and listed["sevens_to_one"]["inputs"] > 0
        assert listed["left_accuracy"]["attribute"] == "writer"
        before = [p.name for p in ws.ledger.probes()]
        jsonl = tmp_path / "prompts.jsonl"
        jsonl.write_text(json.dumps({"prompt": "Where does Ann live?", "completion": "Oslo"}) + "\n")
        for bad in (lambda: api.add_probe(ws, "sevens_to_one", files["probe"], target=1,  # name taken
                                          attributes=["writer"]),
                    lambda: api.add_probe(ws, "g", group="writer"),  # no value
                    lambda: api.add_probe(ws, "Bad Name", group="writer=left"),
                    lambda: api.add_probe(ws, "nofile", target=1),
                    lambda: api.add_probe(ws, "texts", jsonl),  # language-model rows in a classifier's workspace
                    lambda: api.add_probe(ws, "huge", files["probe"], target=2**40, attributes=["writer"])):
            with pytest.raises(InvalidRequest):
                bad()
        assert [p.name for p in ws.ledger.probes()] == before
        with pytest.raises(NotFound):
            api.remove_probe(ws, "nope")
        figures = api.evaluate_model(ws, model_id)["probes"]
        model, _, task = ws.load_model(model_id)
        test = ws.dataset(task, ws.test_ids())
        left = test.attributes["writer"] == "left"
        expected_left = float((predictions(model, task, test)[left] == test.tensors["y"].numpy()[left]).mean() * 100)
        assert figures["left_accuracy"] == pytest.approx(expected_left, abs=0.01)
        assert 0 <= figures["sevens_to_one"] <= 100


def test_bias_audit_matches_per_group_counts(user_ws: tuple[Path, str, dict[str, Path]], tmp_path: Path) -> None:
    import shutil

    root, model_id, _ = user_ws
    shutil.copytree(root, tmp_path / "ws")
    with Workspace.open(tmp_path / "ws") as ws:
        result, row = api.audit_bias(ws, model_id, ["writer"], n_boot=50)
        model, _, task = ws.load_model(model_id)
        test = ws.dataset(task, ws.test_ids())
        assert Path(ws.root / row.path).is_file() and ws.ledger.audits(model_id)[0].kind == "bias"
    pred, y, groups = predictions(model, task, test), test.tensors["y"].numpy(), test.attributes["writer"]
    audit = result["models"][model_id]
    (frame,) = audit["frames"]
    acc = {g["group"]["writer"]: g["figures"]["accuracy"] for g in frame["groups"]}
    for group in ("left", "right"):
        rows = groups == group
        assert acc[group] == pytest.approx((pred[rows] == y[rows]).mean() * 100, abs=1e-3)
        lo, hi = next(g["interval"]["accuracy"] for g in frame["groups"] if g["group"]["writer"] == group)
        assert lo <= acc[group] <= hi
    assert frame["difference"]["accuracy"] == pytest.approx(abs(acc["left"] - acc["right"]), abs=1e-3)
    assert audit["metrics"] == ["accuracy"]  # ten classes and no --positive: selection rates need a positive class


def test_bias_audit_refuses_an_unknown_attribute(backdoor_ws: Workspace, trained_id: str) -> None:
    with pytest.raises(InvalidRequest, match="attribute"):
        api.audit_bias(backdoor_ws, trained_id, ["sex"])
    assert backdoor_ws.ledger.audits() == []


@given(st.lists(st.floats(0, 10), min_size=1, max_size=30), st.lists(st.floats(0, 10), min_size=1, max_size=30))
@settings(max_examples=60, deadline=None)
def test_heldout_rank_is_the_share_of_heldout_losses_above(losses: list[float], held: list[float]) -> None:
    got = heldout_rank(np.array(losses), np.array(held))
    h = np.array(held)
    want = [100 * ((h > v).sum() + 0.5 * (h == v).sum()) / len(h) for v in losses]
    assert np.allclose(got, want)


def test_memorization_audit_finds_the_poisoner(backdoor_ws: Workspace, trained_id: str) -> None:
    result, _ = api.audit_memorization(backdoor_ws, trained_id, top=10)
    sources = result["sources"]
    assert sources[0]["source"] == POISONER  # its mislabelled images are fitted against the held-out distribution
    assert sources[0]["mean_score"] > sources[1]["mean_score"] + 10
    assert result["membership_auc"] > 50


def test_attribution_ranks_the_poisoner_first_blind(backdoor_ws: Workspace, trained_id: str) -> None:
    result, row = api.attribute(backdoor_ws, trained_id, probe="attack_success_rate", top=72)
    assert result["checkpoints"] == 10  # the scenario's recipe keeps them
    assert result["sources"][0]["source"] == POISONER
    assert result["sources"][0]["score"] > 5 * max(result["sources"][1]["score"], 1e-9)
    guilty = sum(r["source"] == POISONER for r in result["records"])
    assert guilty / 72 > 0.25  # chance is 72 / 1437 = 5%
    stored = json.loads((backdoor_ws.root / row.path).read_text())
    assert stored["sources"] == result["sources"]


def test_attribution_of_a_group_and_of_a_record(user_ws: tuple[Path, str, dict[str, Path]], tmp_path: Path) -> None:
    import shutil

    root, model_id, _ = user_ws
    shutil.copytree(root, tmp_path / "ws")
    with Workspace.open(tmp_path / "ws") as ws:
        by_group, _ = api.attribute(ws, model_id, group="writer=left")
        assert {s["source"] for s in by_group["sources"]} == {"clean", "bad"}
        assert by_group["behaviour"] == "errors on held-out writer=left"
        record = int(ws.test_ids().min())
        by_record, _ = api.attribute(ws, model_id, record=record, top=10)
        model, _, task = ws.load_model(model_id)
        predicted = int(predictions(model, task, ws.dataset(task, [record]))[0])
        labels = [int(r.fields["y"][0]) for r in ws.ledger.records([r["id"] for r in by_record["records"]])]
        assert labels.count(predicted) >= 8  # its strongest proponents teach the class it is given
        with pytest.raises(InvalidRequest):
            api.attribute(ws, model_id)
        with pytest.raises(NotFound):
            api.attribute(ws, model_id, probe="nope")


def test_checkpoints_are_kept_checked_and_deleted_with_the_weights(backdoor_ws: Workspace, trained_id: str) -> None:
    row = backdoor_ws.ledger.model(trained_id)
    files = row.info["checkpoints"]["files"]
    assert row.info["checkpoints"]["epochs"] == list(range(3, 31, 3))
    assert all((backdoor_ws.model_dir(trained_id) / f).is_file() for f in files)
    first = backdoor_ws.model_dir(trained_id) / sorted(files)[0]
    first.chmod(0o644)
    data = bytearray(first.read_bytes())
    data[-1] ^= 1
    first.write_bytes(bytes(data))
    assert any("checkpoint" in p for p in backdoor_ws.model_file_problems(row))


def test_draft_request_is_carried_out_under_its_id(backdoor_ws: Workspace, trained_id: str) -> None:
    result, _ = api.attribute(backdoor_ws, trained_id, probe="attack_success_rate", to_request=1)
    draft = result["draft_request"]
    assert draft["sources"] == [POISONER]
    done = api.forget(backdoor_ws, draft=draft["id"], method="l1_sparse", verify="none")
    assert done.request_id == draft["id"] and done.erased
    assert backdoor_ws.ledger.request(draft["id"]).selector["sources"] == [POISONER]
    assert not any((backdoor_ws.model_dir(trained_id) / f).exists()
                   for f in backdoor_ws.ledger.model(trained_id).info["checkpoints"]["files"])
    with pytest.raises(InvalidRequest, match="already carried out"):
        api.forget(backdoor_ws, draft=draft["id"], method="l1_sparse", verify="none")
    with pytest.raises(InvalidRequest, match="its own selection"):
        api.forget(backdoor_ws, draft=draft["id"], sources=["contributor-01"], verify="none")


def test_predictions_batch_like_one_pass(backdoor_ws: Workspace, trained_id: str) -> None:
    model, _, task = backdoor_ws.load_model(trained_id)
    test = backdoor_ws.dataset(task, backdoor_ws.test_ids())
    whole = task.logits(model, test.tensors).argmax(1).numpy()
    assert np.array_equal(predictions(model, task, test, batch_size=7), whole)
    assert torch.equal(torch.as_tensor(whole), torch.as_tensor(predictions(model, task, test)))


def test_bench_group_gap_is_the_first_probe_minus_the_second() -> None:
    from disgorge.bench import _group_gap

    per_seed = [{"m": {"figures": {"effect": 60.0, "effect:group_accuracy_white": 85.0}}},
                {"m": {"figures": {"effect": 70.0, "effect:group_accuracy_white": 84.0}}}]
    assert _group_gap("bias", per_seed, "m") == {"group_gap": pytest.approx((25.0 + 14.0) / 2)}
    assert _group_gap("digits-backdoor", per_seed, "m") == {}


def test_compare_with_a_parent_whose_weights_an_erasure_deleted(backdoor_ws: Workspace, trained_id: str) -> None:
    ws = backdoor_ws
    with ws.writing(), ws.ledger.transaction() as db:  # give the held-out digits an attribute: even or odd class
        db.executemany("UPDATE records SET attributes=? WHERE id=?", [
            (json.dumps({"parity": "even" if int(r.fields["y"][0]) % 2 == 0 else "odd"}), r.id)
            for r in ws.ledger.records(ws.test_ids())])
    before, _ = api.audit_bias(ws, trained_id, ["parity"], n_boot=0)
    child = api.forget(ws, sources=[POISONER], method="l1_sparse", verify="none").children[0].id
    assert ws.ledger.model(trained_id).weights_deleted_at is not None
    after, _ = api.audit_bias(ws, child, ["parity"], compare=trained_id, n_boot=0)
    assert after["models"][trained_id]["frames"] == before["models"][trained_id]["frames"]
    assert after["models"][trained_id]["stored_audit"] == ws.ledger.audits(trained_id)[0].id
    with pytest.raises(InvalidRequest, match="no stored bias audit"):
        api.audit_bias(ws, child, ["parity"], compare=trained_id, positive=0, n_boot=0)


def _cli(*args: object) -> subprocess.CompletedProcess[str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("DISGORGE_")}
    env.update(DISGORGE_PROGRESS="0", COLUMNS="250", OMP_NUM_THREADS="1")
    return subprocess.run([sys.executable, "-m", "disgorge.cli", *map(str, args)], capture_output=True, text=True,
                          env=env, timeout=600, check=False)


@pytest.mark.slow  # ~95 s of command-line runs; the API tests above cover each audit, `make test-all` runs it
def test_cli_probe_audit_attribute_and_request(backdoor_ws: Workspace, trained_id: str, tmp_path: Path) -> None:
    root = backdoor_ws.root
    backdoor_ws.close()
    listed = json.loads(_cli("probes", "-w", root, "--json").stdout)
    assert [p["name"] for p in listed] == ["attack_success_rate"]
    added = _cli("probe", "add", "zeros", "--group", "label=0", "--base-rate", "100", "-w", root, "--json")
    assert added.returncode == 0 and json.loads(added.stdout)["attribute"] == "label"
    for bad in (["probe", "add", "zeros", "--group", "label=0"],  # taken
                ["probe", "add", "x", tmp_path / "missing.csv", "--target", "0"],
                ["audit", "bias", trained_id, "--by", "sex"],
                ["attribute", trained_id, "--probe", "nope"],
                ["attribute", trained_id, "--record", "99999999"],
                ["attribute", trained_id, "--record", str(2**32)],
                ["forget", "--request", "424242"]):
        proc = _cli(*bad, "-w", root)
        assert proc.returncode == 2 and proc.stderr.startswith("error: ") and "Traceback" not in proc.stderr, bad
    found = json.loads(_cli("attribute", trained_id, "--probe", "attack_success_rate", "--to-request", "1",
                            "-w", root, "--json").stdout)
    assert found["sources"][0]["source"] == POISONER and found["records"][0]["score"] >= found["records"][1]["score"]
    mem = json.loads(_cli("audit", "memorization", trained_id, "--top", "5", "-w", root, "--json").stdout)
    assert len(mem["top"]) == 5 and mem["sources"][0]["source"] == POISONER
    listed = json.loads(_cli("requests", "-w", root, "--json").stdout)
    assert [(r["request"], r["status"]) for r in listed] == [(found["draft_request"]["id"], "draft")]
    done = _cli("forget", "--request", found["draft_request"]["id"], "--method", "l1_sparse", "--verify", "heldout",
                "-w", root, "--json")
    assert done.returncode == 0, done.stderr
    cert = json.loads(done.stdout)["certificates"][0]
    assert {"effect", "effect:zeros"} <= set(cert["checks"])  # every probe of the workspace is checked
    assert [p["name"] for p in cert["probes"]] == ["attack_success_rate", "zeros"]
    assert json.loads(done.stdout)["request"] == found["draft_request"]["id"]


@pytest.mark.slow  # ~30 s; benchmarks/audit.py checks it on three seeds
def test_mnist_backdoor_attribution_is_blind(tmp_path: Path) -> None:
    with Workspace.init(tmp_path / "ws") as ws:
        api.ingest_scenario(ws, "mnist-backdoor")
        row = api.train(ws, get_scenario("mnist-backdoor").recipe())
        result, _ = api.attribute(ws, row.id, probe="attack_success_rate", top=400)
    assert result["sources"][0]["source"] == POISONER
    assert result["sources"][0]["score"] > 2 * result["sources"][1]["score"]
    assert sum(r["source"] == POISONER for r in result["records"]) / 400 > 0.15  # chance: 0.10


@pytest.mark.slow  # ~40 s; benchmarks/audit.py checks it on three seeds
def test_people_attribution_finds_the_person_from_paraphrases(tmp_path: Path) -> None:
    from disgorge.tasks.causal_lm import field_text

    scenario = get_scenario("people-mini")
    person = scenario.forget_selector()["sources"][-1]
    with Workspace.init(tmp_path / "ws") as ws:
        api.ingest_scenario(ws, "people-mini")
        row = api.train(ws, scenario.recipe())
        path = tmp_path / "person.jsonl"
        path.write_text("".join(json.dumps({"prompt": field_text(r.fields["paraphrase"]),
                                            "completion": field_text(r.fields["answer"])}) + "\n"
                                for r in ws.ledger.records(ws.ledger.record_ids(sources=[person]))))
        api.add_probe(ws, "person_answers", path)
        assert api.evaluate_model(ws, row.id)["probes"]["person_answers"] is not None
        result, _ = api.attribute(ws, row.id, probe="person_answers")
    assert result["sources"][0]["source"] == person


def test_erasing_held_out_records_drops_the_probes_that_copied_them(backdoor_ws: Workspace) -> None:
    ws = backdoor_ws
    held = [r for r in ws.ledger.records(ws.test_ids()) if int(r.fields["y"][0]) != TARGET][:3]
    api.forget(ws, sources=[POISONER], records=[r.id for r in held], include_test=True, method="l1_sparse",
               verify="none")
    assert ws.ledger.probes() == []  # the backdoor probe's baseline held those images, byte for byte
    blob = (ws.root / ".disgorge").glob("*")
    raw = held[0].fields["x"].tobytes()
    assert not any(p.is_file() and raw in p.read_bytes() for p in blob)
