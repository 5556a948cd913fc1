"""``--method auto``: candidates in the bench's order for the most similar request, an early stop once one passes
with margin, and the bench's replay of what auto would have chosen and paid."""

from __future__ import annotations

import math

import pytest

from disgorge import erasure, forget
from disgorge.bench import auto_record, auto_row
from disgorge.erasure import auto_candidates, bench_order
from disgorge.methods import METHODS

RECORD = {"scenarios": [
    {"scenario": "a", "task": "classification", "purpose": "privacy", "forget_share": 0.1, "order": ["scrub", "ssd"]},
    {"scenario": "b", "task": "classification", "purpose": "privacy", "forget_share": 0.01,
     "order": ["finetune", "npo"]},
    {"scenario": "c", "task": "classification", "purpose": "poison", "forget_share": 0.02,
     "order": ["l1_sparse", "grad_diff"]},
    {"scenario": "d", "task": "causal_lm", "purpose": "privacy", "forget_share": 0.1, "order": ["simnpo", "rmu"]},
]}


def test_bench_order_takes_the_most_similar_request():
    """Same task first, then same purpose, then the nearest forget share on a log scale."""
    assert bench_order("classification", "privacy", 0.08, RECORD) == ["scrub", "ssd"]
    assert bench_order("classification", "privacy", 0.005, RECORD) == ["finetune", "npo"]
    assert bench_order("classification", "poison", 0.5, RECORD) == ["l1_sparse", "grad_diff"]
    assert bench_order("classification", "bias", 0.012, RECORD) == ["finetune", "npo"]  # no bias case: by share
    assert bench_order("causal_lm", "poison", 0.01, RECORD) == ["simnpo", "rmu"]
    assert bench_order("tabular", "privacy", 0.1, RECORD) == []


def test_auto_candidates_put_the_record_first_and_keep_every_method_once():
    names = [n for n in METHODS.names() if n != "retrain"]
    shipped = bench_order("classification", "poison", 0.04)
    assert shipped, "the package ships a bench record"
    got = auto_candidates("classification", "poison", 0.04)
    assert got[:len(shipped)] == [m for m in shipped if m in names]
    assert sorted(got) == sorted(names) and "retrain" not in got


def _cell(seconds, verify, verdict, score):
    return {"seconds": seconds, "verify_seconds": verify, "verdicts": {"exact": verdict, "heldout": verdict},
            "scores": {"exact": score, "heldout": score}, "figures": {"ua": 1.0, "ra": 2.0, "ta": 3.0,
                                                                     "mia_efficacy": 4.0, "effect": 5.0}}


def test_auto_row_replays_the_walk_and_counts_every_candidate(monkeypatch):
    """Seed 0: the first candidate fails, the second passes with margin: auto stops there and pays for both. Seed 1:
    none passes with margin: every candidate is paid for and the best verdict and score is kept."""
    monkeypatch.setattr("disgorge.bench.auto_candidates", lambda *a: ["grad_diff", "scrub", "ssd"])
    reference = {"seconds": 10.0, "figures": {"ua": 0.0, "ra": 2.0, "ta": 3.0, "mia_efficacy": 4.0, "effect": 0.0}}
    per_seed = [
        {"reference": reference, "grad_diff": _cell(1.0, 0.5, "failed", 3.0), "scrub": _cell(2.0, 0.5, "passed", 0.2),
         "ssd": _cell(0.1, 0.1, "passed", 0.1)},
        {"reference": reference, "grad_diff": _cell(1.0, 1.0, "passed", 0.9), "scrub": _cell(2.0, 1.0, "failed", 2.0),
         "ssd": {"refused": "cannot serve"}},
    ]
    row = auto_row("digits-backdoor", per_seed, ["grad_diff", "scrub", "ssd"], 0.04)
    assert row["auto_chosen"] == ["scrub", "grad_diff"]
    assert row["auto_tried"] == 2.0  # seed 0 stopped after two; seed 1 tried two (ssd refused, costs nothing)
    assert row["time_ratio"] == pytest.approx(((1.5 + 2.5) / 10 + (2.0 + 3.0) / 10) / 2, abs=1e-4)
    assert row["heldout_passed"] == 1.0
    assert row["avg_gap"] == pytest.approx(1.0 / 4)  # UA off by 1 of the four gap figures (effect is not one)
    assert auto_row("digits-backdoor", per_seed, ["grad_diff"], 0.04) is None  # one candidate: nothing to choose


def test_auto_record_ranks_by_passes_then_gap_then_time():
    rows = [{"method": "original", "avg_gap": 9.0},
            {"method": "grad_diff", "heldout_passed": 0.5, "exact_passed": 1.0, "avg_gap": 1.0, "time_ratio": 0.1},
            {"method": "scrub", "heldout_passed": 1.0, "exact_passed": 0.0, "avg_gap": 3.0, "time_ratio": 0.1},
            {"method": "ssd", "heldout_passed": 0.5, "exact_passed": 1.0, "avg_gap": 1.0, "time_ratio": 0.01},
            {"method": "newton", "refused": "no"}, {"method": "retrain", "avg_gap": 0.0, "heldout_passed": 1.0},
            {"method": "auto", "avg_gap": 0.5, "heldout_passed": 1.0}]
    record = auto_record([{"scenario": "mnist", "task": "classification", "forgotten": 36, "training_records": 3600,
                           "rows": rows}])
    (case,) = record["scenarios"]
    assert case == {"scenario": "mnist", "task": "classification", "purpose": "privacy", "forget_share": 0.01,
                    "order": ["scrub", "ssd", "grad_diff"]}


def test_auto_stops_once_a_candidate_passes_with_margin(backdoor_ws, monkeypatch):
    """With any passing score counting as margin, auto keeps the first candidate that passes and tries no other."""
    monkeypatch.setattr(erasure, "AUTO_MARGIN", math.inf)
    monkeypatch.setattr(erasure, "auto_candidates", lambda *a: ["grad_diff", "scrub", "ssd"])
    result = forget(backdoor_ws, sources=["contributor-07"], method="auto", verify="exact")
    auto = result.certificates[0]["auto"]
    assert [t["method"] for t in auto["candidates"]] == ["grad_diff"]
    assert auto["order"] == ["grad_diff", "scrub", "ssd"] and auto["chosen"] == "grad_diff"
    assert auto["stopped"].startswith("grad_diff passed with margin")
    assert result.certificates[0]["passed"]


def test_the_small_request_target_counts_default_methods_and_auto_within_one_retraining():
    from disgorge.report.benchmarks import pass_target

    def result(*rows):
        return {"scenario": "people-forget01", "rows": [{"method": "original"}, {"method": "reference"}, *rows]}

    variant_only = result({"method": "idk[loss=dpo]", "heldout_passed": 1.0},
                          {"method": "retrain", "exact_passed": 1.0},
                          {"method": "auto", "heldout_passed": 1.0, "time_ratio": 0.4})
    assert "**missed**" in pass_target(variant_only)[0] and "passing: none" in pass_target(variant_only)[0]
    too_dear = result({"method": "npo", "exact_passed": 1.0}, {"method": "auto", "heldout_passed": 1.0,
                                                               "time_ratio": 1.3})
    assert "**missed**" in pass_target(too_dear)[0] and "passing: npo" in pass_target(too_dear)[0]
    met = result({"method": "npo", "exact_passed": 1.0}, {"method": "auto", "heldout_passed": 1.0,
                                                          "time_ratio": 0.6})
    assert "**met**" in pass_target(met)[0]
    assert pass_target({"scenario": "people", "rows": []}) == []
