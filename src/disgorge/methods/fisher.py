"""``fisher``: Fisher forgetting, noise scaled inversely to each weight's importance for the retain set."""

from __future__ import annotations

from dataclasses import dataclass
from typing import ClassVar

import torch
from torch import nn

from ..training.loop import make_optimizer, mean_loss
from ._tools import squared_gradients
from .base import BudgetConfig, Method, UnlearnRequest, lr_option, option
from .registry import register


@register
class Fisher(Method):
    """Fisher forgetting (Golatkar et al., CVPR 2020): add Gaussian noise with variance
    ``min(alpha / (F_retain + eps), max_var)`` per weight, so weights the retain set does not need are scrambled
    and the ones it relies on are kept. ``F_retain`` is the diagonal (empirical) Fisher on the retain set. A short
    fine-tune on retain (``repair_epochs``) then restores the utility the noise cost, as later work does."""

    name: ClassVar[str] = "fisher"
    family: ClassVar[str] = "parameter-level"
    summary: ClassVar[str] = "add noise to the weights the retain set does not need (inverse Fisher scaling)"
    paper: ClassVar[str] = "Golatkar et al., Eternal Sunshine of the Spotless Net, CVPR 2020 (Fisher forgetting)"
    needs: ClassVar[frozenset[str]] = frozenset({"retain"})

    @dataclass
    class Config(BudgetConfig):
        """Fisher-forgetting settings."""

        alpha: float = option(1e-8, "noise scale: variance = alpha / Fisher", low=0)
        max_std: float = option(1.0, "cap on the noise standard deviation per weight", low=0)
        batch_size: int = option(32, "batch size of the Fisher estimate", low=1)
        repair_epochs: int = option(5, "epochs of fine-tuning on retain after the noise (0: none)", low=0)
        lr: float = lr_option(1e-3)

    def _unlearn(self, model: nn.Module, request: UnlearnRequest) -> nn.Module:
        cfg = self.config
        fisher = squared_gradients(model, request.task, request.retain, cfg.batch_size)
        generator = torch.Generator().manual_seed(request.seed + 11)
        with torch.no_grad():
            for n, p in model.named_parameters():
                if n in fisher:
                    std = (cfg.alpha / (fisher[n] + 1e-12)).sqrt().clamp(max=cfg.max_std)
                    p.add_(std * torch.randn(p.shape, generator=generator, device="cpu").to(p.device))
        if cfg.repair_epochs:
            optimizer = make_optimizer(model.parameters(), request.train, lr=cfg.lr)
            # the noise already moved the model: the guard would measure from the noisy state, so it stays off
            self.fit(model, request, request.loader("retain"), mean_loss(request.task), optimizer,
                                        epochs=cfg.repair_epochs, guard=False, description="fisher repair")
        return model
