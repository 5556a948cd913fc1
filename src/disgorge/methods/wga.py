"""``wga``: weighted gradient ascent, each forget token's ascent weighted by its own probability (WGA)."""

from __future__ import annotations

from dataclasses import dataclass
from typing import ClassVar

import torch
from torch import nn

from ..tasks.base import Batch
from ._tools import check_token_logits, fit_forget_with_retain, masked_mean, target_token_log_probs, token_logits
from .base import FineTuneConfig, Method, UnlearnRequest, lr_option, option
from .registry import register


def wga_loss(log_probs: torch.Tensor, mask: torch.Tensor, beta: float) -> torch.Tensor:
    """Mean over the tokens ``mask`` keeps of ``sg(p^beta) * log p``: minimising it is gradient ascent on each token's
    negative log-likelihood, weighted by the token's probability to the power ``beta`` (a constant, no gradient)."""
    weight = (beta * log_probs.detach()).exp()
    return masked_mean(weight * log_probs, mask)


@register
class WGA(Method):
    """Weighted gradient ascent (Wang et al., ICLR 2025). Gradient ascent's gradient on a token carries the inverse
    confidence ``1/p``, so tokens already forgotten dominate and ascent runs away; WGA weights each forget token's
    log-likelihood by ``p_theta(y_t | x, y_<t)^beta``, held constant (stop-gradient), and minimises
    ``mean_t sg(p_t^beta) * log p_t`` over the answer tokens (a classifier's label is one token), plus
    ``retain_weight`` times the retain cross-entropy."""

    name: ClassVar[str] = "wga"
    family: ClassVar[str] = "fine-tune"
    summary: ClassVar[str] = "gradient ascent on forget tokens weighted by their own probability, keep retain"
    paper: ClassVar[str] = ("Wang et al., Rethinking LLM Unlearning Objectives: A Gradient Perspective and Go Beyond, "
                            "ICLR 2025 (WGA)")
    needs: ClassVar[frozenset[str]] = frozenset({"forget", "retain"})

    @dataclass
    class Config(FineTuneConfig):
        """WGA settings."""

        epochs: int = option(3, "passes over the retain set (forget batches cycle alongside)", low=1)
        lr: float = lr_option(1e-3)
        beta: float = option(1.0, "power of the token probability that weights its ascent (0: plain gradient "
                                  "ascent)", low=0)
        retain_weight: float = option(1.0, "weight of the retain cross-entropy term (0: forget loss only)", low=0)

    def _check(self, request: UnlearnRequest) -> None:
        """Per-token scores are needed (a language model's answer tokens or a classifier's labels)."""
        check_token_logits(self, request.task)

    def _unlearn(self, model: nn.Module, request: UnlearnRequest) -> nn.Module:
        task, beta = request.task, self.config.beta

        def forget_loss(m: nn.Module, batch: Batch) -> torch.Tensor:
            logits, targets, mask = token_logits(task, m, batch)
            return wga_loss(target_token_log_probs(logits, targets), mask, beta)

        return fit_forget_with_retain(self, model, request, forget_loss)
