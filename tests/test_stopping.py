"""Stopping by evidence: iterative methods stop once the request's decisive figures reach their held-out targets,
only while utility holds, and the certificate says why they stopped."""

from __future__ import annotations

import dataclasses

import pytest

from conftest import poisoner_request
from disgorge import forget
from disgorge.erasure import ensure_reference
from disgorge.evidence.certificate import render_markdown
from disgorge.evidence.probes import workspace_probes
from disgorge.evidence.stopping import target_rule
from disgorge.methods import get_method


def _rule(ws, model_id):
    model, _, task = ws.load_model(model_id)
    ids = ws.select(sources=["contributor-07"])
    return target_rule(ws, task, model, ws.ledger.model(model_id).records & ids, purpose="poison",
                       probes=workspace_probes(ws))


def test_rule_does_not_stop_the_original_and_stops_a_retrained_model(backdoor_ws, trained_id):
    """The rule is the held-out judge on samples: the poisoned original is far from its targets (attack success
    far above its base rate), a model retrained without the poisoner is at them."""
    ws = backdoor_ws
    rule = _rule(ws, trained_id)
    assert rule is not None and list(rule.limits) == ["effect"]
    original, _, _ = ws.load_model(trained_id)
    assert rule(original) is None
    retain = ws.ledger.model(trained_id).records - ws.select(sources=["contributor-07"])
    reference, _ = ensure_reference(ws, ws.ledger.model(trained_id), retain)
    why = rule(reference)
    assert why is not None and why.startswith("the decisive figures reached their held-out targets")
    assert "effect" in why and "held-out accuracy" in why


def test_a_rule_that_fires_stops_the_loop_at_its_first_check_only_while_utility_holds(backdoor_ws, trained_id):
    """A rule that always says done stops a guarded method at its first check; with ``stop = "budget"`` the whole
    budget runs; a rule that fires while the retain guard fails does not stop it."""
    model, request, _ = poisoner_request(backdoor_ws, trained_id)
    done = dataclasses.replace(request, stop_rule=lambda m: "done by test")
    method = get_method("grad_diff", epochs=2, checks=4)
    method.unlearn(model, done)
    stop = method.report_["stopping"]
    budget = stop["budget_steps"]
    assert stop["stopped"] == "target" and stop["why"] == "done by test"
    assert stop["steps"] == -(-budget // 4) < budget

    whole = get_method("grad_diff", epochs=2, checks=4, stop="budget")
    whole.unlearn(model, done)
    assert whole.report_["stopping"]["stopped"] == "done" and whole.report_["stopping"]["steps"] == budget

    # an ascent so strong it wrecks retain accuracy: the rule's "done" is not taken while the guard fails
    wrecked = get_method("grad_diff", epochs=2, checks=4, lr=0.5, beta=0.0, forget_loss_cap=1000.0)
    wrecked.unlearn(model, done)
    assert wrecked.report_["stopping"]["stopped"] != "target"


def test_retrain_ignores_the_rule(backdoor_ws, trained_id):
    """A fresh network starts at the targets; retraining always runs the recipe's schedule."""
    model, request, _ = poisoner_request(backdoor_ws, trained_id)
    method = get_method("retrain", max_steps=30)
    method.unlearn(model, dataclasses.replace(request, stop_rule=lambda m: "done by test"))
    assert method.report_["stopping"]["stopped"] == "max_steps"
    with pytest.raises(Exception, match="stop"):
        get_method("retrain", stop="target")


def test_forget_stops_by_evidence_and_the_certificate_says_why(backdoor_ws, trained_id):
    """At defaults, grad_diff on the poisoner stops before its budget because the backdoor is gone, passes its
    certificate, and the certificate (JSON and markdown) says after how many steps and why."""
    result = forget(backdoor_ws, sources=["contributor-07"], method="grad_diff", verify="heldout")
    (cert,) = result.certificates
    stop = cert["method_report"]["stopping"]
    assert stop["stopped"] == "target" and stop["steps"] < stop["budget_steps"]
    assert "effect" in stop["why"]
    assert cert["passed"]
    assert f"Stopped after {stop['steps']} steps of a budget of {stop['budget_steps']}" in render_markdown(cert)
