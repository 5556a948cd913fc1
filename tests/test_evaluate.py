"""`disgorge families` (what a recipe's [model] family can name) and `disgorge evaluate` (any model's figures)."""

from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest

from disgorge import Workspace, evaluate_model
from disgorge.errors import InvalidRequest
from disgorge.evidence.probes import workspace_probes
from disgorge.models.describe import describe_families
from disgorge.models.families import CNNConfig, MLPConfig


def test_families_list_every_family_with_its_real_defaults() -> None:
    found = {(d["task"], d["family"]): d for d in describe_families()}
    assert set(found) == {("classification", "linear"), ("classification", "mlp"), ("classification", "cnn"),
                          ("causal_lm", "gpt2"), ("causal_lm", "pretrained"), ("text_classification", "pretrained")}
    defaults = {p["name"]: p["default"] for p in found["classification", "mlp"]["params"]}
    assert defaults == {"hidden": list(MLPConfig().hidden), "dropout": MLPConfig().dropout}
    cnn = {p["name"]: p["default"] for p in found["classification", "cnn"]["params"]}
    assert cnn["channels"] == list(CNNConfig().channels) and cnn["hidden"] == CNNConfig().hidden
    assert found["classification", "linear"]["params"] == [] and found["causal_lm", "gpt2"]["summary"]


def test_families_on_the_command_line() -> None:
    from typer.testing import CliRunner

    from disgorge.cli import app

    done = CliRunner().invoke(app, ["families", "--json"])
    assert done.exit_code == 0
    assert json.loads(done.stdout) == json.loads(json.dumps(describe_families()))


def test_evaluate_gives_the_figures_training_and_verification_use(backdoor_ws: Workspace, trained_id: str) -> None:
    row = backdoor_ws.ledger.model(trained_id)
    figures = evaluate_model(backdoor_ws, trained_id)
    assert figures["train"]["records"] == len(row.records) and figures["test"]["records"] == len(
        backdoor_ws.test_ids())
    assert figures["train"]["accuracy"] == pytest.approx(row.info["accuracy"]["train"], abs=0.01)
    assert figures["test"]["accuracy"] == pytest.approx(row.info["accuracy"]["test"], abs=0.01)
    assert figures["train"]["loss"] < figures["test"]["loss"]  # it fits what it saw better than what it did not
    model, _, task = backdoor_ws.load_model(trained_id)
    test = backdoor_ws.dataset(task, backdoor_ws.test_ids())
    probe = workspace_probes(backdoor_ws)[0]
    assert figures["probes"][probe.name] == pytest.approx(probe.measure(model, task, test), abs=1e-3)
    assert figures["probes"][probe.name] > 50  # the planted backdoor works on the original
    assert set(evaluate_model(backdoor_ws, trained_id, splits=["test"])) == {"test", "probes"}
    with pytest.raises(InvalidRequest, match="unknown split"):
        evaluate_model(backdoor_ws, trained_id, splits=["validation"])


def test_evaluate_on_the_command_line(backdoor_ws: Workspace, trained_id: str) -> None:
    expected = evaluate_model(backdoor_ws, trained_id)
    root = str(backdoor_ws.root)
    backdoor_ws.close()
    env = {k: v for k, v in os.environ.items() if not k.startswith("DISGORGE_")} | {"DISGORGE_PROGRESS": "0"}

    def cli(*args: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run([sys.executable, "-m", "disgorge.cli", *args], env=env, capture_output=True, text=True,
                              timeout=600, check=False)

    done = cli("evaluate", trained_id, "--workspace", root, "--json")
    assert done.returncode == 0, done.stderr
    assert json.loads(done.stdout) == expected
    bad = cli("evaluate", "m999", "--workspace", root)
    assert bad.returncode == 2 and len(bad.stderr.strip().splitlines()) == 1 and "m999" in bad.stderr
