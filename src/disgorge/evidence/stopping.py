"""Stopping by evidence: an iterative method stops once the request's decisive figures reach what a model that never
saw the forget set scores, instead of running a fixed number of epochs.

The rule is the reference-free judge (:mod:`.judge`) run on samples while the method trains: membership AUC at 50,
forget/held-out accuracy parity, each effect probe at its base rate, each within its floor or half the original's
noise (no credit for closing most of the distance), while held-out accuracy holds. Samples make it cheap and
noisier than the certificate, so the certificate, measured on every record afterwards, still decides; the rule only
says when more work would not help. It also says when a figure went past its target, to the other side of where the
original was (a membership AUC far below 50: the records became recognisable as never seen), so that the loop goes
back to the closest state it measured (:class:`~disgorge.methods.base.Reading`).
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
from pyroaring import BitMap
from torch import nn

from ..evaluate.intervals import auc_statistic, finite_values, mean_difference
from ..methods.base import Reading
from ..tasks import RecordDataset, Task
from ..workspace import Workspace
from .judge import (
    PURPOSES,
    HeldOut,
    NoComparison,
    ProbeOutcomes,
    Thresholds,
    decisive_figures,
    effect_key,
    estimates,
    heldout_for,
    heldout_targets,
    judge,
)
from .probes import Probe

SAMPLE = 256
"""Forget and matched held-out records the rule measures at each check (at most)."""
LM_SAMPLE = 64
"""The same for language models, whose figures generate text."""
UTILITY_DROP = 1.0
"""Points of held-out accuracy (outside the forget set's kind) the model may have lost when the rule stops it: a
method whose retain term is still repairing the model goes on. Retain accuracy may drop half the certificate's
limit."""


@dataclass
class TargetRule:
    """How far a model being unlearned is from the held-out targets of the request's decisive figures; called with
    the model, it returns a :class:`~disgorge.methods.base.Reading` (done, or gone past a target), or None when
    utility has dropped more than the certificate allows (``ta_limit``, ``ra_limit``). Done also needs utility
    within the stricter ``max_drop`` (held-out) and half ``ra_limit`` (retain: the sample is small, the loss goes
    on). ``limits`` hold, per figure, how close to its target the figure must come, fixed from the original's
    intervals when the rule is made, so that each check measures point values only (no bootstrap); ``sides`` the
    side of its target each figure started on (+1 above, -1 below, 0 within its limit)."""

    task: Task
    forget: RecordDataset
    matched: RecordDataset
    test: RecordDataset
    probes: Sequence[Probe]
    limits: dict[str, float]
    sides: dict[str, int]
    utility: RecordDataset
    utility_original: float
    retain: RecordDataset | None = None
    retain_original: float = math.nan
    max_drop: float = UTILITY_DROP
    ta_limit: float = 3.0
    ra_limit: float = 5.0

    def __call__(self, model: nn.Module) -> Reading | None:
        was_training = model.training
        model.eval()
        try:
            kept = self.task.quick_accuracy(model, self.utility)
            retained = self.task.quick_accuracy(model, self.retain) if self.retain is not None else math.nan
            lost, lost_retain = self.utility_original - kept, self.retain_original - retained
            if lost > self.ta_limit or lost_retain > self.ra_limit:  # NaN (no retain sample) compares false
                return None  # a state the certificate would fail on utility: never kept, never done
            values, targets = _points(self.task, model, self.forget, self.matched, self.test, self.probes)
        finally:
            model.train(was_training)
        gaps = {f: (values.get(f, math.nan) - targets.get(f, math.nan)) / limit for f, limit in self.limits.items()}
        if not all(math.isfinite(g) for g in gaps.values()):
            return None
        past = [f"{f} {values[f]:.1f} went past its target {targets[f]:.1f}" for f, g in gaps.items()
                if abs(g) > 1 and g * self.sides[f] <= 0]
        score = max(abs(g) for g in gaps.values())
        if past:
            return Reading(score, past="; ".join(past))
        if score > 1 or lost > self.max_drop or lost_retain > self.ra_limit / 2:
            return Reading(score)  # not there yet, or utility still to repair
        said = "; ".join(f"{f} {values[f]:.1f} (target {targets[f]:.1f})" for f in self.limits)
        return Reading(score, done="the decisive figures reached their held-out targets on a sample: " + said
                       + f"; held-out accuracy {kept:.1f} (original {self.utility_original:.1f})")


def _points(task: Task, model: nn.Module, forget: RecordDataset, matched: RecordDataset, test: RecordDataset,
            probes: Sequence[Probe]) -> tuple[dict[str, float], dict[str, float]]:
    """The decisive figures' point values on one model (as :func:`.judge.estimates` measures them) and their
    held-out targets."""
    outcomes = [ProbeOutcomes.measure(p, model, task, test) for p in probes]
    on_forget, on_matched = task.evaluate(model, forget), task.evaluate(model, matched)
    key = task.figures.membership
    values = {"membership": float(auc_statistic(finite_values(on_forget[key]), finite_values(on_matched[key]))),
              "parity": float(mean_difference(finite_values(on_forget["correct"]),
                                              finite_values(on_matched["correct"])))}
    if task.figures.verbatim is not None:
        v = task.figures.verbatim
        values["verbatim"] = float(mean_difference(finite_values(on_forget[v]), finite_values(on_matched[v])))
    for i, o in enumerate(outcomes):
        hits = finite_values(o.hits)
        values[effect_key(probes, i)] = float(np.mean(hits) * 100) if len(hits) else math.nan
    return values, {k: e.value for k, e in heldout_targets(task, outcomes).items()}


def target_rule(ws: Workspace, task: Task, original: nn.Module, forget_ids: BitMap, *, purpose: str,
                retain_ids: BitMap | None = None, probes: Sequence[Probe] = (), thresholds: Thresholds | None = None,
                sample: int = SAMPLE, seed: int = 0) -> TargetRule | None:
    """The stopping rule of one request on one workspace model (:func:`rule_for`; ``retain_ids``: the records it
    keeps); None without held-out records of the forget set's kind."""
    test = ws.dataset(task, ws.test_ids())
    forget = ws.dataset(task, forget_ids)
    try:
        held = heldout_for(ws, task, forget_ids, forget, test)
    except NoComparison:
        return None
    retain = ws.dataset(task, retain_ids) if retain_ids else None
    return rule_for(task, original, forget, held.matched, test, utility_records(held, test, purpose),
                    purpose=purpose, retain=retain, probes=probes, thresholds=thresholds, sample=sample, seed=seed)


def rule_for(task: Task, original: nn.Module, forget: RecordDataset, matched: RecordDataset, test: RecordDataset,
             utility: RecordDataset, *, purpose: str, retain: RecordDataset | None = None,
             probes: Sequence[Probe] = (), thresholds: Thresholds | None = None, sample: int = SAMPLE,
             seed: int = 0) -> TargetRule | None:
    """The stopping rule of a request of ``purpose`` on ``original``, measured on at most ``sample`` forget and
    ``matched`` held-out records (``utility``: held-out records whose accuracy must hold, as must that of a sample
    of ``retain``, the records the model keeps, when given). None where evidence
    cannot stop it: a figure without a target, or an original already within the noise of every target (a request
    too small to tell apart, where stopping at once would change nothing)."""
    thresholds = thresholds or Thresholds()
    if task.figures.verbatim is not None:  # a language model's figures generate text: a smaller sample
        sample = min(sample, LM_SAMPLE)
    rng = np.random.default_rng(seed)
    forget, matched, utility = _draw(forget, sample, rng), _draw(matched, sample, rng), _draw(utility, 2 * sample, rng)
    goal = PURPOSES[purpose]
    figures = decisive_figures(goal, task, probes) if not goal.needs_probe or probes else []
    if not figures or len(forget) == 0 or len(matched) == 0:
        return None
    outcomes = [ProbeOutcomes.measure(p, original, task, test) for p in probes]
    found = estimates(task, task.evaluate(original, forget), task.evaluate(original, matched), outcomes, seed=seed)
    target = heldout_targets(task, outcomes)
    checks = {f: judge(f, found[f], found[f], target[f], target[f], thresholds) if f in target else None
              for f in figures}
    if any(c is None for c in checks.values()) or all(c["indistinguishable"] for c in checks.values()):
        return None
    # Stricter than the certificate: the floor or half the noise, no credit for closing most of the distance
    # (more steps usually close the rest); the noise is the original's, the unlearned model's is alike.
    limits = {f: max(thresholds.floor(f), 0.5 * c["noise"]) for f, c in checks.items()}
    sides = {f: 0 if abs(c["figure"] - c["target"]) <= limits[f] else int(np.sign(c["figure"] - c["target"]))
             for f, c in checks.items()}
    kept = _draw(retain, 2 * sample, rng) if retain is not None and len(retain) else None
    return TargetRule(task, forget, matched, test, probes, limits, sides, utility,
                      task.quick_accuracy(original, utility), kept,
                      task.quick_accuracy(original, kept) if kept is not None else math.nan,
                      ta_limit=thresholds.ta_drop, ra_limit=thresholds.ra_drop)


def utility_records(held: HeldOut, test: RecordDataset, purpose: str) -> RecordDataset:
    """The held-out records whose accuracy must hold while forgetting: all of them, except the forget set's own
    classes when a privacy or copyright request removes them (forgetting a class costs its accuracy by design; a
    poisoned source's labels are wrong, so the classes it used must keep theirs)."""
    class_removal = held.matched_by == "class" and not PURPOSES[purpose].needs_probe
    return held.utility if class_removal else test


def _draw(data: RecordDataset, most: int, rng: np.random.Generator) -> RecordDataset:
    if len(data) <= most:
        return data
    return data.subset(np.sort(rng.choice(data.ids, size=most, replace=False)))
