"""Verification figures, as functions of per-example outputs (percent, as the papers print them).

Definitions follow DESIGN.md: UA = 100 - forget accuracy; RA/TA = retain/test accuracy; MIA-efficacy is SalUn's
(an RBF SVC, C=3, on the true-class confidence, trained on retain members vs test non-members, applied to the
forget set: the share predicted non-member); the loss-threshold MIA AUC separates forget from test by loss.

:func:`mia_auc` is the one membership-inference AUC of the package: the ROC AUC (percent) of any per-example score
where HIGHER means MORE LIKELY A MEMBER, members the positive class. The classifier's loss attack passes ``-loss``
(the language-model attacks of :mod:`disgorge.evaluate.lm_metrics` pass their scores as they are).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence

import numpy as np
from scipy import stats
from sklearn.metrics import roc_auc_score
from sklearn.svm import SVC


def accuracy(correct: np.ndarray) -> float:
    """Mean of 0/1 correctness, in percent (NaN for no examples)."""
    return float(np.mean(correct) * 100) if len(correct) else float("nan")


def mia_efficacy(conf_retain: np.ndarray, conf_test: np.ndarray, conf_forget: np.ndarray, *, seed: int = 0) -> float:
    """SalUn's MIA-efficacy: share (percent) of forget examples an SVC on confidence calls non-members.

    The SVC is fitted on a random subset of retain (members) as large as the test set (non-members), as SalUn does.
    """
    if len(conf_forget) == 0 or len(conf_test) == 0 or len(conf_retain) == 0:
        return float("nan")
    rng = np.random.default_rng(seed)
    n = min(len(conf_test), len(conf_retain))
    members = conf_retain[rng.choice(len(conf_retain), size=n, replace=False)]
    x = np.concatenate([members, conf_test]).reshape(-1, 1)
    y = np.concatenate([np.ones(n), np.zeros(len(conf_test))])
    clf = SVC(C=3, gamma="auto", kernel="rbf")
    clf.fit(x, y)
    return float((1 - clf.predict(conf_forget.reshape(-1, 1)).mean()) * 100)


def mia_auc(member_scores: np.ndarray, nonmember_scores: np.ndarray) -> float:
    """ROC AUC in percent of scores (higher = member) separating members (positive) from non-members.

    50 means the members look like unseen data; 100 means they are perfectly recognisable. NaN if a side is empty;
    NaN scores are dropped; infinite ones keep their rank (the AUC is computed on ranks, which leaves it unchanged).
    """
    m, n = _drop_nan(member_scores), _drop_nan(nonmember_scores)
    if m.size == 0 or n.size == 0:
        return float("nan")
    y = np.concatenate([np.ones(m.size), np.zeros(n.size)])
    return float(roc_auc_score(y, stats.rankdata(np.concatenate([m, n]))) * 100)


def _drop_nan(values: np.ndarray) -> np.ndarray:
    """The non-NaN entries (infinities kept) of a 1-D float view of ``values``."""
    arr = np.asarray(values, dtype=float).ravel()
    return arr[~np.isnan(arr)]


def avg_gap(method: Mapping[str, float], reference: Mapping[str, float], keys: Sequence[str]) -> float:
    """Mean absolute difference to the retrained reference over ``keys``, a task's ``FigureSet.gap`` (UA, RA, TA
    and MIA-efficacy for classifiers)."""
    return float(np.mean([abs(method[k] - reference[k]) for k in keys]))


def split_figures(forget: Mapping[str, np.ndarray], retain: Mapping[str, np.ndarray],
                  test: Mapping[str, np.ndarray], *, seed: int = 0) -> dict[str, float]:
    """UA, RA, TA, MIA-efficacy and loss-threshold MIA AUC from per-example outputs of one model."""
    return {
        "ua": 100 - accuracy(forget["correct"]),
        "ra": accuracy(retain["correct"]),
        "ta": accuracy(test["correct"]),
        "mia_efficacy": mia_efficacy(retain["confidence"], test["confidence"], forget["confidence"], seed=seed),
        "mia_auc": mia_auc(-forget["loss"], -test["loss"]),
    }
