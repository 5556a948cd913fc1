"""Erasure requests: unlearn every affected model, verify, then erase the records' payloads.

Order of work, so that a failure at any step erases nothing and leaves no half-written model:
1. resolve the selection and the affected models (errors here change nothing);
2. unlearn each affected model and write its child folder (folders are invisible until the ledger names them);
3. verify each child against a retrained reference (references are clean models, trained here and cached as they
   are made);
4. one ledger transaction records the request and the children, supersedes the parents, and erases the payloads
   (secure_delete) leaving tombstones; certificate files are written after it, from what the ledger holds.
"""

from __future__ import annotations

import logging
import shutil
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

from pyroaring import BitMap
from torch import nn

from .errors import DisgorgeError, InvalidRequest
from .evidence.certificate import Thresholds, certify, write_certificate
from .evidence.probes import Probe
from .ledger import ModelRow, now
from .methods import METHODS, Method, UnlearnRequest, get_method
from .scenarios import workspace_probes
from .tasks import Task
from .training.trainer import fit_recipe
from .workspace import Workspace

log = logging.getLogger(__name__)

AUTO = "auto"
AUTO_BUDGET = 0.5  # each candidate of --method auto may take this share of the original training time
AUTO_OPTIONS = ("max_steps", "max_seconds", "max_retain_drop")  # the options auto passes to every candidate

Certificate = dict[str, Any]


@dataclass
class ForgetResult:
    """What an erasure request did."""

    request_id: int
    records: int
    children: list[ModelRow] = field(default_factory=list)
    certificates: list[Certificate] = field(default_factory=list)
    paths: dict[str, dict[str, str]] = field(default_factory=dict)
    erased: bool = True


class VerificationFailed(DisgorgeError):
    """The unlearned model failed its certificate's checks; nothing was committed or erased."""


def affected_models(ws: Workspace, ids: BitMap, model: str | None = None) -> list[ModelRow]:
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


def ensure_reference(ws: Workspace, parent: ModelRow, retain_ids: BitMap) -> tuple[nn.Module, ModelRow]:
    """The model retrained from the parent's recipe on ``retain_ids``: from the cache, or trained now and cached."""
    cached = ws.ledger.find_reference(parent.recipe_sha256, retain_ids)
    if cached is not None:
        model, row, _ = ws.load_model(cached.id)
        return model, row
    recipe = ws.recipe_of(parent)
    _, _, task = ws.load_model(parent.id)
    log.info("training the reference: %s's recipe on %d retained records", parent.id, len(retain_ids))
    model, result = fit_recipe(task, recipe, ws.dataset(task, retain_ids), parent.info["data"])
    info = {"data": parent.info["data"], "fit": {"steps": result.steps, "epochs": result.epochs}}
    row = ws.save_model(model=model, recipe=recipe, records=retain_ids, info=info, kind="reference",
                        seconds=result.seconds, parent=parent.id, method="retrain")
    ws.ledger.insert_model(row)
    return model, row


@dataclass
class _Request:
    """What every model of one erasure request is unlearned and verified against."""

    ws: Workspace
    ids: BitMap
    request_id: int
    thresholds: Thresholds | None
    probes: list[Probe]
    selector: dict[str, Any] = field(default_factory=dict)
    reason: str = ""
    created_at: str | None = None


Unlearner = Callable[[_Request, ModelRow], tuple[ModelRow, Certificate | None]]


def forget(ws: Workspace, *, sources: Sequence[str] = (), records: Sequence[int] = (),
           random_fraction: float | None = None, seed: int = 0, model: str | None = None, method: str = "grad_diff",
           options: dict[str, Any] | None = None, reason: str = "", verify: bool = True, erase: bool = True,
           thresholds: Thresholds | None = None, accept_failed: bool = False,
           budget_fraction: float = AUTO_BUDGET) -> ForgetResult:
    """Remove the selected records' effect from every model that saw them, verify, then erase them.

    ``method="auto"`` tries every suitable method, each within ``budget_fraction`` of the parent's training time,
    and keeps the one closest to the retrained reference (smallest Avg Gap). A result that fails verification
    aborts the request (nothing erased, the rejected certificate kept for inspection) unless ``accept_failed``.
    """
    ids = ws.select(sources=sources, records=records, random_fraction=random_fraction, seed=seed)
    unlearner = _auto(options or {}, budget_fraction, verify) if method == AUTO else \
        _named(get_method(method, **(options or {})), verify)
    parents = _parents(ws, ids, model, erase)
    selector = {"sources": list(sources), "records": sorted(int(i) for i in records),
                "random_fraction": random_fraction, "seed": seed, "model": model}
    request = _Request(ws, ids, ws.ledger.reserve_request_id(), thresholds, workspace_probes(ws), selector, reason,
                       now())
    children: list[ModelRow] = []
    certificates: list[Certificate] = []
    try:
        for parent in parents:
            child, cert = unlearner(request, parent)
            children.append(child)
            if cert is not None:
                certificates.append(cert)
                _refuse_failed(request, parent, cert, accept_failed)
        _commit(request, parents, children, certificates, method=method, reason=reason, erase=erase,
                selector=selector)
    except BaseException:
        for child in children:
            shutil.rmtree(ws.model_dir(child.id), ignore_errors=True)
        raise
    paths = {c["models"]["child"]["id"]: write_certificate(ws, c) for c in certificates}
    log.info("request %d: %d records, %d model(s) unlearned, erased=%s", request.request_id, len(ids), len(children),
             erase)
    return ForgetResult(request.request_id, len(ids), children, certificates, paths, erase)


def _parents(ws: Workspace, ids: BitMap, model: str | None, erase: bool) -> list[ModelRow]:
    """The models to unlearn; refuses a request that would leave a model holding erased records or nothing."""
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
    return parents


def _refuse_failed(request: _Request, parent: ModelRow, cert: Certificate, accept_failed: bool) -> None:
    """Abort the request on a failed certificate (kept on disk as rejected) unless the user accepts it."""
    if cert["passed"] or accept_failed:
        return
    cert["outcome"] = "rejected"
    path = write_certificate(request.ws, cert)["json"]
    failed = ", ".join(f"{k} {v['value']} (limit {v['limit']})" for k, v in cert["checks"].items()
                       if not v["passed"])
    raise VerificationFailed(f"{cert['method']} on {parent.id} failed verification: {failed}; nothing was "
                             f"erased (certificate: {path}). Try --method auto, another method, or "
                             "--accept-failed to keep it anyway")


def _commit(request: _Request, parents: list[ModelRow], children: list[ModelRow], certificates: list[Certificate],
            *, method: str, reason: str, erase: bool, selector: dict[str, Any]) -> None:
    """One ledger transaction: the request, its children, the superseded parents and references, the erasure."""
    ws, ids = request.ws, request.ids
    supersede = [p.id for p in parents] + [r.id for r in ws.ledger.models(kinds=("reference",), status="active")
                                           if r.records & ids]
    results = {"children": [c.id for c in children],
               "certificates": {c["models"]["child"]["id"]: c for c in certificates}}
    ws.ledger.commit_request(request_id=request.request_id, selector=selector, reason=reason, method=method,
                             records=ids, affected=[p.id for p in parents], children=children,
                             supersede=supersede, results=results, erase=erase, created_at=request.created_at)


def _named(method: Method, verify: bool) -> Unlearner:
    """Unlearn each model with one method (verified unless ``verify`` is false)."""

    def run(request: _Request, parent: ModelRow) -> tuple[ModelRow, Certificate | None]:
        child = unlearn_child(request, parent, method)
        return child.row, certify_child(request, parent, child) if verify else None

    return run


def _auto(options: dict[str, Any], budget_fraction: float, verify: bool) -> Unlearner:
    """Unlearn each model with every candidate method and keep the one closest to the reference."""
    if not verify:
        raise InvalidRequest("--method auto chooses by verification; it cannot run with --no-verify")
    extra = sorted(set(options) - set(AUTO_OPTIONS))
    if extra:
        raise InvalidRequest(f"--method auto runs every method with its defaults; options {', '.join(extra)} belong "
                             "to a named method")
    return lambda request, parent: _auto_one(request, parent, options, budget_fraction)


def training_seconds(ws: Workspace, row: ModelRow) -> float:
    """Wall-clock of the training run at the root of a model's lineage."""
    while row.kind != "trained" and row.parent is not None:
        row = ws.ledger.model(row.parent)
    return row.seconds


def auto_candidates() -> list[str]:
    """Methods ``auto`` tries: every registered method except exact retraining."""
    return [name for name in METHODS.names() if name != "retrain"]


def _candidate(name: str, options: dict[str, Any]) -> Method:
    """A candidate of ``auto`` with the budget options its option family takes."""
    known = METHODS.get(name).Config.help()
    return get_method(name, **{k: v for k, v in options.items() if k in known})


def _auto_one(request: _Request, parent: ModelRow, options: dict[str, Any],
              budget_fraction: float) -> tuple[ModelRow, Certificate]:
    ws = request.ws
    if not ws.test_ids():
        raise InvalidRequest("--method auto chooses by verification, which needs held-out records (split 'test')")
    budget = max(budget_fraction * training_seconds(ws, parent), 0.05)
    tried: list[dict[str, Any]] = []
    best: tuple[ModelRow, Certificate] | None = None
    try:
        for name in auto_candidates():
            best = _auto_try(request, parent, name, {"max_seconds": budget, **options}, tried, best)
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


def _auto_try(request: _Request, parent: ModelRow, name: str, options: dict[str, Any], tried: list[dict[str, Any]],
              best: tuple[ModelRow, Certificate] | None) -> tuple[ModelRow, Certificate] | None:
    """Run one candidate of ``--method auto``; return the better of it and ``best`` (removing the other's folder)."""
    log.info("auto: trying %s", name)
    try:
        unlearned = unlearn_child(request, parent, _candidate(name, options))
        child, cert = unlearned.row, certify_child(request, parent, unlearned)
    except DisgorgeError as exc:  # a refusal or a divergence disqualifies this candidate only
        tried.append({"method": name, "skipped": str(exc)})
        return best
    tried.append({"method": name, "avg_gap": cert["avg_gap"], "seconds": cert["seconds"]["method"],
                  "passed": cert["passed"], "effect": cert["metrics"]["unlearned"]["effect"],
                  "ta": cert["metrics"]["unlearned"][unlearned.task.figures.test]})
    if best is None or cert["avg_gap"] < best[1]["avg_gap"]:
        loser, winner = best, (child, cert)
    else:
        loser, winner = (child, cert), best
    if loser is not None:
        shutil.rmtree(request.ws.model_dir(loser[0].id), ignore_errors=True)
    return winner


@dataclass
class _Child:
    """An unlearned model whose folder is written but not yet in the ledger, with what certifying it needs."""

    row: ModelRow
    model: nn.Module
    parent_model: nn.Module
    task: Task
    forget_ids: BitMap
    retain_ids: BitMap
    method: Method


def unlearn_child(request: _Request, parent: ModelRow, method: Method) -> _Child:
    """Unlearn one model with ``method`` and write the child's folder (not yet in the ledger)."""
    ws = request.ws
    parent_model, _, task = ws.load_model(parent.id)
    recipe = ws.recipe_of(parent)
    forget_ids, retain_ids = parent.records & request.ids, parent.records - request.ids
    unlearn_request = UnlearnRequest(task=task, forget=ws.dataset(task, forget_ids),
                                     retain=ws.dataset(task, retain_ids), train=recipe.train,
                                     data_info=parent.info["data"], seed=recipe.seed)
    log.info("unlearning %d records from %s with %s", len(forget_ids), parent.id, method.name)
    child_model = method.unlearn(parent_model, unlearn_request)
    fit = method.fit_result_
    info: dict[str, Any] = {"data": parent.info["data"], "config": method.config.to_dict(), "report": method.report_,
                            "fit": {"steps": fit.steps, "epochs": fit.epochs, "stopped": fit.stopped,
                                    "rollbacks": fit.rollbacks}}
    row = ws.save_model(model=child_model, recipe=recipe, records=retain_ids, info=info, kind="unlearned",
                        seconds=method.seconds_, parent=parent.id, method=method.name, request_id=request.request_id)
    return _Child(row, child_model, parent_model, task, forget_ids, retain_ids, method)


def certify_child(request: _Request, parent: ModelRow, child: _Child) -> Certificate:
    """Certify a child against the model retrained without the forget set; its folder is removed when this
    fails to run."""
    ws, method = request.ws, child.method
    try:
        reference_model, reference = ensure_reference(ws, parent, child.retain_ids)
        return certify(ws, task=child.task, parent=parent, parent_model=child.parent_model, child=child.row,
                       child_model=child.model, reference=reference, reference_model=reference_model,
                       forget_ids=child.forget_ids, request_id=request.request_id, method=method.name,
                       config=method.config.to_dict(), report=method.report_, thresholds=request.thresholds,
                       probes=request.probes, selector=request.selector, reason=request.reason,
                       requested_at=request.created_at)
    except BaseException:
        shutil.rmtree(ws.model_dir(child.row.id), ignore_errors=True)
        raise
