"""Stopping by evidence: an iterative method stops once the request's decisive figures reach what a model that never
saw the forget set scores, instead of running a fixed number of epochs.

The rule is the reference-free judge (:mod:`.judge`) run on samples while the method trains: membership AUC at 50,
forget/held-out accuracy parity, each effect probe at its base rate, each within its noise or closed by the
thresholds' ``closure`` of the original's distance. Samples make it cheap and noisier than the certificate, so the
certificate, measured on every record afterwards, still decides; the rule only says when more work would not help.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
from pyroaring import BitMap
from torch import nn

from ..tasks import RecordDataset, Task
from ..workspace import Workspace
from .judge import (
    PURPOSES,
    HeldOut,
    NoComparison,
    ProbeOutcomes,
    Thresholds,
    decisive_figures,
    estimates,
    heldout_for,
    heldout_targets,
    judge,
)
from .probes import Probe

log = logging.getLogger(__name__)

SAMPLE = 256
"""Forget and matched held-out records the rule measures at each check (at most)."""
UTILITY_DROP = 1.0
"""Points of held-out accuracy (outside the forget set's kind) the model may have lost when the rule stops it: a
method whose retain term is still repairing the model goes on."""


@dataclass
class TargetRule:
    """Whether a model being unlearned has reached the held-out targets of the request's decisive figures; called
    with the model, it returns why it stopped (one line) or None to go on."""

    task: Task
    forget: RecordDataset
    matched: RecordDataset
    test: RecordDataset
    probes: Sequence[Probe]
    figures: list[str]
    original: dict
    original_target: dict
    thresholds: Thresholds
    utility: RecordDataset
    utility_original: float
    max_drop: float = UTILITY_DROP

    def __call__(self, model: nn.Module) -> str | None:
        was_training = model.training
        model.eval()
        try:
            kept = self.task.quick_accuracy(model, self.utility)
            if kept < self.utility_original - self.max_drop:
                return None
            found, target = _estimates(self.task, model, self.forget, self.matched, self.test, self.probes)
        finally:
            model.train(was_training)
        said = []
        for figure in self.figures:
            check = judge(figure, found[figure], self.original[figure], target[figure],
                          self.original_target[figure], self.thresholds)
            if check is None or check["value"] > self._limit(figure, check):
                return None
            said.append(f"{figure} {check['figure']:.1f} (target {check['target']:.1f})")
        return ("the decisive figures reached their held-out targets on a sample: " + "; ".join(said)
                + f"; held-out accuracy {kept:.1f} (original {self.utility_original:.1f})")

    def _limit(self, figure: str, check: dict) -> float:
        """Stricter than the certificate's limit: the figure's floor or half the sample's noise (a sample is noisier
        than the whole forget set the certificate measures); closing most of the original's distance is not enough
        to stop, since more steps usually close the rest."""
        return max(self.thresholds.floor(figure), 0.5 * check["noise"])


def _estimates(task: Task, model: nn.Module, forget: RecordDataset, matched: RecordDataset, test: RecordDataset,
               probes: Sequence[Probe]) -> tuple[dict, dict]:
    outcomes = [ProbeOutcomes.measure(p, model, task, test) for p in probes]
    found = estimates(task, task.evaluate(model, forget), task.evaluate(model, matched), outcomes)
    return found, heldout_targets(task, outcomes)


def target_rule(ws: Workspace, task: Task, original: nn.Module, forget_ids: BitMap, *, purpose: str,
                probes: Sequence[Probe] = (), thresholds: Thresholds | None = None, sample: int = SAMPLE,
                seed: int = 0) -> TargetRule | None:
    """The stopping rule of one request on one workspace model (:func:`rule_for`); None without held-out records of
    the forget set's kind."""
    test = ws.dataset(task, ws.test_ids())
    forget = ws.dataset(task, forget_ids)
    try:
        held = heldout_for(ws, task, forget_ids, forget, test)
    except NoComparison:
        return None
    return rule_for(task, original, forget, held.matched, test, utility_records(held, test, purpose),
                    purpose=purpose, probes=probes, thresholds=thresholds, sample=sample, seed=seed)


def rule_for(task: Task, original: nn.Module, forget: RecordDataset, matched: RecordDataset, test: RecordDataset,
             utility: RecordDataset, *, purpose: str, probes: Sequence[Probe] = (),
             thresholds: Thresholds | None = None, sample: int = SAMPLE, seed: int = 0) -> TargetRule | None:
    """The stopping rule of a request of ``purpose`` on ``original``, measured on at most ``sample`` forget and
    ``matched`` held-out records (``utility``: held-out records whose accuracy must hold). None where evidence
    cannot stop it: a figure without a target, or an original already within the noise of every target (a request
    too small to tell apart, where stopping at once would change nothing)."""
    thresholds = thresholds or Thresholds()
    rng = np.random.default_rng(seed)
    forget, matched, utility = _draw(forget, sample, rng), _draw(matched, sample, rng), _draw(utility, 2 * sample, rng)
    goal = PURPOSES[purpose]
    figures = decisive_figures(goal, task, probes) if not goal.needs_probe or probes else []
    if not figures or len(forget) == 0 or len(matched) == 0:
        return None
    found, target = _estimates(task, original, forget, matched, test, probes)
    checks = [judge(f, found[f], found[f], target[f], target[f], thresholds) if f in target else None
              for f in figures]
    if any(c is None for c in checks) or all(c["indistinguishable"] for c in checks):
        return None
    return TargetRule(task, forget, matched, test, probes, figures, found, target, thresholds, utility,
                      task.quick_accuracy(original, utility))


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
