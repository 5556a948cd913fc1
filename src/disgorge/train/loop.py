"""The one training loop. Training, fine-tuning-based unlearning and retraining all run through :func:`fit`;
methods supply the loss, not a copy of the loop."""

from __future__ import annotations

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


def _snapshot(model: nn.Module) -> dict[str, torch.Tensor]:
    return {k: v.detach().clone() for k, v in model.state_dict().items()}


def _finite(model: nn.Module) -> bool:
    return all(torch.isfinite(p).all() for p in model.parameters())


def fit(model: nn.Module, loader: Iterable[Any], loss_fn: LossFn, optimizer: torch.optim.Optimizer, *,
        epochs: int = 1, max_steps: int | None = None, max_seconds: float | None = None,
        description: str = "training", max_rollbacks: int = 4,
        should_stop: Callable[[], bool] | None = None,
        after_backward: Callable[[nn.Module], None] | None = None, guard: Guard | None = None,
        accelerator: Any | None = None) -> FitResult:
    """Run ``epochs`` passes over ``loader``, stepping ``optimizer`` on ``loss_fn(model, batch)``.

    Stops early at ``max_steps`` optimiser steps, after ``max_seconds``, or when ``should_stop()`` is true.
    ``after_backward(model)`` may edit gradients before each step (masks, clipping). ``guard`` rolls back to the
    last state that kept the model's utility and stops. With an ``accelerate.Accelerator`` the model, optimiser and
    DataLoader are prepared by it and the backward pass goes through it (devices, mixed precision, distributed
    processes as its configuration says); ``loss_fn`` then receives the prepared model.
    A step that gives a non-finite loss or weights is rolled back to the state before the epoch and the learning
    rate halved; after ``max_rollbacks`` such rollbacks :class:`NonFiniteLoss` is raised.
    """
    result = FitResult()
    start = time.perf_counter()
    try:
        n_batches = len(loader)  # type: ignore[arg-type]
    except TypeError:
        n_batches = None
    total = n_batches * epochs if n_batches is not None else None
    if max_steps is not None and total is not None:
        total = min(total, max_steps)
    model.train()
    net, backward = model, (lambda loss: loss.backward())
    if accelerator is not None:
        net, optimizer = accelerator.prepare(model, optimizer)
        if isinstance(loader, DataLoader):
            loader = accelerator.prepare(loader)
        backward = accelerator.backward
    good = _snapshot(model) if guard is not None else None
    strikes = 0
    with _progress.bar(description, total) as bar:
        epoch = 0
        while epoch < epochs:
            snapshot = _snapshot(model)
            opt_snapshot = optimizer.state_dict()
            diverged = False
            for batch in loader:
                optimizer.zero_grad(set_to_none=True)
                loss = loss_fn(net, batch)
                if not torch.isfinite(loss):
                    diverged = True
                    break
                backward(loss)
                if after_backward is not None:
                    after_backward(model)
                optimizer.step()
                result.steps += 1
                value = float(loss.detach())
                result.losses.append(value)
                bar.advance(1, info=f"loss {value:.4f}")
                if result.steps % 50 == 0 and not _finite(model):
                    diverged = True
                    break
                if guard is not None and result.steps % guard.every == 0:
                    if _finite(model) and guard.check(model):
                        good, strikes = _snapshot(model), 0
                    else:
                        strikes += 1
                        if strikes >= guard.patience:
                            model.load_state_dict(good)
                            result.stopped = "guard"
                            break
                if _stop(result, start, max_steps, max_seconds, should_stop):
                    break
            if diverged or not _finite(model):
                result.rollbacks += 1
                if result.rollbacks > max_rollbacks:
                    raise NonFiniteLoss(f"{description}: loss or weights became non-finite {result.rollbacks} times"
                                        " even after halving the learning rate; lower the learning rate")
                model.load_state_dict(snapshot)
                optimizer.load_state_dict(opt_snapshot)
                for group in optimizer.param_groups:
                    group["lr"] *= 0.5
                log.warning("%s: non-finite loss or weights; rolled back the epoch and halved the learning rate to %g",
                            description, optimizer.param_groups[0]["lr"])
                continue
            epoch += 1
            result.epochs = epoch
            if result.stopped != "done":
                break
    if guard is not None and result.stopped != "guard" and not guard.check(model):
        model.load_state_dict(good)
        result.stopped = "guard"
    result.seconds = time.perf_counter() - start
    return result


def _stop(result: FitResult, start: float, max_steps: int | None, max_seconds: float | None,
          should_stop: Callable[[], bool] | None) -> bool:
    if max_steps is not None and result.steps >= max_steps:
        result.stopped = "max_steps"
    elif max_seconds is not None and time.perf_counter() - start >= max_seconds:
        result.stopped = "max_seconds"
    elif should_stop is not None and should_stop():
        result.stopped = "early_stop"
    return result.stopped != "done"


def mean_loss(task: Any) -> LossFn:
    """The plain training objective: mean per-example loss of ``task``."""
    return lambda model, batch: task.per_example_loss(model, batch).mean()


__all__ = ["FitResult", "Guard", "LossFn", "NonFiniteLoss", "fit", "make_optimizer", "mean_loss"]
