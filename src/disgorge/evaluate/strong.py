"""Per-example verification against many retrained models (Hayes et al., 2024; NeurIPS 2023 unlearning challenge).

Given, for every forget example, a score (its loss) under K unlearned models and K models retrained without the
forget set, each example gets an epsilon from the best of several decision rules that try to tell the two apart
(a threshold at every observed value, and a cross-validated logistic regression): for a rule with false-positive rate
FPR and false-negative rate FNR, ``epsilon = max(log((1 - delta - FPR) / FNR), log((1 - delta - FNR) / FPR))``.
Epsilons are binned (width 0.5, 13 bins) and each example scores ``2 / 2**bin``; their mean is the forgetting
score F (1 = indistinguishable from retraining). The challenge's final score is ``F * RA_U/RA_R * TA_U/TA_R``.

The U-LiRA style test fits, per example, Gaussians to the logit-scaled confidence under the unlearned and the
retrained models, leaving the target model out, and scores the target by the likelihood ratio; its AUC over all
(example, target) pairs is 50% when unlearning is indistinguishable from retraining.
"""

from __future__ import annotations

import math
import warnings

import numpy as np
from sklearn.linear_model import LogisticRegression
from sklearn.model_selection import StratifiedKFold

from .metrics import mia_auc

DELTA = 0.01
BIN_WIDTH = 0.5
BINS = 13


def epsilon_from_rates(fpr: np.ndarray, fnr: np.ndarray, delta: float = DELTA) -> float:
    """The largest epsilon any decision rule with these error rates certifies (0 when no rule does better)."""
    best = 0.0
    for a, b in zip(np.atleast_1d(fpr), np.atleast_1d(fnr), strict=True):
        if a == 0 and b == 0:
            return math.inf  # a perfect rule: the two distributions do not overlap
        if a == 0 or b == 0:
            continue  # a rule that never errs one way says nothing about the ratio
        with np.errstate(divide="ignore", invalid="ignore"):
            values = np.array([np.log(1 - delta - a) - np.log(b), np.log(1 - delta - b) - np.log(a)])
        if np.isnan(values).all():
            return math.inf  # both error rates above 1 - delta: the rule read backwards is near perfect
        best = max(best, float(np.nanmax(values)))
    return best


def threshold_rates(unlearned: np.ndarray, retrained: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """FPR and FNR of "unlearned if score > t" for every observed score t (unlearned = positive), as the challenge
    does; unlearned models that keep a clearly *lower* loss show up as rates near 1, which
    :func:`epsilon_from_rates` counts as a near-perfect rule read backwards."""
    scores = np.concatenate([retrained, unlearned])
    labels = np.concatenate([np.zeros(len(retrained)), np.ones(len(unlearned))])
    thresholds = np.unique(scores)
    predicted = scores[None, :] > thresholds[:, None]
    fpr = (predicted & (labels == 0)).sum(1) / max(len(retrained), 1)
    fnr = (~predicted & (labels == 1)).sum(1) / max(len(unlearned), 1)
    return fpr, fnr


def logistic_rates(unlearned: np.ndarray, retrained: np.ndarray, seed: int = 0) -> tuple[float, float]:
    """Cross-validated FPR and FNR of a logistic-regression rule on the score."""
    x = np.concatenate([retrained, unlearned]).reshape(-1, 1)
    x = (x - x.mean()) / (x.std() + 1e-12)
    y = np.concatenate([np.zeros(len(retrained)), np.ones(len(unlearned))])
    folds = min(3, len(retrained), len(unlearned))
    if folds < 2:
        return 0.5, 0.5
    fp = fn = 0.0
    for train, test in StratifiedKFold(folds, shuffle=True, random_state=seed).split(x, y):
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            pred = LogisticRegression().fit(x[train], y[train]).predict(x[test])
        fp += float(((pred == 1) & (y[test] == 0)).sum())
        fn += float(((pred == 0) & (y[test] == 1)).sum())
    return fp / len(retrained), fn / len(unlearned)


def example_epsilons(unlearned: np.ndarray, retrained: np.ndarray, delta: float = DELTA) -> np.ndarray:
    """Per forget example, epsilon from the best rule; inputs are ``[K models, S examples]`` scores."""
    if unlearned.shape[1] != retrained.shape[1]:
        raise ValueError("unlearned and retrained scores must cover the same examples")
    out = np.empty(unlearned.shape[1])
    for s in range(unlearned.shape[1]):
        u, r = unlearned[:, s], retrained[:, s]
        fpr, fnr = threshold_rates(u, r)
        lfpr, lfnr = logistic_rates(u, r)
        out[s] = epsilon_from_rates(np.append(fpr, lfpr), np.append(fnr, lfnr), delta)
    return out


def forgetting_score(epsilons: np.ndarray, bin_width: float = BIN_WIDTH, bins: int = BINS) -> float:
    """F: the mean over examples of ``2 / 2**bin(epsilon)`` (1 when every epsilon is below ``bin_width``)."""
    index = np.digitize(epsilons, np.arange(bins) * bin_width)
    return float(np.mean(2.0 / 2.0 ** index))


def logit_confidence(confidence: np.ndarray, eps: float = 1e-7) -> np.ndarray:
    """``log(p / (1 - p))`` of the true-class probability, the statistic LiRA models as Gaussian."""
    p = np.clip(confidence, eps, 1 - eps)
    return np.log(p) - np.log1p(-p)


def ulira_auc(unlearned: np.ndarray, retrained: np.ndarray) -> float:
    """U-LiRA style AUC (percent) of telling an unlearned from a retrained model, per example, leave-one-out.

    ``unlearned`` and ``retrained`` are ``[K models, S examples]`` logit-scaled confidences.
    """
    k_u, k_r = unlearned.shape[0], retrained.shape[0]
    if k_u < 3 or k_r < 3:
        raise ValueError("U-LiRA needs at least 3 unlearned and 3 retrained models")
    scores: dict[bool, list[np.ndarray]] = {True: [], False: []}
    for target_set, is_unlearned in ((unlearned, True), (retrained, False)):
        for i in range(target_set.shape[0]):
            u = np.delete(unlearned, i, axis=0) if is_unlearned else unlearned
            r = np.delete(retrained, i, axis=0) if not is_unlearned else retrained
            scores[is_unlearned].append(_log_gauss(target_set[i], u) - _log_gauss(target_set[i], r))
    return mia_auc(np.concatenate(scores[True]), np.concatenate(scores[False]))


def _log_gauss(x: np.ndarray, sample: np.ndarray) -> np.ndarray:
    mu, sd = sample.mean(0), sample.std(0) + 1e-3
    return -0.5 * ((x - mu) / sd) ** 2 - np.log(sd)


def strong_scores(unlearned_loss: np.ndarray, retrained_loss: np.ndarray, unlearned_conf: np.ndarray,
                  retrained_conf: np.ndarray, ra: tuple[float, float], ta: tuple[float, float],
                  delta: float = DELTA) -> dict[str, float]:
    """F, the challenge's final score, mean epsilon and U-LiRA AUC from per-model, per-example outputs.

    ``ra`` and ``ta`` are (unlearned, retrained) mean retain and test accuracies.
    """
    eps = example_epsilons(unlearned_loss, retrained_loss, delta)
    f = forgetting_score(eps)
    finite = eps[np.isfinite(eps)]
    return {
        "forget_score": round(f, 4),
        "final_score": round(f * (ra[0] / ra[1]) * (ta[0] / ta[1]), 4),
        "epsilon_mean": round(float(finite.mean()), 4) if len(finite) else None,
        "epsilon_infinite": int((~np.isfinite(eps)).sum()),
        "ulira_auc": round(ulira_auc(logit_confidence(unlearned_conf), logit_confidence(retrained_conf)), 4),
        "models": int(unlearned_loss.shape[0]),
        "examples": int(unlearned_loss.shape[1]),
    }
