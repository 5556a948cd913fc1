"""``idk``: teach the model to answer forget questions with a refusal (TOFU's IdkNLL and IdkDPO)."""

from __future__ import annotations

from dataclasses import dataclass
from typing import ClassVar

import torch
import torch.nn.functional as F
from torch import nn

from ..training.loop import make_optimizer
from ._tools import frozen_copy, refusal_answers, target_log_prob
from .base import FineTuneConfig, Method, UnlearnRequest, lr_option, option
from .registry import register


@register
class IDK(Method):
    """Preferred refusal (Maini et al., TOFU, 2024; Rafailov et al., DPO, NeurIPS 2023). Each forget answer is replaced
    by a refusal ("I don't know." and variants, drawn per example). ``loss = "nll"`` fine-tunes on the refusals
    (IdkNLL); ``loss = "dpo"`` prefers the refusal to the original answer against the original model as reference
    (IdkDPO), ``-log sigmoid(beta * ((log p(refusal) - log p_ref(refusal)) - (log p(answer) - log p_ref(answer))))``
    with length-normalised log-probabilities. Both add the retain NLL."""

    name: ClassVar[str] = "idk"
    family: ClassVar[str] = "fine-tune"
    summary: ClassVar[str] = "answer forget questions with a refusal (NLL or DPO against the original), keep retain"
    paper: ClassVar[str] = ("Maini et al., TOFU: A Task of Fictitious Unlearning for LLMs, 2024 (IdkNLL, IdkDPO); "
                            "Rafailov et al., Direct Preference Optimization, NeurIPS 2023")
    needs: ClassVar[frozenset[str]] = frozenset({"forget", "retain", "text"})

    @dataclass
    class Config(FineTuneConfig):
        """IDK settings."""

        epochs: int = option(3, "passes over the retain set (forget batches cycle alongside)", low=1)
        lr: float = lr_option(1e-3)
        loss: str = option("nll", "nll: fine-tune on refusals; dpo: prefer refusals to the answers",
                           choices=("nll", "dpo"))
        beta: float = option(0.5, "DPO inverse temperature", positive=True)
        retain_weight: float = option(1.0, "weight of the retain NLL term", low=0)

    def _unlearn(self, model: nn.Module, request: UnlearnRequest) -> nn.Module:
        task, cfg = request.task, self.config
        generator = torch.Generator().manual_seed(request.seed)
        reference = frozen_copy(model) if cfg.loss == "dpo" else None
        forget_batches = request.cycle("forget")
        optimizer = make_optimizer(model.parameters(), request.train, lr=cfg.lr)

        def loss(m: nn.Module, retain_batch: dict[str, torch.Tensor]) -> torch.Tensor:
            forget_batch = next(forget_batches)
            chosen = refusal_answers(task, forget_batch, generator)
            if reference is None:
                value = task.per_example_loss(m, chosen).mean()
            else:
                with torch.no_grad():
                    ref_margin = target_log_prob(task, reference, chosen) - target_log_prob(task, reference,
                                                                                             forget_batch)
                margin = target_log_prob(task, m, chosen) - target_log_prob(task, m, forget_batch)
                value = -F.logsigmoid(cfg.beta * (margin - ref_margin)).mean()
            if cfg.retain_weight:
                value = value + cfg.retain_weight * task.per_example_loss(m, retain_batch).mean()
            return value

        self.fit(model, request, request.loader("retain"), loss, optimizer, epochs=cfg.epochs)
        return model
