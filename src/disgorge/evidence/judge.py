"""How a verdict is reached, at either evidence level.

A request's *purpose* picks its decisive figures (membership for privacy, the effect probe for poison, ...). Each
decisive figure is measured with a 95% interval on the original and on the unlearned model, and compared with
a *target*: what a model that never saw the forget set scores. At the ``exact`` level the target is the figure of a
model retrained without the records; at the ``heldout`` (reference-free) level it is what theory says an unseen
set scores, measured on held-out records of the same kind: a membership AUC of 50, no accuracy gap between the
forget set and held-out data, an effect probe at its base rate.

A decisive figure passes when the unlearned model is within the noise of its target, or has closed at least
``closure`` of the original's distance to it. When the original itself is within the noise of every target, the
request is too small to tell the original from a model that never saw it: the verdict is ``indistinguishable``,
never ``passed``. So a model that was not changed can never pass.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
from pyroaring import BitMap
from torch import nn

from ..errors import InvalidRequest
from ..evaluate.intervals import (
    Estimate,
    auc_statistic,
    bootstrap,
    mean_difference,
    proportion,
    proportion_difference,
)
from ..tasks import RecordDataset, Task
from ..workspace import Workspace
from .probes import Probe

EXACT, HELDOUT = "exact", "heldout"
LEVELS = (EXACT, HELDOUT)
"""The evidence levels a verification runs at (``auto`` chooses between them; see :mod:`disgorge.erasure`)."""
EVIDENCE = {EXACT: "exact", HELDOUT: "reference-free"}
"""The certificate's ``evidence`` key for each level."""


@dataclass(frozen=True)
class Purpose:
    """Why records are erased, and so which figures decide: ``figures`` (besides every effect probe, which always
    decides); ``needs_probe``: the purpose is only judged by an effect probe."""

    name: str
    figures: tuple[str, ...]
    needs_probe: bool
    help: str


PURPOSES = {p.name: p for p in (
    Purpose("privacy", ("membership", "parity"), False,
            "the records must not be recognisable: membership and forget/held-out accuracy parity decide"),
    Purpose("copyright", ("verbatim", "membership"), False,
            "the content must not be reproduced: verbatim memorisation (accuracy parity for classifiers) and "
            "membership decide"),
    Purpose("poison", (), True,
            "the records' effect must go (a backdoor, a bias they injected): the effect probe decides; their labels "
            "may be wrong, so forget-set accuracy does not"),
    Purpose("bias", (), True, "a group effect must go: the effect probe of that group decides"),
)}

FIGURE_HELP = {
    "membership": "membership AUC of the forget set against held-out records (higher = more recognisable as "
                  "trained on)",
    "parity": "accuracy on the forget set minus accuracy on held-out records of the same kind, in points",
    "verbatim": "verbatim reproduction (ROUGE-L F1) of the forget set minus that of held-out records, in points",
    "effect": "the effect probe, in percent",
}


@dataclass(frozen=True)
class Thresholds:
    """Pass/fail limits of a certificate. Decisive figures: ``closure`` is the share of the original's distance to
    the target the unlearned model must close; a distance within the figure's noise (the 95% interval's half
    width, at least ``floor`` of the figure, in points) always passes. Utility: drops of held-out and retain
    accuracy, in points, against the reference (exact) or the original (heldout). ``forget_quality``: TOFU's
    minimum KS p-value at the exact level (language models)."""

    closure: float = 0.9
    floors: tuple[tuple[str, float], ...] = (("membership", 2.0), ("parity", 1.0), ("verbatim", 2.0),
                                             ("effect", 2.0))
    ta_drop: float = 3.0
    ra_drop: float = 5.0
    forget_quality: float = 0.05

    def floor(self, figure: str) -> float:
        """The noise floor of a decisive figure (effect probes share ``effect``'s)."""
        return dict(self.floors).get(figure.split(":")[0], 2.0)


class NoComparison(InvalidRequest):
    """No held-out data of the forget set's kind exists, so reference-free evidence cannot be given."""


@dataclass
class HeldOut:
    """Held-out records of the forget set's kind (``matched``, chosen ``matched_by`` source, class or all) and
    the held-out records that measure utility (the others, or all when every one matched)."""

    matched: RecordDataset
    utility: RecordDataset
    matched_by: str


MIN_MATCHED = 20
"""Held-out records of the forget set's own sources needed to compare by source."""


def heldout_for(ws: Workspace, task: Task, forget_ids: BitMap, forget: RecordDataset,
                test: RecordDataset) -> HeldOut:
    """Held-out records to compare the forget set with: those of its own sources when the user kept enough at
    ingest (``--holdout``); else those of its classes (a class-wise request compares with that class); else all.
    Raises :class:`NoComparison` when the held-out split is empty or lacks a class the forget set holds."""
    if len(test) == 0:
        raise NoComparison("reference-free verification compares the forget set with held-out records, and this "
                           "workspace has none; ingest some (--split test, or --holdout at ingest) or use --verify "
                           "exact")
    names = [s["name"] for s in ws.sources_of(forget_ids)]
    same = ws.ledger.record_ids(sources=names, split="test", states=("active", "held")) & BitMap(test.ids.tolist())
    if len(same) >= MIN_MATCHED:
        return _split(test, same, "source")
    kinds, test_kinds = task.strata(forget), task.strata(test)
    if kinds is None or test_kinds is None:
        return HeldOut(test, test, "all")
    missing = sorted(set(np.unique(kinds).tolist()) - set(np.unique(test_kinds).tolist()))
    if missing:
        raise NoComparison(f"the forget set holds class(es) {', '.join(map(str, missing))} with no held-out record "
                           "to compare with; ingest held-out records of them (--split test, or --holdout at "
                           "ingest) or use --verify exact")
    keep = np.isin(test_kinds, np.unique(kinds))
    if keep.all():
        return HeldOut(test, test, "all")
    return _split(test, BitMap(test.ids[keep].tolist()), "class")


def _split(test: RecordDataset, matched: BitMap, by: str) -> HeldOut:
    rest = BitMap(test.ids.tolist()) - matched
    return HeldOut(test.subset(matched), test.subset(rest) if rest else test, by)


@dataclass
class ProbeOutcomes:
    """One probe's 0/1 outcomes on a model and its base rate: the same inputs without the change, or a constant."""

    probe: Probe
    hits: np.ndarray
    baseline: np.ndarray | None

    @classmethod
    def measure(cls, probe: Probe, model: nn.Module, task: Task, test: RecordDataset) -> ProbeOutcomes:
        """Run ``probe`` (and its baseline) on ``model`` over the held-out data."""
        return cls(probe, probe.outcomes(model, task, test), probe.baseline(model, task, test))


def effect_key(probes: Sequence[Probe], i: int) -> str:
    """The check name of the ``i``-th probe: ``effect`` for the main one, ``effect:<name>`` for the others."""
    return "effect" if i == 0 else f"effect:{probes[i].name}"


def estimates(task: Task, forget: Mapping[str, np.ndarray], matched: Mapping[str, np.ndarray],
              probes: Sequence[ProbeOutcomes] = (), *, seed: int = 0) -> dict[str, Estimate]:
    """Every decisive figure of one model with its interval, from per-example outputs on the forget set and on
    the matched held-out records (:meth:`Task.evaluate`) and its probes' outcomes: membership AUC and verbatim
    parity by bootstrap, accuracy parity and effects by the closed-form intervals for shares."""
    key = task.figures.membership
    out = {"membership": bootstrap(auc_statistic, forget[key], matched[key], bounds=(0, 100), seed=seed),
           "parity": proportion_difference(forget["correct"], matched["correct"])}
    if task.figures.verbatim is not None:
        v = task.figures.verbatim
        out["verbatim"] = bootstrap(mean_difference, forget[v], matched[v], bounds=(-100, 100), seed=seed)
    for i, p in enumerate(probes):
        out[effect_key([q.probe for q in probes], i)] = proportion(p.hits)
    return out


def heldout_targets(task: Task, probes: Sequence[ProbeOutcomes] = ()) -> dict[str, Estimate]:
    """What a model that never saw the forget set scores, without any such model: a membership AUC of 50, no
    accuracy or reproduction gap, each probe at its base rate (measured on its baseline inputs, or the probe's
    constant; a probe with neither has no target)."""
    out = {"membership": Estimate(50.0, 50.0, 50.0), "parity": Estimate(0.0, 0.0, 0.0)}
    if task.figures.verbatim is not None:
        out["verbatim"] = Estimate(0.0, 0.0, 0.0)
    for i, p in enumerate(probes):
        key = effect_key([q.probe for q in probes], i)
        if p.baseline is not None and len(p.baseline):
            out[key] = proportion(p.baseline)
        elif p.probe.base_rate is not None:
            out[key] = Estimate(p.probe.base_rate, p.probe.base_rate, p.probe.base_rate)
    return out


def decisive_figures(purpose: Purpose, task: Task, probes: Sequence[Probe]) -> list[str]:
    """The figures that decide a request of ``purpose``: the purpose's own (verbatim stands in for parity only
    where the task reproduces text) and every effect probe."""
    names = [f for f in purpose.figures if f != "verbatim" or task.figures.verbatim is not None]
    if "verbatim" in purpose.figures and task.figures.verbatim is None:
        names.insert(0, "parity")
    return names + [effect_key(probes, i) for i in range(len(probes))]


def judge(figure: str, unlearned: Estimate, original: Estimate, target: Estimate, original_target: Estimate,
          t: Thresholds) -> dict[str, Any] | None:
    """One decisive check: the unlearned model's distance to its target (``value``) against the ``limit``
    (the larger of the noise and what remains after closing ``closure`` of the original's distance); whether the
    original was already within the noise of its target (``indistinguishable``). None when a figure is missing."""
    values = (unlearned.value, original.value, target.value, original_target.value)
    if any(v is None or math.isnan(v) for v in values):
        return None
    floor = t.floor(figure)
    distance, original_distance = abs(unlearned.value - target.value), abs(original.value - original_target.value)
    noise = max(floor, math.hypot(unlearned.half_width, target.half_width))
    original_noise = max(floor, math.hypot(original.half_width, original_target.half_width))
    limit = max(noise, (1 - t.closure) * original_distance)
    return {"value": round(distance, 4), "limit": round(limit, 4), "passed": distance <= limit, "decisive": True,
            "figure": round(unlearned.value, 4), "interval": [round(unlearned.low, 4), round(unlearned.high, 4)],
            "target": round(target.value, 4), "original": round(original.value, 4),
            "original_distance": round(original_distance, 4), "noise": round(noise, 4),
            "indistinguishable": original_distance <= original_noise}


def verdict(checks: Mapping[str, Mapping[str, Any]]) -> str:
    """``failed`` if any check failed; ``indistinguishable`` if every decisive check's original was already within
    the noise of its target (or none could be measured); else ``passed``."""
    if not all(c["passed"] for c in checks.values()):
        return "failed"
    decisive = [c for c in checks.values() if c.get("decisive")]
    if not decisive or all(c["indistinguishable"] for c in decisive):
        return "indistinguishable"
    return "passed"


def score(checks: Mapping[str, Mapping[str, Any]]) -> float:
    """The worst decisive distance in units of its limit (at most 1 passes; smaller is better), for ranking."""
    ratios = [c["value"] / c["limit"] if c["limit"] > 0 else (0.0 if c["value"] == 0 else math.inf)
              for c in checks.values() if c.get("decisive")]
    return round(max(ratios), 4) if ratios else math.inf
