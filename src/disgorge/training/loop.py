"""The one training loop. Training, fine-tuning-based unlearning and retraining all run through :func:`fit`;
methods supply the loss, not a copy of the loop."""

from __future__ import annotations

import copy
import functools
import logging
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from typing import Any

import torch
from torch import nn
from torch.utils.data import DataLoader

from .. import _progress
from ..errors import DisgorgeError
from ..spec import TrainSpec

log = logging.getLogger(__name__)

LossFn = Callable[[nn.Module, Any], torch.Tensor]


class NonFiniteLoss(DisgorgeError):
    """Training produced a NaN or infinite loss or weight and could not recover."""


@dataclass
class Guard:
    """A utility check run every ``every`` steps. When ``check(model)`` fails ``patience`` times in a row (a
    transient dip is tolerated), the last state that passed is restored and training stops
    (``stopped = "guard"``); a final state that fails is also replaced by the last one that passed."""

    check: Callable[[nn.Module], bool]
    every: int = 10
    patience: int = 10


@dataclass
class FitResult:
    """What a run of :func:`fit` did."""

    steps: int = 0
    epochs: int = 0
    seconds: float = 0.0
    stopped: str = "done"
    losses: list[float] = field(default_factory=list)
    rollbacks: int = 0
    info: dict[str, Any] = field(default_factory=dict)  # facts the model row keeps (privacy spent, shard layout)
    files: dict[str, bytes] = field(default_factory=dict)  # kept in the model folder beside the weights


def make_optimizer(params: Iterable[nn.Parameter], spec: TrainSpec, lr: float | None = None) -> torch.optim.Optimizer:
    """The optimiser a recipe names."""
    lr = spec.lr if lr is None else lr
    if spec.optimizer == "sgd":
        return torch.optim.SGD(params, lr=lr, momentum=spec.momentum, weight_decay=spec.weight_decay)
    if spec.optimizer == "adamw":
        return torch.optim.AdamW(params, lr=lr, weight_decay=spec.weight_decay)
    return torch.optim.Adam(params, lr=lr, weight_decay=spec.weight_decay)


@functools.cache
def warm_up() -> None:
    """Pay once per process for torch's lazy imports (the first optimiser pulls in torch._dynamo, ~1.5 s),
    so that timed runs compare algorithms, not import costs."""
    torch.optim.Adam([torch.zeros(1, requires_grad=True)])


def snapshot(model: nn.Module) -> dict[str, torch.Tensor]:
    """A copy of what the loop can change: every weight that trains and every buffer (a frozen pretrained network
    under a trained head is not copied at each epoch); :func:`restore` puts it back."""
    frozen = {n for n, p in model.named_parameters() if not p.requires_grad}
    return {k: v.detach().clone() for k, v in model.state_dict().items() if k not in frozen}


def restore(model: nn.Module, state: dict[str, torch.Tensor]) -> None:
    """Load a :func:`snapshot` back (frozen weights, which it leaves out, are as they were)."""
    model.load_state_dict(state, strict=False)


def _finite(model: nn.Module) -> bool:
    """Whether every weight that trains is finite (a frozen weight cannot diverge, and a frozen pretrained encoder
    under a trained head is too big to re-check every few steps)."""
    return all(torch.isfinite(p).all() for p in model.parameters() if p.requires_grad)


def fit(model: nn.Module, loader: Iterable[Any], loss_fn: LossFn, optimizer: torch.optim.Optimizer, *,
        epochs: int = 1, max_steps: int | None = None, max_seconds: float | None = None,
        description: str = "training", max_rollbacks: int = 4,
        should_stop: Callable[[], bool] | None = None,
        after_backward: Callable[[nn.Module], None] | None = None, guard: Guard | None = None,
        accelerator: Any | None = None, after_epoch: Callable[[int], None] | None = None) -> FitResult:
    """Run ``epochs`` passes over ``loader``, stepping ``optimizer`` on ``loss_fn(model, batch)``.

    Stops early at ``max_steps`` optimiser steps, after ``max_seconds``, or when ``should_stop()`` is true.
    ``after_backward(model)`` may edit gradients before each step (masks, clipping). ``guard`` rolls back to the
    last state that kept the model's utility and stops. With an ``accelerate.Accelerator`` the model, optimiser and
    DataLoader are prepared by it and the backward pass goes through it (devices, mixed precision, distributed
    processes as its configuration says); ``loss_fn`` then receives the prepared model.
    A step that gives a non-finite loss or weights is rolled back to the state before the epoch and the learning
    rate halved; after ``max_rollbacks`` such rollbacks :class:`NonFiniteLoss` is raised. ``after_epoch(n)`` is
    called after each completed epoch ``n`` (1-based), e.g. to keep a checkpoint.
    """
    result = FitResult()
    budget = _Budget(max_steps, max_seconds, should_stop)
    total = total_steps(loader, epochs, max_steps)
    model.train()
    step = _Step(model, optimizer, loss_fn, after_backward, accelerator)
    loader = step.prepare(loader)
    watch = _Watch(guard, model) if guard is not None else None
    with _progress.bar(description, total) as bar:
        while result.epochs < epochs and result.stopped == "done":
            # deep copies: the optimiser updates its state tensors in place
            before = snapshot(model), copy.deepcopy(step.optimizer.state_dict())
            if _epoch(step, loader, result, bar, watch, budget):
                result.epochs += 1
                if after_epoch is not None:
                    after_epoch(result.epochs)
            else:
                _recover(step, before, result, max_rollbacks, description)
    if watch is not None and result.stopped != "guard" and watch.restore_if_failing(model):
        result.stopped = "guard"
    result.seconds = budget.elapsed()
    return result


class _Budget:
    """When to stop: a step count, a time budget, or a caller's test."""

    def __init__(self, max_steps: int | None, max_seconds: float | None,
                 should_stop: Callable[[], bool] | None) -> None:
        self.max_steps, self.max_seconds, self.should_stop = max_steps, max_seconds, should_stop
        self.start = time.perf_counter()

    def elapsed(self) -> float:
        return time.perf_counter() - self.start

    def reason(self, steps: int) -> str | None:
        """Why training must stop after ``steps`` steps, or None to go on."""
        if self.max_steps is not None and steps >= self.max_steps:
            return "max_steps"
        if self.max_seconds is not None and self.elapsed() >= self.max_seconds:
            return "max_seconds"
        if self.should_stop is not None and self.should_stop():
            return "early_stop"
        return None


class _Step:
    """One optimiser step on a batch, through an ``accelerate.Accelerator`` when one is given."""

    def __init__(self, model: nn.Module, optimizer: torch.optim.Optimizer, loss_fn: LossFn,
                 after_backward: Callable[[nn.Module], None] | None, accelerator: Any | None) -> None:
        self.model, self.net, self.optimizer = model, model, optimizer
        self.loss_fn, self.after_backward, self.accelerator = loss_fn, after_backward, accelerator
        self.backward: Callable[[torch.Tensor], Any] = lambda loss: loss.backward()
        if accelerator is not None:
            self.net, self.optimizer = accelerator.prepare(model, optimizer)
            self.backward = accelerator.backward

    def prepare(self, loader: Iterable[Any]) -> Iterable[Any]:
        """The loader as the accelerator shards it (unchanged without one, or for a custom iterable)."""
        if self.accelerator is not None and isinstance(loader, DataLoader):
            return self.accelerator.prepare(loader)
        return loader

    def __call__(self, batch: Any) -> float | None:
        """Step on ``batch``; the loss, or None (and no step) when it is not finite."""
        self.optimizer.zero_grad(set_to_none=True)
        loss = self.loss_fn(self.net, batch)
        if not torch.isfinite(loss):
            return None
        self.backward(loss)
        if self.after_backward is not None:
            self.after_backward(self.model)
        self.optimizer.step()
        return float(loss.detach())


class _Watch:
    """The guard's state: the last weights that passed its check and how many checks failed in a row since."""

    def __init__(self, guard: Guard, model: nn.Module) -> None:
        self.guard, self.good, self.strikes = guard, snapshot(model), 0

    def failed(self, model: nn.Module, steps: int) -> bool:
        """Check every ``guard.every`` steps; after ``patience`` failures in a row restore the last good state and
        say so."""
        if steps % self.guard.every:
            return False
        if _finite(model) and self.guard.check(model):
            self.good, self.strikes = snapshot(model), 0
            return False
        self.strikes += 1
        if self.strikes < self.guard.patience:
            return False
        restore(model, self.good)
        return True

    def restore_if_failing(self, model: nn.Module) -> bool:
        """Replace a final state that fails the check by the last one that passed; whether it did."""
        if self.guard.check(model):
            return False
        restore(model, self.good)
        return True


def _epoch(step: _Step, loader: Iterable[Any], result: FitResult, bar: Any, watch: _Watch | None,
           budget: _Budget) -> bool:
    """One pass over ``loader`` (or part of it, when a budget or the guard stops training); False when the loss or
    the weights became non-finite."""
    for batch in loader:
        value = step(batch)
        if value is None:
            return False
        result.steps += 1
        result.losses.append(value)
        bar.advance(1, info=f"loss {value:.4f}")
        if result.steps % 50 == 0 and not _finite(step.model):
            return False
        if watch is not None and watch.failed(step.model, result.steps):
            result.stopped = "guard"
            break
        reason = budget.reason(result.steps)
        if reason is not None:
            result.stopped = reason
            break
    return _finite(step.model)


def _recover(step: _Step, before: tuple[dict[str, torch.Tensor], dict[str, Any]], result: FitResult,
             max_rollbacks: int, description: str) -> None:
    """Roll the model and optimiser back to the start of the epoch and halve the learning rate."""
    result.rollbacks += 1
    if result.rollbacks > max_rollbacks:
        raise NonFiniteLoss(f"{description}: loss or weights became non-finite {result.rollbacks} times"
                            " even after halving the learning rate; lower the learning rate")
    weights, optimizer_state = before
    restore(step.model, weights)
    step.optimizer.load_state_dict(optimizer_state)
    for group in step.optimizer.param_groups:
        group["lr"] *= 0.5
    result.stopped = "done"
    log.warning("%s: non-finite loss or weights; rolled back the epoch and halved the learning rate to %g",
                description, step.optimizer.param_groups[0]["lr"])


def total_steps(loader: Iterable[Any], epochs: int, max_steps: int | None) -> int | None:
    """How many steps ``fit`` takes unless it stops early (None for a loader without a length)."""
    try:
        total = len(loader) * epochs  # type: ignore[arg-type]
    except TypeError:
        return None
    return min(total, max_steps) if max_steps is not None else total


def mean_loss(task: Any) -> LossFn:
    """The plain training objective: mean per-example loss of ``task``."""
    return lambda model, batch: task.per_example_loss(model, batch).mean()


__all__ = ["FitResult", "Guard", "LossFn", "NonFiniteLoss", "fit", "make_optimizer", "mean_loss", "restore", "snapshot"]
