"""Unlearning methods on a language model: the people-mini model forgets its last 10% of people while answering the
rest, with full weights or LoRA adapters, and methods that need text or hidden states refuse other tasks."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np
import pytest
import torch
from torch import nn

from disgorge import get_method
from disgorge.errors import InvalidRequest
from disgorge.methods import ConfigError, UnlearnRequest
from disgorge.methods.pdu import dual_step
from disgorge.tasks import ClassificationTask, RecordDataset, get_task
from disgorge.tasks.causal_lm import texts, words

REFUSAL_WORDS = {"know", "sure", "idea", "answer", "say"}


@dataclass
class Problem:
    """The trained people-mini model, the request to forget its forget people, and the original's accuracies."""

    model: nn.Module
    request: UnlearnRequest
    forget_accuracy: float
    retain_accuracy: float


def _accuracy(task: Any, model: nn.Module, data: RecordDataset) -> float:
    return float(task.evaluate(model, data)["correct"].mean() * 100)


@pytest.fixture(scope="module")
def problem(people_mini: Any) -> Problem:
    """The session's people-mini model (see conftest.py) and the request for its forget people."""
    p = people_mini
    request = UnlearnRequest(task=p.task, forget=p.forget, retain=p.retain, train=p.recipe.train, data_info=p.info,
                             seed=0)
    problem = Problem(p.model, request, _accuracy(p.task, p.model, p.forget), _accuracy(p.task, p.model, p.retain))
    assert problem.forget_accuracy >= 95 and problem.retain_accuracy >= 95
    return problem


def _state(model: nn.Module) -> dict[str, torch.Tensor]:
    return {k: v.detach().clone() for k, v in model.state_dict().items()}


def _same(a: dict[str, torch.Tensor], b: dict[str, torch.Tensor]) -> bool:
    return a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)


# Options beyond the defaults are the ones a method needs on this scenario (chosen on forget/retain, never on the
# held-out people): gradient_ascent's retain guard rolls its default run all the way back to the original weights,
# so it stops earlier; rmu at its default learning rate and epochs barely moves the forget answers.
CASES = [
    pytest.param("npo", {}, id="npo"),
    pytest.param("simnpo", {}, id="simnpo"),
    pytest.param("grad_diff", {}, id="grad_diff"),
    pytest.param("gradient_ascent", {"stop_accuracy": 80.0}, id="gradient_ascent"),
    pytest.param("rmu", {"epochs": 5}, id="rmu"),
    pytest.param("idk", {"loss": "nll"}, id="idk-nll"),
    pytest.param("idk", {"loss": "dpo"}, id="idk-dpo"),
    pytest.param("undial", {}, id="undial"),
    pytest.param("wga", {}, id="wga"),
    pytest.param("flat", {}, id="flat"),
    pytest.param("pdu", {}, id="pdu"),
]


@pytest.mark.parametrize(("name", "options"), CASES)
def test_method_forgets_people_and_keeps_the_rest(problem, name, options):
    """Each LM unlearning method drops forget answer accuracy by at least 50 points and keeps at least 85% of the
    original retain answer accuracy, returning new weights and leaving the input model untouched."""
    model, request = problem.model, problem.request
    before = _state(model)
    method = get_method(name, **options)
    out = method.unlearn(model, request)
    assert _same(_state(model), before), f"{name} changed its input model"
    assert out is not model and not _same(_state(out), before)
    forget = _accuracy(request.task, out, request.forget)
    retain = _accuracy(request.task, out, request.retain)
    assert forget <= problem.forget_accuracy - 50, f"{name}: forget accuracy {problem.forget_accuracy} -> {forget}"
    assert retain >= 0.85 * problem.retain_accuracy, f"{name}: retain accuracy {problem.retain_accuracy} -> {retain}"
    assert method.fit_result_.steps > 0 and not out.training


def test_finetune_keeps_retain_answers(problem):
    """finetune sees only the retain set: it changes the weights and keeps retain answer accuracy (how much it
    forgets is not promised)."""
    model, request = problem.model, problem.request
    before = _state(model)
    out = get_method("finetune").unlearn(model, request)
    assert _same(_state(model), before)
    assert not _same(_state(out), before)
    assert _accuracy(request.task, out, request.retain) >= 0.85 * problem.retain_accuracy


def test_unlearning_a_language_model_is_deterministic(problem):
    """The same method, options and seed give bit-identical weights (accelerate's loop, seeded batches)."""
    model, request = problem.model, problem.request
    a = get_method("npo", epochs=1).unlearn(model, request)
    b = get_method("npo", epochs=1).unlearn(model, request)
    assert _same(_state(a), _state(b))


def test_lora_npo_merges_adapters_into_the_same_architecture(problem):
    """With lora_rank the result is a plain model: the original's state-dict keys and shapes, only the adapted
    linear weights of the transformer blocks changed (embeddings, norms, biases and head untouched), and the forget
    answers are still gone."""
    model, request = problem.model, problem.request
    before = _state(model)
    method = get_method("npo", lora_rank=4, lr=3e-3, retain_weight=3.0)
    out = method.unlearn(model, request)
    after = _state(out)
    assert _same(_state(model), before)
    assert list(after) == list(before)
    assert all(after[k].shape == before[k].shape for k in before)
    changed = {k for k in before if not torch.equal(before[k], after[k])}
    assert changed and all(".h." in k and k.endswith(("c_attn.weight", "c_proj.weight", "c_fc.weight"))
                           for k in changed), sorted(changed)
    assert all(p.requires_grad for p in out.parameters())
    forget = _accuracy(request.task, out, request.forget)
    assert forget <= problem.forget_accuracy - 50
    assert _accuracy(request.task, out, request.retain) >= 0.85 * problem.retain_accuracy


@pytest.mark.parametrize("name", ["ssd", "retrain", "salun", "newton"])
def test_lora_rank_is_refused_outside_fine_tune_methods(name):
    """lora_rank and forget_span are options of fine-tune methods only; other families do not take them."""
    for option, value in (("lora_rank", 4), ("forget_span", "key")):
        with pytest.raises(ConfigError, match=f"unknown option\\(s\\) {option}"):
            get_method(name, **{option: value})


@pytest.mark.parametrize(("name", "capability"), [("rmu", "hidden_states"), ("idk", "text"), ("flat", "text")])
def test_lm_only_methods_refuse_classification(name, capability):
    """rmu needs hidden states and idk text answers; on a classification request each is refused up front with the
    missing capability named."""
    task = get_task("classification")
    data = RecordDataset(np.arange(6), x=torch.randn(6, 3), y=torch.tensor([0, 1, 0, 1, 0, 1]))
    request = UnlearnRequest(task=task, forget=data.subset([0, 1]), retain=data.subset([2, 3, 4, 5]))
    with pytest.raises(InvalidRequest, match=f"needs {capability}, which task 'classification' does not offer"):
        get_method(name).unlearn(nn.Linear(3, 2), request)


def test_idk_answers_forget_questions_with_refusals(problem):
    """After idk the model's greedy answers to forget questions are refusals ("I don't know." and variants), while
    retain questions still get their answers, not refusals."""
    model, request = problem.model, problem.request
    task = request.task
    out = get_method("idk", epochs=12).unlearn(model, request)
    forget_answers = task.generate(out, texts(request.forget.tensors, "prompt"), 12)
    refusals = [a for a in forget_answers if REFUSAL_WORDS & set(words(a))]
    assert len(refusals) >= 0.75 * len(forget_answers), forget_answers
    retain_answers = task.generate(out, texts(request.retain.tensors, "prompt"), 16)
    assert not [a for a in retain_answers if REFUSAL_WORDS & set(words(a))]
    assert _accuracy(task, out, request.retain) >= 0.85 * problem.retain_accuracy


def _forget_nll(task: Any, model: nn.Module, data: RecordDataset) -> float:
    """Mean answer negative log-likelihood over ``data`` (higher: the answers are less likely)."""
    model.eval()
    with torch.no_grad():
        return float(torch.cat([task.per_example_loss(model, data.tensors_slice(i, i + 128))
                                for i in range(0, len(data), 128)]).mean())


@pytest.mark.parametrize("name", ["undial", "wga", "flat", "pdu"])
def test_recent_methods_lower_forget_likelihood_and_are_deterministic(problem, name):
    """UNDIAL, WGA, FLAT and PDU make the forget answers less likely than the original model finds them within ten
    steps, and the same seed gives bit-identical weights (the full default runs, retain guard on, are in CASES above;
    here the guard is off, so that a dip it would roll back at the tenth step does not hide the loss's effect)."""
    model, request = problem.model, problem.request
    task = request.task
    a = get_method(name, max_steps=10, max_retain_drop=100.0).unlearn(model, request)
    b = get_method(name, max_steps=10, max_retain_drop=100.0).unlearn(model, request)
    assert _same(_state(a), _state(b)), f"{name}: the same seed gave different weights"
    before, after = _forget_nll(task, model, request.forget), _forget_nll(task, a, request.forget)
    assert after > before, f"{name}: forget answer NLL {before:.4f} -> {after:.4f}"


def test_pdu_multiplier_rises_while_the_retain_constraint_is_violated(problem):
    """The dual step grows the multiplier by the step size times the violation, shrinks it by the slack and stops at
    zero; in a run with no slack (epsilon = 0), flattening the forget answers raises the retain loss above the
    original's, so the multiplier ends above where it started."""
    assert dual_step(1.0, retain_loss=0.5, bound=0.2, lr=2.0) == pytest.approx(1.6)
    assert dual_step(1.0, retain_loss=0.1, bound=0.2, lr=2.0) == pytest.approx(0.8)
    assert dual_step(0.1, retain_loss=0.0, bound=0.2, lr=2.0) == 0.0
    method = get_method("pdu", epsilon=0.0, dual_init=1.0, max_steps=10, max_retain_drop=100.0)
    method.unlearn(problem.model, problem.request)
    report = method.report_
    assert report["retain_bound"] == pytest.approx(report["original_retain_loss"])
    assert report["multiplier"] > 1.0, report


class _NoScores(ClassificationTask):
    """A classifier that exposes neither class scores nor labels."""

    name = "no_scores"
    capabilities = frozenset()


@pytest.mark.parametrize("name", ["undial", "wga", "pdu"])
def test_per_target_methods_refuse_a_task_without_scores(name):
    """UNDIAL, WGA and PDU read scores over the outputs at each target (answer tokens or class logits and labels): a
    task offering neither is refused before anything runs, with the reason named."""
    task = _NoScores()
    data = RecordDataset(np.arange(6), x=torch.randn(6, 3), y=torch.tensor([0, 1, 0, 1, 0, 1]))
    request = UnlearnRequest(task=task, forget=data.subset([0, 1]), retain=data.subset([2, 3, 4, 5]))
    with pytest.raises(InvalidRequest, match="needs scores over the outputs at each target"):
        get_method(name).unlearn(nn.Linear(3, 2), request)
