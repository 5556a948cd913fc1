"""Verification figures against hand-checked cases."""

from __future__ import annotations

import math

import numpy as np
import pytest

from disgorge.evaluate import accuracy, avg_gap, mia_auc, mia_efficacy


def test_accuracy_in_percent():
    """Accuracy is printed in percent, NaN for nothing."""
    assert accuracy(np.array([1, 0, 1, 1])) == 75.0
    assert math.isnan(accuracy(np.array([])))


def test_mia_auc_extremes_and_chance():
    """Forget losses all below test losses give 100; identical distributions about 50."""
    assert mia_auc(np.array([0.1, 0.2]), np.array([1.0, 2.0, 3.0])) == 100.0
    assert mia_auc(np.array([5.0, 6.0]), np.array([1.0, 2.0])) == 0.0
    rng = np.random.default_rng(0)
    assert abs(mia_auc(rng.exponential(size=4000), rng.exponential(size=4000)) - 50) < 3


def test_mia_efficacy_tracks_membership_signal():
    """Forget records as confident as members count as members (low efficacy); as unsure as test, non-members."""
    rng = np.random.default_rng(0)
    members = np.clip(rng.normal(0.99, 0.005, 500), 0, 1)
    nonmembers = rng.uniform(0.2, 0.9, 300)
    assert mia_efficacy(members, nonmembers, np.clip(rng.normal(0.99, 0.005, 100), 0, 1)) < 10
    assert mia_efficacy(members, nonmembers, rng.uniform(0.2, 0.9, 100)) > 90


def test_mia_efficacy_uses_a_balanced_member_sample():
    """The SVC sees as many members as non-members (SalUn's shadow split), drawn reproducibly."""
    rng = np.random.default_rng(1)
    members, nonmembers, forget = rng.uniform(0.8, 1, 1000), rng.uniform(0, 1, 50), rng.uniform(0, 1, 40)
    assert mia_efficacy(members, nonmembers, forget, seed=3) == mia_efficacy(members, nonmembers, forget, seed=3)


def test_avg_gap_is_mean_absolute_difference():
    """Avg Gap averages |method - reference| over UA, RA, TA and MIA-efficacy."""
    ref = {"ua": 5.0, "ra": 100.0, "ta": 94.0, "mia_efficacy": 12.0}
    method = {"ua": 7.0, "ra": 99.0, "ta": 95.0, "mia_efficacy": 8.0, "effect": 50.0}
    assert avg_gap(method, ref) == pytest.approx((2 + 1 + 1 + 4) / 4)
