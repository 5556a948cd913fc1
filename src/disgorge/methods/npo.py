"""``npo`` and ``simnpo``: negative preference optimisation on the forget set, with a retain term."""

from __future__ import annotations

from dataclasses import dataclass
from typing import ClassVar

import torch
import torch.nn.functional as F
from torch import nn

from ._tools import fit_forget_with_retain, frozen_copy, target_log_prob
from .base import FineTuneConfig, Method, UnlearnRequest, lr_option, option
from .registry import register


@dataclass
class _PreferenceConfig(FineTuneConfig):
    epochs: int = option(3, "passes over the retain set", low=1)
    lr: float = lr_option(1e-3)
    beta: float = option(0.5, "inverse temperature of the preference loss", positive=True)
    retain_weight: float = option(1.0, "weight of the retain cross-entropy term (0: forget loss only)", low=0)


@register
class NPO(Method):
    """NPO (Zhang et al., COLM 2024): ``(2/beta) * softplus(beta * (log p_theta(y|x) - log p_ref(y|x)))`` on forget,
    the original model as reference; a bounded alternative to gradient ascent. With a retain term (NPO+RT)."""

    name: ClassVar[str] = "npo"
    family: ClassVar[str] = "fine-tune"
    summary: ClassVar[str] = "push forget likelihood below the original's with a bounded loss, keep retain"
    paper: ClassVar[str] = ("Zhang et al., Negative Preference Optimization: From Catastrophic Collapse to Effective "
                            "Unlearning, COLM 2024")
    needs: ClassVar[frozenset[str]] = frozenset({"forget", "retain"})

    @dataclass
    class Config(_PreferenceConfig):
        """NPO settings."""

    def _unlearn(self, model: nn.Module, request: UnlearnRequest) -> nn.Module:
        reference, task, beta = frozen_copy(model), request.task, self.config.beta

        def forget_loss(m: nn.Module, batch: dict[str, torch.Tensor]) -> torch.Tensor:
            with torch.no_grad():
                ref = target_log_prob(task, reference, batch)
            ratio = target_log_prob(task, m, batch) - ref
            return (2 / beta) * F.softplus(beta * ratio).mean()

        return fit_forget_with_retain(self, model, request, forget_loss)


@register
class SimNPO(Method):
    """SimNPO (Fan et al., 2024): reference-free NPO, ``(2/beta) * softplus(beta * log p_theta(y|x) / |y| + delta)``
    on forget (``|y| = 1`` for a class label), with a retain term."""

    name: ClassVar[str] = "simnpo"
    family: ClassVar[str] = "fine-tune"
    summary: ClassVar[str] = "reference-free NPO with a length-normalised reward margin, keep retain"
    paper: ClassVar[str] = ("Fan et al., Simplicity Prevails: Rethinking Negative Preference Optimization for LLM "
                            "Unlearning, 2024")
    needs: ClassVar[frozenset[str]] = frozenset({"forget", "retain"})

    @dataclass
    class Config(_PreferenceConfig):
        """SimNPO settings."""

        delta: float = option(0.0, "reward margin (gamma in the paper)")

    def _unlearn(self, model: nn.Module, request: UnlearnRequest) -> nn.Module:
        task, beta, delta = request.task, self.config.beta, self.config.delta

        def forget_loss(m: nn.Module, batch: dict[str, torch.Tensor]) -> torch.Tensor:
            return (2 / beta) * F.softplus(beta * target_log_prob(task, m, batch) + delta).mean()

        return fit_forget_with_retain(self, model, request, forget_loss)
