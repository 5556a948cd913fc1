"""``boundary_shrink``: relabel each forget example to its nearest wrong class and fine-tune on that."""

from __future__ import annotations

from dataclasses import dataclass
from typing import ClassVar

import torch
from torch import nn

from ..training.loop import make_optimizer
from ._tools import frozen_copy
from .base import FineTuneConfig, Method, UnlearnRequest, lr_option, option
from .registry import register


@register
class BoundaryShrink(Method):
    """Boundary Shrink (Chen et al., CVPR 2023): an FGSM step on each forget input (against the original model)
    finds the nearest wrong class; fine-tuning on forget examples with those labels shrinks the decision boundary
    around them. A retain term (``retain_weight``) keeps utility."""

    name: ClassVar[str] = "boundary_shrink"
    family: ClassVar[str] = "fine-tune"
    summary: ClassVar[str] = "fine-tune forget examples towards their nearest wrong class (adversarial neighbour)"
    paper: ClassVar[str] = ("Chen et al., Boundary Unlearning: Rapid Forgetting of Deep Networks via Shifting the "
                            "Decision Space, CVPR 2023")
    needs: ClassVar[frozenset[str]] = frozenset({"forget", "labels", "adversarial"})

    @dataclass
    class Config(FineTuneConfig):
        """Boundary Shrink settings."""

        epochs: int = option(10, "passes over the forget set", low=1)
        lr: float = lr_option(5e-4)
        step: float = option(0.1, "FGSM step size on the inputs", low=0)
        retain_weight: float = option(3.0, "weight of a retain cross-entropy term (0: forget only)", low=0)

    def _unlearn(self, model: nn.Module, request: UnlearnRequest) -> nn.Module:
        task, cfg = request.task, self.config
        original = frozen_copy(model)
        retain_batches = request.cycle("retain") if cfg.retain_weight and len(request.retain) else None
        optimizer = make_optimizer(model.parameters(), request.train, lr=cfg.lr)

        def loss(m: nn.Module, batch: dict[str, torch.Tensor]) -> torch.Tensor:
            neighbours = task.nearest_wrong_labels(original, batch, cfg.step)
            value = task.per_example_loss(m, task.with_labels(batch, neighbours)).mean()
            if retain_batches is not None:
                value = value + cfg.retain_weight * task.per_example_loss(m, next(retain_batches)).mean()
            return value

        self.fit(model, request, request.loader("forget"), loss, optimizer, epochs=cfg.epochs)
        return model
