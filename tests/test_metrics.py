"""Verification figures against hand-checked cases."""

from __future__ import annotations

import math

import numpy as np
import pytest

from disgorge.evaluate import accuracy, avg_gap, mia_auc, mia_efficacy
from disgorge.tasks.base import CLASSIFICATION_FIGURES


def test_accuracy_in_percent():
    """Accuracy is printed in percent, NaN for nothing."""
    assert accuracy(np.array([1, 0, 1, 1])) == 75.0
    assert math.isnan(accuracy(np.array([])))


def test_mia_auc_extremes_and_chance():
    """Scores are higher = member: forget losses all below test losses (loss attack, score -loss) give 100;
    identical distributions about 50."""
    assert mia_auc(-np.array([0.1, 0.2]), -np.array([1.0, 2.0, 3.0])) == 100.0
    assert mia_auc(-np.array([5.0, 6.0]), -np.array([1.0, 2.0])) == 0.0
    rng = np.random.default_rng(0)
    assert abs(mia_auc(-rng.exponential(size=4000), -rng.exponential(size=4000)) - 50) < 3


def test_split_figures_loss_attack_is_the_roc_auc_of_minus_loss():
    """The classifier's MIA AUC is the loss-threshold attack: sklearn's ROC AUC of -loss, forget positive (ties
    included), exactly as before the score-based :func:`mia_auc` served both task kinds."""
    from sklearn.metrics import roc_auc_score

    from disgorge.evaluate import split_figures

    rng = np.random.default_rng(2)
    for forget_loss, test_loss in ((rng.exponential(0.5, 40), rng.exponential(1.0, 60)),
                                   (np.round(rng.exponential(1.0, 50), 1), np.round(rng.exponential(1.0, 30), 1))):
        outs = [{"loss": loss, "correct": np.ones(len(loss)), "confidence": np.exp(-loss)}
                for loss in (forget_loss, rng.exponential(0.3, 80), test_loss)]
        y = np.r_[np.ones(len(forget_loss)), np.zeros(len(test_loss))]
        want = float(roc_auc_score(y, -np.concatenate([forget_loss, test_loss])) * 100)
        assert split_figures(*outs)["mia_auc"] == want


def test_mia_efficacy_tracks_membership_signal():
    """Forget records as confident as members count as members (low efficacy); as unsure as test, non-members."""
    rng = np.random.default_rng(0)
    members = np.clip(rng.normal(0.99, 0.005, 500), 0, 1)
    nonmembers = rng.uniform(0.2, 0.9, 300)
    assert mia_efficacy(members, nonmembers, np.clip(rng.normal(0.99, 0.005, 100), 0, 1)) < 10
    assert mia_efficacy(members, nonmembers, rng.uniform(0.2, 0.9, 100)) > 90


def test_mia_efficacy_uses_a_balanced_member_sample(monkeypatch):
    """The SVC is fitted on as many members as non-members (SalUn's shadow split): every non-member, and a subset of
    the members drawn without replacement, reproducibly for a seed and differently for another seed."""
    import disgorge.evaluate.metrics as metrics

    fitted: list[tuple[np.ndarray, np.ndarray]] = []

    class RecordingSVC(metrics.SVC):
        def fit(self, x, y, sample_weight=None):
            fitted.append((np.asarray(x).ravel().copy(), np.asarray(y).copy()))
            return super().fit(x, y, sample_weight)

    monkeypatch.setattr(metrics, "SVC", RecordingSVC)
    rng = np.random.default_rng(1)
    members, nonmembers, forget = rng.uniform(0.8, 1, 1000), rng.uniform(0, 1, 50), rng.uniform(0, 1, 40)
    for seed in (3, 3, 4):
        mia_efficacy(members, nonmembers, forget, seed=seed)
    assert len(fitted) == 3
    drawn = []
    for x, y in fitted:
        assert sorted(set(y.tolist())) == [0, 1]
        assert int((y == 1).sum()) == int((y == 0).sum()) == len(nonmembers) == 50
        np.testing.assert_array_equal(np.sort(x[y == 0]), np.sort(nonmembers))
        sample = x[y == 1]
        assert np.isin(sample, members).all() and len(set(sample.tolist())) == len(sample)
        drawn.append(sample)
    np.testing.assert_array_equal(drawn[0], drawn[1])
    assert not np.array_equal(np.sort(drawn[0]), np.sort(drawn[2]))
    # fewer members than non-members: every member is used once
    fitted.clear()
    mia_efficacy(members[:20], nonmembers, forget)
    ((x, y),) = fitted
    np.testing.assert_array_equal(np.sort(x[y == 1]), np.sort(members[:20]))


def test_avg_gap_is_mean_absolute_difference():
    """Avg Gap averages |method - reference| over UA, RA, TA and MIA-efficacy."""
    ref = {"ua": 5.0, "ra": 100.0, "ta": 94.0, "mia_efficacy": 12.0}
    method = {"ua": 7.0, "ra": 99.0, "ta": 95.0, "mia_efficacy": 8.0, "effect": 50.0}
    assert avg_gap(method, ref, CLASSIFICATION_FIGURES.gap) == pytest.approx((2 + 1 + 1 + 4) / 4)
