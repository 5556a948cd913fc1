"""`disgorge ingest FILE --holdout FRACTION`: a seeded, label-stratified share of a file kept as held-out records
of the same source (split test)."""

from __future__ import annotations

import json
from collections import Counter
from pathlib import Path

import numpy as np
import pytest

from disgorge import Workspace
from disgorge.cli import main
from disgorge.data.files import holdout_split
from disgorge.errors import InvalidRequest
from disgorge.ledger import NewRecord

SOURCE = "lab-2024"


def _csv(path: Path, per_label: tuple[int, ...] = (20, 20, 20)) -> Path:
    rng = np.random.default_rng(1)
    lines = ["a,b,label"]
    for label, n in enumerate(per_label):
        lines += [f"{rng.normal():.6f},{rng.normal():.6f},{label}" for _ in range(n)]
    path.write_text("\n".join(lines) + "\n", encoding="utf-8")
    return path


def _cli(capsys: pytest.CaptureFixture[str], *args: object) -> tuple[int, str, str]:
    try:
        main([str(a) for a in args])
        code = 0
    except SystemExit as exc:
        code = exc.code if isinstance(exc.code, int) else 1
    captured = capsys.readouterr()
    return code, captured.out, captured.err


def _ingest(capsys, root: Path, data: Path, *extra: object) -> tuple[int, str, str]:
    return _cli(capsys, "ingest", data, "--source", SOURCE, "--license", "CC-BY-4.0", "-w", root, *extra)


def _by_split(root: Path) -> dict[str, dict[int, int]]:
    """{split: {record id: label}} of the source's records."""
    with Workspace.open(root) as ws:
        out = {}
        for split in ("train", "test"):
            ids = ws.ledger.record_ids(sources=[SOURCE], split=split)
            out[split] = {r.id: int(r.fields["y"][0]) for r in ws.ledger.records(ids)}
        return out


def test_holdout_keeps_a_stratified_share_of_each_label_as_test(tmp_path, capsys):
    data = _csv(tmp_path / "data.csv")
    roots = []
    for name in ("w1", "w2"):
        root = tmp_path / name
        assert _cli(capsys, "init", root)[0] == 0
        code, out, err = _ingest(capsys, root, data, "--holdout", "0.2", "--json")
        assert code == 0, err
        report = json.loads(out)
        assert report["added"] == 60 and report["held_out"] == 12
        assert report["sources"][0]["source"] == SOURCE and report["sources"][0]["held_out"] == 12
        roots.append(root)
    first, second = _by_split(roots[0]), _by_split(roots[1])
    assert Counter(first["test"].values()) == {0: 4, 1: 4, 2: 4}
    assert Counter(first["train"].values()) == {0: 16, 1: 16, 2: 16}
    # same file + same seed in a fresh workspace: the same records held out
    assert sorted(first["test"]) == sorted(second["test"])
    with Workspace.open(roots[0]) as ws:
        rows = ws.ledger.records(ws.ledger.record_ids(sources=[SOURCE], split=None), with_payload=False)
        assert {r.source for r in rows} == {SOURCE} and Counter(r.split for r in rows) == {"train": 48, "test": 12}


def test_holdout_text_output_and_seed(tmp_path, capsys):
    data = _csv(tmp_path / "data.csv")
    tests = []
    for seed in (0, 1):
        root = tmp_path / f"s{seed}"
        _cli(capsys, "init", root)
        code, out, err = _ingest(capsys, root, data, "--holdout", "0.2", "--holdout-seed", seed)
        assert code == 0, err
        assert "ingested 60 records" in out and "kept 12 as held-out (split test)" in out
        tests.append(sorted(_by_split(root)["test"]))
    assert tests[0] != tests[1]


@pytest.mark.parametrize("args", [("--holdout", "1.5"), ("--holdout", "-0.1"),
                                  ("--holdout", "0.2", "--split", "test")])
def test_bad_holdout_is_one_line_and_adds_nothing(tmp_path, capsys, args):
    data = _csv(tmp_path / "data.csv")
    root = tmp_path / "w"
    _cli(capsys, "init", root)
    code, _out, err = _ingest(capsys, root, data, *args)
    assert code == 2
    lines = err.splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: ") and "--holdout" in lines[0], err
    with Workspace.open(root) as ws:
        assert not ws.ledger.record_ids(split=None, states=())
        assert not ws.ledger.sources()


def test_holdout_split_is_pure_and_leaves_a_lone_label_in_train():
    recs = [NewRecord({"x": np.zeros(2, np.float32), "y": np.array([y], np.int64)}) for y in [0] * 10 + [1]]
    out = holdout_split(recs, 0.6, seed=3)
    assert all(r.split == "train" for r in recs)  # input untouched
    assert [r.split for r in out[10:]] == ["train"]  # the one record of label 1 stays in train
    assert sum(r.split == "test" for r in out[:10]) == 6
    assert [r.split for r in holdout_split(recs, 0.6, seed=3)] == [r.split for r in out]
    assert holdout_split(recs, 0.0) == recs
    texts = [NewRecord({"text": np.frombuffer(f"doc {i}".encode(), np.uint8)}) for i in range(20)]
    assert sum(r.split == "test" for r in holdout_split(texts, 0.25, seed=0)) == 5
    with pytest.raises(InvalidRequest):
        holdout_split(recs, 1.0)
