"""Training a recipe's network on a dataset: build it, seed it, run the loop. Bit-identical on the CPU."""

from __future__ import annotations

from typing import Any

import torch
from torch import nn

from .. import devices
from .._io import sha256_bytes
from ..errors import InvalidRequest
from ..executors import Executor
from ..models.store import serialize_weights
from ..spec import Recipe
from ..tasks import RecordDataset, Task
from .loop import FitResult, fit, make_optimizer, mean_loss
from .privacy import fit_private
from .sharding import build_sharded, fit_sharded


def build_network(task: Task, recipe: Recipe, info: dict[str, Any]) -> nn.Module:
    """The untrained network a model's ledger ``info`` describes: the recipe's family built for its data facts, or
    for a sharded recipe the aggregate of the shards it records."""
    with torch.device("cpu"):  # built on the CPU whatever torch's default device; the caller moves it
        if recipe.sharded and "sharding" in info:
            return build_sharded(task, recipe, info["data"], [m["shard"] for m in info["sharding"]["members"]])
        return task.build_model(recipe.model, info["data"])


def fit_recipe(task: Task, recipe: Recipe, data: RecordDataset, info: dict[str, Any],
               executor: Executor | None = None, device: torch.device | None = None) -> tuple[nn.Module, FitResult]:
    """Build and train ``recipe``'s network on ``data``; bit-identical for the same inputs on the same CPU.

    The global torch RNG is seeded inside a forked RNG state, so the caller's random state is untouched. The network
    is built and seeded on the CPU, then trained on ``device`` (None: the recipe's ``train.device``), where the
    returned model is. A sharded recipe trains its shards (:mod:`.sharding`) as independent jobs on ``executor`` (in
    this process when None); the result's ``files`` are their slice checkpoints. A recipe with ``[privacy]`` trains
    with DP-SGD (:mod:`.privacy`, on the CPU), the epsilon spent in ``result.info["privacy"]``.
    """
    if len(data) == 0:
        raise InvalidRequest(f"recipe {recipe.name!r} selects no training records")
    device = device if device is not None else devices.resolve(recipe.train.device)
    if recipe.sharded:
        run = fit_sharded(task, recipe, data, info, executor, device=device)
        run.result.files = run.files
        return run.model.to(device), run.result
    if recipe.privacy is not None:
        model, result = fit_private(task, recipe, data, info)
        return model.to(device), result
    with torch.random.fork_rng():
        torch.manual_seed(recipe.seed)
        generator = torch.Generator().manual_seed(recipe.seed)
        with torch.device("cpu"):  # seeded on the CPU, so the initial weights are the same on every device
            model = task.build_model(recipe.model, info)
        model.to(device)
        loader = task.loader(data, recipe.train.batch_size, shuffle=True, generator=generator)
        optimizer = make_optimizer(model.parameters(), recipe.train)
        kept: dict[int, bytes] = {}
        at = checkpoint_epochs(recipe.train.epochs, recipe.train.checkpoints)

        def keep(epoch: int) -> None:
            if epoch in at:
                kept[epoch] = serialize_weights(model)[0]

        result = fit(model, loader, mean_loss(task), optimizer, epochs=recipe.train.epochs,
                     description=f"train {recipe.name}", accelerator=task.accelerator(recipe.train.precision),
                     after_epoch=keep if at else None)
    if kept:
        result.files.update({checkpoint_name(e): b for e, b in kept.items()})
        result.info["checkpoints"] = {"lr": recipe.train.lr, "epochs": sorted(kept),
                                      "files": {checkpoint_name(e): sha256_bytes(b) for e, b in kept.items()}}
    model.eval()
    return model, result


def checkpoint_epochs(epochs: int, count: int) -> set[int]:
    """The epochs (1-based) after which ``count`` evenly spaced checkpoints are kept, the last epoch included (one
    per epoch when ``count`` is at least ``epochs``)."""
    count = min(count, epochs)
    return {round(epochs * (k + 1) / count) for k in range(count)} if count else set()


def checkpoint_name(epoch: int) -> str:
    """The file a training checkpoint is kept in, beside the model's weights (deleted with them)."""
    return f"checkpoint-{epoch:04d}.safetensors"
