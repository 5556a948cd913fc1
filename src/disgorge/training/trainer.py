"""Training a recipe's network on a dataset: build it, seed it, run the loop. Bit-identical on the CPU."""

from __future__ import annotations

from typing import Any

import torch
from torch import nn

from ..errors import InvalidRequest
from ..executors import Executor
from ..spec import Recipe
from ..tasks import RecordDataset, Task
from .loop import FitResult, fit, make_optimizer, mean_loss
from .privacy import fit_private
from .sharding import build_sharded, fit_sharded


def build_network(task: Task, recipe: Recipe, info: dict[str, Any]) -> nn.Module:
    """The untrained network a model's ledger ``info`` describes: the recipe's family built for its data facts, or
    for a sharded recipe the aggregate of the shards it records."""
    if recipe.sharded and "sharding" in info:
        return build_sharded(task, recipe, info["data"], [m["shard"] for m in info["sharding"]["members"]])
    return task.build_model(recipe.model, info["data"])


def fit_recipe(task: Task, recipe: Recipe, data: RecordDataset, info: dict[str, Any],
               executor: Executor | None = None) -> tuple[nn.Module, FitResult]:
    """Build and train ``recipe``'s network on ``data``; bit-identical for the same inputs on the same CPU.

    The global torch RNG is seeded inside a forked RNG state, so the caller's random state is untouched. A sharded
    recipe trains its shards (:mod:`.sharding`) as independent jobs on ``executor`` (in this process when None); the
    result's ``files`` are their slice checkpoints. A recipe with
    ``[privacy]`` trains with DP-SGD (:mod:`.privacy`), the epsilon spent in ``result.info["privacy"]``.
    """
    if len(data) == 0:
        raise InvalidRequest(f"recipe {recipe.name!r} selects no training records")
    if recipe.sharded:
        run = fit_sharded(task, recipe, data, info, executor)
        run.result.files = run.files
        return run.model, run.result
    if recipe.privacy is not None:
        return fit_private(task, recipe, data, info)
    with torch.random.fork_rng():
        torch.manual_seed(recipe.seed)
        generator = torch.Generator().manual_seed(recipe.seed)
        model = task.build_model(recipe.model, info)
        loader = task.loader(data, recipe.train.batch_size, shuffle=True, generator=generator)
        optimizer = make_optimizer(model.parameters(), recipe.train)
        result = fit(model, loader, mean_loss(task), optimizer, epochs=recipe.train.epochs,
                     description=f"train {recipe.name}", accelerator=task.accelerator())
    model.eval()
    return model, result
