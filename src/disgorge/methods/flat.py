"""``flat``: loss adjustment with only the forget data, maximising an f-divergence between refusals and the forget
answers (FLAT)."""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass
from typing import ClassVar

import torch
import torch.nn.functional as F
from torch import nn

from ..tasks import Task
from ..tasks.base import Batch
from ..training.loop import make_optimizer
from ._tools import refusal_answers, target_token_log_probs, token_logits
from .base import FineTuneConfig, Method, UnlearnRequest, lr_option, option
from .registry import register

_Fn = Callable[[torch.Tensor], torch.Tensor]

# Per f-divergence, the activation g* and the composition f*(g*(.)) with the convex conjugate of its generator, in the
# variational form D_f(P||Q) >= E_P[g*(v)] - E_Q[f*(g*(v))] (Nowozin et al., f-GAN, NeurIPS 2016, Table 2).
DIVERGENCES: dict[str, tuple[_Fn, _Fn]] = {
    "kl": (lambda v: v, lambda v: torch.exp(v - 1.0)),
    "js": (lambda v: math.log(2.0) - F.softplus(-v), lambda v: v + F.softplus(-v) - math.log(2.0)),
    "pearson": (lambda v: v, lambda v: v * v / 4.0 + v),
    "tv": (lambda v: torch.tanh(v) / 2.0, lambda v: torch.tanh(v) / 2.0),
}


def answer_probability(task: Task, model: nn.Module, batch: Batch) -> torch.Tensor:
    """The mean probability of each record's answer tokens, ``[B]`` (FLAT's ``P(x, y; theta)``)."""
    logits, targets, mask = token_logits(task, model, batch)
    probs = target_token_log_probs(logits, targets).exp().masked_fill(~mask, 0)
    return probs.sum(-1) / mask.sum(-1).clamp(min=1)


def flat_loss(good: torch.Tensor, forget: torch.Tensor, divergence: str) -> torch.Tensor:
    """``mean_i [-g*(P_good,i) + f*(g*(P_forget,i))]``: minimising it maximises the variational f-divergence between
    the refusal answers (``good``, per-record answer probabilities) and the forget answers (``forget``)."""
    activation, conjugate = DIVERGENCES[divergence]
    return (-activation(good) + conjugate(forget)).mean()


@register
class FLAT(Method):
    """FLAT (Wang et al., ICLR 2025): unlearning from the forget data alone, without a retain set. Each forget answer
    gets a template "good" answer, a refusal ("I don't know." and variants, as ``idk`` draws them), and FLAT
    maximises the variational f-divergence between the two: it minimises
    ``mean_i [-g*(P(x_i, y_good)) + f*(g*(P(x_i, y_forget)))]``, where ``P(x, y)`` is the mean probability of the
    answer's tokens and ``g*``, ``f*`` are the activation and conjugate of the chosen divergence (KL, Jensen-Shannon,
    Pearson chi-squared or total variation). The divergence's form sets how strongly learning the refusal and
    forgetting the answer are weighted against each other (the paper's loss adjustment)."""

    name: ClassVar[str] = "flat"
    family: ClassVar[str] = "fine-tune"
    summary: ClassVar[str] = "prefer a refusal to each forget answer by an f-divergence, forget data only"
    paper: ClassVar[str] = ("Wang et al., LLM Unlearning via Loss Adjustment with Only Forget Data, ICLR 2025 "
                            "(FLAT)")
    needs: ClassVar[frozenset[str]] = frozenset({"forget", "text"})

    @dataclass
    class Config(FineTuneConfig):
        """FLAT settings."""

        epochs: int = option(60, "passes over the forget set", low=1)
        lr: float = lr_option(1e-4)
        divergence: str = option("kl", "the f-divergence maximised: kl, js (Jensen-Shannon), pearson (chi-squared) "
                                        "or tv (total variation)", choices=tuple(DIVERGENCES))

    def _unlearn(self, model: nn.Module, request: UnlearnRequest) -> nn.Module:
        task, cfg = request.task, self.config
        generator = torch.Generator().manual_seed(request.seed)
        optimizer = make_optimizer(model.parameters(), request.train, lr=cfg.lr)

        def loss(m: nn.Module, forget_batch: Batch) -> torch.Tensor:
            good = answer_probability(task, m, refusal_answers(task, forget_batch, generator))
            return flat_loss(good, answer_probability(task, m, forget_batch), cfg.divergence)

        self.fit(model, request, request.loader("forget"), loss, optimizer, epochs=cfg.epochs)
        return model
