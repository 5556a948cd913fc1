"""The command line for people and scripts: --json, --version, status, records, methods NAME, recipe templates,
verbosity anywhere, flags shown as flags, names never read as markup, and fast start for commands that only read."""

from __future__ import annotations

import dataclasses
import json
import os
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

from disgorge import Recipe, __version__, forget, get_method, train
from disgorge.cli import _parse_ids, _ranges, _split_verbosity
from disgorge.errors import InvalidRequest
from disgorge.evaluate import accuracy
from disgorge.methods.registry import describe_methods
from disgorge.spec import RECIPE_TEMPLATES
from disgorge.tasks import check_recipe

LIGHT = [["--help"], ["--version"], ["sources"], ["models", "--all"], ["requests"], ["status"], ["records"],
         ["methods"], ["methods", "npo"], ["models", "--help"]]


def cli(*args: Any, importtime: bool = False) -> subprocess.CompletedProcess[str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("DISGORGE_")}
    env.update(DISGORGE_PROGRESS="0", COLUMNS="250", PYTHONIOENCODING="utf-8")
    flags = ["-X", "importtime"] if importtime else []
    return subprocess.run([sys.executable, *flags, "-m", "disgorge.cli", *map(str, args)], capture_output=True,
                          text=True, encoding="utf-8", env=env, timeout=300, check=False)


def _imported(log: str) -> set[str]:
    """Module names in Python's `-X importtime` log."""
    return {line.rsplit("|", 1)[-1].strip() for line in log.splitlines() if line.startswith("import time")}


def _heavy(modules: set[str]) -> set[str]:
    return {m for m in modules if m.split(".")[0] in ("torch", "sklearn")}


@pytest.fixture
def ws_path(backdoor_ws) -> Path:
    """The root of a private copy of the trained digits-backdoor workspace (closed, for subprocesses)."""
    root = backdoor_ws.root
    backdoor_ws.close()
    return root


@pytest.mark.parametrize("args", LIGHT, ids=" ".join)
def test_commands_that_only_read_import_neither_torch_nor_sklearn(ws_path, args):
    """Python's import log of these commands names neither torch nor scikit-learn: they start without them."""
    proc = cli(*args, *(["-w", ws_path] if args[0] in ("sources", "models", "requests", "status", "records")
                        and "--help" not in args else []), importtime=True)
    assert proc.returncode == 0, proc.stderr[-2000:]
    imported = _imported(proc.stderr)
    assert "disgorge.workspace" in imported  # the log covers the package's own imports
    assert not _heavy(imported)


def test_version_help_flags_and_completion():
    """--version prints the version; help shows flags as flags (no value placeholder) and offers completion."""
    assert cli("--version").stdout.strip() == f"disgorge {__version__}"
    root_help = cli("--help").stdout
    assert "--install-completion" in root_help and "--show-completion" in root_help
    models_help = cli("models", "--help").stdout
    assert "--all" in models_help and "--json" in models_help and "<bool>" not in models_help


def test_verbosity_flags_are_taken_from_anywhere():
    """-v / -q may follow the command; a `--` ends option parsing and keeps what follows."""
    assert _split_verbosity(["models", "-w", "x", "-v"]) == (["models", "-w", "x"], 20)
    assert _split_verbosity(["-q", "status"]) == (["status"], 40)
    assert _split_verbosity(["forget", "--reason", "x", "--", "-v"]) == (["forget", "--reason", "x", "--", "-v"],
                                                                         None)


def test_status_and_records_as_json(ws_path):
    """status counts what the ledger holds; records lists ids that `forget --records` reads back."""
    status = json.loads(cli("status", "-w", ws_path, "--json").stdout)
    assert status["sources"] == 21 and status["records"]["active"] == {"total": 1797, "train": 1437, "test": 360}
    assert status["models"] == {"trained": {"total": 1, "active": 1}} and status["pending_erasures"] == []
    assert status["disk_bytes"] > (ws_path / ".disgorge" / "ledger.sqlite").stat().st_size
    rows = json.loads(cli("records", "--source", "contributor-07", "-w", ws_path, "--json").stdout)
    assert len(rows) == 72 and {r["source"] for r in rows} == {"contributor-07"}
    ids = [r["id"] for r in rows]
    text = cli("records", "--source", "contributor-07", "-w", ws_path).stdout
    shown = next(line for line in text.splitlines() if "contributor-07" in line).split("│")[-2].strip()
    assert _parse_ids(shown) == ids
    held = json.loads(cli("records", "--split", "test", "--state", "active", "-w", ws_path, "--json").stdout)
    assert len(held) == 360 and {r["source"] for r in held} == {"digits-heldout"}


def test_status_lists_a_pending_deferred_erasure(backdoor_ws):
    """A request made with --defer-erase is pending until `disgorge erase`; status says so."""
    result = forget(backdoor_ws, sources=["contributor-07"], method="ssd", erase=False, accept_failed=True)
    status = backdoor_ws.status()
    assert status["pending_erasures"] == [result.request_id]
    assert status["records"]["held"]["total"] == 72 and status["requests"] == {"total": 1, "held": 1, "erased": 0}
    assert status["models"]["unlearned"] == {"total": 1, "active": 1}
    assert status["models"]["trained"] == {"total": 1, "superseded": 1}


def test_ranges_round_trip():
    """Id ranges are written the way --records reads them."""
    ids = [1, 2, 3, 7, 9, 10, 11, 40]
    assert _ranges(ids) == "1-3,7,9-11,40" and _parse_ids(_ranges(ids)) == ids
    assert _ranges([]) == ""


def test_methods_catalogue_matches_the_registry():
    """`disgorge methods` reads a catalogue file so it needs no torch; it must say what the registry holds
    (run `make catalogue` after changing a method)."""
    assert json.loads(cli("methods", "--json").stdout) == describe_methods()


def test_methods_name_shows_options_with_types_defaults_and_ranges():
    """One method's options, as the method's Config defines them."""
    shown = json.loads(cli("methods", "npo", "--json").stdout)
    config = get_method("npo").config
    assert [o["name"] for o in shown["options"]] == [f.name for f in dataclasses.fields(config)]
    by = {o["name"]: o for o in shown["options"]}
    assert by["lr"] == {**by["lr"], "type": "float", "default": config.lr, "positive": True}
    assert by["forget_span"]["choices"] == ["answer", "key"] and by["max_steps"]["type"] == "int | None"
    assert "> 0" in cli("methods", "npo").stdout
    wrong = cli("methods", "npp")
    assert wrong.returncode == 2 and "did you mean npo" in wrong.stderr


@pytest.mark.parametrize("task", sorted(RECIPE_TEMPLATES))
def test_recipe_templates_are_valid_commented_recipes(task):
    """Each template is a commented recipe that reads and passes the registries' checks."""
    text = cli("recipe", "--template", task).stdout
    assert text == RECIPE_TEMPLATES[task] and text.count("#") > 10
    assert check_recipe(Recipe.from_toml(text)).name == task


def test_train_records_and_prints_accuracy(backdoor_ws):
    """Training measures the model on its training records and the held-out split; the card carries it."""
    row = backdoor_ws.ledger.models()[0]
    again = train(backdoor_ws, Recipe.from_toml(row.recipe))
    acc = again.info["accuracy"]
    model, _, task = backdoor_ws.load_model(again.id)

    def measured(ids):
        return round(accuracy(task.evaluate(model, backdoor_ws.dataset(task, ids))["correct"]), 2)

    assert acc == {"figure": "accuracy", "train": measured(again.records), "test": measured(backdoor_ws.test_ids())}
    assert acc["train"] > 99 and 90 < acc["test"] < acc["train"]
    assert f"train: {acc['train']}" in (backdoor_ws.model_dir(again.id) / "README.md").read_text()


def test_names_are_printed_as_text_not_markup(tmp_path):
    """A source named like rich markup is printed as it is, and the command does not fail."""
    csv = tmp_path / "odd.csv"
    csv.write_text("a,b,label\n0.1,0.2,1\n0.3,0.4,0\n", encoding="utf-8")
    assert cli("init", tmp_path / "new").returncode == 0
    assert cli("ingest", csv, "--source", "x[/]", "--license", "CC0-1.0", "-w", tmp_path / "new").returncode == 0
    proc = cli("sources", "-w", tmp_path / "new")
    assert proc.returncode == 0 and "x[/]" in proc.stdout, proc.stderr
    assert json.loads(cli("sources", "-w", tmp_path / "new", "--json").stdout)[0]["source"] == "x[/]"


def test_report_and_certificate_check_from_the_command_line(backdoor_ws):
    """`disgorge report` writes the HTML report of a request; `disgorge certificate check` says the certificate is
    genuine without loading torch, and that a tampered copy is not (exit 1)."""
    result = forget(backdoor_ws, sources=["contributor-07"], method="grad_diff", reason="consent withdrawn",
                    accept_failed=True)
    root, cert_file = backdoor_ws.root, Path(next(iter(result.paths.values()))["json"])
    backdoor_ws.close()
    report = json.loads(cli("report", str(result.request_id), "-w", root, "--json").stdout)["report"]
    html = Path(report).read_text(encoding="utf-8")
    assert Path(report).parent == root / "reports" / f"r{result.request_id}" and "contributor-07" in html
    proc = cli("certificate", "check", cert_file, "-w", root, "--json", importtime=True)
    checked = json.loads(proc.stdout)
    assert proc.returncode == 0 and checked["valid"], checked
    assert {"signature", "workspace_key", "weights:child"} <= {c["name"] for c in checked["checks"]}
    imported = _imported(proc.stderr)
    assert "disgorge.evidence.check" in imported and not _heavy(imported)
    tampered = json.loads(cert_file.read_text(encoding="utf-8"))
    tampered["passed"] = not tampered["passed"]
    forged = root / "forged.json"
    forged.write_text(json.dumps(tampered), encoding="utf-8")
    proc = cli("certificate", "check", forged)
    assert proc.returncode == 1 and "NOT VALID" in proc.stdout and "signature" in proc.stdout


def test_bad_selectors_are_refused_and_disk_use_counts_only_the_workspace(backdoor_ws):
    """An unknown record state or a backwards id range is a one-line error; files a user keeps beside the
    workspace's own folders are not its disk use."""
    with pytest.raises(InvalidRequest, match="record state must be one of active, held, erased"):
        backdoor_ws.ledger.record_index(states=["bogus"])
    with pytest.raises(InvalidRequest, match="runs backwards; write it as 1-3"):
        _parse_ids("3-1")
    before = backdoor_ws.status()["disk_bytes"]
    (backdoor_ws.root / "notes.bin").write_bytes(b"\0" * 1_000_000)
    assert backdoor_ws.status()["disk_bytes"] == before
