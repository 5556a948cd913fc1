"""Figures with confidence intervals: what verification judges.

Each figure is a statistic of one or two samples of per-example outputs (a forget set's and held-out data's).
Shares of 0/1 outcomes (an accuracy, an effect probe) and differences of two shares get closed-form intervals that
stay honest on a handful of records: Wilson's score interval for one share (:func:`proportion`), Agresti and
Caffo's for a difference (:func:`proportion_difference`; add one success and one failure to each side, then the
Wald interval). A percentile bootstrap would call two correct answers out of two certain. Other statistics (an
AUC, a mean ROUGE) use the percentile bootstrap of :func:`scipy.stats.bootstrap` (:func:`bootstrap`, samples
resampled independently); a sample too small to resample (fewer than two values) gives the figure's whole range.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import numpy as np
from scipy import stats

LEVEL = 0.95
"""Confidence level of every interval."""
RESAMPLES = 1000
"""Bootstrap resamples per interval."""


@dataclass(frozen=True)
class Estimate:
    """A figure's value with its confidence interval ``[low, high]`` (same units)."""

    value: float
    low: float
    high: float

    @property
    def half_width(self) -> float:
        """Half the interval's width: how far the value could move by chance alone."""
        return (self.high - self.low) / 2

    def to_dict(self) -> dict[str, float]:
        """Rounded for a certificate."""
        return {"value": round(self.value, 4), "low": round(self.low, 4), "high": round(self.high, 4)}


Statistic = Callable[..., np.ndarray]
"""A vectorised statistic: takes the samples (resampled along the last axis) and ``axis``; returns the figure."""


def bootstrap(statistic: Statistic, *samples: np.ndarray, bounds: tuple[float, float], seed: int = 0,
              resamples: int = RESAMPLES, level: float = LEVEL) -> Estimate:
    """``statistic`` of ``samples`` (NaN dropped) with its percentile bootstrap interval, clipped to ``bounds``.

    A constant statistic gets a zero-width interval; a sample of fewer than two values gets ``bounds``.
    """
    clean = [finite_values(s) for s in samples]
    if any(s.size == 0 for s in clean):
        return Estimate(float("nan"), *bounds)
    value = float(statistic(*clean, axis=-1))
    if any(s.size < 2 for s in clean):
        return Estimate(value, *bounds)
    result = stats.bootstrap(tuple(clean), statistic, vectorized=True, paired=False, n_resamples=resamples,
                             confidence_level=level, method="percentile", batch=100,
                             random_state=np.random.default_rng(seed))
    low, high = result.confidence_interval
    if not (np.isfinite(low) and np.isfinite(high)):  # a constant sample: scipy warns and gives NaN
        low = high = value
    return Estimate(value, max(float(low), bounds[0]), min(float(high), bounds[1]))


def proportion(hits: np.ndarray, *, level: float = LEVEL) -> Estimate:
    """The share of 0/1 ``hits`` that are 1, in percent, with Wilson's score interval (NaN dropped)."""
    h = finite_values(hits)
    if h.size == 0:
        return Estimate(float("nan"), 0.0, 100.0)
    ci = stats.binomtest(int(np.rint(h.sum())), h.size).proportion_ci(confidence_level=level, method="wilson")
    return Estimate(float(h.mean() * 100), float(ci.low * 100), float(ci.high * 100))


def proportion_difference(a: np.ndarray, b: np.ndarray, *, level: float = LEVEL) -> Estimate:
    """The share of 1s in ``a`` minus that in ``b``, in points, with Agresti and Caffo's interval (NaN dropped)."""
    a, b = finite_values(a), finite_values(b)
    if a.size == 0 or b.size == 0:
        return Estimate(float("nan"), -100.0, 100.0)
    pa, pb = (a.sum() + 1) / (a.size + 2), (b.sum() + 1) / (b.size + 2)
    se = np.sqrt(pa * (1 - pa) / (a.size + 2) + pb * (1 - pb) / (b.size + 2))
    z, centre = stats.norm.ppf(0.5 + level / 2), pa - pb
    return Estimate(float((a.mean() - b.mean()) * 100), float(max(centre - z * se, -1) * 100),
                    float(min(centre + z * se, 1) * 100))


def auc_statistic(members: np.ndarray, nonmembers: np.ndarray, axis: int = -1) -> np.ndarray:
    """ROC AUC in percent of scores (higher = member) separating ``members`` from ``nonmembers``, by ranks
    (the Mann-Whitney form, ties counted half), vectorised along ``axis``."""
    members, nonmembers = np.moveaxis(members, axis, -1), np.moveaxis(nonmembers, axis, -1)
    n1, n0 = members.shape[-1], nonmembers.shape[-1]
    ranks = stats.rankdata(np.concatenate([members, nonmembers], axis=-1), axis=-1)
    return (ranks[..., :n1].sum(-1) - n1 * (n1 + 1) / 2) / (n1 * n0) * 100


def mean_difference(a: np.ndarray, b: np.ndarray, axis: int = -1) -> np.ndarray:
    """Mean of ``a`` minus mean of ``b``, in percent of the values' unit (0/1 outcomes give points)."""
    return (np.mean(a, axis=axis) - np.mean(b, axis=axis)) * 100


def finite_values(values: np.ndarray) -> np.ndarray:
    """A 1-D float array without NaN (infinities keep their rank)."""
    arr = np.asarray(values, dtype=float).ravel()
    return arr[~np.isnan(arr)]
