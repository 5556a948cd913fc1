"""``finetune``: keep training on the retain set only, so the forget set's effect fades (catastrophic forgetting)."""

from __future__ import annotations

from dataclasses import dataclass
from typing import ClassVar

from torch import nn

from ..training.loop import make_optimizer, mean_loss
from .base import FineTuneConfig, Method, UnlearnRequest, lr_option, option
from .registry import register


@register
class Finetune(Method):
    """Fine-tune on the retain set (FT in Warnecke et al., NDSS 2023; Golatkar et al., CVPR 2020 baseline)."""

    name: ClassVar[str] = "finetune"
    family: ClassVar[str] = "fine-tune"
    summary: ClassVar[str] = "keep training on the retain set only, at a raised learning rate"
    paper: ClassVar[str] = "Warnecke et al., Machine Unlearning of Features and Labels, NDSS 2023 (FT baseline)"
    needs: ClassVar[frozenset[str]] = frozenset({"retain"})

    @dataclass
    class Config(FineTuneConfig):
        """Fine-tuning settings."""

        epochs: int = option(10, "passes over the retain set", low=1)
        lr: float = lr_option(1e-2)

    def _unlearn(self, model: nn.Module, request: UnlearnRequest) -> nn.Module:
        optimizer = make_optimizer(model.parameters(), request.train, lr=self.config.lr)
        self.fit(model, request, request.loader("retain"), mean_loss(request.task), optimizer,
                                    epochs=self.config.epochs)
        return model
