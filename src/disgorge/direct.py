"""Unlearning a user's own model on plain torch data, with no workspace and no ledger records.

Like Opacus's ``make_private``, this wraps what the user already has (their network, their optimiser's settings,
their data loaders) instead of owning their loop::

    new_model = disgorge.unlearn(model, forget=forget_loader, retain=retain_loader, optimizer=optimizer)

The result is a new model; ``model`` is left as it was. Pass a configured :class:`~disgorge.methods.Method`
instance instead of a name to read what the run did afterwards (``fit_result_``, ``report_``, ``seconds_``).
"""

from __future__ import annotations

import dataclasses
from typing import Any

import torch
from torch import nn
from torch.utils.data import DataLoader

from .methods import ConfigError, Method, UnlearnRequest, get_method
from .spec import TrainSpec
from .tasks import Task, get_task

_OPTIMIZERS = {torch.optim.Adam: "adam", torch.optim.AdamW: "adamw", torch.optim.SGD: "sgd"}


def unlearn(model: nn.Module, *, forget: Any, retain: Any, method: str | Method = "grad_diff",
            task: str | Task = "classification", optimizer: torch.optim.Optimizer | TrainSpec | None = None,
            batch_size: int | None = None, seed: int = 0, **options: Any) -> nn.Module:
    """Remove the effect of ``forget`` from the user's ``model``, keeping what ``retain`` teaches.

    ``forget`` and ``retain`` are in any form the task reads (classification: a pair ``(x, y)`` of tensors, a
    ``TensorDataset`` or a ``DataLoader`` of ``(x, y)`` batches; ``causal_lm``: a list of dicts with ``text``, or
    ``prompt`` and ``answer``). ``optimizer`` is the optimiser the model was trained with (Adam, AdamW or SGD: its
    kind, weight decay and momentum are reused; the method sets its own learning rate) or a
    :class:`~disgorge.spec.TrainSpec`. ``batch_size`` defaults to the retain DataLoader's. ``options`` configure
    the method by name (e.g. ``lr=1e-3``, ``max_steps=100``), checked against its typed ``Config``.
    """
    task = get_task(task) if isinstance(task, str) else task
    if isinstance(method, str):
        method = get_method(method, **options)
    elif options:
        raise ConfigError("pass options either to the Method instance or as keywords, not both")
    retain_data = task.user_dataset(retain)
    forget_data = task.user_dataset(forget, first_id=len(retain_data))
    data = retain_data if len(retain_data) else forget_data
    info = task.model_info(model, data) if len(data) else {}
    request = UnlearnRequest(task=task, forget=forget_data, retain=retain_data, data_info=info, seed=seed,
                             train=_train_spec(optimizer, batch_size or _batch_size(retain)))
    return method.unlearn(model, request)


def _train_spec(optimizer: torch.optim.Optimizer | TrainSpec | None, batch_size: int | None) -> TrainSpec:
    """The optimiser settings methods reuse, read from the user's optimiser; ``batch_size`` (when given or read
    from the retain DataLoader) overrides the spec's."""
    if optimizer is None:
        return TrainSpec() if batch_size is None else TrainSpec(batch_size=batch_size)
    if isinstance(optimizer, TrainSpec):
        return optimizer if batch_size is None else dataclasses.replace(optimizer, batch_size=batch_size)
    kind = _OPTIMIZERS.get(type(optimizer))
    if kind is None:
        raise ConfigError(f"optimizer {type(optimizer).__name__} is not one disgorge's methods can reuse; "
                          f"pass a TrainSpec with one of {', '.join(sorted(_OPTIMIZERS.values()))}")
    defaults = optimizer.defaults
    momentum = defaults.get("momentum", 0.9) if kind == "sgd" else 0.9
    return TrainSpec(optimizer=kind, lr=float(defaults["lr"]), weight_decay=float(defaults.get("weight_decay", 0.0)),
                     momentum=float(momentum), batch_size=batch_size or TrainSpec().batch_size)


def _batch_size(data: Any) -> int | None:
    return data.batch_size if isinstance(data, DataLoader) else None


__all__ = ["unlearn"]
