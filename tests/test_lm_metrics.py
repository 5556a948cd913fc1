"""Language-model unlearning metrics (TOFU, MUSE) against hand-computed values."""

from __future__ import annotations

import math
import zlib

import numpy as np
import pytest
import torch

from disgorge.evaluate.lm_metrics import (
    answer_probability,
    forget_quality,
    loss_score,
    mink_score,
    minkpp_score,
    model_utility,
    normalised_answer_probability,
    privleak,
    rouge_l,
    rouge_l_many,
    truth_ratio,
    truth_ratio_forget_score,
    truth_ratio_score,
    verbmem,
    verbmem_scores,
    vocab_logprob_moments,
    zlib_score,
)
from disgorge.evaluate.metrics import mia_auc

pytest.importorskip("rouge_score")

LN2 = math.log(2)


# ------------------------------------------------------------------------------------------------ ROUGE


def test_rouge_l_recall_and_f1_by_hand():
    """Reference 6 tokens, prediction 4, LCS "the cat" = 2: recall 2/6, precision 2/4, F1 0.4."""
    ref, pred = "the cat sat on the mat", "the cat was sitting"
    assert rouge_l(pred, ref) == pytest.approx(1 / 3)
    assert rouge_l(pred, ref, kind="recall") == pytest.approx(1 / 3)
    assert rouge_l(pred, ref, kind="f1") == pytest.approx(0.4)
    # Argument order matters: swapping makes the 4-token text the reference (recall 2/4).
    assert rouge_l(ref, pred) == pytest.approx(0.5)
    assert rouge_l(ref, ref) == 1.0
    assert rouge_l("", ref) == 0.0


def test_rouge_l_stemming_switch():
    """With the Porter stemmer "cats"->"cat", "sits"->"sit": LCS 2 of 3; without, only "the" matches."""
    assert rouge_l("the cats sat", "the cat sits") == pytest.approx(2 / 3)
    assert rouge_l("the cats sat", "the cat sits", use_stemmer=False) == pytest.approx(1 / 3)


def test_rouge_l_many_and_errors():
    """Vectorised form matches the scalar one; bad kind or lengths raise; no pairs gives an empty array."""
    got = rouge_l_many(["the cat was sitting", "a b c"], ["the cat sat on the mat", "a b c d"])
    np.testing.assert_allclose(got, [1 / 3, 3 / 4])
    assert rouge_l_many([], []).shape == (0,)
    with pytest.raises(ValueError):
        rouge_l("a", "a", kind="precision")
    with pytest.raises(ValueError):
        rouge_l_many(["a"], ["a", "b"])


def test_verbmem_is_mean_f1_in_percent_without_stemming():
    """MUSE VerbMem: F1 (0.4, not recall 1/3) averaged with a perfect copy (1.0) -> 70; MUSE does not stem."""
    scores = verbmem_scores(["the cat was sitting", "exact copy"], ["the cat sat on the mat", "exact copy"])
    np.testing.assert_allclose(scores, [0.4, 1.0])
    assert verbmem(scores) == pytest.approx(70)
    assert verbmem_scores(["the cats sat"], ["the cat sits"])[0] == pytest.approx(1 / 3)
    assert verbmem_scores(["the cats sat"], ["the cat sits"], use_stemmer=True)[0] == pytest.approx(2 / 3)
    assert verbmem(np.array([0.5, np.nan])) == pytest.approx(50)  # NaN scores are dropped
    assert verbmem_scores([], []).shape == (0,)
    assert math.isnan(verbmem(verbmem_scores([], [])))
    with pytest.raises(ValueError):
        verbmem_scores(["a"], [])


# ------------------------------------------------------------------------------------------------ TOFU


def test_answer_probability_is_exp_minus_mean_nll():
    """exp(-0) = 1, exp(-ln 2) = 1/2, exp(-ln 10) = 0.1."""
    np.testing.assert_allclose(answer_probability(np.array([0.0, LN2, math.log(10)])), [1.0, 0.5, 0.1])
    assert answer_probability(np.array([])).shape == (0,)


def test_truth_ratio_uses_geometric_mean_of_perturbed():
    """Q1: P_para 1/2, perturbed 1/4 and 1/16 -> geometric mean 1/8 (arithmetic would be 5/32) -> R = 1/4.

    Q2: P_para 1/16, perturbed 1/4 and 1/4 -> R = 4.
    """
    para = np.array([LN2, math.log(16)])
    pert = np.array([[math.log(4), math.log(16)], [math.log(4), math.log(4)]])
    r = truth_ratio(para, pert)
    np.testing.assert_allclose(r, [0.25, 4.0])
    assert not np.isclose(r[0], (0.25 + 1 / 16) / 2 / 0.5)
    # A 1-D perturbed array is one perturbed answer per question.
    np.testing.assert_allclose(truth_ratio(np.array([LN2]), np.array([math.log(4)])), [0.5])


def test_truth_ratio_aggregates_by_hand():
    """R = [1/4, 4]: utility form mean(max(0, 1-R)) = (3/4 + 0)/2; forget form mean(min(R, 1/R)) = 1/4."""
    r = np.array([0.25, 4.0])
    assert truth_ratio_score(r) == pytest.approx(0.375)
    assert truth_ratio_forget_score(r) == pytest.approx(0.25)
    assert truth_ratio_score(np.array([0.25, np.nan])) == pytest.approx(0.75)  # NaN questions are skipped
    assert math.isnan(truth_ratio_score(np.array([])))
    assert math.isnan(truth_ratio_forget_score(np.array([])))


def test_truth_ratio_shapes_and_empty():
    """Empty in, empty out; mismatched or wrong-rank arrays raise."""
    assert truth_ratio(np.array([]), np.empty((0, 3))).shape == (0,)
    with pytest.raises(ValueError):
        truth_ratio(np.zeros(3), np.zeros((2, 5)))
    with pytest.raises(ValueError):
        truth_ratio(np.zeros((3, 1)), np.zeros((3, 5)))
    with pytest.raises(ValueError):
        truth_ratio(np.zeros(2), np.zeros((2, 0)))


def test_normalised_answer_probability_by_hand():
    """P_true 1/2, perturbed 1/4 and 1/4 -> 0.5 / (0.5 + 0.5) = 0.5; P_true 1, perturbed 1/4 -> 1 / 1.25 = 0.8."""
    got = normalised_answer_probability(np.array([LN2, 0.0]), np.array([[math.log(4), math.log(4)], [math.log(4), 50]]))
    np.testing.assert_allclose(got, [0.5, 0.8], atol=1e-12)


def test_forget_quality_identical_vs_different():
    """Identical truth-ratio samples give p = 1; clearly different distributions give a tiny p; empty gives NaN."""
    rng = np.random.default_rng(0)
    a = np.exp(rng.normal(0.0, 0.3, 200))
    assert forget_quality(a, a.copy()) == pytest.approx(1.0)
    assert forget_quality(a, np.exp(rng.normal(1.5, 0.3, 200))) < 1e-20
    assert math.isnan(forget_quality(np.array([]), a))
    assert math.isnan(forget_quality(a, np.array([np.nan])))


def test_model_utility_harmonic_mean():
    """hmean(1/2, 1/4) = 2 / (2 + 4) = 1/3; any zero gives 0; empty or NaN gives NaN; negatives raise."""
    assert model_utility([0.5, 0.25]) == pytest.approx(1 / 3)
    assert model_utility([0.5, 0.5, 0.5]) == pytest.approx(0.5)
    assert model_utility([0.9, 0.0, 0.7]) == 0.0
    assert math.isnan(model_utility([]))
    assert math.isnan(model_utility([0.5, float("nan")]))
    with pytest.raises(ValueError):
        model_utility([0.5, -0.1])


# ---------------------------------------------------------------------------------------------- MIA scores


def test_loss_score_is_minus_mean_nll():
    """Log-probs [-1, -3] -> -2; a sequence with no scored tokens -> NaN."""
    got = loss_score([np.array([-1.0, -3.0]), np.array([])])
    assert got[0] == pytest.approx(-2.0)
    assert math.isnan(got[1])
    assert loss_score([]).shape == (0,)


def test_zlib_score_divides_by_compressed_length():
    """Same log-probs, two texts: each score is -mean NLL over that text's zlib byte length."""
    texts = ["abc" * 40, "the quick brown fox jumps over the lazy dog"]
    sizes = [len(zlib.compress(t.encode("utf-8"))) for t in texts]
    assert sizes[0] != sizes[1]
    lp = np.array([-1.0, -3.0])
    got = zlib_score([lp, lp], texts)
    np.testing.assert_allclose(got, [-2.0 / sizes[0], -2.0 / sizes[1]])
    assert zlib_score([lp], [""])[0] == pytest.approx(-2.0 / 8)  # zlib of b"" is 8 bytes
    assert zlib_score([], []).shape == (0,)
    with pytest.raises(ValueError):
        zlib_score([lp], ["a", "b"])


def test_mink_picks_lowest_k_fraction():
    """Five tokens, k=0.4 -> int(2.0) = 2 lowest: (-5 + -4)/2 = -4.5, far from the plain mean -1.92."""
    lp = np.array([-0.1, -0.2, -5.0, -0.3, -4.0])
    assert mink_score([lp])[0] == pytest.approx(-4.5)
    assert loss_score([lp])[0] == pytest.approx(-1.92)
    assert mink_score([lp], k=0.2)[0] == pytest.approx(-5.0)
    assert mink_score([lp], k=1.0)[0] == pytest.approx(-1.92)
    # The default k is 40%: of ten tokens -1..-10 it averages the 4 lowest (k=0.3 would take 3, k=0.5 five).
    assert mink_score([-np.arange(1.0, 11.0)])[0] == pytest.approx(-8.5)
    # int(2 * 0.4) = 0 tokens, floored to one: the single lowest.
    assert mink_score([np.array([-1.0, -2.0])])[0] == pytest.approx(-2.0)
    assert math.isnan(mink_score([np.array([])])[0])
    for bad in (0.0, 1.5):
        with pytest.raises(ValueError):
            mink_score([lp], k=bad)
    with pytest.raises(ValueError):
        mink_score([np.zeros((2, 2))])


def test_minkpp_normalises_before_selecting():
    """z = (lp - mu)/sigma = [-2, -1, 0.5]: the lowest z is token 0, although the lowest raw log-prob is token 2."""
    lp = np.array([-1.0, -2.0, -6.0])
    mu = np.array([-0.5, -1.0, -6.5])
    sigma = np.array([0.25, 1.0, 1.0])
    assert minkpp_score([lp], [mu], [sigma])[0] == pytest.approx(-2.0)  # int(3 * 0.4) = 1 token
    assert minkpp_score([lp], [mu], [sigma], k=0.7)[0] == pytest.approx(-1.5)  # int(2.1) = 2 tokens
    assert mink_score([lp])[0] == pytest.approx(-6.0)
    # A degenerate (zero) std is floored at 1e-3, as OpenUnlearning floors the variance at 1e-6.
    assert minkpp_score([np.array([-1.0])], [np.array([-1.001])], [np.array([0.0])])[0] == pytest.approx(1.0)
    assert math.isnan(minkpp_score([np.array([])], [np.array([])], [np.array([])])[0])
    with pytest.raises(ValueError):
        minkpp_score([lp], [mu[:2]], [sigma])
    with pytest.raises(ValueError):
        minkpp_score([lp], [mu], [])


def test_vocab_logprob_moments_by_hand():
    """p = (1/2, 1/4, 1/4, 0): E[log p] = -1.5 ln2, Var = 2.5 ln2^2 - 2.25 ln2^2 -> std 0.5 ln2; uniform -> std 0
    (the variance kept at 1e-12, so 1e-6). Any leading shape, in the input's dtype."""
    rows = torch.log(torch.tensor([[0.5, 0.25, 0.25, 0.0], [0.25, 0.25, 0.25, 0.25]], dtype=torch.float64))
    mu, sigma = vocab_logprob_moments(rows)
    assert mu.dtype == sigma.dtype == torch.float64 and mu.shape == sigma.shape == (2,)
    np.testing.assert_allclose(mu.numpy(), [-1.5 * LN2, -2 * LN2])
    np.testing.assert_allclose(sigma.numpy(), [0.5 * LN2, 1e-6], atol=1e-9)
    batched = torch.log_softmax(torch.randn(3, 5, 7, generator=torch.Generator().manual_seed(0)), dim=-1)
    mu, sigma = vocab_logprob_moments(batched)
    assert mu.shape == sigma.shape == (3, 5) and mu.dtype == torch.float32
    p = batched.double().exp()
    want_mu = (p * batched.double()).sum(-1)
    np.testing.assert_allclose(mu.numpy(), want_mu.numpy(), rtol=1e-5)
    np.testing.assert_allclose(sigma.numpy(), ((p * (batched.double() - want_mu[..., None]) ** 2).sum(-1)).sqrt(),
                               rtol=1e-4)
    with pytest.raises(ValueError):
        vocab_logprob_moments(torch.tensor(0.0))


# ------------------------------------------------------------------------------------------- AUC, PrivLeak


def test_mia_auc_extremes_chance_and_by_hand():
    """Members all above -> 100, all below -> 0; [2,4] vs [1,3] wins 3 of 4 pairs -> 75; same distribution ~50."""
    assert mia_auc(np.array([3.0, 4.0]), np.array([1.0, 2.0])) == 100.0
    assert mia_auc(np.array([1.0, 2.0]), np.array([3.0, 4.0])) == 0.0
    assert mia_auc(np.array([2.0, 4.0]), np.array([1.0, 3.0])) == pytest.approx(75.0)
    assert mia_auc(np.array([1.0, 3.0]), np.array([2.0])) == pytest.approx(50.0)
    rng = np.random.default_rng(0)
    assert abs(mia_auc(rng.normal(size=3000), rng.normal(size=3000)) - 50) < 3
    assert math.isnan(mia_auc(np.array([]), np.array([1.0])))
    assert math.isnan(mia_auc(np.array([1.0]), np.array([np.nan])))
    assert mia_auc(np.array([np.inf, 5.0, np.nan]), np.array([1.0, -np.inf])) == 100.0


def test_scores_point_members_up():
    """Members with higher token log-probs get AUC 100 under LOSS, zlib and Min-K% (same direction for all)."""
    members = [np.array([-0.1, -0.2, -0.3]), np.array([-0.2, -0.1, -0.4])]
    others = [np.array([-2.0, -3.0, -2.5]), np.array([-1.5, -4.0, -2.0])]
    texts = ["same text here"] * 2
    assert mia_auc(loss_score(members), loss_score(others)) == 100.0
    assert mia_auc(zlib_score(members, texts), zlib_score(others, texts)) == 100.0
    assert mia_auc(mink_score(members), mink_score(others)) == 100.0
    zeros = [np.zeros(3)] * 2
    ones = [np.ones(3)] * 2
    assert mia_auc(minkpp_score(members, zeros, ones), minkpp_score(others, zeros, ones)) == 100.0


def test_privleak_sign_and_scale():
    """MUSE flips the AUC: retrained 40 (MUSE 0.6), unlearned 70 (MUSE 0.3) -> (0.3 - 0.6)/0.6 = -50%."""
    assert privleak(50.0, 50.0) == 0.0
    assert privleak(70.0, 40.0) == pytest.approx(-50.0)
    assert privleak(100.0, 50.0) == pytest.approx(-100.0)  # still fully recognisable: under-unlearned
    assert privleak(0.0, 50.0) == pytest.approx(100.0)  # over-unlearned
    assert math.isnan(privleak(60.0, 100.0))
    assert math.isnan(privleak(float("nan"), 50.0))
