"""Pieces several methods share: importance (Fisher diagonal) estimates, distillation loss, frozen copies, per-token
scores, refusal answers and the forget-beside-retain training loop."""

from __future__ import annotations

import copy
from collections.abc import Callable

import torch
import torch.nn.functional as F
from torch import nn

from ..errors import InvalidRequest
from ..models.language import REFUSALS
from ..tasks import RecordDataset, Task
from ..tasks.base import Batch
from ..tasks.causal_lm import CausalLMTask
from ..training.loop import make_optimizer
from .base import Method, UnlearnRequest


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


def offers_token_logits(task: Task) -> bool:
    """Whether :func:`token_logits` can serve ``task``: a causal language model (scores over the vocabulary at each
    answer token), or a classifier with class scores and labels (capabilities ``logits`` and ``labels``)."""
    return isinstance(task, CausalLMTask) or {"logits", "labels"} <= task.capabilities


def check_token_logits(method: Method, task: Task) -> None:
    """Refuse, before running, a task whose outputs are not scores over a vocabulary of targets."""
    if not offers_token_logits(task):
        raise InvalidRequest(f"method {method.name!r} needs scores over the outputs at each target (a causal language "
                             f"model's answer tokens, or class logits and labels), which task {task.name!r} does not "
                             "offer; pick another method (`disgorge methods`)")


def token_logits(task: Task, model: nn.Module, batch: Batch) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Scores over the outputs at each target position, the targets and a mask of the positions that count, all on
    the model's device: a causal language model's answer tokens (``[B, T, V]``, ``[B, T]``, ``[B, T]``), or a
    classifier's class scores and labels as one position per example (``[B, 1, C]``, ``[B, 1]``, ``[B, 1]``).
    Check the task with :func:`check_token_logits` first."""
    if isinstance(task, CausalLMTask):
        return task.answer_logits(model, batch)
    logits = task.logits(model, batch)
    targets = batch["y"].to(logits.device)  # the label tasks keep their targets in ``y``
    return logits[:, None], targets[:, None], torch.ones_like(targets, dtype=torch.bool)[:, None]


def target_token_log_probs(logits: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
    """log p(target) at each position, from scores ``[..., V]`` and targets ``[...]``."""
    return F.log_softmax(logits, dim=-1).gather(-1, targets[..., None]).squeeze(-1)


def masked_mean(values: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """Mean of ``values`` over the positions ``mask`` keeps (0 when it keeps none)."""
    return values.masked_fill(~mask, 0).sum() / mask.sum().clamp(min=1)


def refusal_answers(task: Task, batch: Batch, generator: torch.Generator) -> Batch:
    """The batch with each answer replaced by a refusal ("I don't know." and variants) drawn from ``generator``
    (a CPU generator; capability ``text``)."""
    picks = torch.randint(len(REFUSALS), (task.batch_size(batch),), generator=generator, device="cpu").tolist()
    return task.with_answers(batch, [REFUSALS[i] for i in picks])


def fit_forget_with_retain(method: Method, model: nn.Module, request: UnlearnRequest,
                           forget_loss: Callable[[nn.Module, Batch], torch.Tensor], *,
                           over: str = "retain") -> nn.Module:
    """The method's training loop (``epochs`` passes at ``lr``, options of its config) over the retain set, each step
    adding ``forget_loss`` on the next forget batch (cycled) to ``retain_weight`` times the retain loss; with
    ``over = "forget"`` the passes are over the forget set and retain batches are cycled beside them (drawn only when
    ``retain_weight`` is not 0)."""
    task, cfg = request.task, method.config
    other = request.cycle("forget" if over == "retain" else "retain")
    optimizer = make_optimizer(model.parameters(), request.train, lr=cfg.lr)

    def loss(m: nn.Module, batch: Batch) -> torch.Tensor:
        forget_batch, retain_batch = (next(other), batch) if over == "retain" else (batch, None)
        value = forget_loss(m, forget_batch)
        if cfg.retain_weight:
            retain_batch = next(other) if retain_batch is None else retain_batch
            value = value + cfg.retain_weight * task.per_example_loss(m, retain_batch).mean()
        return value

    method.fit(model, request, request.loader(over), loss, optimizer, epochs=cfg.epochs)
    return model
