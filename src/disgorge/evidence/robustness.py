"""Robustness attacks that expose fake forgetting: unlearning that looks perfect on the usual figures but comes back
when the weights are nudged. Each attack is run on the unlearned model (and on a retrained reference when one is
given) and reports, per figure, how much of the gap between the unlearned and the original model it closes.

- :func:`relearn_attack` fine-tunes a copy for a few steps on a small share of the forget set and measures the REST
  of it. A model that truly forgot relearns the unseen records no faster than one that never saw them (the
  reference); a model whose knowledge was only suppressed snaps back, recovering records it was not shown again.
- :func:`quantization_attack` rounds the weights to 8 and 4 bits. Unlearning that moved the weights only by less
  than a quantisation step is undone by rounding, so the original behaviour reappears in the quantised model.

Figures (percent): ``forget_accuracy`` (accuracy on the measured forget records), ``membership_auc`` (membership
AUC of those records against held-out data, on the task's membership score) and ``effect`` (the first probe on the
test data, only when probes are given). For each, ``recovered = clip((after - before) / (original - before), 0, 1)``:
0 means nothing came back, 1 means the attacked model is back at the original's level; None when there was nothing
to recover (the model already matched the original). An attack's headline ``recovered`` is the largest of these.
"""

from __future__ import annotations

import copy
import logging
import math
import warnings
from collections.abc import Mapping, Sequence
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from ..evaluate.metrics import accuracy, mia_auc
from ..spec import TrainSpec
from ..tasks import RecordDataset, Task
from ..training.loop import fit, make_optimizer, mean_loss
from .probes import Probe

log = logging.getLogger(__name__)

RELEARN_STEPS = 20  # default fine-tuning steps of the relearning attack
RELEARN_SHARE = 0.1  # default share of the forget set the attacker fine-tunes on

Figures = dict[str, float | None]


# -- figures and recovery -------------------------------------------------------------------------------------------

def _round(value: float | None) -> float | None:
    return None if value is None or math.isnan(value) else round(float(value), 4)


def _figures(model: nn.Module, task: Task, forget: RecordDataset, heldout: RecordDataset, test: RecordDataset,
             probes: Sequence[Probe]) -> Figures:
    """Forget accuracy, membership AUC of ``forget`` against ``heldout`` and (with probes) the first probe's
    effect on ``test``, in percent."""
    key = task.figures.membership
    forget_out, heldout_out = task.evaluate(model, forget), task.evaluate(model, heldout)
    out = {"forget_accuracy": accuracy(forget_out["correct"]),
           "membership_auc": mia_auc(forget_out[key], heldout_out[key])}
    if probes:
        out["effect"] = probes[0].measure(model, task, test)
    return {k: _round(v) for k, v in out.items()}


def _recovered(original: float | None, before: float | None, after: float | None) -> float | None:
    """Share of the gap from ``before`` to ``original`` that ``after`` closes, in [0, 1]; None if there is none."""
    if original is None or before is None or after is None or abs(original - before) < 1e-6:
        return None
    return round(min(max((after - before) / (original - before), 0.0), 1.0), 4)


def _headline(values: Sequence[float | None]) -> float | None:
    known = [v for v in values if v is not None]
    return max(known) if known else None


def _recovery(original: Figures, before: Figures, after: Figures) -> dict[str, Any]:
    """Per figure the original, before and after values and the share recovered; the largest share as headline."""
    figures = {k: {"original": original[k], "before": before[k], "after": after[k],
                   "recovered": _recovered(original[k], before[k], after[k])} for k in original}
    return {"figures": figures, "recovered": _headline([f["recovered"] for f in figures.values()])}


def _ratio(unlearned: float | None, reference: float | None) -> float | None:
    return None if unlearned is None or not reference else round(unlearned / reference, 4)


# -- relearning -----------------------------------------------------------------------------------------------------

def _rows(data: RecordDataset, index: torch.Tensor) -> RecordDataset:
    """The rows at ``index`` (positions, not record ids)."""
    index = index.sort().values
    return RecordDataset(data.ids[index.numpy()], **{k: t[index] for k, t in data.tensors.items()})


def _relearn(model: nn.Module, task: Task, attack: RecordDataset, train: TrainSpec, steps: int,
             seed: int) -> nn.Module:
    """A copy of ``model`` fine-tuned for ``steps`` optimiser steps on ``attack``: every weight its recipe trains
    (all of them, unless the model says otherwise through ``recipe_trains(name)``, as a classifier over a frozen
    pretrained encoder does), whatever an unlearning method left frozen."""
    out = copy.deepcopy(model)
    trains = getattr(out, "recipe_trains", None)
    for name, p in out.named_parameters():
        p.requires_grad_(trains(name) if callable(trains) else True)
    loader = task.loader(attack, min(train.batch_size, len(attack)), shuffle=True,
                         generator=torch.Generator().manual_seed(seed))
    trainable = [p for p in out.parameters() if p.requires_grad]
    fit(out, loader, mean_loss(task), make_optimizer(trainable, train), epochs=math.ceil(steps / len(loader)),
        max_steps=steps, description="relearning attack", accelerator=task.accelerator())
    return out.eval()


def relearn_attack(task: Task, models: Mapping[str, nn.Module], forget: RecordDataset, heldout: RecordDataset,
                   test: RecordDataset, probes: Sequence[Probe] = (), *, train: TrainSpec,
                   steps: int = RELEARN_STEPS, share: float = RELEARN_SHARE, seed: int = 0) -> dict[str, Any] | None:
    """Fine-tune copies of the unlearned model (and the reference, if given) for ``steps`` steps on a seeded
    ``share`` of the forget set, and measure how much of the original's figures on the rest of it come back.

    ``models`` holds ``original`` and ``unlearned``, optionally ``reference``; none is modified. None when the forget
    set has fewer than 2 records (nothing would be left to measure)."""
    if steps < 1:
        raise ValueError(f"steps must be >= 1, got {steps}")
    if not 0 < share < 1:
        raise ValueError(f"share must be in (0, 1), got {share}")
    n = len(forget)
    if n < 2:
        return None
    k = min(max(1, round(share * n)), n - 1)
    order = torch.randperm(n, generator=torch.Generator().manual_seed(seed), device="cpu")
    attack, measured = _rows(forget, order[:k]), _rows(forget, order[k:])

    def measure(model: nn.Module) -> Figures:
        return _figures(model, task, measured, heldout, test, probes)

    original = measure(models["original"])

    def attacked(name: str) -> dict[str, Any]:
        relearned = _relearn(models[name], task, attack, train, steps, seed)
        return _recovery(original, measure(models[name]), measure(relearned))

    out: dict[str, Any] = {"steps": steps, "share": share, "records": {"attack": k, "measured": n - k},
                           "lr": train.lr, **attacked("unlearned")}
    if "reference" in models:
        out["reference"] = attacked("reference")
        out["ratio"] = _ratio(out["recovered"], out["reference"]["recovered"])
    return out


# -- quantisation ---------------------------------------------------------------------------------------------------

def _quantisable(model: nn.Module) -> list[nn.Module]:
    return [m for m in model.modules() if isinstance(m, (nn.Linear, nn.Conv1d, nn.Conv2d))]


def _rtn(weight: torch.Tensor, bits: int, group: int) -> torch.Tensor:
    """Symmetric round-to-nearest of ``weight``, per output row in groups of ``group`` consecutive inputs."""
    rows = weight.detach().reshape(weight.shape[0], -1).float()
    width = rows.shape[1]
    group = min(group, width)
    grouped = F.pad(rows, (0, -width % group)).reshape(rows.shape[0], -1, group)
    top = 2 ** (bits - 1) - 1
    scale = grouped.abs().amax(-1, keepdim=True) / top
    divisor = torch.where(scale > 0, scale, torch.ones_like(scale))  # an all-zero group stays zero
    q = (grouped / divisor).round().clamp(-top - 1, top) * scale
    return q.reshape(rows.shape[0], -1)[:, :width].reshape(weight.shape).to(weight.dtype)


@torch.no_grad()
def round_to_nearest(model: nn.Module, bits: int, group: int = 32) -> nn.Module:
    """A copy of ``model`` whose nn.Linear and nn.Conv1d/2d weights are rounded to ``bits``-bit integers times a
    scale (max |w| / (2**(bits-1) - 1)) per output row and group of ``group`` inputs; biases are kept."""
    if bits < 2 or group < 1:
        raise ValueError(f"need bits >= 2 and group >= 1, got bits={bits}, group={group}")
    out = copy.deepcopy(model)
    seen: set[int] = set()
    for module in _quantisable(out):
        if id(module.weight) not in seen:  # a weight tied between modules is rounded once
            seen.add(id(module.weight))
            module.weight.copy_(_rtn(module.weight, bits, group))
    return out


def _int8(model: nn.Module) -> tuple[nn.Module, str]:
    """An int8 copy on the CPU and the scheme used: torch's dynamic quantisation, or round-to-nearest per row
    where that API is missing or fails."""
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", DeprecationWarning)
            warnings.simplefilter("ignore", UserWarning)
            quantized = torch.ao.quantization.quantize_dynamic(copy.deepcopy(model).cpu().eval(), {nn.Linear},
                                                               dtype=torch.qint8)
        return quantized, "torch dynamic int8 (nn.Linear)"
    except Exception as error:  # the API is deprecated and may vanish or refuse a model
        log.warning("torch dynamic int8 quantisation unavailable (%s); rounding to nearest per row instead", error)
        width = max((m.weight[0].numel() for m in _quantisable(model)), default=1)
        return round_to_nearest(model, 8, group=width).cpu(), "round-to-nearest 8-bit, one group per row"


def quantize_int8(model: nn.Module) -> nn.Module:
    """A copy of ``model`` on the CPU with its nn.Linear layers quantised to int8 (torch's dynamic quantisation,
    or 8-bit round-to-nearest per output row where that is unavailable)."""
    return _int8(model)[0]


def _int4(model: nn.Module) -> tuple[nn.Module, str]:
    return round_to_nearest(model, 4, group=32), "round-to-nearest 4-bit, groups of 32"


def quantization_attack(task: Task, models: Mapping[str, nn.Module], forget: RecordDataset, heldout: RecordDataset,
                        test: RecordDataset, probes: Sequence[Probe] = ()) -> dict[str, Any]:
    """Quantise the unlearned model (and the reference, if given) to int8 and to 4-bit round-to-nearest, and measure
    how much of the original's figures on the whole forget set come back. No input model is modified."""
    def measure(model: nn.Module) -> Figures:
        return _figures(model, task, forget, heldout, test, probes)

    original = measure(models["original"])
    before = {name: measure(models[name]) for name in ("unlearned", "reference") if name in models}
    variants = {"int8": _int8, "int4": _int4}
    out: dict[str, Any] = {}
    for variant, quantise in variants.items():
        quantized, scheme = quantise(models["unlearned"])
        out[variant] = {"scheme": scheme, **_recovery(original, before["unlearned"], measure(quantized))}
        if "reference" in models:
            quantized, _ = quantise(models["reference"])
            out[variant]["reference"] = _recovery(original, before["reference"], measure(quantized))
    out["recovered"] = _headline([out[v]["recovered"] for v in variants])
    return out


def paraphrase_attack(task: Task, models: Mapping[str, nn.Module], forget: RecordDataset, heldout: RecordDataset,
                      test: RecordDataset, probes: Sequence[Probe] = ()) -> dict[str, Any] | None:
    """Language models: the same questions with each answer in other words (the records' ``paraphrase``). A model
    that unlearned only the wording still recognises the fact: per figure, ``original`` is the original model on
    the paraphrased records, ``before`` the unlearned model on the records as trained, ``after`` the unlearned
    model on the paraphrased ones. None where the records carry no paraphrases."""
    if "text" not in task.capabilities:
        return None
    forget_p, heldout_p = _paraphrased(task, forget), _paraphrased(task, heldout)
    if forget_p is None or heldout_p is None:
        return None
    before = _figures(models["unlearned"], task, forget, heldout, test, probes)
    out = _recovery(_figures(models["original"], task, forget_p, heldout_p, test, probes), before,
                    _figures(models["unlearned"], task, forget_p, heldout_p, test, probes))
    return {"records": len(forget_p), **out}


def _paraphrased(task: Task, data: RecordDataset) -> RecordDataset | None:
    """The records that carry a paraphrase, with it as their answer (None if none do)."""
    from ..tasks.causal_lm import texts

    if "paraphrase" not in data.tensors or not len(data):
        return None
    phrases = texts(data.tensors, "paraphrase")
    keep = [i for i, text in enumerate(phrases) if text]
    if not keep:
        return None
    rows = data.subset(data.ids[keep])
    return RecordDataset(rows.ids, **task.with_answers(rows.tensors, [phrases[i] for i in keep]))


__all__ = ["RELEARN_SHARE", "RELEARN_STEPS", "paraphrase_attack", "quantization_attack", "quantize_int8",
           "relearn_attack", "round_to_nearest"]
