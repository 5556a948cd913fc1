"""``gradient_ascent``: raise the loss on the forget set (NegGrad)."""

from __future__ import annotations

from dataclasses import dataclass
from typing import ClassVar

import torch
from torch import nn

from ..training.loop import make_optimizer
from .base import FineTuneConfig, Method, UnlearnRequest, lr_option, option
from .registry import register


@register
class GradientAscent(Method):
    """Gradient ascent on the forget set's loss (Golatkar et al., CVPR 2020; Thudi et al., EuroS&P 2022).

    Ascent is unbounded, so it stops as soon as the forget set's accuracy reaches ``stop_accuracy`` percent.
    """

    name: ClassVar[str] = "gradient_ascent"
    family: ClassVar[str] = "fine-tune"
    summary: ClassVar[str] = "maximise the loss on the forget set, stopping once it is no longer fitted"
    paper: ClassVar[str] = "Thudi et al., Unrolling SGD: Understanding Factors Influencing Machine Unlearning, 2022"
    needs: ClassVar[frozenset[str]] = frozenset({"forget"})

    @dataclass
    class Config(FineTuneConfig):
        """Gradient-ascent settings."""

        epochs: int = option(20, "passes over the forget set", low=1)
        lr: float = lr_option(1e-3)
        stop_accuracy: float = option(50.0, "stop when forget-set accuracy (percent) falls to this", low=0,
                                      high=100)

    def _unlearn(self, model: nn.Module, request: UnlearnRequest) -> nn.Module:
        task = request.task
        optimizer = make_optimizer(model.parameters(), request.train, lr=self.config.lr)

        def ascent(m: nn.Module, batch: dict[str, torch.Tensor]) -> torch.Tensor:
            return -task.per_example_loss(m, batch).mean()

        def forgotten() -> bool:
            return task.quick_accuracy(model, request.forget) <= self.config.stop_accuracy

        self.fit(model, request, request.loader("forget"), ascent, optimizer,
                                    epochs=self.config.epochs, should_stop=forgotten)
        return model
