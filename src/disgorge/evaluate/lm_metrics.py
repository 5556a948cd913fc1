"""Language-model unlearning metrics (TOFU, MUSE), as plain functions of numbers the model already produced.

Every function takes numpy arrays / strings (per-question mean NLLs, per-token log-probabilities, generated text)
and returns floats or arrays, except :func:`vocab_logprob_moments`, which reduces the model's own ``[..., V]``
log-probability tensor in torch; nothing here runs a model. The definitions follow the reference implementations:

* TOFU (Maini et al., 2024; repo ``locuslab/tofu``, ``evaluate_util.py`` and ``aggregate_eval_stat.py``) and its
  port in OpenUnlearning (repo ``locuslab/open-unlearning``, ``src/evals/metrics/memorization.py``, ``utils.py``,
  ``utility.py``, ``privacy.py``):

  - answer probability: ``exp(-mean token NLL)`` of the answer given the question (length-normalised).
  - ROUGE-L recall of the generation against the gold answer, ``rouge_score`` with ``use_stemmer=True``.
  - truth ratio ``R = P_pert / P_para`` where ``P_para = exp(-mean NLL)`` of the paraphrased answer and ``P_pert``
    is ``exp(-mean over the K perturbed answers of their mean NLLs)``, i.e. the *geometric* mean of the perturbed
    answers' length-normalised probabilities (both repos average the NLLs, not the probabilities).
  - utility form (retain, real authors, world facts): ``mean(max(0, 1 - R))`` (OpenUnlearning "true_better");
    forget-set form: ``mean(min(R, 1/R))`` (OpenUnlearning "closer_to_1_better").
  - forget quality: ``scipy.stats.ks_2samp`` p-value between the unlearned and the retrained model's per-question
    forget-set truth ratios; TOFU feeds ``1/R`` (its ``exp(perturbed - paraphrased)``) to the test. The KS p-value
    is unchanged by a strictly monotone map applied to both samples, so R and 1/R give the same number.
  - model utility: harmonic mean (``scipy.stats.hmean``) of the utility numbers, 0 if any is 0.
  - normalised probability (real authors, world facts): ``P_true / (P_true + sum_k P_pert_k)``.

* Membership-inference scores, per sequence, from the log-probabilities of the scored tokens, as in
  OpenUnlearning's ``src/evals/metrics/mia/`` (``loss.py``, ``zlib.py``, ``min_k.py``, ``min_k_plus_plus.py``)
  and MUSE (``swj0419/muse_bench``, ``jaechan-repo/muse_bench`` ``privleak/get_ppl_utils.py``):

  - LOSS: mean NLL.  zlib: mean NLL divided by ``len(zlib.compress(text.encode("utf-8")))``.
  - Min-K% Prob: mean of the lowest ``max(1, int(n * k))`` token log-probs, ``k = 0.4`` (the value both
    OpenUnlearning's configs and MUSE's privleak key ``Min-40%`` use).
  - Min-K%++: per token ``(log p(x_t) - mu_t) / sigma_t`` with ``mu_t``, ``sigma_t`` the mean and standard
    deviation of ``log p`` over the vocabulary under the model's own next-token distribution; then Min-K% over these.
    As OpenUnlearning, the variance is floored at 1e-6 (so ``sigma_t >= 1e-3``): :func:`minkpp_score` applies that
    floor to the ``sigma`` it is given (:func:`vocab_logprob_moments` only keeps the variance above 1e-12, so that
    rounding cannot make it negative before the square root).

  The sources return these as "lower means member" numbers (NLL, ``-mean(min-k log-probs)``). Here every score is
  negated so that HIGHER means MORE LIKELY A MEMBER, and :func:`disgorge.evaluate.metrics.mia_auc` (the package's
  one MIA AUC, shared with the classifiers' loss attack) is the ordinary ROC AUC with members as the positive class;
  the AUC value is identical to OpenUnlearning's ``mia_auc`` (which labels forget 0 / holdout 1 on the un-negated
  scores), expressed in percent.  A sequence with no scored tokens gets NaN (OpenUnlearning returns 0 for Min-K,
  which is an arbitrary value); ``mia_auc`` drops NaN scores.

* MUSE (Shi et al., 2024): PrivLeak and VerbMem.

  - PrivLeak is ``(AUC_unl - AUC_ret) / AUC_ret * 100`` on MUSE's own AUC for Min-40%, which labels the forget set
    as the *negative* class, i.e. ``AUC_MUSE = 1 - AUC`` in the convention above (OpenUnlearning's ``privleak`` does
    the same ``1 - x`` flip on its AUCs). :func:`privleak` takes ``mia_auc`` outputs (percent, members
    positive) and applies that flip, so an unlearned model that still recognises its forget set (AUC near 100)
    scores near -100, one that over-forgets (AUC well below the retrained model's) scores positive, and 0 is ideal.
  - VerbMem: mean ROUGE-L **F1** (``fmeasure``, MUSE's ``mean_rougeL``) of the generated continuation against the
    true continuation, times 100: :func:`verbmem_scores` per item (0..1), :func:`verbmem` their mean in percent.
    MUSE's scorer does not stem (``use_stemmer=False``); OpenUnlearning's port stems. :func:`verbmem_scores` defaults
    to MUSE's setting. MUSE truncates the true continuation to the generation budget (128 tokens) before scoring;
    that is the caller's job since it needs the tokenizer.

Empty inputs give NaN (or an empty array for per-item functions), never an exception; mismatched lengths or shapes
raise ``ValueError``.
"""

from __future__ import annotations

import functools
import zlib
from collections.abc import Sequence
from typing import Any

import numpy as np
import torch
from scipy import stats

from .metrics import _drop_nan

__all__ = [
    "MINK_K",
    "answer_probability",
    "forget_quality",
    "loss_score",
    "mink_score",
    "minkpp_score",
    "model_utility",
    "normalised_answer_probability",
    "privleak",
    "rouge_l",
    "rouge_l_many",
    "truth_ratio",
    "truth_ratio_forget_score",
    "truth_ratio_score",
    "verbmem",
    "verbmem_scores",
    "vocab_logprob_moments",
    "zlib_score",
]

MINK_K = 0.4
"""Default fraction of lowest-probability tokens for Min-K% and Min-K%++ (OpenUnlearning configs, MUSE Min-40%)."""

_SIGMA_FLOOR = 1e-3  # OpenUnlearning clamps the vocabulary variance at 1e-6 before taking the square root.
_VAR_EPS = 1e-12  # keeps a variance that rounding made (slightly) negative out of the square root
_ROUGE_KINDS = ("recall", "f1")


# --------------------------------------------------------------------------------------------------- ROUGE


@functools.lru_cache(maxsize=2)
def _rouge_scorer(use_stemmer: bool) -> Any:
    """A cached ``rouge_score`` ROUGE-L scorer."""
    try:
        from rouge_score import rouge_scorer
    except ImportError as exc:  # pragma: no cover - depends on the environment
        raise ImportError("ROUGE metrics need the 'rouge-score' package (pip install 'disgorge[lm]')") from exc
    return rouge_scorer.RougeScorer(["rougeL"], use_stemmer=use_stemmer)


def rouge_l(prediction: str, reference: str, kind: str = "recall", *, use_stemmer: bool = True) -> float:
    """ROUGE-L of a generated text against its reference, ``kind`` "recall" (TOFU) or "f1" (MUSE), in 0..1."""
    if kind not in _ROUGE_KINDS:
        raise ValueError(f"kind must be one of {_ROUGE_KINDS}, got {kind!r}")
    score = _rouge_scorer(bool(use_stemmer)).score(reference, prediction)["rougeL"]
    return float(score.recall if kind == "recall" else score.fmeasure)


def rouge_l_many(predictions: Sequence[str], references: Sequence[str], kind: str = "recall", *,
                 use_stemmer: bool = True) -> np.ndarray:
    """ROUGE-L per (prediction, reference) pair, as a float array (empty for no pairs)."""
    if len(predictions) != len(references):
        raise ValueError(f"{len(predictions)} predictions but {len(references)} references")
    if kind not in _ROUGE_KINDS:
        raise ValueError(f"kind must be one of {_ROUGE_KINDS}, got {kind!r}")
    pairs = zip(predictions, references, strict=True)
    return np.array([rouge_l(p, r, kind, use_stemmer=use_stemmer) for p, r in pairs], dtype=float)


def verbmem_scores(predictions: Sequence[str], references: Sequence[str], *, use_stemmer: bool = False
                   ) -> np.ndarray:
    """MUSE VerbMem per item: ROUGE-L F1 (0..1) of each continuation vs its true continuation, unstemmed as MUSE."""
    return rouge_l_many(predictions, references, kind="f1", use_stemmer=use_stemmer)


def verbmem(scores: np.ndarray) -> float:
    """MUSE VerbMem: mean of :func:`verbmem_scores` values in percent (NaN scores dropped; NaN for none)."""
    s = _drop_nan(scores)
    return float(np.mean(s)) * 100 if s.size else float("nan")


# ------------------------------------------------------------------------------------ TOFU probabilities


def answer_probability(mean_nll: np.ndarray) -> np.ndarray:
    """Length-normalised answer probability ``exp(-mean token NLL)``, elementwise (a float input keeps its dtype)."""
    nll = np.asarray(mean_nll)
    return np.exp(-(nll if np.issubdtype(nll.dtype, np.floating) else nll.astype(float)))


def _question_arrays(true_mean_nll: np.ndarray, false_mean_nll: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Check and shape per-question NLLs: [N] and [N, K] (a 1-D second array means K = 1)."""
    true = np.asarray(true_mean_nll, dtype=float)
    false = np.asarray(false_mean_nll, dtype=float)
    if true.ndim != 1:
        raise ValueError(f"expected a 1-D array of per-question NLLs, got shape {true.shape}")
    if false.ndim == 1:
        false = false.reshape(-1, 1)
    if false.ndim != 2 or false.shape[0] != true.shape[0]:
        raise ValueError(f"perturbed NLLs must have shape [{true.shape[0]}, K], got {np.shape(false_mean_nll)}")
    if true.size and false.shape[1] == 0:
        raise ValueError("need at least one perturbed answer per question")
    return true, false


def truth_ratio(paraphrase_mean_nll: np.ndarray, perturbed_mean_nll: np.ndarray) -> np.ndarray:
    """TOFU truth ratio per question, ``R = P_pert / P_para`` with the perturbed NLLs averaged (geometric mean)."""
    para, pert = _question_arrays(paraphrase_mean_nll, perturbed_mean_nll)
    if para.size == 0:
        return np.empty(0, dtype=float)
    return np.exp(para - pert.mean(axis=1))


def normalised_answer_probability(true_mean_nll: np.ndarray, perturbed_mean_nll: np.ndarray) -> np.ndarray:
    """TOFU real-authors/world-facts probability ``P_true / (P_true + sum_k P_pert_k)`` per question."""
    true, pert = _question_arrays(true_mean_nll, perturbed_mean_nll)
    if true.size == 0:
        return np.empty(0, dtype=float)
    p_true = np.exp(-true)
    return p_true / (p_true + np.exp(-pert).sum(axis=1))


def truth_ratio_score(ratios: np.ndarray) -> float:
    """Utility form of the truth ratio, ``mean(max(0, 1 - R))`` (higher = prefers the true answer; NaN if empty)."""
    r = _drop_nan(ratios)
    return float(np.mean(np.maximum(0.0, 1.0 - r))) if r.size else float("nan")


def truth_ratio_forget_score(ratios: np.ndarray) -> float:
    """Forget-set form of the truth ratio, ``mean(min(R, 1/R))`` (1 = true and false equally likely; NaN if empty)."""
    r = _drop_nan(ratios)
    if r.size == 0:
        return float("nan")
    with np.errstate(divide="ignore"):
        return float(np.mean(np.minimum(r, 1.0 / r)))


def forget_quality(unlearned: np.ndarray, reference: np.ndarray) -> float:
    """TOFU forget quality: KS-test p-value between two models' forget-set truth ratios (NaN if either is empty)."""
    u, r = _drop_nan(unlearned), _drop_nan(reference)
    if u.size == 0 or r.size == 0:
        return float("nan")
    with np.errstate(divide="ignore"):
        return float(stats.ks_2samp(1.0 / u, 1.0 / r).pvalue)


def model_utility(values: Sequence[float]) -> float:
    """Harmonic mean of utility numbers (0 if any is 0, NaN if empty or any is NaN)."""
    arr = np.asarray(values, dtype=float).ravel()
    if arr.size == 0 or np.isnan(arr).any():
        return float("nan")
    if (arr < 0).any():
        raise ValueError("model utility is a harmonic mean of non-negative numbers")
    if (arr == 0).any():
        return 0.0
    return float(stats.hmean(arr))


# ------------------------------------------------------------------------------------ membership inference


def _sequences(token_logprobs: Sequence[np.ndarray], name: str = "token_logprobs") -> list[np.ndarray]:
    """Per-sequence 1-D float arrays."""
    out = []
    for i, lp in enumerate(token_logprobs):
        arr = np.asarray(lp, dtype=float)
        if arr.ndim != 1:
            raise ValueError(f"{name}[{i}] must be 1-D (one value per scored token), got shape {arr.shape}")
        out.append(arr)
    return out


def _check_k(k: float) -> float:
    """Validate a Min-K fraction."""
    if not 0 < k <= 1:
        raise ValueError(f"k must be in (0, 1], got {k}")
    return float(k)


def _lowest_k_mean(values: np.ndarray, k: float) -> float:
    """Mean of the lowest ``max(1, int(n * k))`` values (NaN for none)."""
    if values.size == 0:
        return float("nan")
    count = max(1, int(values.size * k))
    return float(np.mean(np.sort(values)[:count]))


def loss_score(token_logprobs: Sequence[np.ndarray]) -> np.ndarray:
    """LOSS attack: minus the mean token NLL per sequence (higher = member; NaN for no tokens)."""
    return np.array([float(np.mean(lp)) if lp.size else float("nan") for lp in _sequences(token_logprobs)],
                    dtype=float)


def zlib_score(token_logprobs: Sequence[np.ndarray], texts: Sequence[str]) -> np.ndarray:
    """zlib attack: minus mean token NLL over the zlib-compressed byte length of the text (higher = member)."""
    seqs = _sequences(token_logprobs)
    if len(seqs) != len(texts):
        raise ValueError(f"{len(seqs)} sequences but {len(texts)} texts")
    loss = loss_score(seqs)
    sizes = np.array([len(zlib.compress(text.encode("utf-8"))) for text in texts], dtype=float)
    return loss / sizes


def mink_score(token_logprobs: Sequence[np.ndarray], k: float = MINK_K) -> np.ndarray:
    """Min-K% Prob: mean of the lowest k-fraction of token log-probs per sequence (higher = member)."""
    k = _check_k(k)
    return np.array([_lowest_k_mean(lp, k) for lp in _sequences(token_logprobs)], dtype=float)


def minkpp_score(token_logprobs: Sequence[np.ndarray], mu: Sequence[np.ndarray], sigma: Sequence[np.ndarray],
                 k: float = MINK_K) -> np.ndarray:
    """Min-K%++: Min-K% over ``(log p - mu) / sigma`` with the vocabulary mean/std per position (higher = member)."""
    k = _check_k(k)
    seqs, mus, sigmas = _sequences(token_logprobs), _sequences(mu, "mu"), _sequences(sigma, "sigma")
    if not len(seqs) == len(mus) == len(sigmas):
        raise ValueError(f"{len(seqs)} sequences but {len(mus)} mu and {len(sigmas)} sigma arrays")
    out = []
    for i, (lp, m, s) in enumerate(zip(seqs, mus, sigmas, strict=True)):
        if not lp.shape == m.shape == s.shape:
            raise ValueError(f"sequence {i}: token_logprobs {lp.shape}, mu {m.shape}, sigma {s.shape} differ")
        out.append(_lowest_k_mean((lp - m) / np.maximum(s, _SIGMA_FLOOR), k))
    return np.array(out, dtype=float)


def vocab_logprob_moments(vocab_logprobs: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Mean and std of ``log p`` under ``p`` over the last axis of ``[..., V]`` log-probabilities (Min-K%++'s mu,
    sigma), each ``[...]``, in the input's dtype and on its device; the variance is kept >= 1e-12."""
    if vocab_logprobs.ndim < 1:
        raise ValueError("expected [..., V] log-probabilities, got a scalar")
    p = vocab_logprobs.exp()
    safe = vocab_logprobs.masked_fill(p == 0, 0.0)  # zero-probability entries (log p = -inf) contribute nothing
    mu = (p * safe).sum(-1)
    return mu, ((p * safe.square()).sum(-1) - mu.square()).clamp(min=_VAR_EPS).sqrt()


def privleak(auc_unlearned: float, auc_reference: float) -> float:
    """MUSE PrivLeak in percent from two :func:`~disgorge.evaluate.metrics.mia_auc` values (percent, members
    positive); 0 is ideal.

    Computed on MUSE's flipped AUC ``100 - auc``: ``((100 - u) - (100 - r)) / (100 - r) * 100``. Negative means the
    unlearned model still tells forget from holdout (under-unlearning), positive means over-unlearning. NaN if an
    input is NaN or the reference AUC is 100 (MUSE's denominator would be 0).
    """
    u, r = 100.0 - float(auc_unlearned), 100.0 - float(auc_reference)
    if np.isnan(u) or np.isnan(r) or r == 0:
        return float("nan")
    return (u - r) / r * 100.0
