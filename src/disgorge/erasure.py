"""Erasure requests: unlearn every affected model, verify, then erase the records' payloads.

Order of work, so that a failure at any step erases nothing and leaves no half-written model:
1. resolve the selection and the affected models (errors here change nothing);
2. unlearn each affected model and write its child folder (folders are invisible until the ledger names them);
3. verify each child, at the evidence level the request asks for: against a retrained reference (``exact``;
   references are clean models, trained here and cached as they are made) or against held-out data (``heldout``,
   nothing trained); ``auto`` retrains only when the original's training took at most ``exact_budget`` seconds;
4. one ledger transaction records the request and the children, supersedes the parents, and erases the payloads
   (secure_delete) leaving tombstones; certificate files are written after it, from what the ledger holds.
"""

from __future__ import annotations

import json
import logging
import math
import shutil
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from importlib import resources
from typing import Any

from pyroaring import BitMap
from torch import nn

from .errors import DisgorgeError, IntegrityError, InvalidRequest
from .evidence.certificate import certify, robustness_block, training_seconds, write_certificate
from .evidence.judge import EXACT, HELDOUT, LEVELS, PURPOSES, NoComparison, Thresholds
from .evidence.probes import Probe, workspace_probes
from .evidence.stopping import target_rule
from .executors import EXECUTORS, get_executor
from .ledger import ModelRow, now
from .methods import METHODS, Method, UnlearnRequest, get_method
from .scenarios import workspace_purpose
from .tasks import Task
from .training.sharding import Layout, base_digest, retrain_sharded
from .training.trainer import fit_recipe
from .workspace import Deletion, Workspace

log = logging.getLogger(__name__)

AUTO = "auto"
SISA = "sisa"
"""The method of a sharded model's removals: retrain the affected shards (exact)."""
AUTO_BUDGET = 0.5  # each candidate of --method auto may take this share of the original training time
AUTO_MARGIN = 0.5
"""``auto`` stops trying once a candidate passes with every decisive figure within this share of its limit."""
AUTO_TOTAL = 1.0
"""``auto`` tries no further candidate once it has spent this many times the original's training time."""
AUTO_OPTIONS = ("max_steps", "max_seconds", "max_retain_drop")  # the options auto passes to every candidate
EXACT_BUDGET = 60.0
"""``verify="auto"`` retrains a reference only for models whose training took at most this many seconds."""
VERIFY_CHOICES = (AUTO, *LEVELS, "none")
"""What ``forget(verify=...)`` takes: an evidence level, ``auto``, or ``none`` (no verification)."""

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
    deletion: Deletion = field(default_factory=Deletion)


class NoChange(DisgorgeError):
    """An unlearning run that left the model exactly as it was (its retain guard restored the original): not a
    result to certify, commit or erase under, whatever ``--accept-failed`` says."""


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
    return [m for m in ws.ledger.models(kinds=("trained", "unlearned", "imported"), status="active")
            if m.records & ids]


def imported_root(ws: Workspace, row: ModelRow) -> ModelRow | None:
    """The imported model a model's lineage starts from (itself, or an ancestor), or None for one trained here."""
    while row.parent is not None:
        row = ws.ledger.model(row.parent)
    return row if row.kind == "imported" else None


def check_retrainable(ws: Workspace, row: ModelRow) -> None:
    """Refuse, in one line, to retrain a model's recipe as a verification reference when its lineage starts with an
    imported model that no retraining can reproduce (a fine-tuned language model imported without its base, a
    classifier without its recipe), or whose base network changed since the import."""
    root = imported_root(ws, row)
    if root is None:
        return
    note = root.info.get("imported", {})
    if not note.get("reference"):
        which = f"model {row.id} was" if root.id == row.id else f"model {row.id} descends from {root.id},"
        raise InvalidRequest(f"{which} imported from {note.get('folder')}: "
                             f"{note.get('reference_note', 'no reference can be retrained')}. Verify reference-free "
                             "(--verify heldout, or `disgorge verify --level heldout`)")
    recorded = note.get("base_sha256")
    if recorded is not None and base_digest(ws.recipe_of(row)) != recorded:
        raise IntegrityError(f"the base network {note.get('base')} changed since model {root.id} was imported; a "
                             "reference fine-tuned from it would not be the model's counterpart. Restore that folder")


def ensure_reference(ws: Workspace, parent: ModelRow, retain_ids: BitMap) -> tuple[nn.Module, ModelRow]:
    """The model retrained from the parent's recipe on ``retain_ids``, built with the data facts the task learns from
    them (a language model's own word vocabulary, so it never names a forgotten word): from the cache, or trained now
    and cached. Refused for a model imported without the means to retrain it (:func:`check_retrainable`)."""
    check_retrainable(ws, parent)
    cached = ws.ledger.find_reference(parent.recipe_sha256, retain_ids)
    if cached is not None:
        model, row, _ = ws.load_model(cached.id)
        return model, row
    from .tasks import get_task

    recipe, task = ws.recipe_of(parent), get_task(parent.task)  # the parent's weights are not needed (may be gone)
    log.info("training the reference: %s's recipe on %d retained records", parent.id, len(retain_ids))
    data = ws.dataset(task, retain_ids)
    data_info = task.retrained_info(parent.info["data"], data, recipe.model)  # e.g. a vocabulary of what it keeps
    model, result = fit_recipe(task, recipe, data, data_info, device=ws.device_for(recipe))
    info = {"data": data_info, "fit": {"steps": result.steps, "epochs": result.epochs}, **result.info}
    row = ws.save_model(model=model, recipe=recipe, records=retain_ids, info=info, kind="reference",
                        seconds=result.seconds, parent=parent.id, method="retrain", files=result.files)
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
    verify: str = AUTO
    exact_budget: float = EXACT_BUDGET
    purpose: str = "privacy"
    executor: str = "local"  # where a sharded model's shards retrain
    workers: int = 1


Unlearner = Callable[[_Request, ModelRow], tuple[ModelRow, Certificate | None]]


def forget(ws: Workspace, *, sources: Sequence[str] = (), records: Sequence[int] = (),
           random_fraction: float | None = None, seed: int = 0, model: str | None = None, method: str = "grad_diff",
           options: dict[str, Any] | None = None, reason: str = "", verify: str | bool = AUTO, erase: bool = True,
           thresholds: Thresholds | None = None, accept_failed: bool = False,
           budget_fraction: float = AUTO_BUDGET, exact_budget: float = EXACT_BUDGET,
           purpose: str | None = None, keep_superseded: bool = False,
           include_test: bool = False, executor: str = "local", workers: int = 1,
           draft: int | None = None) -> ForgetResult:
    """Remove the selected records' effect from every model that saw them, verify, then erase them.

    ``draft``: carry out a draft request (``disgorge attribute --to-request``): its selection and reason, committed
    under its id.

    ``verify`` is the evidence level: ``exact`` (against a model retrained without the records), ``heldout``
    (reference-free: against held-out data, nothing trained), ``auto`` (``exact`` only for a model whose training
    took at most ``exact_budget`` seconds or whose reference is cached, and where held-out data of the forget set's
    kind is missing) or ``none``. ``purpose`` (privacy, copyright, poison, bias; default: the scenario's, else
    privacy) picks the decisive figures. ``method="auto"`` tries every suitable method, each within
    ``budget_fraction`` of the parent's training time, and keeps the best verified one. A result that fails
    verification aborts the request (nothing erased, the rejected certificate kept for inspection) unless
    ``accept_failed``; one whose original was already indistinguishable from an unseen set is committed.

    A source's held-out (split ``test``) records are left alone unless ``include_test``. A sharded model is always
    unlearned exactly, by retraining the shards that held the records (``sisa``; ``method`` serves the others), as
    jobs on ``executor`` with ``workers``.

    After an erasure the weights of every model that saw the records and is no longer in service (the parents,
    stale references) are deleted, unless ``keep_superseded``; ``deletion`` in the result says what went. The
    ledger rows and files of the models it relies on are checked for tampering first. Call it under
    :meth:`Workspace.writing` (the API does) so that concurrent requests run one after the other.
    """
    level = _verify_choice(verify)
    check_executor(executor, workers)
    purpose = purpose or workspace_purpose(ws)
    if purpose not in PURPOSES:
        raise InvalidRequest(f"unknown purpose {purpose!r}; choose one of {', '.join(PURPOSES)}")
    if exact_budget < 0:
        raise InvalidRequest(f"--exact-budget must be at least 0 seconds, got {exact_budget}")
    if draft is not None:
        sources, records, reason = _open_draft(ws, draft, sources, records, random_fraction, reason)
    ids = ws.select(sources=sources, records=records, random_fraction=random_fraction, seed=seed,
                    include_test=include_test)
    if method == SISA:
        unlearner = _sisa(level != "none")
    elif method == AUTO:
        unlearner = _auto(options or {}, budget_fraction, level != "none")
    else:
        unlearner = _named(get_method(method, **(options or {})), level != "none")
    parents = _parents(ws, ids, model, erase)
    _check_sisa(ws, parents, method)
    ws.check_untampered(parents)
    selector = {"sources": list(sources), "records": sorted(int(i) for i in records),
                "random_fraction": random_fraction, "seed": seed, "model": model}
    request_id = draft if draft is not None else ws.ledger.reserve_request_id()
    request = _Request(ws, ids, request_id, thresholds, workspace_probes(ws), selector, reason,
                       now(), level, exact_budget, purpose, executor, workers)
    children: list[ModelRow] = []
    certificates: list[Certificate] = []
    try:
        for parent in parents:
            child, cert = (_sisa(level != "none") if sharded(ws, parent) else unlearner)(request, parent)
            children.append(child)
            _refuse_unchanged(parent, child)
            if cert is not None:
                certificates.append(cert)
                _refuse_failed(request, parent, cert, accept_failed)
        _commit(request, parents, children, certificates, method=method, reason=reason, erase=erase,
                selector=selector)
    except BaseException:
        for child in children:
            shutil.rmtree(ws.model_dir(child.id), ignore_errors=True)
        raise
    if draft is not None:
        ws.ledger.set_draft_executed(draft)
    deletion = ws.complete_erasure(keep_superseded=keep_superseded) if erase else Deletion()
    paths = {c["models"]["child"]["id"]: write_certificate(ws, c) for c in certificates}
    log.info("request %d: %d records, %d model(s) unlearned, erased=%s", request.request_id, len(ids), len(children),
             erase)
    return ForgetResult(request.request_id, len(ids), children, certificates, paths, erase, deletion)


def _open_draft(ws: Workspace, draft: int, sources: Sequence[str], records: Sequence[int],
                random_fraction: float | None, reason: str) -> tuple[list[str], list[int], str]:
    """The selection and reason of an open draft request; refuses a draft already carried out or a second
    selection beside it."""
    if sources or records or random_fraction is not None:
        raise InvalidRequest("--request carries its own selection; give no --source, --records or --random with it")
    found = ws.ledger.draft(draft)
    if found.status != "open" or ws.ledger.find_request(draft) is not None:
        raise InvalidRequest(f"draft request {draft} was already carried out; see `disgorge requests`")
    return (list(found.selector.get("sources", ())), [int(i) for i in found.selector.get("records", ())],
            reason or found.reason)


def _verify_choice(verify: str | bool) -> str:
    """``verify`` as one of :data:`VERIFY_CHOICES` (True means auto, False none)."""
    if isinstance(verify, bool):
        return AUTO if verify else "none"
    if verify not in VERIFY_CHOICES:
        raise InvalidRequest(f"unknown verification level {verify!r}; choose one of {', '.join(VERIFY_CHOICES)}")
    return verify


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


def check_executor(name: str, workers: int) -> None:
    """Refuse an unknown executor or a worker count below 1 before any work starts."""
    EXECUTORS.get(name)
    if not isinstance(workers, int) or isinstance(workers, bool) or not 1 <= workers <= 1024:
        raise InvalidRequest(f"workers must be an integer from 1 to 1024, got {workers!r}")


def sharded(ws: Workspace, row: ModelRow) -> bool:
    """Whether a model was trained with a sharded recipe (its removals retrain shards, exactly)."""
    return ws.recipe_of(row).sharded and "sharding" in row.info


def _check_sisa(ws: Workspace, parents: list[ModelRow], method: str) -> None:
    """``--method sisa`` serves sharded models only; other methods apply to the unsharded ones (sharded models are
    always unlearned exactly, by retraining their affected shards)."""
    plain = [p.id for p in parents if not sharded(ws, p)]
    if method == SISA and plain:
        raise InvalidRequest(f"model(s) {', '.join(plain)} are not sharded; --method sisa serves models trained with "
                             "a [sharding] recipe: choose another method (see `disgorge methods`)")
    shards = [p.id for p in parents if sharded(ws, p)]
    if shards and method != SISA:
        log.info("model(s) %s are sharded: their affected shards are retrained (exact), not unlearned with %s",
                 ", ".join(shards), method)


def _refuse_unchanged(parent: ModelRow, child: ModelRow) -> None:
    """Abort the request when the child holds the parent's very weights: nothing was unlearned (typically the
    retain guard rolled every step back), so there is nothing to commit, and erasing the records would leave their
    effect in a model said to be free of it. ``--accept-failed`` does not apply: this is no change, not a result."""
    if child.weights_sha256 != parent.weights_sha256:
        return
    stopped = (child.info.get("fit") or {}).get("stopped")
    why = {"guard": " (its retain guard restored the original weights: the method could not move without losing "
                    "retain accuracy)",
           "past": " (every state it measured went past the request's targets, so it kept the original weights: "
                   "lower the learning rate)"}.get(stopped, "")
    raise NoChange(f"{child.method} left {parent.id} unchanged{why}; nothing was committed or erased. Lower the "
                   "learning rate (-o lr=...), raise -o max_retain_drop, or try --method auto or another method")


def _refuse_failed(request: _Request, parent: ModelRow, cert: Certificate, accept_failed: bool) -> None:
    """Abort the request on a failed certificate (kept on disk as rejected) unless the user accepts it."""
    if cert["verdict"] == "indistinguishable":
        log.warning("request %d: the original %s was already indistinguishable from a model that never saw these "
                    "records on the decisive figures; the certificate says so", request.request_id, parent.id)
    if cert["verdict"] != "failed" or accept_failed:
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
    results = {"children": [c.id for c in children], "purpose": request.purpose,
               "certificates": {c["models"]["child"]["id"]: c for c in certificates}}
    ws.ledger.commit_request(request_id=request.request_id, selector=selector, reason=reason, method=method,
                             records=ids, affected=[p.id for p in parents], children=children,
                             supersede=supersede, results=results, erase=erase, created_at=request.created_at)


def _sisa(verify: bool) -> Unlearner:
    """Unlearn a sharded model exactly: retrain the shards that held the records from their last clean checkpoint;
    certified by construction (no reference model)."""

    def run(request: _Request, parent: ModelRow) -> tuple[ModelRow, Certificate | None]:
        child, construction = sisa_child(request, parent)
        if not verify:
            return child.row, None
        try:
            cert = certify(request.ws, task=child.task, parent=parent, parent_model=child.parent_model,
                           child=child.row, child_model=child.model, purpose=request.purpose,
                           forget_ids=child.forget_ids, request_id=request.request_id, method=SISA,
                           config={}, report=child.row.info["report"], thresholds=request.thresholds,
                           probes=request.probes, selector=request.selector, reason=request.reason,
                           requested_at=request.created_at, construction=construction)
        except BaseException:
            shutil.rmtree(request.ws.model_dir(child.row.id), ignore_errors=True)
            raise
        return child.row, cert

    return run


def sisa_child(request: _Request, parent: ModelRow) -> tuple[_Child, dict[str, Any]]:
    """Retrain the parent's shards that held any of the request's records and write the child's folder (not yet in
    the ledger); with the certificate's construction checks and cost block."""
    ws = request.ws
    parent_model, _, task = ws.load_model(parent.id)
    recipe = ws.recipe_of(parent)
    forget_ids, retain_ids = parent.records & request.ids, parent.records - request.ids
    digests = parent.info["sharding"]["checkpoints"]

    def read(name: str) -> bytes:
        if name not in digests:
            raise IntegrityError(f"model {parent.id}: its ledger row records no checkpoint {name}; it cannot be "
                                 "unlearned by retraining shards (see `disgorge doctor`)")
        return ws.model_file(parent.id, name, digests[name])

    log.info("retraining the shards of %s that held any of %d records", parent.id, len(forget_ids))
    runner = get_executor(request.executor, workers=request.workers)
    try:
        run = retrain_sharded(task, recipe, parent_model, parent.info, ws.dataset(task, retain_ids), forget_ids,
                              read, runner, device=ws.device_for(recipe))
    finally:
        runner.close()
    fit = run.result
    report = {"retrained_shards": {str(s): first for s, first in run.retrained.items()}, "dropped_shards": run.dropped,
              "shards": len(run.layout.slices), "examples": run.examples,
              "monolithic_examples": recipe.train.epochs * len(retain_ids), "workers": request.workers}
    info: dict[str, Any] = {"data": parent.info["data"], "config": {}, "report": report,
                            "fit": {"steps": fit.steps, "epochs": fit.epochs, "stopped": fit.stopped,
                                    "rollbacks": fit.rollbacks}, **fit.info}
    row = ws.save_model(model=run.model, recipe=recipe, records=retain_ids, info=info, kind="unlearned",
                        seconds=fit.seconds, parent=parent.id, method=SISA, request_id=request.request_id,
                        files=run.files)
    try:
        construction = sisa_construction(ws, parent, row, forget_ids)
    except BaseException:
        shutil.rmtree(ws.model_dir(row.id), ignore_errors=True)
        raise
    return _Child(row, run.model, parent_model, task, forget_ids, retain_ids, None), construction


def sisa_construction(ws: Workspace, parent: ModelRow, child: ModelRow, forget_ids: BitMap) -> dict[str, Any]:
    """The checks of a sharded model's exact removal, from the two ledger rows alone, each shown beside what the
    original (doing nothing) scores, and the cost block: shards retrained, untouched and dropped, and the work
    against retraining every shard and a monolithic model."""
    old = Layout.from_info(parent.info["sharding"]["members"])
    new = Layout.from_info(child.info["sharding"]["members"])
    kept = BitMap.union(*(new.records(s) for s in new.slices)) if new.slices else BitMap()
    if kept != child.records:
        raise IntegrityError(f"model {child.id}: its shards' bitmaps name other records than its lineage; it cannot "
                             "be certified (see `disgorge doctor`)")
    report = child.info["report"]
    parent_files, child_files = parent.info["sharding"]["checkpoints"], child.info["sharding"]["checkpoints"]

    def in_shards(layout: Layout) -> int:
        return sum(len(b & forget_ids) for parts in layout.slices.values() for b in parts)

    def in_carried(files: dict[str, str]) -> int:
        """Forgotten records in the slices behind every checkpoint the child carried over from the parent (same
        name and sha256), i.e. those it did not retrain."""
        total = 0
        for name, digest in files.items():
            shard, stage = (int(part) for part in name.split(".")[0].split("-")[1::2])
            if parent_files.get(name) == digest and shard in old.slices:
                total += sum(len(b & forget_ids) for b in old.slices[shard][:stage + 1])
        return total

    checks = {}
    for name, value, original, proves in (
            ("shards_clean", in_shards(new), in_shards(old),
             "no shard of the unlearned model was trained on a forgotten record (ledger bitmaps)"),
            ("checkpoints_clean", in_carried(child_files), in_carried(parent_files),
             "no checkpoint the unlearned model carried over from the original saw a forgotten record")):
        checks[name] = {"value": value, "limit": 0, "passed": value == 0, "decisive": True, "original": original,
                        "indistinguishable": original == 0, "proves": proves}
    retrained = report["retrained_shards"]
    full = training_seconds(ws, parent)
    sharding = {"shards": child.info["sharding"]["shards"], "members": len(new.slices),
                "slices": child.info["sharding"]["slices"], "by": child.info["sharding"]["by"],
                "retrained": {s: {"from_slice": first} for s, first in retrained.items()},
                "untouched": [s for s in new.slices if str(s) not in retrained],
                "dropped": report["dropped_shards"], "workers": report.get("workers", 1),
                "seconds": round(child.seconds, 4), "full_retrain_seconds": round(full, 4),
                "time_ratio_full": _ratio(child.seconds, full), "examples": report["examples"],
                "monolithic_examples": report["monolithic_examples"],
                "work_ratio_monolithic": _ratio(report["examples"], report["monolithic_examples"])}
    return {"checks": checks, "sharding": sharding}


def _ratio(a: float, b: float) -> float | None:
    return round(a / b, 4) if b else None


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


def auto_candidates(task: str | None = None, purpose: str | None = None, share: float | None = None) -> list[str]:
    """Methods ``auto`` tries, in the order it tries them: every registered method except exact retraining, those
    that did best on the most similar bench request first (:func:`bench_order`), the rest in registry order."""
    names = [name for name in METHODS.names() if name != "retrain"]
    ranked = [m for m in bench_order(task, purpose, share) if m in names]
    return ranked + [m for m in names if m not in ranked]


AUTO_RECORD = "auto_order.json"
"""The bench's record of which methods did best on each bundled scenario (``disgorge.methods`` package data,
rewritten by ``make bench``)."""


def bench_order(task: str | None, purpose: str | None, share: float | None,
                record: dict[str, Any] | None = None) -> list[str]:
    """The methods of the bench scenario most like a request (same task, then same purpose, then the nearest
    forget share on a log scale), best first; empty without a record or a scenario of the task. ``record``
    defaults to the one the package ships (:data:`AUTO_RECORD`)."""
    if record is None:
        try:
            text = resources.files("disgorge.methods").joinpath(AUTO_RECORD).read_text(encoding="utf-8")
            record = json.loads(text)
        except (FileNotFoundError, json.JSONDecodeError):
            return []
    cases = [c for c in record.get("scenarios", []) if task is None or c["task"] == task]
    if not cases:
        return []

    def distance(case: dict[str, Any]) -> tuple[int, float]:
        share_gap = abs(math.log(case["forget_share"] / share)) if share and case.get("forget_share") else 0.0
        return int(purpose is not None and case["purpose"] != purpose), share_gap

    return list(min(cases, key=distance)["order"])


def _candidate(name: str, options: dict[str, Any]) -> Method:
    """A candidate of ``auto`` with the budget options its option family takes."""
    known = METHODS.get(name).Config.help()
    return get_method(name, **{k: v for k, v in options.items() if k in known})


def _auto_one(request: _Request, parent: ModelRow, options: dict[str, Any],
              budget_fraction: float) -> tuple[ModelRow, Certificate]:
    ws = request.ws
    if not ws.test_ids():
        raise InvalidRequest("--method auto chooses by verification, which needs held-out records (split 'test')")
    started = time.perf_counter()
    training = training_seconds(ws, parent)
    budget = max(budget_fraction * training, 0.05)
    tried: list[dict[str, Any]] = []
    best: tuple[_Child, Certificate] | None = None
    share = len(parent.records & request.ids) / max(len(parent.records), 1)
    candidates = auto_candidates(parent.task, request.purpose, share)
    # a reference trained for the first candidate's verification is a one-off cost of the request, not of choosing
    cached = ws.ledger.find_reference(parent.recipe_sha256, parent.records - request.ids) is not None
    why = f"tried every candidate ({len(candidates)})"
    try:
        for name in candidates:
            best = _auto_try(request, parent, name, {"max_seconds": budget, **options}, tried, best)
            if best is not None and best[1]["verdict"] == "passed" and (best[1]["score"] or 0.0) <= AUTO_MARGIN:
                why = (f"{best[1]['method']} passed with margin (worst decisive figure at {best[1]['score']} of its "
                       f"limit, at most {AUTO_MARGIN})")
                break
            if _spent(started, tried, cached) >= AUTO_TOTAL * training:
                why = f"spent {AUTO_TOTAL:g} x the original's training time; kept the best so far"
                break
    except BaseException:
        if best is not None:
            shutil.rmtree(ws.model_dir(best[0].row.id), ignore_errors=True)
        raise
    if best is None:
        raise InvalidRequest(f"--method auto found no method that could serve model {parent.id}")
    child, cert = best
    cert["robustness"] = _robustness_of(request, parent, child, cert)
    child = child.row
    wall = time.perf_counter() - started
    # The whole cost of choosing: every candidate's unlearning and verification (reference training included), and
    # the winner's robustness attacks; what a user pays for `auto`, beside the chosen method's own seconds.
    cert["auto"] = {"budget_seconds_each": round(budget, 4), "chosen": cert["method"], "candidates": tried,
                    "order": candidates, "stopped": why,
                    "total_seconds": round(sum(t.get("seconds", 0.0) for t in tried), 4),
                    "verification_seconds": round(sum(t.get("verification_seconds", 0.0) for t in tried), 4),
                    "wall_seconds": round(wall, 4), "training_seconds": round(training, 4),
                    "whole_time_ratio": _ratio(wall, training)}
    return child, cert


def _spent(started: float, tried: list[dict[str, Any]], cached: bool) -> float:
    """Seconds ``auto`` has spent choosing, less the reference's training when it trained one."""
    reference = 0.0 if cached else max((t.get("reference_seconds") or 0.0 for t in tried), default=0.0)
    return time.perf_counter() - started - reference


def _auto_try(request: _Request, parent: ModelRow, name: str, options: dict[str, Any], tried: list[dict[str, Any]],
              best: tuple[_Child, Certificate] | None) -> tuple[_Child, Certificate] | None:
    """Run one candidate of ``--method auto``; return the better of it and ``best`` (removing the other's folder)."""
    log.info("auto: trying %s", name)
    try:
        unlearned = unlearn_child(request, parent, _candidate(name, options))
        cert = certify_child(request, parent, unlearned, robust=False)
    except DisgorgeError as exc:  # a refusal or a divergence disqualifies this candidate only
        tried.append({"method": name, "skipped": str(exc)})
        return best
    tried.append({"method": name, "avg_gap": cert["avg_gap"], "score": cert["score"],
                  "seconds": cert["seconds"]["method"],
                  "verification_seconds": cert["seconds"].get("verification") or 0.0,
                  "reference_seconds": cert["seconds"].get("retrain"),
                  "verdict": cert["verdict"], "passed": cert["passed"],
                  "effect": cert["metrics"]["unlearned"]["effect"],
                  "ta": cert["metrics"]["unlearned"][unlearned.task.figures.test]})
    if best is None or _rank(cert) < _rank(best[1]):
        loser, winner = best, (unlearned, cert)
    else:
        loser, winner = (unlearned, cert), best
    if loser is not None:
        shutil.rmtree(request.ws.model_dir(loser[0].row.id), ignore_errors=True)
    return winner


VERDICT_ORDER = {"passed": 0, "indistinguishable": 1, "failed": 2}


def _rank(cert: Certificate) -> tuple[int, float, float]:
    """How ``auto`` orders candidates: verdict, then the worst decisive distance (:func:`.judge.score`), then the
    Avg Gap where a reference exists."""
    score = cert["score"] if cert["score"] is not None else float("inf")
    gap = cert["avg_gap"] if cert["avg_gap"] is not None else 0.0
    return VERDICT_ORDER[cert["verdict"]], score, gap


@dataclass
class _Child:
    """An unlearned model whose folder is written but not yet in the ledger, with what certifying it needs."""

    row: ModelRow
    model: nn.Module
    parent_model: nn.Module
    task: Task
    forget_ids: BitMap
    retain_ids: BitMap
    method: Method | None  # None for a sharded model's exact removal


def unlearn_child(request: _Request, parent: ModelRow, method: Method) -> _Child:
    """Unlearn one model with ``method`` and write the child's folder (not yet in the ledger)."""
    ws = request.ws
    parent_model, _, task = ws.load_model(parent.id)
    recipe = ws.recipe_of(parent)
    forget_ids, retain_ids = parent.records & request.ids, parent.records - request.ids
    rule = target_rule(ws, task, parent_model, forget_ids, purpose=request.purpose, retain_ids=retain_ids,
                       probes=request.probes, thresholds=request.thresholds, seed=recipe.seed)
    unlearn_request = UnlearnRequest(task=task, forget=ws.dataset(task, forget_ids),
                                     retain=ws.dataset(task, retain_ids), train=recipe.train,
                                     data_info=parent.info["data"], seed=recipe.seed, stop_rule=rule)
    log.info("unlearning %d records from %s with %s", len(forget_ids), parent.id, method.name)
    child_model = method.unlearn(parent_model, unlearn_request)
    # What only the forgotten records put into the model's data facts (vocabulary words) leaves with them.
    child_model, data_info = task.prune_vocabulary(child_model, parent.info["data"], unlearn_request.retain)
    fit = method.fit_result_
    info: dict[str, Any] = {"data": data_info, "config": method.config.to_dict(), "report": method.report_,
                            "fit": {"steps": fit.steps, "epochs": fit.epochs, "stopped": fit.stopped,
                                    "rollbacks": fit.rollbacks}}
    row = ws.save_model(model=child_model, recipe=recipe, records=retain_ids, info=info, kind="unlearned",
                        seconds=method.seconds_, parent=parent.id, method=method.name, request_id=request.request_id)
    return _Child(row, child_model, parent_model, task, forget_ids, retain_ids, method)


def evidence_level(request: _Request, parent: ModelRow, retain_ids: BitMap) -> str:
    """The level a request's ``verify`` asks for; ``auto`` retrains a reference only when one is cached or the
    original's training took at most the request's ``exact_budget``."""
    return resolve_level(request.ws, parent, retain_ids, request.verify, request.exact_budget)


def resolve_level(ws: Workspace, parent: ModelRow, retain_ids: BitMap, level: str, exact_budget: float) -> str:
    """``level`` itself, or for ``auto``: ``exact`` when the reference is cached or the original's training took
    at most ``exact_budget`` seconds, else ``heldout`` (always, for an imported lineage: its training time is
    unknown)."""
    if level != AUTO:
        return level
    if ws.ledger.find_reference(parent.recipe_sha256, retain_ids) is not None:
        return EXACT
    if imported_root(ws, parent) is not None:  # its training time is unknown: a reference could take any time
        return HELDOUT
    return EXACT if training_seconds(ws, parent) <= exact_budget else HELDOUT


def certify_child(request: _Request, parent: ModelRow, child: _Child, *, robust: bool = True) -> Certificate:
    """Certify a child at the request's evidence level (a retrained reference is trained only for ``exact``;
    under ``auto``, a request with no held-out data of its kind falls back to it); its folder is removed when this
    fails to run."""
    ws = request.ws
    try:
        level = evidence_level(request, parent, child.retain_ids)
        try:
            return _certify_at(request, parent, child, level, robust)
        except NoComparison as exc:
            if request.verify != AUTO:
                raise
            log.info("no reference-free comparison (%s); retraining a reference instead", exc)
            return _certify_at(request, parent, child, EXACT, robust)
    except BaseException:
        shutil.rmtree(ws.model_dir(child.row.id), ignore_errors=True)
        raise


def _certify_at(request: _Request, parent: ModelRow, child: _Child, level: str, robust: bool) -> Certificate:
    ws, method = request.ws, child.method
    reference_model, reference = ensure_reference(ws, parent, child.retain_ids) if level == EXACT else (None, None)
    return certify(ws, task=child.task, parent=parent, parent_model=child.parent_model, child=child.row,
                   child_model=child.model, reference=reference, reference_model=reference_model,
                   purpose=request.purpose, forget_ids=child.forget_ids, request_id=request.request_id,
                   method=method.name, config=method.config.to_dict(), report=method.report_,
                   thresholds=request.thresholds, probes=request.probes, selector=request.selector,
                   reason=request.reason, requested_at=request.created_at, robust=robust)


def _robustness_of(request: _Request, parent: ModelRow, child: _Child, cert: Certificate) -> dict[str, Any]:
    """The robustness attacks on an ``auto`` winner (candidates are certified without them)."""
    ws = request.ws
    reference = cert["models"].get("reference")
    reference_model = ws.load_model(reference["id"])[0] if reference else None
    return robustness_block(ws, task=child.task, parent=parent, parent_model=child.parent_model,
                            child_model=child.model, forget_ids=child.forget_ids, reference_model=reference_model,
                            probes=request.probes)
