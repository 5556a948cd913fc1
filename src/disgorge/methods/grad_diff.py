"""``grad_diff`` (NegGrad+): ascend the forget loss while descending the retain loss."""

from __future__ import annotations

from dataclasses import dataclass
from typing import ClassVar

import torch
from torch import nn

from ..training.loop import make_optimizer
from .base import FineTuneConfig, Method, UnlearnRequest, lr_option, option
from .registry import register


@register
class GradDiff(Method):
    """NegGrad+ (Kurmanji et al., SCRUB, NeurIPS 2023): minimise ``beta * L_retain - (1 - beta) * L_forget``.

    Each step takes one retain batch and one forget batch; the retain term keeps utility while the ascent term
    removes the forget set's effect. The forget loss is capped at ``forget_loss_cap`` so ascent cannot run away.
    """

    name: ClassVar[str] = "grad_diff"
    family: ClassVar[str] = "fine-tune"
    summary: ClassVar[str] = "gradient ascent on the forget set balanced by descent on the retain set"
    paper: ClassVar[str] = "Kurmanji et al., Towards Unbounded Machine Unlearning, NeurIPS 2023 (NegGrad+)"
    needs: ClassVar[frozenset[str]] = frozenset({"forget", "retain"})

    @dataclass
    class Config(FineTuneConfig):
        """NegGrad+ settings."""

        epochs: int = option(3, "passes over the retain set", low=1)
        lr: float = lr_option(1e-3)
        beta: float = option(0.9, "weight of the retain term; 1 - beta weighs the forget ascent", low=0, high=1)
        forget_loss_cap: float = option(5.0, "ascent stops pushing an example once its loss exceeds this", low=0)

    def _unlearn(self, model: nn.Module, request: UnlearnRequest) -> nn.Module:
        task, cfg = request.task, self.config
        forget_batches = request.cycle("forget")
        optimizer = make_optimizer(model.parameters(), request.train, lr=cfg.lr)

        def loss(m: nn.Module, retain_batch: dict[str, torch.Tensor]) -> torch.Tensor:
            retain = task.per_example_loss(m, retain_batch).mean()
            forget = task.per_example_loss(m, next(forget_batches)).clamp(max=cfg.forget_loss_cap).mean()
            return cfg.beta * retain - (1 - cfg.beta) * forget

        self.fit(model, request, request.loader("retain"), loss, optimizer, epochs=cfg.epochs)
        return model
