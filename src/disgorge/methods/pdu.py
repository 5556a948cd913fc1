"""``pdu``: constrained entropic unlearning, flattening forget outputs under a retain-loss constraint solved by
primal-dual steps (PDU)."""

from __future__ import annotations

from dataclasses import dataclass
from typing import ClassVar

import torch
from torch import nn

from ..tasks import RecordDataset, Task
from ..tasks.base import Batch
from ..training.loop import make_optimizer
from ._tools import check_token_logits, masked_mean, token_logits
from .base import FineTuneConfig, Method, UnlearnRequest, lr_option, option
from .registry import register


def logit_margin_flattening(logits: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """Mean over the positions ``mask`` keeps of ``(max_v z_v - mean_v z_v)^2``: zero exactly when every output has
    the same score (a uniform distribution), softmax-free, with a gradient that does not vanish near uniform."""
    margin = logits.max(dim=-1).values - logits.mean(dim=-1)
    return masked_mean(margin ** 2, mask)


def dual_step(multiplier: float, retain_loss: float, bound: float, lr: float) -> float:
    """One projected dual-ascent step on the retain constraint ``retain_loss <= bound``: the multiplier grows by
    ``lr`` times the violation, shrinks by the slack, and never goes below zero."""
    return max(0.0, multiplier + lr * (retain_loss - bound))


@torch.no_grad()
def mean_loss(task: Task, model: nn.Module, data: RecordDataset, batch_size: int) -> float:
    """The mean per-example loss of ``model`` on ``data`` (evaluation mode, no gradient)."""
    was_training = model.training
    model.eval()
    total, count = 0.0, 0
    for batch in task.loader(data, batch_size, shuffle=False):
        losses = task.per_example_loss(model, batch)
        total += float(losses.sum())
        count += len(losses)
    model.train(was_training)
    return total / max(count, 1)


@register
class PDU(Method):
    """Constrained entropic unlearning (Entesari et al., 2025). Forgetting is the objective and retention a hard
    constraint: minimise the logit-margin flattening loss ``mean (max_v z_v - mean_v z_v)^2`` over the forget answer
    tokens (a classifier's class scores), which drives the outputs there towards uniform, subject to
    ``L_retain(theta) <= L_retain(theta_orig) + epsilon`` (the retain cross-entropy; the original's is measured on up
    to ``bound_sample`` retain records before unlearning). Each step descends the Lagrangian
    ``L_forget + lambda * L_retain`` and then takes a projected dual-ascent step
    ``lambda <- max(0, lambda + dual_lr * (L_retain - bound))`` on that step's retain batch, so the retain weight
    rises while the constraint is violated and decays once it holds. ``report_`` gives the bound and the final
    multiplier."""

    name: ClassVar[str] = "pdu"
    family: ClassVar[str] = "fine-tune"
    summary: ClassVar[str] = "flatten forget outputs to uniform under a retain-loss constraint (primal-dual)"
    paper: ClassVar[str] = ("Entesari et al., Constrained Entropic Unlearning: A Primal-Dual Framework for Large "
                            "Language Models, 2025 (PDU)")
    needs: ClassVar[frozenset[str]] = frozenset({"forget", "retain"})

    @dataclass
    class Config(FineTuneConfig):
        """PDU settings."""

        epochs: int = option(3, "passes over the retain set (forget batches cycle alongside)", low=1)
        lr: float = lr_option(1e-3)
        epsilon: float = option(0.1, "how far the retain loss may rise above the original's (the constraint)", low=0)
        dual_lr: float = option(1.0, "step size of the multiplier's dual ascent", low=0)
        dual_init: float = option(1.0, "the multiplier's starting value (the retain weight of the first step)", low=0)
        bound_sample: int = option(1024, "retain records the original's retain loss is measured on", low=1)

    def _check(self, request: UnlearnRequest) -> None:
        """Per-target scores are needed (a language model's answer tokens or a classifier's classes)."""
        check_token_logits(self, request.task)

    def _unlearn(self, model: nn.Module, request: UnlearnRequest) -> nn.Module:
        task, cfg = request.task, self.config
        generator = torch.Generator().manual_seed(request.seed + 4)
        n = min(cfg.bound_sample, len(request.retain))
        picked = torch.randperm(len(request.retain), generator=generator, device="cpu")[:n].sort().values
        sample = request.retain.subset(request.retain.ids[picked.numpy()])
        original = mean_loss(task, model, sample, request.train.batch_size)
        bound = original + cfg.epsilon
        multiplier = cfg.dual_init
        forget_batches = request.cycle("forget")
        optimizer = make_optimizer(model.parameters(), request.train, lr=cfg.lr)

        def loss(m: nn.Module, retain_batch: Batch) -> torch.Tensor:
            nonlocal multiplier
            logits, _, mask = token_logits(task, m, next(forget_batches))
            retain = task.per_example_loss(m, retain_batch).mean()
            value = logit_margin_flattening(logits, mask) + multiplier * retain
            multiplier = dual_step(multiplier, float(retain.detach()), bound, cfg.dual_lr)
            return value

        self.fit(model, request, request.loader("retain"), loss, optimizer, epochs=cfg.epochs)
        self.report_.update({"original_retain_loss": original, "retain_bound": bound, "multiplier": multiplier})
        return model
