"""Pieces several methods share: importance (Fisher diagonal) estimates, distillation loss, frozen copies."""

from __future__ import annotations

import copy

import torch
import torch.nn.functional as F
from torch import nn

from ..tasks import RecordDataset, Task


def squared_gradients(model: nn.Module, task: Task, data: RecordDataset,
                      batch_size: int = 64) -> dict[str, torch.Tensor]:
    """Mean over batches of the squared gradient of the batch loss: the diagonal importance SSD and Fisher use."""
    was_training = model.training
    model.eval()
    out = {n: torch.zeros_like(p) for n, p in model.named_parameters() if p.requires_grad}
    loader = task.loader(data, batch_size, shuffle=False)
    for batch in loader:
        model.zero_grad(set_to_none=True)
        task.per_example_loss(model, batch).mean().backward()
        for n, p in model.named_parameters():
            if p.grad is not None:
                out[n] += p.grad.detach() ** 2
    model.zero_grad(set_to_none=True)
    model.train(was_training)
    return {n: v / max(len(loader), 1) for n, v in out.items()}


def reinitialise(model: nn.Module) -> nn.Module:
    """Re-draw every layer's parameters in place, in construction order (so a seeded call reproduces a fresh
    build of the same network)."""
    for module in model.modules():
        reset = getattr(module, "reset_parameters", None)
        if callable(reset):
            reset()
    return model


def frozen_copy(model: nn.Module) -> nn.Module:
    """A copy of ``model`` in eval mode with gradients off (a teacher or reference)."""
    teacher = copy.deepcopy(model).eval()
    for p in teacher.parameters():
        p.requires_grad_(False)
    return teacher


def distill_kl(student_logits: torch.Tensor, teacher_logits: torch.Tensor, temperature: float = 1.0) -> torch.Tensor:
    """KL(teacher || student) per batch, on temperature-softened distributions (scaled by T^2)."""
    t = temperature
    return F.kl_div(F.log_softmax(student_logits / t, dim=1), F.log_softmax(teacher_logits / t, dim=1),
                    reduction="batchmean", log_target=True) * t * t


def target_log_prob(task: Task, model: nn.Module, batch: dict[str, torch.Tensor]) -> torch.Tensor:
    """log p(target | input) per example, from the task's per-example loss (negative log-likelihood)."""
    return -task.per_example_loss(model, batch)
