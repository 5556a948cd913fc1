"""Training from a recipe: select records, build the network, run the loop, write an immutable model."""

from __future__ import annotations

import json
import logging
from typing import Any

import torch
from pyroaring import BitMap
from torch import nn

from ..errors import InvalidRequest
from ..ledger import ModelRow, now
from ..ledger import bitmap as bm
from ..models import store
from ..models.card import model_card
from ..tasks import RecordDataset, Task, get_task
from .loop import FitResult, fit, make_optimizer, mean_loss
from .recipe import Recipe

log = logging.getLogger(__name__)


def fit_recipe(task: Task, recipe: Recipe, data: RecordDataset, info: dict[str, Any]) -> tuple[nn.Module, FitResult]:
    """Build and train ``recipe``'s network on ``data``; bit-identical for the same inputs on the same CPU.

    The global torch RNG is seeded inside a forked RNG state, so the caller's random state is untouched.
    """
    if len(data) == 0:
        raise InvalidRequest(f"recipe {recipe.name!r} selects no training records")
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


def select_records(ws: Any, recipe: Recipe) -> BitMap:
    """Ids of the active training records the recipe's data selector picks."""
    return ws.ledger.record_ids(sources=list(recipe.data.sources) or None,
                                exclude_sources=list(recipe.data.exclude_sources), split="train")


def save_model(ws: Any, *, model: nn.Module, recipe: Recipe, records: BitMap, info: dict[str, Any], kind: str,
               seconds: float, parent: str | None = None, method: str | None = None,
               request_id: int | None = None, model_id: str | None = None) -> ModelRow:
    """Write a model folder (weights, recipe, config, card) atomically and return its ledger row (not inserted)."""
    model_id = model_id or ws.ledger.reserve_model_id()
    weights, digest = store.serialize_weights(model)
    recipe_toml = recipe.to_toml()
    card = model_card(model_id=model_id, task=recipe.task, family=recipe.model.family, parent=parent, kind=kind,
                      method=method, sources=ws.sources_of(records), n_records=len(records),
                      recipe_toml=recipe_toml, weights_sha256=digest, request_id=request_id)
    config = {"id": model_id, "task": recipe.task, "family": recipe.model.family, "data": info["data"],
              "parent": parent, "kind": kind, "method": method, "weights_sha256": digest}
    store.write_model_dir(ws.models_dir, model_id, {
        store.WEIGHTS: weights,
        "recipe.toml": recipe_toml.encode(),
        "config.json": (json.dumps(config, indent=2) + "\n").encode(),
        "records.roaring": bm.dumps(records),
        "README.md": card.encode(),
    })
    return ModelRow(id=model_id, parent=parent, kind=kind, status="active", task=recipe.task, recipe=recipe_toml,
                    recipe_sha256=recipe.sha256, weights_sha256=digest, records=records, method=method,
                    request_id=request_id, seconds=seconds, info=info, created_at=now())


def train(ws: Any, recipe: Recipe) -> ModelRow:
    """Train ``recipe`` on the workspace's ledger and record the new model."""
    ids = select_records(ws, recipe)
    if not ids:
        raise InvalidRequest(f"recipe {recipe.name!r} selects no active training records; ingest data first")
    task = get_task(recipe.task)
    data = ws.dataset(task, ids)
    info = {"data": task.data_info(data, recipe.model)}
    model, result = fit_recipe(task, recipe, data, info["data"])
    info["fit"] = {"steps": result.steps, "epochs": result.epochs, "final_loss": result.losses[-1]}
    row = save_model(ws, model=model, recipe=recipe, records=ids, info=info, kind="trained",
                     seconds=result.seconds)
    ws.ledger.insert_model(row)
    log.info("trained %s on %d records in %.1fs", row.id, len(ids), result.seconds)
    return row
