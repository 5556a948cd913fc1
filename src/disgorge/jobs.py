"""Picklable jobs for executors: each opens the workspace read-only, does one independent piece of work and
returns plain data (no ledger writes, so any number can run at once)."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import numpy as np
from pyroaring import BitMap

from .errors import InvalidRequest
from .evaluate.metrics import accuracy
from .evaluate.verify import measure, measure_reference
from .methods import UnlearnRequest, get_method
from .methods.registry import parse_variant
from .train.recipe import Recipe
from .train.trainer import fit_recipe


@dataclass
class Problem:
    """Where a job finds its data: a workspace, a model in it and the records to forget."""

    root: str
    model_id: str
    forget: list[int]

    def load(self) -> dict[str, Any]:
        """Open the workspace and build the model, request pieces and held-out data."""
        from .workspace import Workspace

        ws = Workspace.open(self.root)
        model, row, task = ws.load_model(self.model_id)
        recipe = Recipe.from_toml(row.recipe)
        ids = BitMap(self.forget)
        data = {"forget": ws.dataset(task, row.records & ids), "retain": ws.dataset(task, row.records - ids),
                "test": ws.dataset(task, ws.test_ids())}
        out = {"ws": ws, "model": model, "row": row, "task": task, "recipe": recipe, "scenario": ws.scenario, **data}
        return out


@dataclass
class Job:
    """One unit of work, for each seed: optionally retrain the reference, then run each method; all in one
    process, so that method and retraining times compare on equal terms."""

    problem: Problem
    seeds: list[int]
    reference: bool = False
    methods: list[str] = field(default_factory=list)
    options: dict[str, dict[str, Any]] = field(default_factory=dict)
    figures: bool = True  # the full verification figures (else only RA/TA and per-example outputs)


def run(job: Job) -> list[dict[str, Any]]:
    """Run a job; one result per (seed, reference or method) with timing, figures and per-example outputs."""
    p = job.problem.load()
    results = []
    try:
        for seed in job.seeds:
            for who in (["reference"] if job.reference else []) + list(job.methods):
                try:
                    results.append({"who": who, **_one(job, p, who, seed)})
                except InvalidRequest as exc:  # a method that declares it cannot serve this model
                    results.append({"who": who, "seed": seed, "refused": str(exc)})
    finally:
        p["ws"].close()
    return results


def _one(job: Job, p: dict[str, Any], who: str, seed: int) -> dict[str, Any]:
    task, recipe, info = p["task"], p["recipe"], p["row"].info["data"]
    if who == "reference":
        model, fit = fit_recipe(task, recipe.replace(seed=seed), p["retain"], info)
        seconds, extra = fit.seconds, {}
    elif who == "original":
        model, seconds, extra = p["model"], 0.0, {}
    else:
        request = UnlearnRequest(task=task, forget=p["forget"], retain=p["retain"], train=recipe.train,
                                 data_info=info, seed=seed)
        name, variant = parse_variant(who)
        method = get_method(name, **{**job.options.get(name, {}), **variant})
        model = method.unlearn(p["model"], request)
        seconds = method.seconds_
        extra = {"stopped": method.fit_result_.stopped, "steps": method.fit_result_.steps}
    if job.figures:
        if who == "reference":
            m = measure_reference(task, model, p["forget"], p["retain"], p["test"], p["scenario"], seed=seed)
            p.setdefault("reference_measurement", {})[seed] = m
        else:
            m = measure(task, model, p["forget"], p["retain"], p["test"], p["scenario"], seed=seed,
                        reference=p.get("reference_measurement", {}).get(seed))
        out, extra["figures"] = m.forget, m.figures
    else:
        out = task.evaluate(model, p["forget"])
        extra["ra"] = accuracy(task.evaluate(model, p["retain"])["correct"])
        extra["ta"] = accuracy(task.evaluate(model, p["test"])["correct"])
    return {"seed": seed, "seconds": seconds, "forget_loss": out["loss"].astype(np.float32),
            "forget_confidence": out["confidence"].astype(np.float32), **extra}


def prepare(job: tuple[str, str, int]) -> dict[str, Any]:
    """Create a workspace at ``root`` holding ``scenario``, train its recipe with ``seed``, draw its forget set."""
    from .api import ingest_scenario, train
    from .scenarios import get_scenario
    from .workspace import Workspace

    root, scenario, seed = job
    case = get_scenario(scenario)
    with Workspace.init(root) as ws:
        ingest_scenario(ws, scenario)
        row = train(ws, case.recipe().replace(seed=seed))
        forget = case.forget_ids(ws, seed)
    return {"root": root, "model": row.id, "forget": sorted(int(i) for i in forget), "train_seconds": row.seconds}
