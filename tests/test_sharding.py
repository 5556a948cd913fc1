"""SISA sharded training: exact removals by retraining only the affected shards from their last clean slice."""

from __future__ import annotations

import hashlib
import math
import os

import numpy as np
import pytest
import torch
from pyroaring import BitMap

from disgorge import Recipe, Workspace, train
from disgorge.erasure import forget
from disgorge.errors import IntegrityError, InvalidRequest
from disgorge.scenarios import get_scenario
from disgorge.spec import RecipeError, ShardingSpec
from disgorge.tasks import RecordDataset, get_task
from disgorge.training.sharding import (
    Layout,
    ShardedClassifier,
    aggregate_log_probs,
    assign,
    checkpoint_name,
    members_of,
)
from disgorge.training.trainer import fit_recipe

WITHDRAWN = "contributor-07"


def sharded(recipe: Recipe, **sharding: object) -> Recipe:
    """``recipe`` with a ``[sharding]`` table and a short schedule (tests train in seconds)."""
    return Recipe.from_dict({**recipe.to_dict(), "sharding": sharding,
                             "train": {**recipe.to_dict()["train"], "epochs": 4}})


def base_recipe() -> Recipe:
    return get_scenario("digits-backdoor").recipe()


def sha(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def child_of(result, parent: str):
    """The child of ``parent`` in a forget result, and its certificate (None when unverified)."""
    child = next(c for c in result.children if c.parent == parent)
    cert = next((c for c in result.certificates if c["models"]["child"]["id"] == child.id), None)
    return child, cert


# -- recipes and layouts ------------------------------------------------------------------------------------------


@pytest.mark.parametrize("table, message", [
    ({"shards": 0}, "sharding.shards"), ({"slices": -1}, "sharding.slices"), ({"by": "person"}, "sharding.by"),
    ({"aggregate": "max"}, "sharding.aggregate"), ({"adapter_rank": -2}, "adapter_rank"),
    ({"shards": 4, "colour": 1}, "unknown key"), ({"shards": 2000}, "at most")])
def test_bad_sharding_tables_are_refused(table: dict[str, object], message: str) -> None:
    with pytest.raises(RecipeError, match=message):
        Recipe.from_dict({"name": "r", "sharding": table})


def test_sharding_and_privacy_tables_are_optional_and_exclusive() -> None:
    plain = Recipe.from_dict({"name": "r"})
    assert "sharding" not in plain.to_toml() and not plain.sharded  # older recipes keep their text and sha256
    assert Recipe.from_toml(plain.to_toml()).sha256 == plain.sha256
    one = Recipe.from_dict({"name": "r", "sharding": {"shards": 1}})
    assert not one.sharded and one.sha256 != plain.sha256
    four = Recipe.from_dict({"name": "r", "sharding": {"shards": 4, "slices": 3, "by": "source"}})
    assert four.sharded and Recipe.from_toml(four.to_toml()) == four
    with pytest.raises(RecipeError, match="not both"):
        Recipe.from_dict({"name": "r", "sharding": {"shards": 4}, "privacy": {"epsilon": 1.0}})


def test_slice_epochs_follow_sisa() -> None:
    # SISA's 2e/(L+1): over L growing stages a shard sees about as many examples as e epochs over its data.
    spec = ShardingSpec(shards=4, slices=4)
    assert spec.epochs_per_slice(20) == 8
    assert ShardingSpec(slices=1).epochs_per_slice(20) == 20 and ShardingSpec(slices=50).epochs_per_slice(3) == 1


def test_a_records_place_does_not_depend_on_the_others() -> None:
    ids = np.arange(1, 2001)
    data = RecordDataset(ids, x=torch.zeros(len(ids), 1))
    data.sources = np.array([f"s{i % 37}" for i in ids], dtype=object)
    for by in ("record", "source"):
        spec = ShardingSpec(shards=8, slices=3, by=by)
        shard, piece = assign(data, spec, seed=5)
        assert set(shard.tolist()) == set(range(8)) and set(piece.tolist()) == {0, 1, 2}
        kept = ids[ids % 3 != 0]
        shard2, piece2 = assign(data.subset(kept), spec, seed=5)
        rows = np.isin(ids, kept)
        assert np.array_equal(shard[rows], shard2) and np.array_equal(piece[rows], piece2)
        other, _ = assign(data, spec, seed=6)
        assert not np.array_equal(shard, other)  # the seed deals anew
    shard, _ = assign(data, ShardingSpec(shards=8, by="source"), seed=5)
    for source in set(data.sources):
        assert len(set(shard[data.sources == source].tolist())) == 1  # a source lives in one shard


def test_aggregation() -> None:
    probs = torch.tensor([[[0.4, 0.3, 0.3]], [[0.4, 0.3, 0.3]], [[0.0, 0.0, 1.0]]]).clamp_min(1e-12)
    mean = aggregate_log_probs(probs.log(), "mean_proba").exp()
    assert torch.allclose(mean, probs.mean(0), atol=1e-6)
    vote = aggregate_log_probs(probs.log(), "vote").exp()
    assert vote.argmax().item() == 0 and mean.argmax().item() == 2  # two shards out-vote one confident shard
    assert torch.isfinite(aggregate_log_probs(probs.log(), "vote")).all() and math.isclose(vote.sum().item(), 1.0,
                                                                                            rel_tol=1e-5)


# -- training, removal, exactness ---------------------------------------------------------------------------------


def test_sharded_training_keeps_shards_checkpoints_and_layout(backdoor_ws: Workspace) -> None:
    recipe = sharded(base_recipe(), shards=3, slices=2, by="source")
    row = train(backdoor_ws, recipe)
    model, _, task = backdoor_ws.load_model(row.id)
    assert isinstance(model, ShardedClassifier) and len(model.members) == len(row.info["sharding"]["members"]) <= 3
    batch = backdoor_ws.dataset(task, list(row.records)[:50]).tensors_slice(0, 50)
    with torch.no_grad():
        each = torch.stack([torch.softmax(m(batch["x"]), -1) for m in model.members])
        assert torch.allclose(task.logits(model, batch).exp(), each.mean(0), atol=1e-5)
    layout = Layout.from_info(row.info["sharding"]["members"])
    parts = [layout.records(s) for s in layout.slices]
    assert BitMap.union(*parts) == row.records and sum(map(len, parts)) == len(row.records)
    sources = {r.id: r.source for r in backdoor_ws.ledger.records(row.records, with_payload=False)}
    for part in parts:
        assert {sources[i] for i in part}.isdisjoint({sources[i] for p in parts if p is not part for i in p})
    folder = backdoor_ws.model_dir(row.id)
    names = sorted(p.name for p in folder.glob("shard-*.safetensors"))
    assert names == sorted(row.info["sharding"]["checkpoints"]) and len(names) == len(layout.slices)  # L-1 each
    for name in names:
        assert sha((folder / name).read_bytes()) == row.info["sharding"]["checkpoints"][name]
    assert row.info["accuracy"]["test"] > 60


def test_forgetting_a_source_retrains_one_shard_exactly(backdoor_ws: Workspace) -> None:
    recipe = sharded(base_recipe(), shards=4, slices=2, by="source")
    parent = train(backdoor_ws, recipe)
    with backdoor_ws.writing():
        result = forget(backdoor_ws, sources=[WITHDRAWN], verify="heldout", model=None)
    child, cert = child_of(result, parent.id)
    assert child.method == "sisa" and list(child.info["report"]["retrained_shards"]) and \
        len(child.info["report"]["retrained_shards"]) == 1
    retrained = {int(s) for s in child.info["report"]["retrained_shards"]}
    before = {m["shard"]: m["sha256"] for m in parent.info["sharding"]["members"]}
    after = {m["shard"]: m["sha256"] for m in child.info["sharding"]["members"]}
    for s in after:
        assert (after[s] == before[s]) == (s not in retrained)  # untouched shards are the parent's, bit for bit
    # The same recipe trained from scratch without the source gives the same weights.
    scratch = train(backdoor_ws, Recipe.from_dict({**recipe.to_dict(), "data": {"exclude_sources": [WITHDRAWN]}}))
    assert scratch.weights_sha256 == child.weights_sha256
    assert cert["level"] == "exact" and cert["evidence"] == "exact" and "reference" not in cert["models"]
    assert cert["verdict"] == "passed" and cert["checks"]["shards_clean"]["value"] == 0
    assert cert["checks"]["shards_clean"]["original"] == len(backdoor_ws.ledger.request(result.request_id).records)
    sharding = cert["sharding"]
    assert set(sharding["retrained"]) == {str(s) for s in retrained} and len(sharding["untouched"]) == len(after) - 1
    assert 0 < sharding["work_ratio_monolithic"] < 1 and sharding["time_ratio_full"] > 0
    assert not list(backdoor_ws.model_dir(parent.id).glob("*.safetensors"))  # the parent's checkpoints went too
    stray = backdoor_ws.model_dir(parent.id) / checkpoint_name(0, 0)
    stray.write_bytes(b"left behind")
    assert any(stray.name in p for p in backdoor_ws.model_file_problems(backdoor_ws.ledger.model(parent.id)))
    assert sorted(p.name for p in backdoor_ws.model_dir(child.id).glob("shard-*")) == \
        sorted(child.info["sharding"]["checkpoints"])
    from disgorge.api import verify

    again = verify(backdoor_ws, child.id)  # after erasure: the recorded certificate, its weights re-checked
    assert again["sharding"] == cert["sharding"] and again["models"]["child"]["sha256"] == child.weights_sha256


def test_forgetting_late_records_restarts_from_their_slice(backdoor_ws: Workspace) -> None:
    recipe = sharded(base_recipe(), shards=2, slices=3, by="record")
    parent = train(backdoor_ws, recipe)
    layout = Layout.from_info(parent.info["sharding"]["members"])
    late = BitMap(list(layout.slices[0][2])[:5])  # five records of shard 0's last slice
    folder = backdoor_ws.model_dir(parent.id)
    kept = {name: (folder / name).read_bytes() for name in (checkpoint_name(0, 0), checkpoint_name(0, 1))}
    with backdoor_ws.writing():
        result = forget(backdoor_ws, records=list(late), verify="none", keep_superseded=True)
    child, _ = child_of(result, parent.id)
    assert child.info["report"]["retrained_shards"] == {"0": 2}
    for name, data in kept.items():  # the clean checkpoints carry over unchanged
        assert (backdoor_ws.model_dir(child.id) / name).read_bytes() == data
    task = get_task("classification")
    model, _ = fit_recipe(task, recipe, backdoor_ws.dataset(task, parent.records - late), parent.info["data"])
    scratch = backdoor_ws.load_model(child.id)[0]
    for a, b in zip(model.state_dict().values(), scratch.state_dict().values(), strict=True):
        assert torch.equal(a, b)


def test_a_tampered_checkpoint_is_refused(backdoor_ws: Workspace) -> None:
    parent = train(backdoor_ws, sharded(base_recipe(), shards=2, slices=2, by="source"))
    path = next(backdoor_ws.model_dir(parent.id).glob("shard-*.safetensors"))
    os.chmod(path, 0o644)
    path.write_bytes(path.read_bytes()[:-1] + b"\x00")
    with backdoor_ws.writing(), pytest.raises(IntegrityError, match="sha256"):
        forget(backdoor_ws, records=list(parent.records)[:400], verify="none")
    assert not backdoor_ws.ledger.requests() and backdoor_ws.ledger.model(parent.id).status == "active"
    from disgorge.doctor import examine

    found = [p for f in examine(backdoor_ws) for p in f.problems if path.name in p]
    assert found  # `disgorge doctor` names the altered checkpoint


def test_method_sisa_serves_only_sharded_models(backdoor_ws: Workspace, trained_id: str) -> None:
    with backdoor_ws.writing(), pytest.raises(InvalidRequest, match="not sharded"):
        forget(backdoor_ws, sources=[WITHDRAWN], method="sisa", verify="none")
    assert not backdoor_ws.ledger.requests()


# -- language models ----------------------------------------------------------------------------------------------


LM_RECIPE = {"name": "lm", "task": "causal_lm", "model": {"family": "gpt2", "n_layer": 1, "n_embd": 32, "n_head": 2,
                                                         "max_length": 96, "tokenizer": "char"},
             "train": {"optimizer": "adamw", "lr": 3e-3, "batch_size": 16, "epochs": 2}}


@pytest.fixture
def people_ws(tmp_path):
    from disgorge import ingest_scenario

    with Workspace.init(tmp_path / "people") as ws:
        ingest_scenario(ws, "people-mini")
        yield ws


def test_a_word_vocabulary_cannot_be_sharded(people_ws: Workspace) -> None:
    recipe = Recipe.from_dict({**LM_RECIPE, "model": {**LM_RECIPE["model"], "tokenizer": "word"},
                               "sharding": {"shards": 2}})
    with pytest.raises(InvalidRequest, match="tokenizer = 'char'"):
        train(people_ws, recipe)
    assert not people_ws.ledger.models()


def test_a_sharded_language_model_forgets_a_person_exactly(people_ws: Workspace) -> None:
    recipe = Recipe.from_dict({**LM_RECIPE, "sharding": {"shards": 3, "by": "source"}})
    parent = train(people_ws, recipe)
    model, _, task = people_ws.load_model(parent.id)
    assert len(members_of(model)) == len(parent.info["sharding"]["members"])
    answers = task.generate(model, ["What is the name of the person?", "Where"], 8)
    assert len(answers) == 2 and all(isinstance(a, str) for a in answers)
    with people_ws.writing():
        result = forget(people_ws, sources=["person-039"], verify="none")
    child, _ = child_of(result, parent.id)
    assert len(child.info["report"]["retrained_shards"]) == 1
    scratch = train(people_ws, Recipe.from_dict({**recipe.to_dict(), "data": {"exclude_sources": ["person-039"]}}))
    assert scratch.weights_sha256 == child.weights_sha256


# -- per-source adapters over a frozen pretrained network -----------------------------------------------------------


def test_per_source_adapters_drop_only_the_forgotten_source(tmp_path) -> None:
    import json

    from conftest import save_hf_folder
    from disgorge import ingest_file

    base = save_hf_folder(tmp_path / "base")
    places = {"Alice": ("Paris", "Rome"), "Bob": ("Rome", "Oslo"), "Carol": ("Oslo", "Lima"), "Dave": ("Lima", "Paris")}
    with Workspace.init(tmp_path / "ws") as ws:
        for who, cities in places.items():
            path = tmp_path / f"{who}.jsonl"
            rows = [{"prompt": f"Where does {who} live ?", "answer": f"{who} lives in {c} ."} for c in cities]
            path.write_text("".join(json.dumps(r) + "\n" for r in rows))
            ingest_file(ws, path, source=f"src-{who}", license="CC0")
        recipe = Recipe.from_dict({"name": "adapters", "task": "causal_lm",
                                   "model": {"family": "pretrained", "path": str(tmp_path / "base"), "max_length": 16},
                                   "train": {"optimizer": "adamw", "lr": 1e-2, "batch_size": 2, "epochs": 3},
                                   "sharding": {"shards": 0, "by": "source", "adapter_rank": 4, "slices": 2}})
        parent = train(ws, recipe)
        model, _, _ = ws.load_model(parent.id)
        nets = members_of(model)
        assert len(nets) == 4 and len({m["sha256"] for m in parent.info["sharding"]["members"]}) == 4
        frozen = {k: v for k, v in base.state_dict().items()}
        for net in nets:  # every adapter sits on the base, which stays as it was saved
            state = net.get_base_model().state_dict()
            assert all(torch.equal(state[k], frozen[k]) for k in frozen if k in state)
            assert any("lora_" in k for k in net.state_dict())
        sizes = [(ws.model_dir(parent.id) / n).stat().st_size for n in parent.info["sharding"]["checkpoints"]]
        assert max(sizes) < 0.5 * sum(p.numel() * 4 for p in base.parameters())  # checkpoints hold adapters only
        weights = tmp_path / "base" / "model.safetensors"
        original = weights.read_bytes()
        weights.write_bytes(original[:-4] + b"\x00\x00\x00\x01")  # someone changes the base folder
        with ws.writing(), pytest.raises(IntegrityError, match="changed since"):
            forget(ws, sources=["src-Bob"], verify="none")
        weights.write_bytes(original)
        with ws.writing():
            result = forget(ws, sources=["src-Bob"], verify="none")
        child, _ = child_of(result, parent.id)
        assert len(child.info["report"]["dropped_shards"]) == 1 and not child.info["report"]["retrained_shards"]
        before = {m["shard"]: m["sha256"] for m in parent.info["sharding"]["members"]}
        after = {m["shard"]: m["sha256"] for m in child.info["sharding"]["members"]}
        assert len(after) == 3 and all(before[s] == after[s] for s in after)  # the other adapters are untouched
        scratch = train(ws, Recipe.from_dict({**recipe.to_dict(), "data": {"exclude_sources": ["src-Bob"]}}))
        assert scratch.weights_sha256 == child.weights_sha256


def test_adapters_need_a_pretrained_network(backdoor_ws: Workspace) -> None:
    with pytest.raises(InvalidRequest, match="pretrained"):
        train(backdoor_ws, sharded(base_recipe(), shards=2, adapter_rank=4))


def test_shards_give_the_same_weights_in_parallel_workers(backdoor_ws: Workspace) -> None:
    recipe = sharded(base_recipe(), shards=3, slices=2, by="record")
    here = train(backdoor_ws, recipe)
    pooled = train(backdoor_ws, recipe, workers=2)  # two spawned processes, one shard each at a time
    assert pooled.weights_sha256 == here.weights_sha256
    assert pooled.info["sharding"]["checkpoints"] == here.info["sharding"]["checkpoints"]


def test_command_line_trains_and_forgets_a_sharded_model(backdoor_ws: Workspace, tmp_path) -> None:
    import subprocess
    import sys

    recipe = tmp_path / "sharded.toml"
    recipe.write_text(sharded(base_recipe(), shards=4, by="source").to_toml())
    env = {k: v for k, v in os.environ.items() if not k.startswith("DISGORGE_")} | {"DISGORGE_PROGRESS": "0",
                                                                                   "COLUMNS": "250"}
    root = str(backdoor_ws.root)
    backdoor_ws.close()

    def cli(*args: str) -> str:
        done = subprocess.run([sys.executable, "-m", "disgorge.cli", *args, "--workspace", root], env=env,
                              capture_output=True, text=True, timeout=600, check=False)
        assert done.returncode == 0, done.stderr
        return done.stdout

    trained = cli("train", str(recipe))
    model = trained.split()[1]
    assert "shard(s) x 1 slice(s) by source" in trained
    out = cli("forget", "--source", WITHDRAWN, "--model", model, "--defer-erase")
    assert f"{model} -> " in out and "(sisa: sharded)" in out and "retrained shard(s)" in out and "untouched" in out
    assert "shards_clean" in out and "exact evidence" in out


def test_one_shard_per_source_drops_the_forgotten_one_under_verification(backdoor_ws: Workspace) -> None:
    from disgorge.api import verify

    parent = train(backdoor_ws, sharded(base_recipe(), shards=0, by="source"))
    assert len(parent.info["sharding"]["members"]) == 20  # one network per contributor
    with backdoor_ws.writing():
        result = forget(backdoor_ws, sources=[WITHDRAWN], model=parent.id, verify="heldout", erase=False)
    child, cert = child_of(result, parent.id)
    assert len(child.info["report"]["dropped_shards"]) == 1 and not child.info["report"]["retrained_shards"]
    assert cert["verdict"] == "passed" and cert["changed"] and cert["sharding"]["members"] == 19
    assert cert["checks"]["shards_clean"]["original"] > 0 and cert["sharding"]["examples"] == 0
    again = verify(backdoor_ws, child.id, level="exact")  # before erasure: certified by construction again
    assert again["sharding"]["dropped"] == cert["sharding"]["dropped"] and "reference" not in again["models"]
    assert again["checks"]["shards_clean"] == cert["checks"]["shards_clean"]


def test_bad_workers_and_executors_are_refused(backdoor_ws: Workspace) -> None:
    from disgorge.errors import DisgorgeError

    recipe = sharded(base_recipe(), shards=2)
    for kwargs, message in (({"workers": 0}, "workers must be"), ({"executor": "slurm"}, "unknown executor")):
        with pytest.raises(DisgorgeError, match=message):
            train(backdoor_ws, recipe, **kwargs)
        with backdoor_ws.writing(), pytest.raises(DisgorgeError, match=message):
            forget(backdoor_ws, sources=[WITHDRAWN], verify="none", **kwargs)
    assert len(backdoor_ws.ledger.models()) == 1 and not backdoor_ws.ledger.requests()
