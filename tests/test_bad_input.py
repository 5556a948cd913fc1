"""Bad input gets a clear error and changes nothing.

A corpus of malformed files, recipes, options and ids, each given to ``disgorge.cli.main`` in-process against a
private copy of one small workspace. Every case must exit with code 2 after printing exactly one line, ``error: ...``,
with no traceback, and leave every file under its folder as it was (the ledger compared as a logical dump of its
tables, since SQLite may rewrite the file on open). No case trains or unlearns: each fails before the heavy work.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import sqlite3
import stat
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pytest

os.environ.setdefault("DISGORGE_PROGRESS", "0")

from disgorge import Workspace, api
from disgorge.cli import main
from disgorge.data import MAX_CLASSES
from disgorge.errors import InvalidRequest, NotFound

LEDGER_TABLES = ("sources", "records", "models", "requests", "tombstones", "meta", "chain")
FEATURES = [f"f{i}" for i in range(8)]
RECIPE = 'name = "tiny"\n[model]\nfamily = "linear"\n[train]\nepochs = 1\nbatch_size = 64\n'
HUGE = "99999999999999999999"  # 20 digits: beyond SQLite's int64, roaring's uint32, numpy's and torch's seeds


# -- the workspace ----------------------------------------------------------------------------------------------
def write_csv(path: Path, x: np.ndarray, y: np.ndarray, header: list[str] | None = None) -> Path:
    """Rows of features and a label under a header line."""
    lines = [",".join(header or [*FEATURES[:x.shape[1]], "label"])]
    lines += [",".join([*(f"{v:.6f}" for v in row), str(int(label))]) for row, label in zip(x, y, strict=True)]
    path.write_text("\n".join(lines) + "\n", encoding="utf-8")
    return path


@dataclass(frozen=True)
class Template:
    """A closed workspace and the ids its cases name."""

    root: Path
    facts: dict[str, Any]


@pytest.fixture(scope="module")
def template(tmp_path_factory: pytest.TempPathFactory) -> Template:
    """``lab`` (60 rows of 8 features, labels 0..2, a fifth held out), ``heldout`` (only test records) and
    ``extra``; a tiny linear model; one erasure erased (``extra``) and one held (--defer-erase)."""
    d = tmp_path_factory.mktemp("bad-input")
    rng = np.random.default_rng(0)
    lab = write_csv(d / "lab.csv", rng.normal(size=(60, 8)), np.arange(60) % 3)
    heldout = write_csv(d / "heldout.csv", rng.normal(size=(15, 8)), np.arange(15) % 3)
    extra = write_csv(d / "extra.csv", rng.normal(size=(10, 8)), np.arange(10) % 3)
    (d / "r.toml").write_text(RECIPE, encoding="utf-8")
    root = d / "ws"
    with Workspace.init(root) as ws:
        api.ingest_file(ws, lab, source="lab", license="CC0-1.0", holdout=0.2)
        api.ingest_file(ws, heldout, source="heldout", license="CC0-1.0", split="test")
        api.ingest_file(ws, extra, source="extra", license="CC0-1.0")
        trained = api.train(ws, d / "r.toml")
        erased = api.forget(ws, sources=["extra"], method="finetune", options={"max_steps": 1}, verify="none",
                            reason="withdrawn \x1b[31m [/] consent")
        lab_train = sorted(ws.ledger.record_ids(sources=["lab"], split="train"))
        held = api.forget(ws, records=lab_train[:3], method="finetune", options={"max_steps": 1}, verify="none",
                          erase=False)
        facts = {"trained": trained.id, "unlearned": held.children[0].id, "erased_request": erased.request_id,
                 "held_request": held.request_id,
                 "erased_id": min(ws.ledger.record_ids(sources=["extra"], split=None, states=("erased",))),
                 "test_id": min(ws.ledger.record_ids(sources=["lab"], split="test"))}
    return Template(root, facts)


def snapshot(root: Path) -> dict[str, Any]:
    """Every file under ``root``: regular files by sha256 (ledger files by a logical dump of their tables),
    anything else by its kind."""
    out: dict[str, Any] = {}
    for path in sorted(root.rglob("*")):
        rel = str(path.relative_to(root))
        mode = os.lstat(path).st_mode
        if path.name.startswith("ledger.sqlite"):
            if path.name == "ledger.sqlite":
                out[rel] = ledger_dump(path)
        elif stat.S_ISREG(mode):
            out[rel] = hashlib.sha256(path.read_bytes()).hexdigest()
        elif not stat.S_ISDIR(mode):
            out[rel] = stat.S_IFMT(mode)
        else:
            out[rel] = "dir"
    return out


def ledger_dump(path: Path) -> list[str]:
    """The SQL that rebuilds the ledger's tables of record (``iterdump``), without its counters."""
    db = sqlite3.connect(path)
    try:
        return [line for line in db.iterdump()
                if any(line.startswith((f'INSERT INTO "{t}"', f"CREATE TABLE {t} ", f'CREATE TABLE "{t}"'))
                       for t in LEDGER_TABLES)]
    finally:
        db.close()


# -- the corpus -------------------------------------------------------------------------------------------------
Setup = Callable[[Path, Path], None]  # (folder of input files, workspace) -> None


def recipe(text: str) -> Setup:
    """Write ``text`` as ``r.toml``."""
    def make(d: Path, ws: Path) -> None:
        (d / "r.toml").write_text(text, encoding="utf-8")
    return make


def train_with(**changes: str) -> Setup:
    """The tiny recipe with ``key = value`` lines replaced or added in ``[train]``/top level/``[model]``."""
    lines = {"name": '"tiny"'}
    model = {"family": '"linear"'}
    train = {"epochs": "1", "batch_size": "64"}
    for key, value in changes.items():
        section, _, name = key.rpartition("__")
        {"": lines, "model": model, "train": train}[section][name] = value
    text = "\n".join(f"{k} = {v}" for k, v in lines.items())
    text += "\n[model]\n" + "\n".join(f"{k} = {v}" for k, v in model.items())
    text += "\n[train]\n" + "\n".join(f"{k} = {v}" for k, v in train.items()) + "\n"
    return recipe(text)


def text_file(name: str, content: str | bytes) -> Setup:
    """Write an input file (text or bytes)."""
    def make(d: Path, ws: Path) -> None:
        data = content.encode("utf-8") if isinstance(content, str) else content
        (d / name).write_bytes(data)
    return make


def csv_rows(*rows: str, header: str = ",".join([*FEATURES, "label"])) -> Setup:
    """``bad.csv``: a header and rows given as text."""
    return text_file("bad.csv", "\n".join([header, *rows]) + "\n")


def row(*values: str, label: str = "0") -> str:
    """A CSV row of 8 features (the given ones first, zeros after) and a label."""
    cells = [*values, *["0"] * (8 - len(values))]
    return ",".join([*cells, label])


def npz(**arrays: Any) -> Setup:
    """``bad.npz`` holding ``arrays``."""
    return lambda d, ws: np.savez(d / "bad.npz", **arrays)


def npy_as_npz(d: Path, ws: Path) -> None:
    """A plain .npy array saved under an .npz name."""
    with open(d / "bad.npz", "wb") as fh:
        np.save(fh, np.zeros((3, 8)))


def fifo(name: str) -> Setup:
    """A named pipe (reading it would block forever)."""
    return lambda d, ws: os.mkfifo(d / name)


def folder(name: str) -> Setup:
    """A folder with a data file's name."""
    return lambda d, ws: (d / name).mkdir()


def pickle_checkpoint(d: Path, ws: Path) -> None:
    """A language-model folder whose weights are a pickle, and a recipe naming it."""
    model = d / "lm"
    model.mkdir()
    (model / "config.json").write_text(json.dumps({"model_type": "gpt2", "n_layer": 1, "n_embd": 8, "n_head": 2,
                                                   "vocab_size": 50}), encoding="utf-8")
    (model / "pytorch_model.bin").write_bytes(b"\x80\x04\x95 not weights: a pickle that could run code")
    recipe(f'name = "lm"\ntask = "causal_lm"\n[model]\nfamily = "pretrained"\npath = "{model}"\n')(d, ws)


def stray_label(d: Path, ws: Path) -> None:
    """A record labelled 999 among labels 0..2 (ingest takes it: the cap is MAX_CLASSES), and the tiny recipe."""
    path = write_csv(d / "stray.csv", np.full((1, 8), 7.0), np.array([999]))
    with Workspace.open(ws) as w:
        api.ingest_file(w, path, source="stray", license="CC0-1.0")
    recipe(RECIPE)(d, ws)


def foreign(folder_name: str) -> Setup:
    """``out/<folder_name>`` holding a file of someone else's."""
    def make(d: Path, ws: Path) -> None:
        (d / "out" / folder_name).mkdir(parents=True)
        (d / "out" / folder_name / "thesis.tex").write_text("years of work", encoding="utf-8")
    return make


def both(*setups: Setup) -> Setup:
    """Run several setups in order."""
    def make(d: Path, ws: Path) -> None:
        for s in setups:
            s(d, ws)
    return make


def case(case_id: str, args: list[str], needle: str, setup: Setup | None = None, workspace: bool = True) -> Any:
    """One bad input: ``args`` (``{d}``: the input folder, ``{ws}`` and the template's facts are filled in), the
    text its error line must contain, and what to prepare first."""
    return pytest.param(args, needle, setup, workspace, id=case_id)


INGEST = ["ingest", "{d}/bad.csv", "--source", "new", "--license", "CC0-1.0"]
INGEST_NPZ = ["ingest", "{d}/bad.npz", "--source", "new", "--license", "CC0-1.0"]
TRAIN = ["train", "{d}/r.toml"]
FORGET = ["forget", "--source", "lab"]

CASES = [
    # 1. recipes: non-finite and out-of-range numbers
    case("recipe-lr-nan", TRAIN, "train.lr", train_with(train__lr="nan")),
    case("recipe-lr-inf", TRAIN, "train.lr", train_with(train__lr="inf")),
    case("recipe-lr-negative", TRAIN, "train.lr", train_with(train__lr="-0.1")),
    case("recipe-weight-decay-nan", TRAIN, "weight_decay", train_with(train__weight_decay="nan")),
    case("recipe-weight-decay-inf", TRAIN, "weight_decay", train_with(train__weight_decay="inf")),
    case("recipe-weight-decay-negative", TRAIN, "weight_decay", train_with(train__weight_decay="-1")),
    case("recipe-momentum-1.5", TRAIN, "momentum", train_with(train__momentum="1.5")),
    case("recipe-momentum-nan", TRAIN, "momentum", train_with(train__momentum="nan")),
    case("recipe-epochs-0", TRAIN, "epochs", train_with(train__epochs="0")),
    case("recipe-epochs-huge", TRAIN, "epochs", train_with(train__epochs="1000000000000")),
    case("recipe-batch-size-float", TRAIN, "batch_size", train_with(train__batch_size="2.5")),
    case("recipe-batch-size-bool", TRAIN, "batch_size", train_with(train__batch_size="true")),
    case("recipe-dropout-nan", TRAIN, "dropout", train_with(model__family='"mlp"', model__dropout="nan")),
    # 2. model size
    case("recipe-width-1e12", TRAIN, "MAX_WIDTH", train_with(model__family='"mlp"', model__hidden="[1000000000000]")),
    case("recipe-params-over-cap", TRAIN, "MAX_PARAMETERS",
         train_with(model__family='"mlp"', model__hidden="[100000, 100000]")),
    case("recipe-width-zero", TRAIN, "hidden", train_with(model__family='"mlp"', model__hidden="[0]")),
    case("recipe-cnn-on-tabular", TRAIN, "image inputs", train_with(model__family='"cnn"')),
    # 3. seeds
    case("recipe-seed-20-digits", TRAIN, "seed", train_with(seed=HUGE)),
    case("recipe-seed-negative", TRAIN, "seed", train_with(seed="-1")),
    case("recipe-seed-2**32", TRAIN, "seed", train_with(seed=str(2**32))),
    case("recipe-seed-float", TRAIN, "seed", train_with(seed="1.5")),
    # recipes: structure and files
    case("recipe-invalid-toml", TRAIN, "TOML", recipe('name = "x"\n[train\nlr = 1\n')),
    case("recipe-unknown-key", TRAIN, "colour", recipe('name = "x"\ncolour = "blue"\n')),
    case("recipe-unknown-train-key", TRAIN, "lrr", recipe('name = "x"\n[train]\nlrr = 0.1\n')),
    case("recipe-train-not-table", TRAIN, "[train] must be a table", recipe('name = "x"\ntrain = 3\n')),
    case("recipe-no-name", TRAIN, "name", recipe("[train]\nlr = 0.1\n")),
    case("recipe-unknown-family", TRAIN, "resnet", train_with(model__family='"resnet"')),
    case("recipe-family-not-text", TRAIN, "model.family", train_with(model__family="3")),
    case("recipe-unknown-task", TRAIN, "regression", train_with(task='"regression"')),
    case("recipe-sources-not-list", TRAIN, "data.sources", recipe('name = "x"\n[data]\nsources = "lab"\n')),
    case("recipe-unknown-source", TRAIN, "nobody", recipe('name = "x"\n[data]\nsources = ["nobody"]\n')),
    case("recipe-missing", ["train", "{d}/missing.toml"], "does not exist"),
    case("recipe-is-a-folder", ["train", "{d}/dir.toml"], "not a regular file", folder("dir.toml")),
    case("recipe-is-a-fifo", ["train", "{d}/pipe.toml"], "not a regular file", fifo("pipe.toml")),
    case("recipe-not-utf8", TRAIN, "UTF-8", text_file("r.toml", b'name = "\xff\xfe"\n')),
    case("recipe-name-with-escape", ["train", "{d}/\x1b[2Jr.toml"], "does not exist"),
    # 15. pretrained checkpoints
    case("pretrained-pickle-checkpoint", TRAIN, "safetensors", pickle_checkpoint),
    case("pretrained-no-config", TRAIN, "config.json",
         recipe('name = "lm"\ntask = "causal_lm"\n[model]\nfamily = "pretrained"\npath = "/nonexistent"\n')),
    # 7. labels far beyond the classes seen
    case("train-stray-label-999", TRAIN, "999", stray_label),
    # 6. features
    case("csv-value-3e38", INGEST, "'f2'", csv_rows(row("1", "2", "3e38"))),
    case("csv-value-1e39", INGEST, "line 3", csv_rows(row(), row("1e39"))),
    case("csv-value-nan", INGEST, "'f0'", csv_rows(row("nan"))),
    case("csv-value-inf", INGEST, "'f7'", csv_rows(row("0", "0", "0", "0", "0", "0", "0", "inf"))),
    case("csv-value-minus-inf", INGEST, "finite", csv_rows(row("-inf"))),
    case("csv-text-feature", INGEST, "not numeric", csv_rows(row("high"))),
    # 7. labels at ingest
    case("csv-label-1e12", INGEST, "MAX_CLASSES", csv_rows(row(label="1e12"))),
    case("csv-label-cap", INGEST, str(MAX_CLASSES - 1), csv_rows(row(label=str(MAX_CLASSES)))),
    case("csv-label-20-digits", INGEST, "MAX_CLASSES", csv_rows(row(label=HUGE))),
    case("csv-label-negative", INGEST, "non-negative", csv_rows(row(label="-1"))),
    case("csv-label-fraction", INGEST, "non-negative", csv_rows(row(label="1.5"))),
    case("csv-label-nan", INGEST, "label", csv_rows(row(label="nan"))),
    case("csv-label-inf", INGEST, "label", csv_rows(row(label="inf"))),
    case("csv-label-text", INGEST, "not an integer class", csv_rows(row(label="cat"))),
    # 8. headers
    case("csv-duplicate-label-header", INGEST, "'label'",
         csv_rows("1,2,3,4,5,6,7,0,1", header=",".join([*FEATURES[:7], "label", "label"]))),
    case("csv-duplicate-feature-header", INGEST, "'f1'",
         csv_rows(row(), header=",".join(["f1", "f1", *FEATURES[2:], "label"]))),
    case("csv-blank-header-name", INGEST, "no name", csv_rows(row(), header=",".join(["", *FEATURES[1:], "label"]))),
    case("csv-no-label-column", INGEST, "no label column", csv_rows("1,2", header="a,b")),
    case("csv-ragged-row", INGEST, "the header has 9", csv_rows(row(), "1,2,3")),
    case("csv-not-utf8", INGEST, "UTF-8", text_file("bad.csv", b"f0,label\n\xff\xfe\xfa,0\n")),
    case("csv-empty", INGEST, "empty", text_file("bad.csv", "")),
    case("csv-header-only", INGEST, "no data rows", csv_rows()),
    case("csv-attribute-is-label", [*INGEST, "--attribute", "label"], "label", csv_rows(row())),
    case("csv-missing-label-option", [*INGEST, "--label", "target"], "target", csv_rows(row())),
    # 9. shapes
    case("csv-fewer-features-than-workspace", INGEST, "shape", csv_rows("1,2,0", header="a,b,label")),
    case("npz-shape-differs-from-workspace", INGEST_NPZ, "shape",
         npz(x=np.zeros((4, 3)), y=np.zeros(4, dtype=np.int64))),
    case("npz-image-shape-differs", INGEST_NPZ, "shape", npz(x=np.zeros((4, 2, 4)), y=np.zeros(4, dtype=np.int64))),
    case("npz-x-one-dimensional", INGEST_NPZ, "shape", npz(x=np.zeros(4), y=np.zeros(4, dtype=np.int64))),
    case("npz-rows-differ", INGEST_NPZ, "one label per row", npz(x=np.zeros((4, 8)), y=np.zeros(3, dtype=np.int64))),
    case("npz-no-features", INGEST_NPZ, "at least one feature", npz(x=np.zeros((4, 0)), y=np.zeros(4, np.int64))),
    case("npz-no-rows", INGEST_NPZ, "no records", npz(x=np.zeros((0, 8)), y=np.zeros(0, dtype=np.int64))),
    # 10. dtypes and values
    case("npz-complex", INGEST_NPZ, "complex", npz(x=np.zeros((4, 8), np.complex128), y=np.zeros(4, np.int64))),
    case("npz-strings", INGEST_NPZ, "'x' must hold", npz(x=np.full((4, 8), "a"), y=np.zeros(4, np.int64))),
    case("npz-x-nan", INGEST_NPZ, "finite", npz(x=np.full((4, 8), np.nan), y=np.zeros(4, np.int64))),
    case("npz-x-float64-huge", INGEST_NPZ, "finite", npz(x=np.full((4, 8), 1e300), y=np.zeros(4, np.int64))),
    case("npz-y-float", INGEST_NPZ, "integer", npz(x=np.zeros((4, 8)), y=np.array([0.5, 1, 2, 0]))),
    case("npz-y-negative", INGEST_NPZ, "MAX_CLASSES", npz(x=np.zeros((4, 8)), y=np.array([0, -1, 2, 0]))),
    case("npz-y-over-cap", INGEST_NPZ, "MAX_CLASSES", npz(x=np.zeros((4, 8)), y=np.array([0, 1, 10**12, 0]))),
    case("npz-y-uint64-huge", INGEST_NPZ, "MAX_CLASSES",
         npz(x=np.zeros((2, 8)), y=np.array([0, 2**64 - 1], dtype=np.uint64))),
    case("npz-no-y", INGEST_NPZ, "'y'", npz(x=np.zeros((4, 8)))),
    case("npz-object-array", INGEST_NPZ, "cannot read",
         npz(x=np.zeros((2, 8)), y=np.array([{"a": 1}, {}], dtype=object))),
    case("npz-is-npy", INGEST_NPZ, "not an .npz", npy_as_npz),
    case("npz-garbage", INGEST_NPZ, "cannot read", text_file("bad.npz", b"PK\x03\x04 not a zip at all")),
    # 11. kinds
    case("jsonl-into-classification", ["ingest", "{d}/t.jsonl", "--source", "t", "--license", "CC0-1.0"], "text",
         text_file("t.jsonl", '{"text": "call me Ishmael"}\n')),
    case("jsonl-perturbed-not-text", ["ingest", "{d}/t.jsonl", "--source", "t", "--license", "CC0-1.0"], "text",
         text_file("t.jsonl", '{"prompt": "q", "answer": "a", "perturbed": [1, 2]}\n')),
    # files that are not data files
    case("wrong-extension", ["ingest", "{d}/bad.txt", "--source", "n", "--license", "CC0-1.0"], "supported files",
         text_file("bad.txt", "a,label\n1,0\n")),
    case("missing-file", INGEST, "does not exist"),
    case("folder-as-file", INGEST, "folder", folder("bad.csv")),
    case("fifo-as-file", INGEST, "not a regular file", fifo("bad.csv")),
    case("fifo-as-npz", INGEST_NPZ, "not a regular file", fifo("bad.npz")),
    # 12. names and ingest options
    case("source-with-escape", ["ingest", "{d}/bad.csv", "--source", "x\x1b[31m", "--license", "CC0-1.0"],
         "control characters", csv_rows(row())),
    case("source-with-newline", ["ingest", "{d}/bad.csv", "--source", "a\nb", "--license", "CC0-1.0"],
         "--source", csv_rows(row())),
    case("source-too-long", ["ingest", "{d}/bad.csv", "--source", "s" * 300, "--license", "CC0-1.0"], "200",
         csv_rows(row())),
    case("license-with-control", ["ingest", "{d}/bad.csv", "--source", "n", "--license", "CC0\x07"], "--license",
         csv_rows(row())),
    case("license-mismatch", ["ingest", "{d}/bad.csv", "--source", "lab", "--license", "MIT"], "licence",
         csv_rows(row("5"))),
    case("no-license", ["ingest", "{d}/bad.csv", "--source", "n"], "--license", csv_rows(row())),
    case("holdout-1.5", [*INGEST, "--holdout", "1.5"], "--holdout", csv_rows(row())),
    case("holdout-negative", [*INGEST, "--holdout", "-0.1"], "--holdout", csv_rows(row())),
    case("holdout-nan", [*INGEST, "--holdout", "nan"], "--holdout", csv_rows(row())),
    case("holdout-seed-negative", [*INGEST, "--holdout", "0.2", "--holdout-seed", "-1"], "--holdout-seed",
         csv_rows(row())),
    case("holdout-seed-20-digits", [*INGEST, "--holdout-seed", HUGE], "--holdout-seed", csv_rows(row())),
    case("split-unknown", [*INGEST, "--split", "validation"], "split", csv_rows(row("9"))),
    case("scenario-unknown", ["ingest", "--scenario", "nope"], "nope"),
    case("scenario-and-file", ["ingest", "{d}/bad.csv", "--scenario", "digits-backdoor"], "not both",
         csv_rows(row())),
    # 5. forget's numbers
    case("budget-negative", [*FORGET, "--budget", "-1"], "--budget"),
    case("budget-nan", [*FORGET, "--budget", "nan"], "--budget"),
    case("budget-inf", [*FORGET, "--budget", "inf"], "--budget"),
    case("max-seconds-negative", [*FORGET, "--max-seconds", "-5"], "--max-seconds"),
    case("max-seconds-nan", [*FORGET, "--max-seconds", "nan"], "--max-seconds"),
    case("max-steps-zero", [*FORGET, "--max-steps", "0"], "--max-steps"),
    case("lora-negative", [*FORGET, "--lora", "-1"], "--lora"),
    case("lora-huge", [*FORGET, "--lora", HUGE], "--lora"),
    case("exact-budget-negative", [*FORGET, "--exact-budget", "-1"], "--exact-budget"),
    case("exact-budget-nan", [*FORGET, "--exact-budget", "nan"], "--exact-budget"),
    case("random-1.5", ["forget", "--random", "1.5"], "--random"),
    case("random-negative", ["forget", "--random", "-0.5"], "--random"),
    case("random-nan", ["forget", "--random", "nan"], "--random"),
    case("random-zero", ["forget", "--random", "0"], "--random"),
    case("seed-20-digits", ["forget", "--random", "0.1", "--seed", HUGE], "--seed"),
    case("seed-negative", ["forget", "--random", "0.1", "--seed", "-1"], "--seed"),
    case("seed-not-a-number", ["forget", "--random", "0.1", "--seed", "abc"], "--seed"),
    # 4. ids
    case("records-20-digits", ["forget", "--records", HUGE], HUGE),
    case("records-range-beyond-uint32", ["forget", "--records", f"1-{2**40}"], str(2**40)),
    case("records-range-too-long", ["forget", "--records", "1-20000000"], "--records"),
    case("records-not-ids", ["forget", "--records", "abc"], "'abc'"),
    case("records-backwards", ["forget", "--records", "5-3"], "backwards"),
    case("records-unknown", ["forget", "--records", "100000"], "100000"),
    case("records-already-erased", ["forget", "--records", "{erased_id}"], "already erased"),
    case("erase-20-digits", ["erase", HUGE], HUGE),
    case("erase-unknown", ["erase", "999"], "999"),
    case("erase-already-erased", ["erase", "{erased_request}"], "already erased"),
    case("erase-not-a-number", ["erase", "r1"], "request"),
    case("report-20-digits", ["report", f"r{HUGE}"], HUGE),
    case("report-unknown", ["report", "r999"], "999"),
    case("report-not-a-target", ["report", "yesterday"], "yesterday"),
    # 13. held-out records stay unless asked
    case("forget-test-only-source", ["forget", "--source", "heldout"], "--include-test"),
    case("forget-test-record", ["forget", "--records", "{test_id}"], "--include-test"),
    # forget: names
    case("forget-unknown-source", ["forget", "--source", "nobody"], "nobody"),
    case("forget-source-with-escape", ["forget", "--source", "x\x1b[2J"], "no source"),
    case("forget-erased-source", ["forget", "--source", "extra"], "extra"),
    case("forget-nothing", ["forget"], "--source"),
    case("forget-unknown-method", [*FORGET, "--method", "nope"], "nope"),
    case("forget-unknown-option", [*FORGET, "-o", "bogus=1"], "bogus"),
    case("forget-option-bad-type", [*FORGET, "-o", "lr=abc"], "lr"),
    case("forget-option-nan", [*FORGET, "-o", "lr=nan"], "lr"),
    case("forget-option-no-equals", [*FORGET, "-o", "lr"], "KEY=VALUE"),
    case("forget-unknown-level", [*FORGET, "--verify", "bogus"], "bogus"),
    case("forget-unknown-purpose", [*FORGET, "--purpose", "fun"], "fun"),
    case("forget-unknown-model", [*FORGET, "--model", "m999"], "m999"),
    case("forget-unknown-flag", [*FORGET, "--bogus"], "--bogus"),
    case("forget-auto-without-verify", [*FORGET, "--method", "auto", "--no-verify"], "auto"),
    # verify
    case("verify-unknown-model", ["verify", "m999"], "m999"),
    case("verify-trained-model", ["verify", "{trained}"], "{trained}"),
    case("verify-exact-budget-nan", ["verify", "{unlearned}", "--exact-budget", "nan"], "--exact-budget"),
    case("verify-strong-models-2", ["verify", "{unlearned}", "--strong", "--strong-models", "2"], "--strong-models"),
    case("verify-workers-zero", ["verify", "{unlearned}", "--strong", "--workers", "0"], "--workers"),
    case("verify-unknown-level", ["verify", "{unlearned}", "--level", "bogus"], "bogus"),
    # 14. bench and demo never delete what they did not make
    case("bench-foreign-work-folder", ["bench", "--scenario", "digits-backdoor", "--out", "{d}/out"], "--force",
         foreign("work"), workspace=False),
    case("demo-foreign-workspace-folder", ["demo", "--out", "{d}/out"], "--force", foreign("workspace"),
         workspace=False),
    case("bench-seeds-zero", ["bench", "--seeds", "0", "--out", "{d}/out"], "--seeds", workspace=False),
    case("bench-seeds-huge", ["bench", "--seeds", HUGE, "--out", "{d}/out"], "--seeds", workspace=False),
    case("bench-strong-models-2", ["bench", "--strong-models", "2", "--out", "{d}/out"], "--strong-models",
         workspace=False),
    case("bench-workers-negative", ["bench", "--workers", "-1", "--out", "{d}/out"], "--workers", workspace=False),
    case("bench-unknown-scenario", ["bench", "--scenario", "nope", "--out", "{d}/out"], "nope", workspace=False),
    case("demo-unknown-scenario", ["demo", "--scenario", "nope", "--out", "{d}/out"], "nope", workspace=False),
    # everything else
    case("records-unknown-split", ["records", "--split", "validation"], "validation"),
    case("records-unknown-state", ["records", "--state", "gone"], "gone"),
    case("no-workspace", ["sources", "-w", "{d}/nowhere"], "nowhere", workspace=False),
    case("unknown-command", ["frobnicate"], "frobnicate", workspace=False),
    case("recipe-unknown-template", ["recipe", "--template", "regression"], "regression", workspace=False),
    case("methods-unknown", ["methods", "nope"], "nope", workspace=False),
    case("certificate-missing", ["certificate", "check", "{d}/missing.json"], "missing.json", workspace=False),
]


@pytest.mark.parametrize(("args", "needle", "setup", "workspace"), CASES)
def test_bad_input_is_one_line_and_changes_nothing(template: Template, tmp_path: Path,
                                                   capsys: pytest.CaptureFixture[str], args: list[str], needle: str,
                                                   setup: Setup | None, workspace: bool) -> None:
    """Exit code 2, one `error:` line naming the problem, no traceback, and every file left as it was."""
    ws, d = tmp_path / "ws", tmp_path / "in"
    shutil.copytree(template.root, ws)
    d.mkdir()
    if setup is not None:
        setup(d, ws)
    facts = {"d": d, "ws": ws, **template.facts}
    argv = [a.format(**facts) for a in args] + (["-w", str(ws)] if workspace else [])
    before = snapshot(tmp_path)
    capsys.readouterr()
    with pytest.raises(SystemExit) as exit_:
        main(argv)
    captured = capsys.readouterr()
    assert "Traceback" not in captured.out + captured.err
    lines = captured.err.splitlines()
    assert len(lines) == 1, f"stderr must be one line, got {len(lines)}: {captured.err!r}"
    assert lines[0].startswith("error: "), lines[0]
    assert "\x1b" not in captured.err, "a control character reached the terminal"
    assert needle.format(**facts) in lines[0], lines[0]
    assert exit_.value.code == 2, (exit_.value.code, lines[0])
    assert snapshot(tmp_path) == before


def test_corpus_is_large_and_the_snapshot_sees_changes(template: Template, tmp_path: Path) -> None:
    """At least 60 bad inputs; and the snapshot the cases compare tells a changed ledger from an unchanged one."""
    assert len(CASES) >= 60
    ws = tmp_path / "ws"
    shutil.copytree(template.root, ws)
    path = write_csv(tmp_path / "one.csv", np.full((1, 8), 5.0), np.array([1]))
    before = snapshot(tmp_path)
    assert snapshot(tmp_path) == before
    assert any(line.startswith('INSERT INTO "records"') for line in before["ws/.disgorge/ledger.sqlite"])
    with Workspace.open(ws) as w:
        api.ingest_file(w, path, source="one", license="CC0-1.0")
    after = snapshot(tmp_path)
    assert after["ws/.disgorge/ledger.sqlite"] != before["ws/.disgorge/ledger.sqlite"]


# -- 12. names are printed as inert text ----------------------------------------------------------------------------
def test_names_with_markup_and_controls_are_printed_safely(template: Template, tmp_path: Path,
                                                           capsys: pytest.CaptureFixture[str]) -> None:
    """A source named with rich markup (``x[/]``) lists fine, and the control characters of a request's reason
    reach the terminal escaped, in tables and in JSON."""
    ws = tmp_path / "ws"
    shutil.copytree(template.root, ws)
    path = write_csv(tmp_path / "m.csv", np.full((2, 8), 3.0) + np.arange(2)[:, None], np.array([0, 1]))
    main(["ingest", str(path), "--source", "x[/]", "--license", "[bold]CC0[/]", "-w", str(ws)])
    capsys.readouterr()
    for command in (["sources"], ["records"], ["requests"], ["status"], ["models"], ["requests", "--json"]):
        main([*command, "-w", str(ws)])
        captured = capsys.readouterr()
        assert "\x1b" not in captured.out and "\x9b" not in captured.out, command
        assert captured.err == "", captured.err
        if command == ["sources"]:
            assert "x[/]" in captured.out and "[bold]CC0[/]" in captured.out
        if command[0] == "requests":
            assert "\\x1b[31m" in captured.out.replace("\\u001b", "\\x1b"), captured.out


# -- 13. held-out records are selected only when asked ---------------------------------------------------------------
def test_held_out_records_are_selected_only_with_include_test(template: Template, tmp_path: Path) -> None:
    """A source gives its training records; its held-out ones (and explicit held-out ids, and a source of nothing
    else) need include_test."""
    ws_root = tmp_path / "ws"
    shutil.copytree(template.root, ws_root)
    with Workspace.open(ws_root) as ws:
        lab_train = ws.ledger.record_ids(sources=["lab"], split="train", states=("active", "held"))
        lab_test = ws.ledger.record_ids(sources=["lab"], split="test", states=("active", "held"))
        heldout = ws.ledger.record_ids(sources=["heldout"], split="test")
        assert lab_train and lab_test and heldout
        assert ws.select(sources=["lab"]) == lab_train
        assert ws.select(sources=["lab"], include_test=True) == lab_train | lab_test
        assert ws.select(sources=["heldout"], include_test=True) == heldout
        assert list(ws.select(records=[template.facts["test_id"]], include_test=True)) == [template.facts["test_id"]]
        with pytest.raises(InvalidRequest, match="only held-out"):
            ws.select(sources=["heldout"])
        with pytest.raises(InvalidRequest, match="--include-test"):
            ws.select(records=[template.facts["test_id"]])
        with pytest.raises(NotFound, match="2\\*\\*32"):
            ws.select(records=[2**40])
