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
from disgorge.methods.base import Reading


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
    assert rule.sides == {"effect": 1}  # the backdoor's attack success starts above its base rate
    original, _, _ = ws.load_model(trained_id)
    far = rule(original)
    assert far is not None and far.done is None and far.past is None and far.score > 1
    retain = ws.ledger.model(trained_id).records - ws.select(sources=["contributor-07"])
    reference, _ = ensure_reference(ws, ws.ledger.model(trained_id), retain)
    near = rule(reference)
    assert near is not None and near.score <= 1 and near.past is None
    assert near.done.startswith("the decisive figures reached their held-out targets")
    assert "effect" in near.done and "held-out accuracy" in near.done


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
    plain = whole.report_["stopping"]
    assert plain["stopped"] == "done" and plain["steps"] == plain["budget_steps"]
    # two epochs of this small retain set are under min_steps (100): under a rule the budget is raised to whole
    # epochs covering it, and min_steps = 0 keeps the method's own
    assert plain["budget_steps"] < 100 <= budget < plain["budget_steps"] + plain["budget_steps"] // 2 + 1
    own = get_method("grad_diff", epochs=2, checks=4, min_steps=0)
    own.unlearn(model, done)
    assert own.report_["stopping"]["budget_steps"] == plain["budget_steps"]

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


def _loss_rule(task, forget, target: float, limit: float):
    """A rule on the forget set's mean loss, which starts below ``target``: above ``target + limit`` is past it."""

    def rule(model):
        loss = float(task.evaluate(model, forget)["loss"].mean())
        gap = (loss - target) / limit
        if gap > 1:
            return Reading(gap, past=f"loss {loss:.2f} went past its target {target:.2f}")
        return Reading(abs(gap), done=f"loss {loss:.2f} at its target" if gap >= -1 else None)

    return rule


def test_a_run_that_goes_past_its_target_goes_back_and_approaches_it_again(backdoor_ws, trained_id):
    """A dose that overshoots at the first check: the run returns to the closest state it measured, checks more
    densely, and ends nearer the target than the whole budget (or any first-check stop) would leave it."""
    model, request, _ = poisoner_request(backdoor_ws, trained_id)
    task, forget = request.task, request.forget
    start = float(task.evaluate(model, forget)["loss"].mean())
    options = {"epochs": 2, "checks": 2, "lr": 0.05, "max_retain_drop": 100.0}
    whole = get_method("grad_diff", stop="budget", **options)
    ended = float(task.evaluate(whole.unlearn(model, request), forget)["loss"].mean())
    target, limit = start + 0.1 * (ended - start), 0.05 * (ended - start)

    method = get_method("grad_diff", **options)
    out = method.unlearn(model, dataclasses.replace(request, stop_rule=_loss_rule(task, forget, target, limit)))
    stop = method.report_["stopping"]
    assert stop["returns"] >= 1 and stop["stopped"] in ("target", "past")
    final = float(task.evaluate(out, forget)["loss"].mean())
    assert abs(final - target) < 0.5 * abs(ended - target)
    if stop["stopped"] == "target":
        assert abs(final - target) <= limit
    else:
        assert "went past" in stop["why"] and stop["kept_step"] is not None


def test_a_rule_that_only_ever_goes_past_keeps_the_closest_state(backdoor_ws, trained_id):
    """Every check past the target: after its returns the run ends on the closest state it measured (the original
    weights here, as no step stays short of the target), and says so."""
    model, request, _ = poisoner_request(backdoor_ws, trained_id)
    task, forget = request.task, request.forget
    start = float(task.evaluate(model, forget)["loss"].mean())
    rule = _loss_rule(task, forget, start, 1e-9)
    method = get_method("grad_diff", epochs=1, checks=4, lr=0.05, max_retain_drop=100.0)
    out = method.unlearn(model, dataclasses.replace(request, stop_rule=rule))
    stop = method.report_["stopping"]
    assert stop["stopped"] == "past" and stop["returns"] == 4 and stop["kept_step"] == 0
    assert all(a.equal(b) for a, b in zip(model.state_dict().values(), out.state_dict().values(), strict=True))


def _membership(task, model, forget, test) -> float:
    from disgorge.evaluate.metrics import mia_auc

    key = task.figures.membership
    return mia_auc(task.evaluate(model, forget)[key], task.evaluate(model, test)[key])


def test_a_one_person_sized_language_model_request_at_defaults_ends_near_its_target_not_beyond(people_mini):
    """16 memorised answers: npo's default budget drives membership AUC far below 50 (the answers become
    recognisable as never seen); stopping by evidence ends it much nearer 50, in fewer steps."""
    from disgorge.evidence.stopping import rule_for
    from disgorge.methods import UnlearnRequest

    p = people_mini
    rule = rule_for(p.task, p.model, p.forget, p.test, p.test, p.test, purpose="privacy", retain=p.retain)
    assert rule is not None and rule.sides["membership"] == 1
    request = UnlearnRequest(task=p.task, forget=p.forget, retain=p.retain, train=p.recipe.train,
                             data_info=p.info, seed=0, stop_rule=rule)
    whole = get_method("npo", stop="budget")
    beyond = _membership(p.task, whole.unlearn(p.model, request), p.forget, p.test)
    assert beyond < 40
    method = get_method("npo")
    near = _membership(p.task, method.unlearn(p.model, request), p.forget, p.test)
    stop = method.report_["stopping"]
    assert stop["stopped"] in ("target", "past") and stop["steps"] < stop["budget_steps"]
    assert abs(near - 50) < 0.5 * abs(beyond - 50)
