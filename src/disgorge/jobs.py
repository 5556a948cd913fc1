"""Picklable jobs for executors: each opens the workspace read-only, does one independent piece of work and
returns plain data (no ledger writes, so any number can run at once). The strong (per-example) test runs its K
retrained and K unlearned models as such jobs."""

from __future__ import annotations

import math
import time
from dataclasses import dataclass, field
from typing import Any

import numpy as np
from pyroaring import BitMap

from .errors import InvalidRequest
from .evaluate.metrics import accuracy
from .evaluate.strong import strong_scores
from .evidence.certificate import Observation, level_checks, observe
from .evidence.judge import EXACT, HELDOUT, PURPOSES, HeldOut, NoComparison, Thresholds, heldout_for, score, verdict
from .evidence.probes import workspace_probes
from .evidence.robustness import quantization_attack, relearn_attack
from .evidence.stopping import rule_for, utility_records
from .executors import Executor
from .methods import UnlearnRequest, get_method
from .methods.registry import parse_variant
from .scenarios import workspace_purpose
from .training.trainer import fit_recipe
from .workspace import Workspace

REFERENCE_SEED, UNLEARN_SEED = 1000, 2000  # seed offsets of the strong test's retrained and unlearned models


@dataclass
class Problem:
    """Where a job finds its data: a workspace, a model in it and the records to forget."""

    root: str
    model_id: str
    forget: list[int]
    device: str | None = None  # the session's --device (None: each recipe's train.device)

    def load(self) -> dict[str, Any]:
        """Open the workspace and build the model, request pieces, held-out data and effect probes."""
        ws = Workspace.open(self.root)
        ws.device = self.device
        model, row, task = ws.load_model(self.model_id)
        ids = BitMap(self.forget)
        data = {"forget": ws.dataset(task, row.records & ids), "retain": ws.dataset(task, row.records - ids),
                "test": ws.dataset(task, ws.test_ids())}
        try:
            held = heldout_for(ws, task, row.records & ids, data["forget"], data["test"])
        except NoComparison:
            held = None  # reference-free evidence is impossible here; the exact level still compares all held-out
        return {"ws": ws, "model": model, "row": row, "task": task, "recipe": ws.recipe_of(row),
                "probes": workspace_probes(ws), "purpose": PURPOSES[workspace_purpose(ws)], "held": held, **data}


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
        model, fit = fit_recipe(task, recipe.replace(seed=seed), p["retain"], info,
                                device=p["ws"].device_for(recipe))
        seconds, extra = fit.seconds, {}
    elif who == "original":
        model, seconds, extra = p["model"], 0.0, {}
    else:
        request = UnlearnRequest(task=task, forget=p["forget"], retain=p["retain"], train=recipe.train,
                                 data_info=info, seed=seed, stop_rule=_stop_rule(p))
        name, variant = parse_variant(who)
        method = get_method(name, **{**job.options.get(name, {}), **variant})
        model = method.unlearn(p["model"], request)
        seconds = method.seconds_
        extra = {"stopped": method.fit_result_.stopped, "steps": method.fit_result_.steps,
                 "why": method.report_.get("stopping", {}).get("why", "")}
    if job.figures:
        out, extra["figures"] = _verify(p, who, seed, model, extra)
    else:
        out = task.evaluate(model, p["forget"])
        extra["ra"] = accuracy(task.evaluate(model, p["retain"])["correct"])
        extra["ta"] = accuracy(task.evaluate(model, p["test"])["correct"])
    return {"seed": seed, "seconds": seconds, "forget_loss": out["loss"].astype(np.float32),
            "forget_confidence": out["confidence"].astype(np.float32), **extra}


def _stop_rule(p: dict[str, Any]) -> Any:
    """The request's stopping rule (:mod:`.evidence.stopping`), as ``forget`` builds it, made once per problem."""
    if "stop_rule" not in p:
        held = p["held"]
        p["stop_rule"] = None if held is None else rule_for(
            p["task"], p["model"], p["forget"], held.matched, p["test"],
            utility_records(held, p["test"], p["purpose"].name), purpose=p["purpose"].name, retain=p["retain"],
            probes=p["probes"], seed=p["recipe"].seed)
    return p["stop_rule"]


def _verify(p: dict[str, Any], who: str, seed: int, model: Any, extra: dict[str, Any]) -> tuple[Any, Any]:
    """Measure one model of a job as verification would. For a method's model, also its verdict at both levels
    (``exact`` against this seed's reference, ``heldout`` without it), the robustness attacks (with the
    reference's recovery as the floor) and the seconds a reference-free verification took: measuring this model
    and the original (timed when the original was measured) plus the attacks."""
    task, held = p["task"], p["held"] or HeldOut(p["test"], p["test"], "all")
    matched = held.matched
    seen: dict[str, Observation] = p.setdefault("observed", {}).setdefault(seed, {})
    started = time.perf_counter()
    ref = seen.get("reference")
    obs = observe(task, model, p["forget"], p["retain"], p["test"], held, p["probes"], seed=seed,
                  reference=ref.measurement if ref else None, is_reference=who == "reference")
    seen[who] = obs
    seconds = time.perf_counter() - started
    if who == "original":
        p.setdefault("original_seconds", {})[seed] = seconds
    elif who != "reference" and "original" in seen:
        models = {"original": p["model"], "unlearned": model}
        if ref is not None:
            models["reference"] = p["reference_models"][seed]
        started = time.perf_counter()
        extra["robustness"] = {
            "relearn": relearn_attack(task, models, p["forget"], matched, p["test"], p["probes"],
                                      train=p["recipe"].train, seed=seed),
            "quantized": quantization_attack(task, models, p["forget"], matched, p["test"], p["probes"])}
        seconds += time.perf_counter() - started + p["original_seconds"][seed]
        extra["verify_seconds"] = seconds
        extra["verdicts"], extra["scores"] = _verdicts(p, seen, obs, model, seed)
    if who == "reference":
        p.setdefault("reference_models", {})[seed] = model
    return obs.measurement.forget, obs.measurement.figures


def _verdicts(p: dict[str, Any], seen: dict[str, Observation], obs: Observation, model: Any,
              seed: int) -> tuple[dict[str, str | None], dict[str, float | None]]:
    """The verdict of one method's model at each level (None where a level cannot judge this request) and its
    score there (:func:`.evidence.judge.score`: the worst decisive distance in units of its limit)."""
    task, original = p["task"], seen["original"]
    changed = any(not a.equal(b) for a, b in zip(p["model"].state_dict().values(), model.state_dict().values(),
                                                 strict=True))
    out: dict[str, str | None] = {}
    scores: dict[str, float | None] = {}
    for level in (EXACT, HELDOUT):
        if (level == EXACT and "reference" not in seen) or (level == HELDOUT and p["held"] is None):
            out[level] = scores[level] = None
            continue
        named = {"original": original, "unlearned": obs, **({"reference": seen["reference"]} if level == EXACT
                                                            else {})}
        checks = level_checks(task, p["purpose"], level, named, p["probes"], Thresholds(), changed=changed,
                              seed=seed)
        out[level] = verdict(checks)
        worst = score(checks)
        scores[level] = worst if math.isfinite(worst) else None
    return out, scores


def strong_test(problem: Problem, methods: list[str], k: int, executor: Executor, label: str = "",
                options: dict[str, dict[str, Any]] | None = None) -> dict[str, Any]:
    """K retrained and K unlearned models per method on one problem -> F, final score, U-LiRA AUC per method."""
    workers = getattr(executor, "workers", None) or k
    ref_seeds = [REFERENCE_SEED + i for i in range(k)]
    chunks = [ref_seeds[i::workers] for i in range(workers) if ref_seeds[i::workers]]
    jobs = [Job(problem, chunk, reference=True, figures=False) for chunk in chunks]
    jobs += [Job(problem, [UNLEARN_SEED + i for i in range(k)], methods=[m], options=options or {}, figures=False)
             for m in methods]
    results = [r for batch in executor.map(run, jobs, description=f"{label}: strong test ({k} models per side)")
               for r in batch]
    refs = [r for r in results if r["who"] == "reference"]
    out = {}
    for m in methods:
        mine = [r for r in results if r["who"] == m and "refused" not in r]
        if len(mine) < k:
            continue
        out[m] = strong_scores(
            np.stack([r["forget_loss"] for r in mine]), np.stack([r["forget_loss"] for r in refs]),
            np.stack([r["forget_confidence"] for r in mine]), np.stack([r["forget_confidence"] for r in refs]),
            ra=(np.mean([r["ra"] for r in mine]), np.mean([r["ra"] for r in refs])),
            ta=(np.mean([r["ta"] for r in mine]), np.mean([r["ta"] for r in refs])))
    return out
