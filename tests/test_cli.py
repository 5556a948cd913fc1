"""The `disgorge` command line, driven as a user would: one subprocess per command, in scratch workspaces."""

from __future__ import annotations

import hashlib
import json
import math
import os
import re
import shutil
import subprocess
import sys
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from disgorge import Recipe, Workspace
from disgorge.scenarios import get_scenario

SCENARIO = "digits-backdoor"
WITHDRAWN = "contributor-07"
CONTRIBUTORS = [f"contributor-{i:02d}" for i in range(20)]
INGESTED = re.compile(r"ingested (\d+) records from (\d+) source\(s\); skipped (\d+) exact duplicate")
TRAINED = re.compile(r"trained (m\d+) on (\d+) records in [\d.]+s; (?P<figure>[\w -]+): train (?P<train>[\d.]+)%, "
                     r"test (?P<test>[\d.]+)%; weights sha256 (?P<sha>[0-9a-f]{64})")
FORGOT = re.compile(r"request (\d+): (\d+) records; (\d+) model\(s\) unlearned with (\S+): (m\d+) -> (m\d+)")


# -- helpers ----------------------------------------------------------------------------------------------
def run(*args: Any) -> subprocess.CompletedProcess[str]:
    """Run `python -m disgorge.cli ARGS` the way a user's shell would, capturing its output."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("DISGORGE_")}
    # Wide tables so no cell is cut; one torch thread because the tiny MLPs are slower (up to 60x) with
    # two threads on a loaded two-core machine, and the weights are the same either way.
    env.update(DISGORGE_PROGRESS="0", COLUMNS="250", PYTHONIOENCODING="utf-8", OMP_NUM_THREADS="1")
    return subprocess.run([sys.executable, "-m", "disgorge.cli", *map(str, args)], capture_output=True,
                          text=True, encoding="utf-8", env=env, timeout=600, check=False)


def ok(proc: subprocess.CompletedProcess[str]) -> subprocess.CompletedProcess[str]:
    """Assert the command succeeded, showing its stderr if not."""
    assert proc.returncode == 0, f"exit {proc.returncode}: {proc.stderr}"
    assert "Traceback" not in proc.stdout + proc.stderr
    return proc


def fail(proc: subprocess.CompletedProcess[str]) -> str:
    """Assert the command failed the way user errors must: exit != 0, one `error:` line, no traceback."""
    assert proc.returncode != 0, f"expected a failure; stdout: {proc.stdout}"
    assert "Traceback" not in proc.stdout + proc.stderr, proc.stderr
    lines = proc.stderr.splitlines()
    assert len(lines) == 1, f"stderr should be one line, got {len(lines)}: {proc.stderr}"
    assert lines[0].startswith("error: "), lines[0]
    return lines[0]


def table(text: str) -> dict[str, list[str]]:
    """Body rows of the rich tables in ``text``, keyed by their first cell (headers use other borders)."""
    rows: dict[str, list[str]] = {}
    for line in text.splitlines():
        cells = [c.strip() for c in re.split(r"[│|]", line)]
        if len(cells) >= 3 and cells[1]:
            rows[cells[1]] = cells[1:-1]
    return rows


def copy_template(template: tuple[Path, str], tmp_path: Path) -> tuple[Path, str]:
    """A private copy of the conftest workspace (digits-backdoor ingested, one model trained)."""
    src, model_id = template
    dst = tmp_path / "ws"
    shutil.copytree(src, dst)
    return dst, model_id


def snapshot(root: Path) -> dict[str, Any]:
    """What a failed command must leave alone: model folders and rows, record states, sources, erasures."""
    folders = sorted(p.name for p in (root / "models").iterdir())  # before open(), which sweeps temp folders
    with Workspace.open(root) as ws:
        return {"folders": folders, "models": sorted((m.id, m.status) for m in ws.ledger.models()),
                "records": ws.ledger.count_records(), "sources": [s.name for s in ws.ledger.sources()],
                "tombstones": ws.ledger.tombstone_count(), "requests": [r.id for r in ws.ledger.requests()]}


def record_states(root: Path) -> dict[str, int]:
    """Number of records per state."""
    with Workspace.open(root) as ws:
        return ws.ledger.count_records()


def export_withdrawn(path: Path) -> Path:
    """Write contributor-07's original (poisoned) records to an .npz, as a user holding a copy would."""
    src = next(s for s in get_scenario(SCENARIO).sources() if s.name == WITHDRAWN)
    x = np.stack([r.fields["x"] for r in src.records])
    y = np.array([int(r.fields["y"][0]) for r in src.records], dtype=np.int64)
    np.savez(path, x=x, y=y)
    return path


@pytest.fixture
def ws_copy(backdoor_template: tuple[Path, str], tmp_path: Path) -> tuple[Path, str]:
    """Root and trained model id of a private copy of the template workspace."""
    return copy_template(backdoor_template, tmp_path)


# -- 1. happy path ---------------------------------------------------------------------------------------
def test_init_ingest_recipe_train_models_sources(tmp_path: Path) -> None:
    """init, ingest a scenario, save its recipe, train it twice (same sha256), list models and sources."""
    root = tmp_path / "ws"
    assert "created workspace" in ok(run("init", root)).stdout
    assert (root / ".disgorge" / "ledger.sqlite").is_file()

    m = INGESTED.search(ok(run("ingest", "--scenario", SCENARIO, "-w", root)).stdout)
    assert m and tuple(map(int, m.groups())) == (1797, 21, 0)

    text = ok(run("recipe", SCENARIO)).stdout
    assert Recipe.from_toml(text) == get_scenario(SCENARIO).recipe()
    recipe = tmp_path / "recipe.toml"
    recipe.write_text(text, encoding="utf-8")

    trained = []
    for _ in range(2):
        m = TRAINED.search(ok(run("train", recipe, "-w", root)).stdout)
        assert m, "train must print the model id and its weights' sha256"
        model_id, n, sha = m.group(1), int(m.group(2)), m.group("sha")
        assert n == 1437  # every training record (1797 minus 360 held out)
        # the digits MLP memorises its training set and generalises to the held-out digits
        assert m.group("figure") == "accuracy" and float(m.group("train")) > 99 and 90 < float(m.group("test")) < 100
        weights = (root / "models" / model_id / "model.safetensors").read_bytes()
        assert hashlib.sha256(weights).hexdigest() == sha
        trained.append((model_id, sha))
    (id1, sha1), (id2, sha2) = trained
    assert id1 != id2
    assert sha1 == sha2, "the same recipe on the same records must give bit-identical weights"

    models = table(ok(run("models", "-w", root)).stdout)
    for model_id in (id1, id2):
        assert models[model_id][1:3] == ["trained", "active"]
        assert models[model_id][6] == "1437"
        assert models[model_id][8] == sha1[:12]

    rows = {k: v for k, v in table(ok(run("sources", "-w", root)).stdout).items() if k != "source"}
    assert sorted(rows) == [*CONTRIBUTORS, "digits-heldout"]
    assert {r[1] for r in rows.values()} == {"CC-BY-4.0"}
    assert sum(int(r[3]) for r in rows.values()) == 1797
    assert rows[WITHDRAWN][3:6] == ["72", "0", "0"]
    assert rows["digits-heldout"][3] == "360"


# -- 2. forget with the default method ---------------------------------------------------------------------
def test_forget_source_removes_backdoor_and_erases(ws_copy: tuple[Path, str]) -> None:
    """forget --source contributor-07 removes the backdoor, certifies it, supersedes the parent, erases."""
    root, parent = ws_copy
    proc = ok(run("forget", "--source", WITHDRAWN, "--verify", "exact", "-w", root))
    m = FORGOT.search(proc.stdout)
    assert m, proc.stdout
    request, n, n_models, method, was, child = m.groups()
    assert (int(n), int(n_models), was) == (72, 1, parent)
    assert method == "grad_diff"
    assert "records erased" in proc.stdout

    cert = json.loads((root / "reports" / f"r{request}" / child / "certificate.json").read_text())
    assert cert["models"]["parent"]["id"] == parent and cert["models"]["child"]["id"] == child
    effect = {k: cert["metrics"][k]["effect"] for k in ("original", "unlearned", "reference")}
    assert effect["original"] > 80, f"the backdoor should work on the original model: {effect}"
    assert abs(effect["unlearned"] - effect["reference"]) <= 5, effect
    assert cert["records"]["forgotten"] == 72

    # the printed table shows the certificate's figures
    label = cert["effect"]["name"].replace("_", " ")
    printed = table(proc.stdout)[label]
    assert [float(v) for v in printed[1:4]] == pytest.approx(
        [effect["original"], effect["unlearned"], effect["reference"]], abs=0.006)
    assert ("PASSED" in proc.stdout) == cert["passed"]

    models = table(ok(run("models", "-w", root)).stdout)
    assert models[child][1:5] == ["unlearned", "active", parent, "grad_diff"]
    assert models[child][6] == "1365"
    assert parent not in models

    sources = table(ok(run("sources", "-w", root)).stdout)
    assert sources[WITHDRAWN][3:6] == ["0", "0", "72"]
    assert sources["contributor-06"][3:6] == ["72", "0", "0"]
    assert record_states(root) == {"active": 1797 - 72, "erased": 72}


# -- 3. user errors: one line, non-zero exit, nothing changed ----------------------------------------------
BAD_TOML = 'name = "x"\n[train\nlr = 1\n'
UNKNOWN_KEY = 'name = "x"\n[train]\nlrr = 1\n'

ERRORS = [
    pytest.param(["forget", "--source", "nobody"], None, "nobody", id="unknown-source"),
    pytest.param(["forget", "--records", "999999"], None, "999999", id="unknown-record"),
    pytest.param(["forget", "--source", WITHDRAWN, "--method", "nope"], None, "nope", id="unknown-method"),
    pytest.param(["forget", *[a for c in CONTRIBUTORS for a in ("--source", c)]], None, "whole training set",
                 id="whole-training-set"),
    pytest.param(["forget"], None, "--source", id="empty-selection"),
    pytest.param(["forget", "--source", WITHDRAWN, "-o", "lr=-1"], None, "lr", id="bad-method-option"),
    pytest.param(["train", "{tmp}/bad.toml"], BAD_TOML, "TOML", id="invalid-toml"),
    pytest.param(["train", "{tmp}/bad.toml"], UNKNOWN_KEY, "lrr", id="recipe-unknown-key"),
    pytest.param(["train", "{tmp}/missing.toml"], None, "missing.toml", id="missing-recipe"),
    pytest.param(["models", "-w", "{tmp}/nonexistent"], None, "nonexistent", id="no-workspace"),
    pytest.param(["verify", "{model}"], None, "{model}", id="verify-trained-model"),
    pytest.param(["verify", "m999"], None, "m999", id="verify-unknown-model"),
    pytest.param(["erase", "99"], None, "99", id="erase-unknown-request"),
]


@pytest.mark.parametrize(("args", "recipe", "needle"), ERRORS)
def test_user_errors_are_one_line_and_change_nothing(
        ws_copy: tuple[Path, str], tmp_path: Path, args: list[str], recipe: str | None, needle: str) -> None:
    """Each user error exits non-zero with one `error:` line naming the problem and changes nothing."""
    root, model = ws_copy
    if recipe is not None:
        (tmp_path / "bad.toml").write_text(recipe, encoding="utf-8")
    args = [a.format(tmp=tmp_path, model=model) for a in args]
    if "-w" not in args:
        args += ["-w", str(root)]
    before = snapshot(root)
    line = fail(run(*args))
    assert needle.format(model=model) in line, line
    assert snapshot(root) == before
    assert not (tmp_path / "nonexistent").exists()


def test_tampered_weights_are_refused(ws_copy: tuple[Path, str]) -> None:
    """A flipped byte in a model's weights stops forget with a sha256 error; nothing is created or erased."""
    root, model = ws_copy
    weights = root / "models" / model / "model.safetensors"
    weights.chmod(0o644)
    data = bytearray(weights.read_bytes())
    data[len(data) // 2] ^= 0x01
    weights.write_bytes(bytes(data))
    weights.chmod(0o444)
    before = snapshot(root)
    line = fail(run("forget", "--source", WITHDRAWN, "-w", root))
    assert "sha256" in line and model in line, line
    assert snapshot(root) == before
    assert record_states(root) == {"active": 1797}


# -- 4. deferred erasure, verify, erase, and no re-ingest of erased content --------------------------------
@pytest.mark.slow  # ~45 s of command-line runs; test_forget covers deferred erasure through the API
def test_defer_erase_verify_erase_then_reingest_refused(ws_copy: tuple[Path, str], tmp_path: Path) -> None:
    """forget --defer-erase holds records; verify recomputes; erase erases; erased content cannot return."""
    root, parent = ws_copy
    npz = export_withdrawn(tmp_path / "contributor-07.npz")

    proc = ok(run("forget", "--source", WITHDRAWN, "--defer-erase", "-w", root))
    m = FORGOT.search(proc.stdout)
    assert m, proc.stdout
    request, child = m.group(1), m.group(6)
    assert m.group(5) == parent
    assert f"disgorge erase {request}" in proc.stdout
    assert record_states(root) == {"active": 1797 - 72, "held": 72}

    report = root / "reports" / f"r{request}"
    first = json.loads((report / child / "certificate.json").read_text())
    shutil.rmtree(report)
    proc = run("verify", child, "-w", root)
    assert "Traceback" not in proc.stdout + proc.stderr
    cert = json.loads((report / child / "certificate.json").read_text())  # written again by verify
    assert cert["metrics"] == first["metrics"], "verify recomputes the same figures from the held records"
    assert cert["passed"] is True
    assert proc.returncode == 0, proc.stderr
    assert "PASSED" in proc.stdout and "FAILED" not in proc.stdout
    assert record_states(root) == {"active": 1797 - 72, "held": 72}, "verify must not erase"

    assert f"request {request}: records erased" in ok(run("erase", request, "-w", root)).stdout
    assert record_states(root) == {"active": 1797 - 72, "erased": 72}
    assert table(ok(run("requests", "-w", root)).stdout)[request][1] == "erased"
    assert "already erased" in fail(run("erase", request, "-w", root))

    before = record_states(root)
    line = fail(run("ingest", npz, "--source", "again", "--license", "CC0-1.0", "-w", root))
    assert re.search(r"erased|tombstone", line), line
    assert "72" in line
    assert record_states(root) == before


def test_refused_ingest_leaves_no_source(ws_copy: tuple[Path, str], tmp_path: Path) -> None:
    """An ingest refused because its content was erased does not register its source either."""
    root, _ = ws_copy
    npz = export_withdrawn(tmp_path / "contributor-07.npz")
    ok(run("forget", "--source", WITHDRAWN, "--no-verify", "-w", root))
    before = snapshot(root)
    fail(run("ingest", npz, "--source", "again", "--license", "CC0-1.0", "-w", root))
    assert snapshot(root) == before


# -- 5. CSV ingest ------------------------------------------------------------------------------------------
CSV_ROWS = [  # f0..f3, label, group; the last row repeats the first
    ("0.1", "0.2", "0.3", "0.4", "0", "a"),
    ("1.5", "-2", "3e-1", "4", "1", "b"),
    ("5", "6", "7", "8", "2", "a"),
    ("9", "9.5", "0", "1", "1", "c"),
    ("0.1", "0.2", "0.3", "0.4", "0", "a"),
]


def write_csv(path: Path, rows: list[tuple[str, ...]], header: str = "f0,f1,f2,f3,label,group") -> Path:
    """A CSV file with a header line."""
    path.write_text("\n".join([header, *(",".join(r) for r in rows)]) + "\n", encoding="utf-8")
    return path


def test_csv_ingest_with_attribute_and_duplicates(tmp_path: Path) -> None:
    """A CSV ingests features, label and group attribute; exact duplicates are skipped and counted."""
    root = tmp_path / "ws"
    ok(run("init", root))
    csv = write_csv(tmp_path / "survey.csv", CSV_ROWS)
    args = ("ingest", csv, "--source", "survey", "--license", "CC0-1.0", "--attribute", "group", "-w", root)

    m = INGESTED.search(ok(run(*args)).stdout)
    assert m and tuple(map(int, m.groups())) == (4, 1, 1)  # the repeated row is a duplicate within the file
    m = INGESTED.search(ok(run(*args)).stdout)
    assert m and tuple(map(int, m.groups())) == (0, 1, 5)

    with Workspace.open(root) as ws:
        records = ws.ledger.records(ws.ledger.record_ids(sources=["survey"]))
    assert len(records) == 4
    for rec, row in zip(records, CSV_ROWS[:4], strict=True):
        features = np.array([float(v) for v in row[:4]], dtype=np.float32)
        np.testing.assert_array_equal(rec.fields["x"], features)
        assert rec.fields["y"].tolist() == [int(row[4])]
        assert rec.attributes == {"group": row[5]}
        assert rec.split == "train"

    sources = table(ok(run("sources", "-w", root)).stdout)
    assert sources["survey"][1] == "CC0-1.0"
    assert sources["survey"][3:6] == ["4", "0", "0"]


def test_csv_with_text_feature_column_is_refused(tmp_path: Path) -> None:
    """A non-numeric feature column fails with one error line naming the column, and nothing is ingested."""
    root = tmp_path / "ws"
    ok(run("init", root))
    csv = write_csv(tmp_path / "bad.csv", [("1", "2", "3", "4", "0"), ("1", "2", "high", "4", "1")],
                    header="f0,f1,f2,f3,label")
    before = snapshot(root)
    line = fail(run("ingest", csv, "--source", "survey", "--license", "CC0-1.0", "-w", root))
    assert "'f2'" in line and "line 3" in line, line
    assert snapshot(root) == before
    assert before["records"] == {} and before["sources"] == []


@pytest.mark.slow  # ~2 min (two GPT-2 trainings on one thread): kept out of `make test`, run by `make test-all`
def test_language_model_forget_and_verify_end_to_end(tmp_path: Path) -> None:
    """A causal LM through the whole CLI: ingest the people scenario, train a GPT-2, forget two people by source
    with NPO, and read the TOFU/MUSE figures from the certificate and from `disgorge verify`."""
    ws = tmp_path / "ws"
    ok(run("init", ws))
    ok(run("ingest", "--scenario", "people-mini", "-w", ws))
    recipe = tmp_path / "recipe.toml"
    recipe.write_text(ok(run("recipe", "people-mini")).stdout)
    model = TRAINED.search(ok(run("train", recipe, "-w", ws)).stdout).group(1)
    forgotten = ["person-038", "person-039"]
    refused = fail(run("forget", "--source", "person-038", "--method", "ssd", "--lora", "4", "-w", ws))
    assert "unknown option(s) lora_rank" in refused
    proc = ok(run("forget", *[a for s in forgotten for a in ("--source", s)], "--method", "npo", "--accept-failed",
                  "--defer-erase", "--verify", "exact", "-w", ws))
    request, n, _, method, parent, child = FORGOT.search(proc.stdout).groups()
    assert (method, parent, int(n)) == ("npo", model, 8)
    cert = json.loads(next((ws / "reports" / f"r{request}" / child).glob("certificate.json")).read_text())
    m = cert["metrics"]
    assert cert["task"] == "causal_lm"
    # The original memorised the two people; the retrained model never saw them; NPO removed the answers while
    # the other people's answers held.
    assert m["original"]["forget_accuracy"] >= 90 and m["reference"]["forget_accuracy"] <= 30
    assert m["unlearned"]["forget_accuracy"] <= 30
    assert m["unlearned"]["retain_accuracy"] >= 0.9 * m["original"]["retain_accuracy"]
    assert m["original"]["forget_quality"] < m["unlearned"]["forget_quality"]
    assert m["original"]["verbmem"] > m["unlearned"]["verbmem"]
    assert m["original"]["privleak"] < -50  # the original still tells the forget people from unseen ones
    u = m["unlearned"]
    assert 0 <= u["forget_quality"] <= 1 and 0 < u["model_utility"] <= 1  # a KS p-value; a harmonic mean
    assert 0 <= u["verbmem"] <= 100 and 0 <= u["mia_minkpp"] <= 100 and math.isfinite(u["privleak"])
    assert "forget quality (KS p)" in (ws / "reports" / f"r{request}" / child / "certificate.md").read_text()
    # the same questions with the answers in other words: the original still knows the paraphrased facts
    para = cert["robustness"]["paraphrased"]
    assert para["records"] == 8 and para["figures"]["membership_auc"]["original"] > 60  # 72.7 measured; 50 = unseen
    assert "paraphrased" in (ws / "reports" / f"r{request}" / child / "certificate.md").read_text()
    again = run("verify", child, "-w", ws)
    assert again.returncode == (1 if cert["verdict"] == "failed" else 0) and "Traceback" not in again.stderr
    assert "forget quality" in again.stdout and "verbatim memorisation" in again.stdout
