"""Per-example verification: the challenge's epsilon, F and the U-LiRA test, on cases with known answers."""

from __future__ import annotations

import math

import numpy as np
import pytest

from disgorge.evaluate.strong import (
    epsilon_from_rates,
    example_epsilons,
    forgetting_score,
    strong_scores,
    threshold_rates,
    ulira_auc,
)


def test_epsilon_from_rates_matches_the_definition():
    """epsilon = max(log((1-d-FPR)/FNR), log((1-d-FNR)/FPR)); perfect rules are infinite, one-sided ones ignored."""
    assert epsilon_from_rates(np.array([0.1]), np.array([0.2]), delta=0.01) == pytest.approx(
        max(math.log(0.89 / 0.2), math.log(0.79 / 0.1)))
    assert epsilon_from_rates(np.array([0.0]), np.array([0.0])) == math.inf
    assert epsilon_from_rates(np.array([0.0, 0.5]), np.array([0.3, 0.5])) == 0.0
    assert epsilon_from_rates(np.array([]), np.array([])) == 0.0


def test_threshold_rates_cover_every_cut():
    """Cutting between two separated samples gives a rule with no errors."""
    fpr, fnr = threshold_rates(np.array([5.0, 6.0]), np.array([1.0, 2.0]))
    assert any(a == 0 and b == 0 for a, b in zip(fpr, fnr, strict=True))


def test_forgetting_score_bins():
    """Epsilons below 0.5 score 1, each further 0.5 halves the score, infinity scores 2/2^13."""
    assert forgetting_score(np.array([0.0, 0.49])) == 1.0
    assert forgetting_score(np.array([0.5])) == 0.5
    assert forgetting_score(np.array([math.inf])) == pytest.approx(2 / 2**13)


def test_indistinguishable_models_score_high_and_separated_low():
    """Same distributions: F near its small-sample ceiling and U-LiRA near 50; disjoint ones (unlearned loss kept
    lower or higher): F tiny, AUC 100; epsilons are per example, so only the separated examples are caught."""
    rng = np.random.default_rng(0)
    same = forgetting_score(example_epsilons(rng.normal(1, 0.3, (16, 60)), rng.normal(1, 0.3, (16, 60))))
    kept_lower = forgetting_score(example_epsilons(rng.normal(0, 0.1, (16, 60)), rng.normal(3, 0.1, (16, 60))))
    kept_higher = forgetting_score(example_epsilons(rng.normal(3, 0.1, (16, 60)), rng.normal(0, 0.1, (16, 60))))
    assert same > 0.3 > 0.01 > max(kept_lower, kept_higher)
    unlearned, retrained = rng.normal(1, 0.3, (16, 12)), rng.normal(1, 0.3, (16, 12))
    unlearned[:, :4] -= 3  # the first 4 examples keep a clearly lower loss than retraining gives
    eps = example_epsilons(unlearned, retrained)
    assert eps.shape == (12,) and np.isinf(eps[:4]).all() and np.isfinite(eps[4:]).all()
    with pytest.raises(ValueError, match="same examples"):
        example_epsilons(unlearned, retrained[:, :11])
    assert abs(ulira_auc(rng.normal(1, 0.3, (8, 60)), rng.normal(1, 0.3, (8, 60))) - 50) < 8
    assert ulira_auc(rng.normal(0, 0.1, (8, 60)), rng.normal(3, 0.1, (8, 60))) > 99


def test_strong_scores_combine_utility():
    """The final score is F scaled by retain and test accuracy ratios to retraining."""
    rng = np.random.default_rng(1)
    loss = rng.exponential(size=(6, 20))
    conf = np.exp(-loss)
    s = strong_scores(loss, loss[::-1], conf, conf[::-1], ra=(90.0, 100.0), ta=(80.0, 100.0))
    assert s["final_score"] == pytest.approx(s["forget_score"] * 0.9 * 0.8, abs=1e-3)
    assert s["models"] == 6 and s["examples"] == 20
    with pytest.raises(ValueError):
        ulira_auc(loss[:2], loss[:2])
