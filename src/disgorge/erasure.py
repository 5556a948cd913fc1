"""Erasure requests: unlearn every affected model, verify, then erase the records' payloads.

Order of work, so that a failure at any step erases nothing and leaves no half-written model:
1. resolve the selection and the affected models (errors here change nothing);
2. unlearn each affected model and write its child folder (folders are invisible until the ledger names them);
3. verify each child against a retrained reference (references are clean models and are cached as they are made);
4. one ledger transaction records the request and the children, supersedes the parents, and erases the payloads
   (secure_delete) leaving tombstones; certificate files are written after it, from what the ledger holds.
"""

from __future__ import annotations

import logging
import shutil
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np
from pyroaring import BitMap

from .errors import DisgorgeError, InvalidRequest
from .evaluate.verify import Thresholds, certify, write_certificate
from .ledger import ModelRow
from .methods import METHODS, UnlearnRequest, get_method
from .tasks import get_task
from .train.recipe import Recipe
from .train.trainer import save_model

log = logging.getLogger(__name__)

AUTO = "auto"
AUTO_BUDGET = 0.5  # each candidate of --method auto may take this share of the original training time


@dataclass
class ForgetResult:
    """What an erasure request did."""

    request_id: int
    records: int
    children: list[ModelRow] = field(default_factory=list)
    certificates: list[dict[str, Any]] = field(default_factory=list)
    paths: dict[str, dict[str, str]] = field(default_factory=dict)
    erased: bool = True


def select(ws: Any, *, sources: Sequence[str] = (), records: Sequence[int] = (), random_fraction: float | None = None,
           seed: int = 0) -> BitMap:
    """Record ids named by sources, explicit ids, or a random share of the live training records."""
    if not sources and not records and random_fraction is None:
        raise InvalidRequest("name what to forget: --source NAME, --records IDS or --random FRACTION")
    ids = BitMap()
    for name in sources:
        found = ws.ledger.record_ids(sources=[name], split=None, states=("active", "held"))
        if not found:
            raise InvalidRequest(f"source {name!r} has no records left to forget (already erased?)")
        ids |= found
    if records:
        ids |= ws.ledger.check_ids(records)
    if random_fraction is not None:
        if not 0 < random_fraction < 1:
            raise InvalidRequest(f"--random takes a fraction in (0, 1), got {random_fraction}")
        pool = np.array(ws.ledger.record_ids(split="train"), dtype=np.int64)
        if len(pool) == 0:
            raise InvalidRequest("--random found no live training records to draw from")
        k = max(1, round(random_fraction * len(pool)))
        ids |= BitMap(np.random.default_rng(seed).choice(pool, size=k, replace=False).tolist())
    if not ids:
        raise InvalidRequest("the selection is empty: it names no live records")
    return ids


def affected_models(ws: Any, ids: BitMap, model: str | None = None) -> list[ModelRow]:
    """The active models whose lineage contains any of ``ids`` (or just the named one)."""
    if model is not None:
        row = ws.ledger.model(model)
        if row.kind == "reference":
            raise InvalidRequest(f"model {model} is a verification reference, not a model to unlearn")
        if row.status != "active":
            raise InvalidRequest(f"model {model} was superseded by an earlier erasure; unlearn its newest descendant "
                                 "instead (see `disgorge models`)")
        if not row.records & ids:
            raise InvalidRequest(f"model {model} was not trained on any of the selected records")
        return [row]
    return [m for m in ws.ledger.models(kinds=("trained", "unlearned"), status="active") if m.records & ids]


class VerificationFailed(DisgorgeError):
    """The unlearned model failed its certificate's checks; nothing was committed or erased."""


def forget(ws: Any, *, sources: Sequence[str] = (), records: Sequence[int] = (), random_fraction: float | None = None,
           seed: int = 0, model: str | None = None, method: str = "grad_diff", options: dict[str, Any] | None = None,
           reason: str = "", verify: bool = True, erase: bool = True, thresholds: Thresholds | None = None,
           accept_failed: bool = False, budget_fraction: float = AUTO_BUDGET) -> ForgetResult:
    """Remove the selected records' effect from every model that saw them, verify, then erase them.

    ``method="auto"`` tries every suitable method, each within ``budget_fraction`` of the parent's training time,
    and keeps the one closest to the retrained reference (smallest Avg Gap). A result that fails verification
    aborts the request (nothing erased, the rejected certificate kept for inspection) unless ``accept_failed``.
    """
    ids = select(ws, sources=sources, records=records, random_fraction=random_fraction, seed=seed)
    if method == AUTO:
        if not verify:
            raise InvalidRequest("--method auto chooses by verification; it cannot run with --no-verify")
        _auto_options(options)
        unlearner = None
    else:
        unlearner = get_method(method, **(options or {}))
    parents = affected_models(ws, ids, model)
    if model is not None and erase:
        others = [m.id for m in affected_models(ws, ids) if m.id != model]
        if others:
            raise InvalidRequest(f"model(s) {', '.join(others)} also saw these records and would keep them after "
                                 "erasure; drop --model to unlearn every model, or pass --defer-erase")
    for p in parents:
        if not p.records - ids:
            raise InvalidRequest(f"the selection covers the whole training set of model {p.id}; nothing would be "
                                 "left to learn from. Retire the model instead of unlearning it")
    supersede = [p.id for p in parents] + [r.id for r in ws.ledger.models(kinds=("reference",), status="active")
                                           if r.records & ids]
    selector = {"sources": list(sources), "records": sorted(int(i) for i in records),
                "random_fraction": random_fraction, "seed": seed, "model": model}
    request_id = ws.ledger.reserve_request_id()
    children: list[ModelRow] = []
    certificates: list[dict[str, Any]] = []
    try:
        for parent in parents:
            if unlearner is None:
                child, cert = _auto_one(ws, parent, ids, request_id, thresholds, options or {}, budget_fraction)
            else:
                child, cert = _unlearn_one(ws, parent, ids, unlearner, request_id, verify, thresholds)
            children.append(child)
            if cert is None:
                continue
            certificates.append(cert)
            if not cert["passed"] and not accept_failed:
                cert["outcome"] = "rejected"
                path = write_certificate(ws, cert)["json"]
                failed = ", ".join(f"{k} {v['value']} (limit {v['limit']})" for k, v in cert["checks"].items()
                                   if not v["passed"])
                raise VerificationFailed(f"{cert['method']} on {parent.id} failed verification: {failed}; nothing was "
                                         f"erased (certificate: {path}). Try --method auto, another method, or "
                                         "--accept-failed to keep it anyway")
        results = {"children": [c.id for c in children],
                   "certificates": {c["models"]["child"]["id"]: c for c in certificates}}
        ws.ledger.commit_request(request_id=request_id, selector=selector, reason=reason, method=method,
                                 records=ids, affected=[p.id for p in parents], children=children,
                                 supersede=supersede, results=results, erase=erase)
    except BaseException:
        for child in children:
            shutil.rmtree(ws.model_dir(child.id), ignore_errors=True)
        raise
    paths = {c["models"]["child"]["id"]: write_certificate(ws, c) for c in certificates}
    log.info("request %d: %d records, %d model(s) unlearned, erased=%s", request_id, len(ids), len(children), erase)
    return ForgetResult(request_id, len(ids), children, certificates, paths, erase)


def _auto_options(options: dict[str, Any] | None) -> None:
    extra = sorted(set(options or {}) - {"max_steps", "max_seconds", "max_retain_drop"})
    if extra:
        raise InvalidRequest(f"--method auto runs every method with its defaults; options {', '.join(extra)} belong "
                             "to a named method")


def training_seconds(ws: Any, row: ModelRow) -> float:
    """Wall-clock of the training run at the root of a model's lineage."""
    while row.kind != "trained" and row.parent is not None:
        row = ws.ledger.model(row.parent)
    return row.seconds


def auto_candidates() -> list[str]:
    """Methods ``auto`` tries: every registered method except exact retraining."""
    return [name for name in METHODS.names() if name != "retrain"]


def _auto_one(ws: Any, parent: ModelRow, ids: BitMap, request_id: int, thresholds: Thresholds | None,
              options: dict[str, Any], budget_fraction: float) -> tuple[ModelRow, dict[str, Any]]:
    if not ws.test_ids():
        raise InvalidRequest("--method auto chooses by verification, which needs held-out records (split 'test')")
    budget = max(budget_fraction * training_seconds(ws, parent), 0.05)
    tried: list[dict[str, Any]] = []
    best: tuple[ModelRow, dict[str, Any]] | None = None
    try:
        for name in auto_candidates():
            best = _auto_try(ws, parent, ids, request_id, thresholds, name, {"max_seconds": budget, **options},
                             tried, best)
    except BaseException:
        if best is not None:
            shutil.rmtree(ws.model_dir(best[0].id), ignore_errors=True)
        raise
    if best is None:
        raise InvalidRequest(f"--method auto found no method that could serve model {parent.id}")
    child, cert = best
    cert["auto"] = {"budget_seconds_each": round(budget, 4), "chosen": cert["method"], "candidates": tried,
                    "total_seconds": round(sum(t.get("seconds", 0.0) for t in tried), 4)}
    return child, cert


def _auto_try(ws: Any, parent: ModelRow, ids: BitMap, request_id: int, thresholds: Thresholds | None, name: str,
              options: dict[str, Any], tried: list[dict[str, Any]],
              best: tuple[ModelRow, dict[str, Any]] | None) -> tuple[ModelRow, dict[str, Any]] | None:
    """Run one candidate of ``--method auto``; return the better of it and ``best`` (removing the other's folder)."""
    log.info("auto: trying %s", name)
    try:
        child, cert = _unlearn_one(ws, parent, ids, get_method(name, **options), request_id, True, thresholds)
    except DisgorgeError as exc:  # a refusal or a divergence disqualifies this candidate only
        tried.append({"method": name, "skipped": str(exc)})
        return best
    tried.append({"method": name, "avg_gap": cert["avg_gap"], "seconds": cert["seconds"]["method"],
                  "passed": cert["passed"], "effect": cert["metrics"]["unlearned"]["effect"],
                  "ta": cert["metrics"]["unlearned"][get_task(parent.task).figures.test]})
    if best is None or cert["avg_gap"] < best[1]["avg_gap"]:
        loser, winner = best, (child, cert)
    else:
        loser, winner = (child, cert), best
    if loser is not None:
        shutil.rmtree(ws.model_dir(loser[0].id), ignore_errors=True)
    return winner


def _unlearn_one(ws: Any, parent: ModelRow, ids: BitMap, unlearner: Any, request_id: int, verify: bool,
                 thresholds: Thresholds | None) -> tuple[ModelRow, dict[str, Any] | None]:
    parent_model, _, task = ws.load_model(parent.id)
    recipe = Recipe.from_toml(parent.recipe, where=f"model {parent.id}'s recipe")
    forget_ids, retain_ids = parent.records & ids, parent.records - ids
    request = UnlearnRequest(task=task, forget=ws.dataset(task, forget_ids), retain=ws.dataset(task, retain_ids),
                             train=recipe.train, data_info=parent.info["data"], seed=recipe.seed)
    log.info("unlearning %d records from %s with %s", len(forget_ids), parent.id, unlearner.name)
    child_model = unlearner.unlearn(parent_model, request)
    fit_result = getattr(unlearner, "fit_result_", None)
    info: dict[str, Any] = {"data": parent.info["data"], "config": unlearner.config.to_dict(),
                            "report": unlearner.report_}
    if fit_result is not None:
        info["fit"] = {"steps": fit_result.steps, "epochs": fit_result.epochs, "stopped": fit_result.stopped,
                       "rollbacks": fit_result.rollbacks}
    child = save_model(ws, model=child_model, recipe=recipe, records=retain_ids, info=info, kind="unlearned",
                       seconds=unlearner.seconds_, parent=parent.id, method=unlearner.name, request_id=request_id)
    if not verify:
        return child, None
    try:
        cert = certify(ws, task=task, parent=parent, parent_model=parent_model, child=child,
                       child_model=child_model, forget_ids=forget_ids, request_id=request_id,
                       method=unlearner.name, config=unlearner.config.to_dict(), report=unlearner.report_,
                       thresholds=thresholds)
    except BaseException:
        shutil.rmtree(ws.model_dir(child.id), ignore_errors=True)
        raise
    return child, cert
