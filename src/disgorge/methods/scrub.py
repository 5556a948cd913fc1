"""``scrub``: a student moves away from the original (teacher) on the forget set and stays close on retain."""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass
from typing import ClassVar

import torch
from torch import nn

from ..training.loop import make_optimizer
from ._tools import distill_kl, frozen_copy
from .base import FineTuneConfig, Method, UnlearnRequest, lr_option, option
from .registry import register


@register
class Scrub(Method):
    """SCRUB (Kurmanji et al., NeurIPS 2023). Max steps raise KL(teacher || student) on forget batches; min steps
    lower ``alpha * KL`` on retain plus ``gamma * CE`` on retain. The first ``max_epochs`` epochs alternate a max
    pass and a min pass; the remaining epochs are min passes only."""

    name: ClassVar[str] = "scrub"
    family: ClassVar[str] = "fine-tune"
    summary: ClassVar[str] = "teacher/student: diverge from the original on forget, match it on retain"
    paper: ClassVar[str] = "Kurmanji et al., Towards Unbounded Machine Unlearning, NeurIPS 2023"
    needs: ClassVar[frozenset[str]] = frozenset({"forget", "retain", "logits"})

    @dataclass
    class Config(FineTuneConfig):
        """SCRUB settings."""

        epochs: int = option(5, "total epochs (max + min passes)", low=1)
        max_epochs: int = option(4, "epochs that include a max (forget) pass", low=0)
        lr: float = lr_option(2e-3)
        alpha: float = option(1.0, "weight of the retain KL term", low=0)
        gamma: float = option(1.0, "weight of the retain cross-entropy term", low=0)
        temperature: float = option(4.0, "distillation temperature", positive=True)

    def _unlearn(self, model: nn.Module, request: UnlearnRequest) -> nn.Module:
        task, cfg = request.task, self.config
        teacher = frozen_copy(model)
        optimizer = make_optimizer(model.parameters(), request.train, lr=cfg.lr)

        def loss(m: nn.Module, step: tuple[str, dict[str, torch.Tensor]]) -> torch.Tensor:
            which, batch = step
            with torch.no_grad():
                t = task.logits(teacher, batch)
            kl = distill_kl(task.logits(m, batch), t, cfg.temperature)
            if which == "forget":  # max step: move away from the teacher
                return -kl
            return cfg.alpha * kl + cfg.gamma * task.per_example_loss(m, batch).mean()

        schedule = _Schedule(request, cfg.epochs, cfg.max_epochs)
        self.fit(model, request, schedule, loss, optimizer, epochs=1)
        return model


class _Schedule:
    """SCRUB's pass order as one sequence of (phase, batch): max+min passes, then min passes only."""

    def __init__(self, request: UnlearnRequest, epochs: int, max_epochs: int) -> None:
        self.phases = [p for e in range(epochs) for p in (("forget", "retain") if e < max_epochs else ("retain",))]
        self.loaders = {"forget": request.loader("forget"), "retain": request.loader("retain")}

    def __len__(self) -> int:
        return sum(len(self.loaders[p]) for p in self.phases)

    def __iter__(self) -> Iterator[tuple[str, dict[str, torch.Tensor]]]:
        for phase in self.phases:
            for batch in self.loaders[phase]:
                yield phase, batch
