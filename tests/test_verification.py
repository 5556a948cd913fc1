"""Evidence levels: reference-free verification trains nothing, yet the untouched or half-unlearned model never
passes; intervals cover the truth as often as they claim; ``auto`` picks the level by training time."""

from __future__ import annotations

import copy
import json

import numpy as np
import pytest
import torch
from scipy import stats

from disgorge import forget, verify
from disgorge.api import ingest_scenario, train
from disgorge.cli import main
from disgorge.erasure import VerificationFailed
from disgorge.errors import InvalidRequest
from disgorge.evaluate.intervals import Estimate, auc_statistic, bootstrap, proportion, proportion_difference
from disgorge.evidence.certificate import certify
from disgorge.evidence.judge import NoComparison, Thresholds, judge, verdict
from disgorge.evidence.probes import workspace_probes
from disgorge.scenarios import get_scenario
from disgorge.workspace import Workspace


def _references(ws: Workspace) -> list[str]:
    return [m.id for m in ws.ledger.models(kinds=("reference",), status=None)]


def test_heldout_forget_trains_no_reference_and_removes_the_backdoor(backdoor_ws, trained_id):
    """`--verify heldout` adds no model but the child, and judges the backdoor against its base rate."""
    ws = backdoor_ws
    result = forget(ws, sources=["contributor-07"], method="grad_diff", verify="heldout")
    (cert,) = result.certificates
    assert _references(ws) == []
    assert [m.id for m in ws.ledger.models(status=None)] == [trained_id, result.children[0].id]
    assert cert["evidence"] == "reference-free" and cert["level"] == "heldout"
    assert "reference" not in cert["models"] and "reference" not in cert["metrics"]
    assert cert["purpose"]["name"] == "poison" and cert["purpose"]["decisive"] == ["effect"]
    effect = cert["checks"]["effect"]
    # the target is the share of the same inputs without the trigger sent to the target label
    assert effect["original"] > 90 and effect["target"] < 10 and effect["figure"] < 10
    assert effect["interval"][0] <= effect["figure"] <= effect["interval"][1]
    assert cert["verdict"] == "passed" and cert["passed"]
    assert "No model was retrained" in cert["proves"] and cert["does_not_prove"]
    assert cert["seconds"]["retrain"] is None and cert["seconds"]["verification"] > 0
    robust = cert["robustness"]
    assert robust["relearn"]["records"]["attack"] >= 1 and "int4" in robust["quantized"]


def test_untouched_model_fails_at_both_levels(backdoor_ws, trained_id):
    """A 'method' that changed nothing keeps the original's distance on every decisive figure: it fails the
    reference-free level and the exact one (not only the 'changed' check)."""
    ws = backdoor_ws
    parent = ws.ledger.model(trained_id)
    model, _, task = ws.load_model(trained_id)
    ids = ws.select(sources=["contributor-07"])
    probes = workspace_probes(ws)
    for purpose in ("poison", "privacy"):
        cert = certify(ws, task=task, parent=parent, parent_model=model, child=parent, child_model=copy.deepcopy(model),
                       forget_ids=ids, request_id=1, method="none", config={}, probes=probes, purpose=purpose,
                       robust=False)
        assert cert["verdict"] == "failed" and not cert["passed"]
        assert not cert["checks"]["effect"]["passed"]  # the effect itself, not just the unchanged weights


def test_backdoor_left_in_fails_heldout(backdoor_ws, trained_id):
    """Fine-tuning on the retain set for a few steps changes the weights but leaves the backdoor: it fails."""
    ws = backdoor_ws
    result = forget(ws, sources=["contributor-07"], method="finetune", options={"max_steps": 2},
                    verify="heldout", erase=False, accept_failed=True)
    (cert,) = result.certificates
    assert cert["changed"]
    assert cert["metrics"]["unlearned"]["effect"] > 50
    assert cert["verdict"] == "failed" and not cert["checks"]["effect"]["passed"]


def test_failed_heldout_verdict_refuses_the_request(backdoor_ws, trained_id):
    """Without --accept-failed, a failing reference-free verdict erases nothing."""
    ws = backdoor_ws
    with pytest.raises(VerificationFailed, match="effect"):
        forget(ws, sources=["contributor-07"], method="finetune", options={"max_steps": 2}, verify="heldout")
    assert ws.ledger.tombstone_count() == 0 and ws.ledger.model(trained_id).status == "active"


def test_auto_uses_heldout_past_the_budget_and_exact_under_it(backdoor_ws, trained_id):
    ws = backdoor_ws
    assert ws.ledger.model(trained_id).seconds > 0
    cheap = forget(ws, sources=["contributor-07"], method="grad_diff", exact_budget=0.0, erase=False)
    assert cheap.certificates[0]["evidence"] == "reference-free" and _references(ws) == []
    # verifying the same child afterwards within a generous budget retrains the reference
    cert = verify(ws, cheap.children[0].id, level="auto", exact_budget=1e9)
    assert cert["evidence"] == "exact" and len(_references(ws)) == 1
    assert cert["checks"]["effect"]["target"] == cert["metrics"]["reference"]["effect"]


def test_classwise_request_without_heldout_of_that_class(tmp_path):
    """No held-out record of the forgotten class: heldout refuses in one line, auto retrains instead."""
    ws = Workspace.init(tmp_path / "ws")
    case = get_scenario("digits-classwise")
    for src in case.sources():  # the scenario's data, but its held-out 3s were never collected
        source = ws.ledger.add_source(src.name, src.license, src.origin, src.consent)
        ws.ledger.add_records(source, [r for r in src.records
                                       if r.split == "train" or int(np.asarray(r.fields["y"]).ravel()[0]) != 3])
    ws.ledger.set_meta("scenario", "digits-classwise")
    model = train(ws, case.recipe())
    ids = case.forget_ids(ws)
    with pytest.raises(NoComparison, match="class"):
        forget(ws, records=sorted(ids), method="grad_diff", verify="heldout")
    assert ws.ledger.model(model.id).status == "active"
    result = forget(ws, records=sorted(ids), method="grad_diff", exact_budget=0.0, erase=False)
    assert result.certificates[0]["evidence"] == "exact"
    ws.close()


def test_poison_purpose_needs_a_probe(tmp_path):
    """A purpose only a probe can judge is refused in a workspace without one."""
    ws = Workspace.init(tmp_path / "ws")
    case = get_scenario("digits-consent")  # declares no probe
    ingest_scenario(ws, "digits-consent")
    train(ws, case.recipe())
    with pytest.raises(InvalidRequest, match="effect probe"):
        forget(ws, sources=["contributor-07"], method="grad_diff", verify="heldout", purpose="poison")
    ws.close()


def _exit_code(args: list[str]) -> int:
    try:
        main(args)
    except SystemExit as exc:
        return exc.code or 0
    return 0


def test_cli_heldout_json_and_verify_level(backdoor_ws, capsys):
    root = str(backdoor_ws.root)
    backdoor_ws.close()
    assert _exit_code(["forget", "--source", "contributor-07", "--verify", "heldout", "--defer-erase", "--json",
                       "-w", root]) == 0
    data = json.loads(capsys.readouterr().out)
    (cert,) = data["certificates"]
    assert cert["evidence"] == "reference-free" and data["erased"] is False
    child = data["children"][0]["model"]
    assert _exit_code(["models", "--all", "--json", "-w", root]) == 0
    kinds = [m["kind"] for m in json.loads(capsys.readouterr().out)]
    assert kinds == ["trained", "unlearned"]  # no reference was trained
    assert _exit_code(["verify", child, "--level", "heldout", "-w", root]) == 0
    out = capsys.readouterr().out
    assert "reference-free evidence" in out and "proves:" in out and "relearn" in out
    assert _exit_code(["forget", "--source", "contributor-07", "--verify", "sometimes", "-w", root]) == 2
    assert "unknown verification level" in capsys.readouterr().err


def test_judge_closure_and_noise():
    """The limit is the larger of the noise and what is left after closing 90% of the original's distance; an
    original within noise of its target makes the figure indistinguishable."""
    t = Thresholds()
    target = Estimate(50.0, 50.0, 50.0)
    near = judge("membership", Estimate(52.0, 49.0, 55.0), Estimate(90.0, 88.0, 92.0), target, target, t)
    assert near["passed"] and near["limit"] == 4.0 and not near["indistinguishable"]  # 10% of 40
    far = judge("membership", Estimate(60.0, 58.0, 62.0), Estimate(90.0, 88.0, 92.0), target, target, t)
    assert not far["passed"]
    noisy = judge("membership", Estimate(56.0, 40.0, 70.0), Estimate(60.0, 45.0, 75.0), target, target, t)
    assert noisy["passed"] and noisy["indistinguishable"]
    assert verdict({"membership": noisy}) == "indistinguishable"
    assert verdict({"membership": near, "x": {"passed": True}}) == "passed"
    assert verdict({"membership": near, "changed": {"passed": False}}) == "failed"


@pytest.mark.parametrize("n", [30, 120])
def test_auc_interval_covers_the_true_auc(n):
    """Two normal samples whose true AUC is known: the 95% interval covers it in about 95% of draws."""
    shift = 0.8
    truth = stats.norm.cdf(shift / np.sqrt(2)) * 100
    rng = np.random.default_rng(n)
    covered = []
    for i in range(200):
        members, others = rng.normal(shift, 1, n), rng.normal(0, 1, 2 * n)
        e = bootstrap(auc_statistic, members, others, bounds=(0, 100), seed=i, resamples=400)
        covered.append(e.low <= truth <= e.high)
    assert 0.88 <= np.mean(covered) <= 0.99


@pytest.mark.parametrize(("n", "p"), [(80, 0.7), (6, 0.9)])
def test_share_intervals_cover_the_truth(n, p):
    """Accuracy parity (a difference of shares) and an effect (one share) cover the truth about 95% of the time,
    also on six records, where a bootstrap would call six correct answers out of six certain."""
    rng = np.random.default_rng(n)
    diff, one = [], []
    for _ in range(400):
        a, b = (rng.random(n) < p).astype(float), (rng.random(200) < 0.6).astype(float)
        e = proportion_difference(a, b)
        diff.append(e.low <= (p - 0.6) * 100 <= e.high)
        s = proportion(a)
        one.append(s.low <= p * 100 <= s.high)
    assert 0.90 <= np.mean(diff) <= 0.995 and 0.90 <= np.mean(one) <= 0.995


def test_share_of_two_out_of_two_is_not_certain():
    assert proportion(np.ones(2)).low < 40
    e = proportion_difference(np.ones(2), (np.arange(100) < 97).astype(float))
    assert e.low < -40 and e.high > 0


def test_tiny_sample_gets_the_whole_range():
    e = bootstrap(auc_statistic, np.array([100.0]), np.arange(10.0), bounds=(0, 100))
    assert (e.low, e.high) == (0, 100) and e.value == 100.0


def test_relearn_attack_leaves_the_stored_model_untouched(backdoor_ws, trained_id):
    ws = backdoor_ws
    result = forget(ws, sources=["contributor-07"], method="grad_diff", verify="heldout")
    child = result.children[0].id
    before = {k: v.clone() for k, v in ws.load_model(child)[0].state_dict().items()}
    assert result.certificates[0]["robustness"]["relearn"]["figures"]["effect"]["after"] is not None
    after = ws.load_model(child)[0].state_dict()
    assert all(torch.equal(before[k], after[k]) for k in before)
    assert ws.ledger.model(child).weights_sha256 == result.certificates[0]["models"]["child"]["sha256"]
