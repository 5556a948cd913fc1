"""``bad_teacher``: distil from the original on retain and from a randomly initialised network on forget."""

from __future__ import annotations

import copy
from dataclasses import dataclass
from typing import ClassVar

import torch
from torch import nn

from ..training.loop import make_optimizer
from ._tools import distill_kl, frozen_copy, reinitialise
from .base import FineTuneConfig, Method, UnlearnRequest, lr_option, option
from .registry import register


@register
class BadTeacher(Method):
    """Bad Teacher (Chundawat et al., AAAI 2023): the student is the original model; on retain batches it matches
    the competent teacher (the original), on forget batches an incompetent teacher (the same network, freshly
    initialised), by KL divergence."""

    name: ClassVar[str] = "bad_teacher"
    family: ClassVar[str] = "fine-tune"
    summary: ClassVar[str] = "distil the original on retain and a random network on forget"
    paper: ClassVar[str] = ("Chundawat et al., Can Bad Teaching Induce Forgetting? Unlearning in Deep Networks Using "
                            "an Incompetent Teacher, AAAI 2023")
    needs: ClassVar[frozenset[str]] = frozenset({"forget", "retain", "logits"})

    @dataclass
    class Config(FineTuneConfig):
        """Bad Teacher settings."""

        epochs: int = option(2, "passes over the retain set", low=1)
        lr: float = lr_option(1e-3)
        temperature: float = option(4.0, "distillation temperature", positive=True)

    def _unlearn(self, model: nn.Module, request: UnlearnRequest) -> nn.Module:
        task, cfg = request.task, self.config
        good = frozen_copy(model)
        bad = frozen_copy(reinitialise(copy.deepcopy(model)))
        forget_batches = request.cycle("forget")
        optimizer = make_optimizer(model.parameters(), request.train, lr=cfg.lr)

        def loss(m: nn.Module, retain_batch: dict[str, torch.Tensor]) -> torch.Tensor:
            forget_batch = next(forget_batches)
            with torch.no_grad():
                good_logits, bad_logits = task.logits(good, retain_batch), task.logits(bad, forget_batch)
            return distill_kl(task.logits(m, retain_batch), good_logits, cfg.temperature) + \
                distill_kl(task.logits(m, forget_batch), bad_logits, cfg.temperature)

        self.fit(model, request, request.loader("retain"), loss, optimizer, epochs=cfg.epochs)
        return model
