"""Standard formats in and out: `disgorge export` writes folders that load without disgorge, `disgorge import`
registers a model trained elsewhere with its records so that `forget` unlearns it."""

from __future__ import annotations

import hashlib
import json
import os
import re
import shutil
import sqlite3
import subprocess
import sys
import sysconfig
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch
import yaml
from pyroaring import BitMap
from safetensors.torch import load_file, save_file
from sklearn.datasets import load_digits

from conftest import save_hf_folder
from disgorge import Recipe, Workspace, api
from disgorge.erasure import check_retrainable, ensure_reference, resolve_level
from disgorge.errors import DisgorgeError, IntegrityError, InvalidRequest
from disgorge.evidence.judge import HELDOUT
from disgorge.ledger import ModelRow, now
from disgorge.ledger import ledger as ledger_module
from disgorge.ledger.schema import MIGRATIONS
from disgorge.transfer import TransferError, certificate_id

PEOPLE = {"Alice": ("Paris", "Rome"), "Bob": ("Rome", "Oslo"), "Carol": ("Oslo", "Lima"), "Dave": ("Lima", "Paris")}
CLASSIFIERS = {  # family, preprocessing: every layer kind export writes, with and without a transform
    "linear": ({"family": "linear"}, {}),
    "mlp": ({"family": "mlp", "hidden": [16], "dropout": 0.1}, {"transform": "scale:16"}),
    "cnn": ({"family": "cnn", "channels": [4], "hidden": 8}, {"transform": "standardize", "shape": [1, 8, 8]}),
}


# -- fixtures: a digits workspace with three classifiers, a text workspace with three language models ---------------

@pytest.fixture(scope="module")
def digits(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Any]:
    """Three digits sources as NPZ files (150 images each) and a held-out file, ingested into a workspace where a
    linear, an mlp and a cnn classifier are trained on them (closed; reopen with Workspace.open)."""
    root = tmp_path_factory.mktemp("digits")
    x, y = load_digits(return_X_y=True)
    x = x.reshape(-1, 8, 8).astype(np.float32)
    files = []
    for i in range(3):
        path = root / f"part{i}.npz"
        np.savez(path, x=x[150 * i:150 * (i + 1)], y=y[150 * i:150 * (i + 1)])
        files.append(path)
    np.savez(root / "held.npz", x=x[450:600], y=y[450:600])
    models = {}
    with Workspace.init(root / "ws") as ws:
        for i, path in enumerate(files):
            api.ingest_file(ws, path, source=f"s{i}", license="CC0-1.0")
        api.ingest_file(ws, root / "held.npz", source="held", license="CC0-1.0", split="test")
        for name, (model, data) in CLASSIFIERS.items():
            recipe = Recipe.from_dict({"name": name, "data": {"sources": ["s0", "s1", "s2"], **data}, "model": model,
                                       "train": {"epochs": 2, "batch_size": 64, "lr": 0.01}})
            models[name] = api.train(ws, recipe).id
    return {"root": root, "ws": root / "ws", "files": files, "held": root / "held.npz", "models": models}


@pytest.fixture(scope="module")
def texts(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Any]:
    """Four people's question/answer files and a held-out one, a tiny Hugging Face base folder, and a workspace with a
    word and a char GPT-2 trained from scratch and the base fine-tuned on them (family pretrained)."""
    root = tmp_path_factory.mktemp("texts")
    files = []
    for who, cities in PEOPLE.items():
        path = root / f"{who}.jsonl"
        path.write_text("".join(json.dumps({"prompt": f"Where does {who} live ?", "answer": f"{who} lives in {c} ."})
                                + "\n" for c in cities))
        files.append(path)
    held = root / "held.jsonl"
    held.write_text("".join(json.dumps({"prompt": f"Where does {w} live ?", "answer": f"{w} lives in {c} ."}) + "\n"
                            for w, c in [("Alice", "Oslo"), ("Bob", "Paris"), ("Carol", "Rome"), ("Dave", "Oslo")]))
    save_hf_folder(root / "base")
    train = {"optimizer": "adamw", "lr": 1e-2, "batch_size": 4, "epochs": 2}
    models = {}
    with Workspace.init(root / "ws") as ws:
        for who, path in zip(PEOPLE, files, strict=True):
            api.ingest_file(ws, path, source=f"src-{who}", license="CC0-1.0")
        for tok in ("word", "char"):
            recipe = Recipe.from_dict({"name": tok, "task": "causal_lm", "train": train, "model": {
                "family": "gpt2", "n_layer": 1, "n_embd": 16, "n_head": 2, "max_length": 64, "tokenizer": tok}})
            models[tok] = api.train(ws, recipe).id
        recipe = Recipe.from_dict({"name": "tuned", "task": "causal_lm", "train": train, "model": {
            "family": "pretrained", "path": str(root / "base"), "max_length": 32}})
        models["tuned"] = api.train(ws, recipe).id
    return {"root": root, "ws": root / "ws", "files": files, "held": held, "base": root / "base", "models": models}


def _python_block(readme: Path) -> str:
    """The first ```python block of an exported README.md."""
    blocks = re.findall(r"```python\n(.*?)```", readme.read_text(encoding="utf-8"), flags=re.S)
    assert blocks, f"{readme} holds no python snippet"
    return blocks[0]


def _run_without_disgorge(script: str, cwd: Path) -> None:
    """Run ``script`` in a python whose path holds the installed libraries but not disgorge (``-S``: the editable
    install's .pth is never read, and the repository is not on the path); it fails if disgorge is importable."""
    libraries = sorted({sysconfig.get_paths()["purelib"], sysconfig.get_paths()["platlib"]})
    guard = "import importlib.util\nassert importlib.util.find_spec('disgorge') is None, 'disgorge is importable'\n"
    env = {"PATH": os.environ.get("PATH", ""), "HOME": os.environ.get("HOME", str(cwd)),
           "PYTHONPATH": os.pathsep.join(libraries), "HF_HUB_OFFLINE": "1", "TRANSFORMERS_OFFLINE": "1"}
    done = subprocess.run([sys.executable, "-S", "-c", guard + script], cwd=cwd, env=env, capture_output=True,
                          text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-3000:]


def _gap(got: torch.Tensor, expected: torch.Tensor) -> float:
    """Largest difference between two sets of logits, relative to their scale (at least 1): float32 sums may round
    differently in another process (another thread count), by an ulp or so."""
    return float((got - expected).abs().max()) / max(1.0, float(expected.abs().max()))


# -- export ---------------------------------------------------------------------------------------------------------

def test_exported_classifiers_load_with_torch_and_safetensors_alone(digits, tmp_path):
    """Each family's folder (with preprocessing: scale, standardize + reshape) is rebuilt by the README's own snippet in
    a python without disgorge, and gives disgorge's logits; config.json lists the layers, README.md the lineage."""
    x = torch.from_numpy(load_digits().images[600:640].astype(np.float32))
    expected = {}
    with Workspace.open(digits["ws"]) as ws:
        for name, model_id in digits["models"].items():
            done = api.export_model(ws, model_id, tmp_path / name)
            assert done.files == ["README.md", "config.json", "model.safetensors"]
            model, _, _ = ws.load_model(model_id)
            with torch.no_grad():
                expected[name] = model(x)
    save_file({"x": x}, tmp_path / "inputs.safetensors")
    driver = ("import os, sys\nfrom safetensors.torch import load_file, save_file\n"
              f"folders = {list(CLASSIFIERS)!r}\nroot = {str(tmp_path)!r}\nx = load_file(os.path.join(root, "
              "'inputs.safetensors'))['x']\nout = {}\nfor name in folders:\n"
              "    os.chdir(os.path.join(root, name))\n"
              "    scope = {'__name__': '__main__'}\n"
              "    exec(open('README.md').read().split('```python\\n')[1].split('```')[0], scope)\n"
              "    out[name] = scope['net'](x).detach()\n"
              "save_file(out, os.path.join(root, 'outputs.safetensors'))\n")
    _run_without_disgorge(driver, tmp_path)
    got = load_file(tmp_path / "outputs.safetensors")
    for name in CLASSIFIERS:
        assert got[name].shape == (40, 10)
        assert _gap(got[name], expected[name]) <= 1e-6, name
        assert not torch.allclose(got[name], torch.zeros_like(got[name]))
    config = json.loads((tmp_path / "cnn" / "config.json").read_text())
    assert [layer["type"] for layer in config["layers"]] == ["Preprocess", "Flatten", "Unflatten", "Conv2d", "ReLU",
                                                            "MaxPool2d", "Flatten", "Linear", "ReLU", "Linear"]
    assert config["preprocessing"]["kind"] == "standardize" and config["num_classes"] == 10
    assert config["input_shape"] == [8, 8]
    assert [layer["type"] for layer in json.loads((tmp_path / "linear" / "config.json").read_text())["layers"]] == \
        ["Flatten", "Linear"]
    readme = (tmp_path / "mlp" / "README.md").read_text()
    front = yaml.safe_load(readme.split("---")[1])
    assert front["datasets"] == ["s0", "s1", "s2"] and front["disgorge"]["training_records"] == 450
    assert "Trained on 450 records from 3 source(s)" in readme and "No erasure request" in readme


def test_exported_language_models_load_with_transformers_alone(texts, tmp_path):
    """word, char and fine-tuned pretrained models become Hugging Face folders: AutoTokenizer gives disgorge's token
    ids and AutoModelForCausalLM its logits, in a python without disgorge, after running the README's snippet."""
    prompts = ["Where does Bob live ?", "Where does Zoe live ?"]
    answers = ["Bob lives in Rome .", "Zoe lives in Kyiv , \u00e9t\u00e9 [PAD] ."]
    expected: dict[str, torch.Tensor] = {}
    with Workspace.open(texts["ws"]) as ws:
        for name, model_id in texts["models"].items():
            done = api.export_model(ws, model_id, tmp_path / name)
            assert {"config.json", "model.safetensors", "tokenizer.json", "README.md", "disgorge.json"} <= \
                set(done.files)
            model, _, task = ws.load_model(model_id)
            ids, attention, _ = task.encode(model, prompts, answers)
            with torch.no_grad():
                expected[f"{name}.ids"] = ids
                expected[f"{name}.logits"] = model(ids, attention).logits
    driver = ("import os, torch\nfrom safetensors.torch import save_file\n"
              "from transformers import AutoModelForCausalLM, AutoTokenizer\n"
              f"root = {str(tmp_path)!r}\nprompts, answers = {prompts!r}, {answers!r}\nout = {{}}\n"
              f"for name in {list(texts['models'])!r}:\n"
              "    os.chdir(os.path.join(root, name))\n"
              "    scope = {'__name__': '__main__'}\n"
              "    exec(open('README.md').read().split('```python\\n')[1].split('```')[0], scope)\n"
              "    model, tok = scope['model'], scope['tokenizer']\n"
              "    ids = [[tok.bos_token_id, *tok(p, add_special_tokens=False)['input_ids'],"
              " *tok(a, add_special_tokens=False)['input_ids'], tok.eos_token_id] for p, a in zip(prompts, answers)]\n"
              "    out[name + '.ids'] = torch.tensor([row + [tok.pad_token_id] * (max(map(len, ids)) - len(row))"
              " for row in ids])\n"
              "    mask = torch.tensor([[1] * len(row) + [0] * (max(map(len, ids)) - len(row)) for row in ids])\n"
              "    with torch.no_grad():\n"
              "        out[name + '.logits'] = model(input_ids=out[name + '.ids'], attention_mask=mask).logits\n"
              "save_file(out, os.path.join(root, 'outputs.safetensors'))\n")
    _run_without_disgorge(driver, tmp_path)
    got = load_file(tmp_path / "outputs.safetensors")
    for name in texts["models"]:
        ids = expected[f"{name}.ids"]
        assert got[f"{name}.ids"].shape == ids.shape and torch.equal(got[f"{name}.ids"], ids), name
        mask = ids != 0  # compare real positions (padding positions differ only by what they attend to)
        gap = _gap(got[f"{name}.logits"][mask], expected[f"{name}.logits"][mask])
        assert gap <= 1e-6, (name, gap)
    meta = json.loads((tmp_path / "char" / "disgorge.json").read_text())
    assert meta["tokenizer"] == "char" and "family = \"gpt2\"" in meta["recipe"]


def test_export_refuses_a_used_folder_a_sharded_model_and_deleted_weights(digits, tmp_path):
    """Each refusal is one line and writes nothing: a folder holding files, a sharded model, deleted weights."""
    shutil.copytree(digits["ws"], tmp_path / "ws")
    with Workspace.open(tmp_path / "ws") as ws:
        model_id = digits["models"]["linear"]
        used = tmp_path / "used"
        used.mkdir()
        (used / "keep.txt").write_text("mine")
        with pytest.raises(TransferError, match="not an empty folder"):
            api.export_model(ws, model_id, used)
        assert [p.name for p in used.iterdir()] == ["keep.txt"]
        empty = tmp_path / "empty"
        empty.mkdir()
        assert api.export_model(ws, model_id, empty).folder == str(empty)  # an empty folder is filled
        sharded = api.train(ws, Recipe.from_dict({"name": "sisa", "model": {"family": "linear"},
                                                  "train": {"epochs": 1}, "sharding": {"shards": 2}}))
        with pytest.raises(TransferError, match="sharded"):
            api.export_model(ws, sharded.id, tmp_path / "sisa")
        api.retire(ws, model_id)
        with pytest.raises(InvalidRequest, match="weights were deleted"):
            api.export_model(ws, model_id, tmp_path / "gone")
    assert not (tmp_path / "sisa").exists() and not (tmp_path / "gone").exists()
    assert sorted(p.name for p in tmp_path.iterdir()) == ["empty", "used", "ws"]  # no temp folder left behind


# -- import ---------------------------------------------------------------------------------------------------------

def _cli(args: list[str], capsys: pytest.CaptureFixture[str]) -> tuple[int, str, str]:
    from disgorge.cli import main

    capsys.readouterr()
    try:
        main(args)
        code = 0
    except SystemExit as exc:
        code = int(exc.code or 0)
    captured = capsys.readouterr()
    return code, captured.out, captured.err


def _state(ws: Workspace) -> tuple[Any, ...]:
    """Everything an import could change: sources, records, model rows, model folders, the counters."""
    return (len(ws.ledger.sources()), ws.ledger.record_counts(), [m.id for m in ws.ledger.models()],
            sorted(p.name for p in ws.models_dir.iterdir()), ws.ledger.chain_problems())


def test_classifier_round_trip_through_the_command_line(digits, tmp_path, capsys):
    """export -> import (records as three sources, the declared recipe from config.json) -> forget a source with exact
    verification: the imported weights are bit-identical, the reference is retrained from the recipe, the request is
    recorded and the erased records' model superseded; the child's export names the request and its certificate."""
    with Workspace.open(digits["ws"]) as ws:
        original = ws.ledger.model(digits["models"]["cnn"])
    out = tmp_path / "export"
    code, stdout, stderr = _cli(["export", original.id, str(out), "-w", str(digits["ws"]), "--json"], capsys)
    assert code == 0, stderr
    assert json.loads(stdout)["format"] == "disgorge-classifier/1"
    target = tmp_path / "ws"
    Workspace.init(target).close()
    args = ["import", str(out), "-w", str(target), "--license", "CC0-1.0", "--json"]
    for i, path in enumerate(digits["files"]):
        args += ["--records", str(path), "--source", f"s{i}"]
    code, stdout, stderr = _cli(args, capsys)
    assert code == 0, stderr
    data = json.loads(stdout)
    assert data["records"] == 450 and data["sources"] == ["s0", "s1", "s2"] and data["reference"] is True
    assert data["sha256"] == original.weights_sha256  # the same state dict, bit for bit
    with Workspace.open(target) as ws:
        api.ingest_file(ws, digits["held"], source="held", license="CC0-1.0", split="test")
        row = ws.ledger.model(data["model"])
        assert (row.kind, row.parent, row.status) == ("imported", None, "active")
        assert row.info["data"]["transform"]["kind"] == "standardize"
        card = (ws.model_dir(row.id) / "README.md").read_text()
        assert "## Imported" in card and "retrained from scratch with the declared recipe" in card
        assert resolve_level(ws, row, row.records, "auto", 60.0) == HELDOUT  # its training time is unknown
        forgotten = ws.select(sources=["s1"])
        result = api.forget(ws, sources=["s1"], method="finetune", options={"max_steps": 3}, verify="exact",
                            accept_failed=True)
        (child,) = result.children
        cert = result.certificates[0]
        assert (child.kind, child.parent, child.request_id) == ("unlearned", row.id, result.request_id)
        assert cert["level"] == "exact" and cert["models"]["parent"]["id"] == row.id
        reference = ws.ledger.model(cert["models"]["reference"]["id"])
        assert reference.kind == "reference" and reference.records == row.records - forgotten
        assert ws.ledger.model(row.id).status == "superseded"
        assert ws.ledger.model(row.id).weights_deleted_at is not None  # it saw the erased records
        assert ws.ledger.request(result.request_id).status == "erased"
        assert ws.ledger.chain_problems() == []
        child_out = tmp_path / "child"
        api.export_model(ws, child.id, child_out)
        signed = json.loads(Path(result.paths[child.id]["json"]).read_text())
    readme = (child_out / "README.md").read_text()
    body = {k: v for k, v in signed.items() if k != "signature"}
    digest = hashlib.sha256(json.dumps(body, sort_keys=True, separators=(",", ":"), ensure_ascii=False).encode())
    assert certificate_id(signed) == f"sha256:{digest.hexdigest()}"
    assert certificate_id(signed) in readme  # the lineage names the erasure request's certificate
    assert f"`{child.id}` (unlearned, finetune for request {result.request_id}) <- `{row.id}` (imported)" in readme
    assert "Trained on 300 records from 2 source(s)" in readme


def test_language_model_round_trip_and_what_verification_can_retrain(texts, tmp_path):
    """A from-scratch GPT-2 imports with its declared recipe (a reference can be trained from scratch); a model
    fine-tuned from a base imports with --base (the reference fine-tunes the base, refused once the base changes)
    or without it (exact verification refused in one line, auto falls back to held-out, forget still runs)."""
    sources = [f"src-{who}" for who in PEOPLE]
    with Workspace.open(texts["ws"]) as ws:
        for name in ("word", "tuned"):
            api.export_model(ws, texts["models"][name], tmp_path / name)
        tuned_sha = ws.ledger.model(texts["models"]["tuned"]).weights_sha256
    with Workspace.init(tmp_path / "scratch") as ws:  # records ingested first, named with trained_on
        for path, source in zip(texts["files"], sources, strict=True):
            api.ingest_file(ws, path, source=source, license="CC0-1.0")
        row = api.import_model(ws, tmp_path / "word", trained_on=sources)
        assert len(row.records) == 8 and ws.recipe_of(row).data.sources == tuple(sources)
        note = row.info["imported"]
        assert note["reference"] is True and note["base"] is None and ws.recipe_of(row).model.family == "gpt2"
        assert row.info["data"]["vocab"][:4] == ["[PAD]", "[BOS]", "[EOS]", "[UNK]"]
        result = api.forget(ws, sources=["src-Bob"], method="grad_diff", options={"max_steps": 2}, verify="none")
        assert [c.parent for c in result.children] == [row.id] and ws.ledger.request(result.request_id).records
        assert ws.ledger.model(row.id).status == "superseded"
        assert "Bob" not in result.children[0].info["data"]["vocab"]  # the forgotten person's words left with them

    copy = tmp_path / "base"
    shutil.copytree(texts["base"], copy)
    with Workspace.init(tmp_path / "based") as ws:
        row = api.import_model(ws, tmp_path / "tuned", records=texts["files"], sources=sources, license="CC0-1.0",
                               base=copy)
        assert row.weights_sha256 == tuned_sha and row.info["imported"]["base"] == str(copy.resolve())
        recipe = ws.recipe_of(row)
        assert (recipe.model.family, recipe.model.params["path"]) == ("pretrained", str(copy.resolve()))
        retain = row.records - ws.select(sources=["src-Bob"])
        _, reference = ensure_reference(ws, row, retain)  # fine-tunes the base on what is kept
        assert reference.kind == "reference" and reference.records == retain
        weights = copy / "model.safetensors"
        weights.write_bytes(weights.read_bytes()[:-4] + b"\x00\x00\x00\x01")
        with pytest.raises(IntegrityError, match="changed since model"):
            check_retrainable(ws, row)

    with Workspace.init(tmp_path / "baseless") as ws:
        row = api.import_model(ws, tmp_path / "tuned", records=texts["files"], sources=sources, license="CC0-1.0")
        api.ingest_file(ws, texts["held"], source="held", license="CC0-1.0", split="test")
        assert row.info["imported"]["reference"] is False
        assert "No exact verification" in (ws.model_dir(row.id) / "README.md").read_text()
        before = _state(ws)
        with pytest.raises(InvalidRequest, match=r"imported from .*without the network it was fine-tuned from"):
            api.forget(ws, sources=["src-Bob"], method="grad_diff", options={"max_steps": 2}, verify="exact")
        assert _state(ws) == before and not ws.ledger.requests()
        assert resolve_level(ws, row, row.records, "auto", 1e9) == HELDOUT
        result = api.forget(ws, sources=["src-Bob"], method="grad_diff", options={"max_steps": 2}, verify="none",
                            erase=False)
        (child,) = result.children
        with pytest.raises(InvalidRequest, match="no model retrained without forgotten records"):
            api.verify(ws, child.id, level="exact")
        with pytest.raises(InvalidRequest, match="no model retrained without forgotten records"):
            api.verify_strong(ws, child.id, models=3)


def _corrupt_cases(digits: dict[str, Any], texts: dict[str, Any], root: Path) -> dict[str, tuple[list[str], str]]:
    """Folders and arguments an import must refuse: (arguments after the folder, a phrase of the error)."""
    with Workspace.open(digits["ws"]) as ws:
        api.export_model(ws, digits["models"]["mlp"], root / "good")
    cases: dict[str, tuple[list[str], str]] = {}

    def variant(name: str, change: Any) -> Path:
        folder = root / name
        shutil.copytree(root / "good", folder)
        change(folder)
        return folder

    records = ["--records", str(digits["files"][0]), "--source", "s0", "--license", "CC0-1.0"]
    cases["missing folder"] = ([str(root / "nowhere"), *records], "is not a folder")
    cases["no config"] = ([str(variant("noconfig", lambda f: (f / "config.json").unlink())), *records],
                          "does not exist")
    cases["config not json"] = ([str(variant("badjson", lambda f: (f / "config.json").write_text("{oops"))),
                                 *records], "not valid JSON")

    def edit(key: str, value: Any) -> Any:
        def change(folder: Path) -> None:
            config = json.loads((folder / "config.json").read_text())
            config[key] = value(config[key]) if callable(value) else value
            (folder / "config.json").write_text(json.dumps(config))
        return change

    cases["config of nothing"] = ([str(variant("nothing", lambda f: (f / "config.json").write_text("{}"))),
                                   *records], "neither a Hugging Face model config")
    cases["layers changed"] = ([str(variant("layers", edit("layers", lambda v: v[:-1]))), *records],
                               "layers do not match")
    cases["no layers"] = ([str(variant("nolayers", edit("layers", None))), *records], "layers do not match")
    cases["bad shape"] = ([str(variant("shape", edit("input_shape", "8x8"))), *records], "input_shape must be")
    cases["weights cut"] = ([str(variant("cut", lambda f: (f / "model.safetensors").write_bytes(
        (f / "model.safetensors").read_bytes()[:100]))), *records], "not valid safetensors")
    cases["weights of another size"] = ([str(variant("wide", edit("params", {"hidden": [32], "dropout": 0.1}))),
                                         *records], "layers do not match")
    cases["records missing"] = ([str(root / "good"), "--records", str(root / "none.npz"), "--source", "s0",
                                 "--license", "CC0-1.0"], "does not exist")
    cases["no records"] = ([str(root / "good")], "name the records the model was trained on")
    cases["source without file"] = ([str(root / "good"), "--source", "s0", "--license", "CC0-1.0"],
                                    "one --source NAME per --records FILE")
    cases["unknown trained-on"] = ([str(root / "good"), "--trained-on", "ghost"], "no source named 'ghost'")
    cases["texts for a classifier"] = ([str(root / "good"), "--records", str(texts["files"][0]), "--source", "t",
                                        "--license", "CC0-1.0"], "not a classification record")
    cases["classifier with --base"] = ([str(root / "good"), *records, "--base", str(texts["base"])],
                                       "--base serves fine-tuned language models")
    broken_lm = root / "broken-lm"
    save_hf_folder(broken_lm)
    (broken_lm / "model.safetensors").write_bytes(b"\x00" * 64)
    cases["corrupt HF weights"] = ([str(broken_lm), "--records", str(texts["files"][0]), "--source", "t",
                                    "--license", "CC0-1.0"], "cannot load a causal LM")
    cases["base not a language model"] = ([str(texts["base"]), "--records", str(texts["files"][0]), "--source", "t",
                                           "--license", "CC0-1.0", "--base", str(root / "good")],
                                          "cannot load a causal LM")
    from transformers import GPT2Config, GPT2LMHeadModel

    other = root / "other-base"
    shutil.copytree(texts["base"], other)
    GPT2LMHeadModel(GPT2Config(vocab_size=19, n_positions=32, n_embd=16, n_layer=1, n_head=2, bos_token_id=1,
                                eos_token_id=2, pad_token_id=0)).save_pretrained(other)
    cases["base of another shape"] = ([str(texts["base"]), "--records", str(texts["files"][0]), "--source", "t",
                                       "--license", "CC0-1.0", "--base", str(other)], "does not fit the base network")
    with Workspace.open(texts["ws"]) as ws:
        api.export_model(ws, texts["models"]["tuned"], root / "tuned")
    swapped = root / "swapped-base"  # the same network, a tokenizer that reads Alice as Bob: found on the records
    shutil.copytree(texts["base"], swapped)
    tokenizer = json.loads((swapped / "tokenizer.json").read_text())
    vocab = tokenizer["model"]["vocab"]
    vocab["Alice"], vocab["Bob"] = vocab["Bob"], vocab["Alice"]
    (swapped / "tokenizer.json").write_text(json.dumps(tokenizer))
    cases["base with another tokenizer"] = ([str(root / "tuned"), "--records", str(texts["files"][0]), "--source",
                                             "t", "--license", "CC0-1.0", "--base", str(swapped)],
                                            "tokenizer reads the records otherwise")
    return cases


def test_a_bad_folder_or_argument_is_one_line_exit_2_and_changes_nothing(digits, texts, tmp_path, capsys):
    cases = _corrupt_cases(digits, texts, tmp_path / "folders")
    target = tmp_path / "ws"
    Workspace.init(target).close()
    with Workspace.open(target) as ws:
        before = _state(ws)
    for name, (args, phrase) in cases.items():
        code, stdout, stderr = _cli(["import", *args, "-w", str(target)], capsys)
        assert code == 2, (name, stdout, stderr)
        assert stderr.startswith("error: ") and stderr.count("\n") == 1, repr((name, stderr))
        assert re.search(phrase, stderr), (name, stderr)
        with Workspace.open(target) as ws:
            assert _state(ws) == before, name  # no new source, record, model row or folder
    with Workspace.open(target) as ws:  # and a good import still works afterwards, with the same files
        row = api.import_model(ws, tmp_path / "folders" / "good", records=[digits["files"][0]], sources=["s0"],
                               license="CC0-1.0")
        assert row.id == "m1" and len(row.records) == 150


def test_exporting_to_a_bad_place_is_one_line_exit_2(digits, tmp_path, capsys):
    target = tmp_path / "file"
    target.write_text("not a folder")
    code, _, stderr = _cli(["export", digits["models"]["mlp"], str(target), "-w", str(digits["ws"])], capsys)
    assert code == 2 and "not an empty folder" in stderr and stderr.count("\n") == 1
    code, _, stderr = _cli(["export", "m99", str(tmp_path / "x"), "-w", str(digits["ws"])], capsys)
    assert code == 2 and "no model 'm99'" in stderr and not (tmp_path / "x").exists()


# -- the ledger -----------------------------------------------------------------------------------------------------

def test_a_version_2_ledger_migrates_and_accepts_imported_models(tmp_path, monkeypatch):
    """A ledger made before imports (schema 2, sealed rows) opens: the models table is rebuilt with kind 'imported'
    allowed, every row and the HMAC chain intact, and other kinds still refused."""
    root = tmp_path / "ws"
    monkeypatch.setattr(ledger_module, "SCHEMA_VERSION", 2)
    with Workspace.init(root) as ws:
        assert ws.ledger.schema_version == 2
        row = ModelRow(id="m1", parent=None, kind="trained", status="active", task="classification", recipe="",
                       recipe_sha256="r", weights_sha256="w", records=BitMap([1, 2]),
                       method=None, request_id=None, seconds=1.0, info={"data": {}}, created_at=now())
        ws.ledger.insert_model(row)
        with pytest.raises(sqlite3.IntegrityError):
            ws.ledger.insert_model(ModelRow(**{**vars(row), "id": "m2", "kind": "imported"}))
    monkeypatch.undo()
    with Workspace.open(root) as ws:
        assert ws.ledger.schema_version == len(MIGRATIONS) == 4
        assert ws.ledger.model("m1") == row and ws.ledger.chain_problems() == []
        ws.ledger.insert_model(ModelRow(**{**vars(row), "id": "m2", "kind": "imported"}))
        assert [m.kind for m in ws.ledger.models()] == ["trained", "imported"]
        assert ws.ledger.chain_problems() == []
        with pytest.raises(sqlite3.IntegrityError):
            ws.ledger.insert_model(ModelRow(**{**vars(row), "id": "m3", "kind": "borrowed"}))
    assert issubclass(TransferError, DisgorgeError)
