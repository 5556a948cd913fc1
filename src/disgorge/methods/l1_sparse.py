"""``l1_sparse``: fine-tune on the retain set with an L1 penalty that sparsifies the weights."""

from __future__ import annotations

from dataclasses import dataclass
from typing import ClassVar

import torch
from torch import nn

from ..training.loop import make_optimizer
from .base import FineTuneConfig, Method, UnlearnRequest, lr_option, option
from .registry import register


@register
class L1Sparse(Method):
    """l1-sparse unlearning (Jia et al., NeurIPS 2023): fine-tune on retain with an L1 penalty decaying linearly to
    zero over the run, as the paper's schedule does. The penalty is ``gamma * mean |w|`` (the paper's
    ``||w||_1`` divided by the number of weights), so one default serves models of any size."""

    name: ClassVar[str] = "l1_sparse"
    family: ClassVar[str] = "fine-tune"
    summary: ClassVar[str] = "fine-tune on retain with a decaying L1 penalty (sparsity helps forgetting)"
    paper: ClassVar[str] = "Jia et al., Model Sparsity Can Simplify Machine Unlearning, NeurIPS 2023"
    needs: ClassVar[frozenset[str]] = frozenset({"retain"})

    @dataclass
    class Config(FineTuneConfig):
        """l1-sparse settings."""

        epochs: int = option(10, "passes over the retain set", low=1)
        lr: float = lr_option(1e-2)
        gamma: float = option(5.0, "initial weight of the mean absolute weight (decays linearly to 0)", low=0)

    def _unlearn(self, model: nn.Module, request: UnlearnRequest) -> nn.Module:
        task, cfg = request.task, self.config
        loader = request.loader("retain")
        total = max(1, min(cfg.max_steps or 10**12, cfg.epochs * len(loader)))
        step = {"n": 0}
        n_weights = sum(p.numel() for p in model.parameters())
        optimizer = make_optimizer(model.parameters(), request.train, lr=cfg.lr)

        def loss(m: nn.Module, batch: dict[str, torch.Tensor]) -> torch.Tensor:
            gamma = cfg.gamma * (1 - step["n"] / total)
            step["n"] += 1
            l1 = sum(p.abs().sum() for p in m.parameters()) / n_weights
            return task.per_example_loss(m, batch).mean() + gamma * l1

        self.fit(model, request, loader, loss, optimizer, epochs=cfg.epochs)
        return model
