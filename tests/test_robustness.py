"""Robustness attacks on the digits backdoor: relearning and quantisation expose forgetting that only looks done."""

from __future__ import annotations

import shutil
from dataclasses import dataclass
from typing import Any

import pytest
import torch
from torch import nn

from conftest import poisoner_request
from disgorge import Workspace, get_method
from disgorge.evaluate import accuracy
from disgorge.evidence.robustness import (
    RELEARN_SHARE,
    RELEARN_STEPS,
    quantization_attack,
    quantize_int8,
    relearn_attack,
    round_to_nearest,
)
from disgorge.methods import UnlearnRequest
from disgorge.scenarios import get_scenario


@dataclass
class Digits:
    """The backdoored digits model, a weak unlearning of the poisoner (gradient ascent), a retrained reference."""

    task: Any
    request: UnlearnRequest
    test: Any
    probes: list
    original: nn.Module
    unlearned: nn.Module
    reference: nn.Module

    def models(self, reference: bool = False) -> dict[str, nn.Module]:
        out = {"original": self.original, "unlearned": self.unlearned}
        return {**out, "reference": self.reference} if reference else out


@pytest.fixture(scope="module")
def digits(backdoor_template, tmp_path_factory) -> Digits:
    src, model_id = backdoor_template
    dst = tmp_path_factory.mktemp("robustness") / "ws"
    shutil.copytree(src, dst)
    with Workspace.open(dst) as ws:
        model, request, test = poisoner_request(ws, model_id)
    return Digits(request.task, request, test, get_scenario("digits-backdoor").probes(), model,
                  get_method("gradient_ascent").unlearn(model, request), get_method("retrain").unlearn(model, request))


def _relearn(d: Digits, models: dict[str, nn.Module], **kwargs: Any) -> dict[str, Any] | None:
    return relearn_attack(d.task, models, d.request.forget, d.test, d.test, d.probes, train=d.request.train, **kwargs)


def _states(models: dict[str, nn.Module]) -> dict[str, dict[str, torch.Tensor]]:
    return {name: {k: v.clone() for k, v in m.state_dict().items()} for name, m in models.items()}


def _shares(out: dict[str, Any]) -> list[float | None]:
    return [f["recovered"] for f in out["figures"].values()]


def test_attacks_leave_every_input_model_bit_identical(digits):
    """Relearning and quantising work on copies: no input model's weights change."""
    models = digits.models(reference=True)
    before = _states(models)
    _relearn(digits, models, steps=5)
    quantization_attack(digits.task, models, digits.request.forget, digits.test, digits.test, digits.probes)
    for name, model in models.items():
        after = model.state_dict()
        assert all(torch.equal(before[name][k], after[k]) for k in before[name]), name


def test_relearning_brings_back_what_gradient_ascent_only_suppressed(digits):
    """A few steps on a tenth of the poisoned records restore the backdoor on the other nine tenths: the unlearned
    model gets back (most of) the original's forget accuracy, membership signal and attack success."""
    out = _relearn(digits, digits.models())
    assert out["steps"] == RELEARN_STEPS and out["share"] == RELEARN_SHARE and out["lr"] == digits.request.train.lr
    n = len(digits.request.forget)
    assert out["records"] == {"attack": round(RELEARN_SHARE * n), "measured": n - round(RELEARN_SHARE * n)}
    assert set(out["figures"]) == {"forget_accuracy", "membership_auc", "effect"}
    fa = out["figures"]["forget_accuracy"]
    assert fa["original"] > 95 and fa["before"] < fa["original"] - 10
    assert fa["after"] >= fa["before"]
    assert all(s is not None and 0 <= s <= 1 for s in _shares(out))
    assert out["recovered"] == max(_shares(out)) and out["recovered"] > 0.5
    assert _relearn(digits, digits.models()) == out  # seeded: the same attack gives the same figures


def test_nothing_to_recover_when_nothing_was_forgotten(digits):
    """The original model as its own 'unlearned' version has no gap to close: every share is None."""
    out = _relearn(digits, {"original": digits.original, "unlearned": digits.original}, steps=3)
    assert _shares(out) == [None, None, None] and out["recovered"] is None


def test_reference_gives_a_baseline_and_a_ratio(digits):
    """With a retrained reference the same attack runs on it; weak unlearning recovers more than retraining does."""
    out = _relearn(digits, digits.models(reference=True))
    assert {"reference", "ratio"} <= set(out)
    ref = out["reference"]
    assert set(ref["figures"]) == set(out["figures"])
    assert ref["figures"]["forget_accuracy"]["original"] == out["figures"]["forget_accuracy"]["original"]
    assert ref["figures"]["forget_accuracy"]["before"] < 10  # the reference never learned the backdoor
    assert 0 < ref["recovered"] <= 1
    assert out["ratio"] == pytest.approx(out["recovered"] / ref["recovered"], abs=1e-3) and out["ratio"] > 1
    assert "reference" not in _relearn(digits, digits.models(), steps=2)


def test_relearn_refuses_bad_settings_and_tiny_forget_sets(digits):
    """One forget record leaves nothing to measure (None); steps and share are checked."""
    forget = digits.request.forget
    one = forget.subset(forget.ids[:1])
    train = digits.request.train
    assert relearn_attack(digits.task, digits.models(), one, digits.test, digits.test, train=train) is None
    for bad in ({"steps": 0}, {"share": 0.0}, {"share": 1.0}):
        with pytest.raises(ValueError):
            _relearn(digits, digits.models(), **bad)
    two = forget.subset(forget.ids[:2])
    out = relearn_attack(digits.task, digits.models(), two, digits.test, digits.test, train=train, steps=2, share=0.9)
    assert out["records"] == {"attack": 1, "measured": 1} and "effect" not in out["figures"]


def test_round_to_nearest_keeps_16_levels_per_group_and_bounds_the_error():
    """4-bit groups of 32 hold at most 16 distinct values, each weight moves at most half a step, zero groups and
    biases stay as they were, and the input is not touched (Linear and Conv2d, rows not a multiple of 32)."""
    torch.manual_seed(0)
    model = nn.Sequential(nn.Conv2d(3, 4, 3), nn.Flatten(), nn.Linear(100, 7))
    with torch.no_grad():
        model[2].weight[0, :32] = 0
    before = _states({"m": model})["m"]
    out = round_to_nearest(model, 4)
    assert all(torch.equal(before[k], v) for k, v in model.state_dict().items())
    for name in ("0", "2"):
        w, q = before[f"{name}.weight"].flatten(1), out.state_dict()[f"{name}.weight"].flatten(1)
        assert torch.equal(before[f"{name}.bias"], out.state_dict()[f"{name}.bias"])
        for start in range(0, w.shape[1], 32):
            wg, qg = w[:, start:start + 32], q[:, start:start + 32]
            for row_w, row_q in zip(wg, qg, strict=True):
                assert len(torch.unique(row_q)) <= 16
                step = row_w.abs().max() / 7
                assert (row_w - row_q).abs().max() <= step / 2 + 1e-6
    assert torch.equal(out[2].weight[0, :32], torch.zeros(32))
    with pytest.raises(ValueError):
        round_to_nearest(model, 1)


def test_int8_keeps_the_model_working(digits):
    """Quantisation is faithful: torch's int8 copy replaces every Linear layer, and it and the 4-bit copy of the
    trained model keep test accuracy within a few points."""
    task, test, model = digits.task, digits.test, digits.original
    base = accuracy(task.evaluate(model, test)["correct"])
    int8 = quantize_int8(model)
    kinds = [type(m) for m in int8.modules()]
    assert nn.Linear not in kinds and any(k.__module__.startswith("torch.ao.nn.quantized.dynamic") for k in kinds)
    assert abs(accuracy(task.evaluate(int8, test)["correct"]) - base) <= 2
    assert abs(accuracy(task.evaluate(round_to_nearest(model, 4), test)["correct"]) - base) <= 5
    assert base > 90


def test_int8_falls_back_to_round_to_nearest(digits, monkeypatch):
    """Where torch's dynamic quantisation is gone or fails, int8 is 8-bit round-to-nearest per row, and says so."""
    def gone(*args: Any, **kwargs: Any) -> None:
        raise RuntimeError("quantize_dynamic removed")

    monkeypatch.setattr(torch.ao.quantization, "quantize_dynamic", gone)
    task, test, model = digits.task, digits.test, digits.original
    int8 = quantize_int8(model)
    assert all(len(torch.unique(row)) <= 256 for m in int8.modules() if isinstance(m, nn.Linear) for row in m.weight)
    base = accuracy(task.evaluate(model, test)["correct"])
    assert abs(accuracy(task.evaluate(int8, test)["correct"]) - base) <= 2
    out = quantization_attack(task, digits.models(), digits.request.forget, test, test)
    assert out["int8"]["scheme"] == "round-to-nearest 8-bit, one group per row"


def test_quantization_attack_reports_every_variant(digits):
    """Both variants report figures in percent and shares in [0, 1], for the unlearned model and the reference."""
    out = quantization_attack(digits.task, digits.models(reference=True), digits.request.forget, digits.test,
                              digits.test, digits.probes)
    assert set(out) == {"int8", "int4", "recovered"}
    assert out["int8"]["scheme"] == "torch dynamic int8 (nn.Linear)"
    assert out["int4"]["scheme"] == "round-to-nearest 4-bit, groups of 32"
    for variant in ("int8", "int4"):
        for side in (out[variant], out[variant]["reference"]):
            assert set(side["figures"]) == {"forget_accuracy", "membership_auc", "effect"}
            for fig in side["figures"].values():
                assert all(0 <= fig[k] <= 100 for k in ("original", "before", "after"))
                assert fig["recovered"] is None or 0 <= fig["recovered"] <= 1
        fa = out[variant]["figures"]["forget_accuracy"]
        assert fa["original"] > 95 and fa["before"] < fa["original"] - 10
    headlines = [out[v]["recovered"] for v in ("int8", "int4") if out[v]["recovered"] is not None]
    assert out["recovered"] == (max(headlines) if headlines else None)
