"""``random_label``: fine-tune on the forget set with wrong random labels, alongside the retain set."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import ClassVar

import torch
from torch import nn

from ..training.loop import FitResult, make_optimizer
from .base import FineTuneConfig, GuardedConfig, Method, UnlearnRequest, lr_option, option
from .registry import register


@dataclass
class RandomLabelOptions:
    """The random-label loop's own options, shared by ``random_label`` and ``salun``."""

    epochs: int = option(2, "passes over the retain set", low=1)
    lr: float = lr_option(1e-3)
    forget_weight: float = option(0.3, "weight of the random-label forget loss", low=0)


@dataclass
class GuardedRandomLabelOptions(GuardedConfig, RandomLabelOptions):
    """Random labelling's options for a parameter-level method (no LoRA, no forget span)."""


@register
class RandomLabel(Method):
    """Random labelling (Golatkar et al., CVPR 2020; the RL baseline of SalUn, ICLR 2024).

    Each step descends the loss of one retain batch with its true labels plus one forget batch whose labels are
    replaced by random wrong classes, so the forget examples stop pointing at what they taught.
    """

    name: ClassVar[str] = "random_label"
    family: ClassVar[str] = "fine-tune"
    summary: ClassVar[str] = "train the forget set towards random wrong labels while the retain set keeps utility"
    paper: ClassVar[str] = "Golatkar et al., Eternal Sunshine of the Spotless Net, CVPR 2020 (RL baseline)"
    needs: ClassVar[frozenset[str]] = frozenset({"forget", "retain", "labels"})

    @dataclass
    class Config(FineTuneConfig, RandomLabelOptions):
        """Random-label settings."""

    def _unlearn(self, model: nn.Module, request: UnlearnRequest) -> nn.Module:
        random_label_fit(self, model, request)
        return model


def random_label_fit(method: Method, model: nn.Module, request: UnlearnRequest,
                     after_backward: Callable[[nn.Module], None] | None = None) -> FitResult:
    """The random-label loop, shared with SalUn (which masks the gradient via ``after_backward``)."""
    task, cfg = request.task, method.config
    num_classes = task.num_classes(request.data_info)
    generator = torch.Generator().manual_seed(request.seed + 7)
    forget_batches = request.cycle("forget")
    optimizer = make_optimizer(model.parameters(), request.train, lr=cfg.lr)

    def loss(m: nn.Module, retain_batch: dict[str, torch.Tensor]) -> torch.Tensor:
        relabelled = task.random_labels(next(forget_batches), num_classes, generator)
        return task.per_example_loss(m, retain_batch).mean() + \
            cfg.forget_weight * task.per_example_loss(m, relabelled).mean()

    return method.fit(model, request, request.loader("retain"), loss, optimizer, epochs=cfg.epochs,
                      after_backward=after_backward)
