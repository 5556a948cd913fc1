"""The public Python API; every CLI command is a few lines over one of these functions."""

from __future__ import annotations

import functools
import logging
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import numpy as np
from torch import nn

from . import erasure, transfer
from .audit import commands as audit_commands
from .data import load_file
from .data.files import holdout_split
from .erasure import (
    AUTO,
    EXACT_BUDGET,
    SISA,
    ForgetResult,
    NoChange,
    VerificationFailed,
    check_executor,
    ensure_reference,
    resolve_level,
    sisa_construction,
)
from .errors import DisgorgeError, InvalidRequest
from .evaluate.metrics import accuracy
from .evidence.certificate import certify, write_certificate
from .evidence.check import check_certificate
from .evidence.judge import EXACT, LEVELS, NoComparison, Thresholds
from .evidence.probes import workspace_probes
from .executors import get_executor
from .jobs import Problem, strong_test
from .ledger import IngestResult, ModelRow, RequestRow
from .scenarios import get_scenario, workspace_purpose
from .spec import Recipe
from .tasks import RecordDataset, Task, check_recipe
from .training.trainer import fit_recipe
from .workspace import Deletion, Workspace

log = logging.getLogger(__name__)

__all__ = ["Deletion", "ForgetResult", "NoChange", "VerificationFailed", "add_probe", "attribute", "audit_bias",
           "audit_memorization", "check_certificate", "erase", "forget", "ingest_file", "ingest_scenario", "probes",
           "purge", "remove_probe", "retire", "train", "verify", "verify_strong"]


def _writes(fn: Callable[..., Any]) -> Callable[..., Any]:
    """Run an API function that changes the workspace under its write lock (:meth:`Workspace.writing`), so that
    concurrent commands on one workspace run one after the other and each reads the state the last one left."""

    @functools.wraps(fn)
    def locked(ws: Workspace, *args: Any, **kwargs: Any) -> Any:
        with ws.writing():
            return fn(ws, *args, **kwargs)

    return locked


forget = _writes(erasure.forget)
add_probe = _writes(audit_commands.declare_probe)
probes = audit_commands.probe_listing
audit_bias = _writes(audit_commands.audit_bias)
audit_memorization = _writes(audit_commands.audit_memorization)
attribute = _writes(audit_commands.attribute)


@_writes
def remove_probe(ws: Workspace, name: str) -> None:
    """Forget a declared probe (certificates already written keep its figures)."""
    ws.ledger.remove_probe(name)


@_writes
def ingest_scenario(ws: Workspace, name: str) -> list[IngestResult]:
    """Ingest a bundled scenario's sources and declare its effect probes (once) in the ledger."""
    scenario = get_scenario(name)
    current = ws.scenario
    if current is not None and current != name:
        raise InvalidRequest(f"this workspace already holds scenario {current!r}; use a new workspace for {name!r}")
    results = []
    sources = scenario.sources()
    declared = {p.name for p in ws.ledger.probes()}
    with ws.ledger.transaction():
        for src in sources:
            source = ws.ledger.add_source(src.name, src.license, src.origin, src.consent)
            results.append(ws.ledger.add_records(source, src.records))
        for probe in scenario.declare_probes(sources):
            if probe.name not in declared:
                probe.store(ws)
        ws.ledger.set_meta("scenario", name)
    return results


@_writes
def ingest_file(ws: Workspace, path: str | Path, *, source: str, license: str, origin: str = "",
                label: str = "label", attributes: Sequence[str] = (), split: str = "train", holdout: float = 0.0,
                holdout_seed: int = 0) -> IngestResult:
    """Ingest a CSV, NPZ or JSON Lines file as records of ``source`` (created if new) under ``license``.

    ``holdout`` keeps a seeded random share of the file's records (stratified by label for classification) as
    held-out records of the same source, in split ``test``; the rest go to ``split`` (which must be ``train``).

    A workspace holds one kind of data: the file's records must be of the kind (classification ``x``/``y`` or
    texts) and, for classification, of the input shape of the records already there.
    """
    for what, value, limit in (("--source", source, 200), ("--license", license, 200), ("--origin", origin, 2000)):
        if not isinstance(value, str) or len(value) > limit or not value.isprintable():
            shown = repr(value) if len(repr(value)) <= 80 else repr(value)[:77] + "..."
            raise InvalidRequest(f"{what} must be printable text (no control characters) of at most {limit} "
                                 f"characters, got {shown}")
    if not license:
        raise InvalidRequest("pass --license (an SPDX id such as CC-BY-4.0) for the records' source")
    if not 0 <= holdout < 1:
        raise InvalidRequest(f"--holdout must be a fraction in [0, 1) such as 0.1, got {holdout}")
    if holdout and split != "train":
        raise InvalidRequest(f"--holdout splits a file into train and test; drop --split {split} or --holdout")
    records = holdout_split(load_file(path, label=label, attributes=attributes, split=split), holdout, holdout_seed)
    present = ws.ledger.record_ids(split=None, states=("active", "held"))
    if records and present:
        (old,) = ws.ledger.records([present.min()])

        def kind(fields: dict[str, Any]) -> str:
            return "classification records (x, y)" if "x" in fields else "text records (causal_lm)"

        new_kind, old_kind = kind(records[0].fields), kind(old.fields or {})
        if new_kind != old_kind:
            raise InvalidRequest(f"{path} holds {new_kind} but this workspace holds {old_kind}; one workspace holds "
                                 "one kind of data: ingest it into another workspace")
        if "x" in records[0].fields:
            new_shape, old_shape = tuple(records[0].fields["x"].shape), tuple(old.fields["x"].shape)
            if new_shape != old_shape:
                raise InvalidRequest(f"{path} holds records of input shape {new_shape} but this workspace's records "
                                     f"have shape {old_shape}; records of one workspace share one model, so their "
                                     "shapes must match")
    with ws.ledger.transaction():  # a refused ingest leaves no new source behind
        src = ws.ledger.add_source(source, license, origin or str(path))
        return ws.ledger.add_records(src, records)


@_writes
def train(ws: Workspace, recipe: Recipe | str | Path, *, executor: str = "local", workers: int = 1) -> ModelRow:
    """Train a recipe (object or TOML file) on the workspace's ledger and record the new model; returns its row. A
    sharded recipe's shards train as independent jobs on ``executor`` with ``workers`` (1: one after another in this
    process)."""
    if not isinstance(recipe, Recipe):
        recipe = Recipe.load(recipe)
    task = check_recipe(recipe)
    check_executor(executor, workers)
    ids = ws.training_ids(recipe)
    if not ids:
        raise InvalidRequest(f"recipe {recipe.name!r} selects no active training records; ingest data first")
    data = ws.dataset(task, ids)
    info = {"data": task.data_info(data, recipe.model, recipe.data)}
    runner = get_executor(executor, workers=workers) if recipe.sharded else None
    try:
        model, result = fit_recipe(task, recipe, data, info["data"], runner, device=ws.device_for(recipe))
    finally:
        if runner is not None:
            runner.close()
    info["fit"] = {"steps": result.steps, "epochs": result.epochs, "final_loss": result.losses[-1]}
    info.update(result.info)
    info["accuracy"] = _accuracy(ws, task, model, data)
    row = ws.save_model(model=model, recipe=recipe, records=ids, info=info, kind="trained", seconds=result.seconds,
                        metrics=info["accuracy"], files=result.files)
    ws.ledger.insert_model(row)
    log.info("trained %s on %d records in %.1fs", row.id, len(ids), result.seconds)
    return row


EVALUATE_SPLITS = ("train", "test")
"""What ``evaluate`` measures a model on: its own live training records, and the workspace's held-out records."""


def evaluate_model(ws: Workspace, model_id: str, *, splits: Sequence[str] = EVALUATE_SPLITS) -> dict[str, Any]:
    """A model's figures, in percent, as verification computes them: per split, ``accuracy`` (of the task's
    per-example ``correct``: class accuracy, or a language model's answer accuracy) and mean ``loss`` over
    ``records`` records (None for an empty split); and ``probes``: each declared probe's effect on the held-out
    records. ``train`` is the model's own training records that are still live (erased ones are gone)."""
    unknown = sorted(set(splits) - set(EVALUATE_SPLITS))
    if unknown or not splits:
        raise InvalidRequest(f"unknown split(s) {', '.join(unknown) or 'none given'}; choose from "
                             f"{', '.join(EVALUATE_SPLITS)}")
    model, row, task = ws.load_model(model_id)
    ids = {"train": row.records & ws.ledger.record_ids(split="train", states=("active", "held")),
           "test": ws.test_ids()}
    out: dict[str, Any] = {}
    for split in splits:
        data = ws.dataset(task, ids[split])
        if not len(data):
            out[split] = None
            continue
        per_example = task.evaluate(model, data)
        out[split] = {"records": len(data), "accuracy": round(accuracy(per_example["correct"]), 4),
                      "loss": round(float(np.mean(per_example["loss"])), 6)}
    test = ws.dataset(task, ids["test"])
    out["probes"] = {p.name: _round(p.measure(model, task, test)) for p in workspace_probes(ws)} if len(test) else {}
    return out


def _round(value: float | None) -> float | None:
    return None if value is None else round(value, 4)


def _accuracy(ws: Workspace, task: Task, model: nn.Module, train: RecordDataset) -> dict[str, Any]:
    """The task's quick accuracy (percent) on the training records and on the live held-out records (None when
    there are none, or when they cannot be evaluated by this model, e.g. a label it has no class for)."""
    test_ids = ws.test_ids()
    try:
        test = round(task.quick_accuracy(model, ws.dataset(task, test_ids)), 2) if test_ids else None
    except DisgorgeError as exc:
        log.warning("held-out accuracy not measured: %s", exc)
        test = None
    return {"figure": task.quick_accuracy_name, "train": round(task.quick_accuracy(model, train), 2),
            "test": test}


@_writes
def verify(ws: Workspace, model_id: str, *, level: str = AUTO, purpose: str | None = None,
           exact_budget: float = EXACT_BUDGET, thresholds: Thresholds | None = None) -> dict[str, Any]:
    """Verify an unlearned model against its parent at an evidence ``level`` (``exact``: against a model
    retrained without the forgotten records; ``heldout``: against held-out data, nothing trained; ``auto``: exact
    when a reference is cached or the original trained in at most ``exact_budget`` seconds); returns the
    certificate. ``purpose`` defaults to the request's.

    A sharded model's exact removal (``sisa``) is certified by construction at any level, as at erasure.

    If the request's records were already erased, the forget-set figures cannot be measured again: the certificate
    recorded at erasure time is returned after re-checking the weights' sha256, and its files are rewritten.
    """
    if level not in (AUTO, *LEVELS):
        raise InvalidRequest(f"unknown verification level {level!r}; choose one of {AUTO}, {', '.join(LEVELS)}")
    row, req = _unlearned(ws, model_id)
    ws.check_untampered([row])
    child_model, _, task = ws.load_model(model_id)
    if req.status == "erased":
        stored = req.results.get("certificates", {}).get(model_id)
        if stored is None:
            raise InvalidRequest(f"request {req.id}'s records were erased without verification; nothing is left "
                                 "to verify the forget set against (use --defer-erase next time)")
        write_certificate(ws, stored)
        return stored
    parent = ws.ledger.model(row.parent)
    parent_model, _, _ = ws.load_model(parent.id)
    forget_ids = parent.records & req.records
    retain_ids = parent.records - forget_ids
    auto = level == AUTO
    level = resolve_level(ws, parent, retain_ids, level, exact_budget)
    purpose = purpose or req.results.get("purpose") or workspace_purpose(ws)

    construction = sisa_construction(ws, parent, row, forget_ids) if row.method == SISA else None

    def at(chosen: str) -> dict[str, Any]:
        retrain = chosen == EXACT and construction is None  # a sharded child is exact by construction
        reference_model, reference = ensure_reference(ws, parent, retain_ids) if retrain else (None, None)
        return certify(ws, task=task, parent=parent, parent_model=parent_model, child=row, child_model=child_model,
                       reference=reference, reference_model=reference_model, purpose=purpose,
                       forget_ids=forget_ids, request_id=req.id, method=row.method or "",
                       config=row.info.get("config", {}), report=row.info.get("report", {}), thresholds=thresholds,
                       probes=workspace_probes(ws), selector=req.selector, reason=req.reason,
                       requested_at=req.created_at, construction=construction)

    try:
        cert = at(level)
    except NoComparison:
        if not auto:
            raise
        cert = at(EXACT)
    _keep_certificate(ws, req.id, model_id, cert)
    return cert


@_writes
def verify_strong(ws: Workspace, model_id: str, *, models: int = 8, executor: str = "local",
                  workers: int | None = None) -> dict[str, Any]:
    """Per-example verification of an unlearned model's method: ``models`` retrained and ``models`` unlearned
    models (other seeds) give the forgetting score F, the challenge's final score and a U-LiRA AUC. The result is
    added to the certificate under ``strong``. Needs the forget set, so the request must still hold its records.
    """
    if models < 3:
        raise InvalidRequest("the strong test needs at least 3 models per side (--strong-models)")
    row, req = _unlearned(ws, model_id)
    if row.method == SISA:
        raise InvalidRequest(f"model {model_id} was unlearned exactly, by retraining its shards (sisa): it equals its "
                             "recipe trained without the records, so a per-example test has nothing to find")
    if req.status == "erased":
        raise InvalidRequest(f"request {req.id}'s records are erased, so no new model can be measured on them; "
                             "use `disgorge forget --defer-erase`, then `verify --strong`, then `disgorge erase`")
    erasure.check_retrainable(ws, row)  # it retrains models: refused where an import allows no retraining
    cert = verify(ws, model_id)
    parent = ws.ledger.model(row.parent)
    problem = Problem(str(ws.root), parent.id, sorted(int(i) for i in parent.records & req.records), ws.device)
    method = row.method or ""
    runner = get_executor(executor, workers=workers)
    try:
        job_options = {method: dict(row.info.get("config", {}))}
        strong = strong_test(problem, [method], models, runner, f"verify {model_id}", options=job_options)[method]
    finally:
        runner.close()
    cert["strong"] = strong
    _keep_certificate(ws, req.id, model_id, cert)
    return cert


def _unlearned(ws: Workspace, model_id: str) -> tuple[ModelRow, RequestRow]:
    """An unlearned model's row and its erasure request; a clear error for any other model."""
    row = ws.ledger.model(model_id)
    if row.kind != "unlearned" or row.request_id is None or row.parent is None:
        raise InvalidRequest(f"model {model_id} is not the result of an erasure request; verify compares an "
                             "unlearned model with its parent and a model retrained without the forgotten records")
    return row, ws.ledger.request(row.request_id)


def _keep_certificate(ws: Workspace, request_id: int, model_id: str, cert: dict[str, Any]) -> None:
    """Store a certificate with its request (read afresh, so other models' certificates stay) and write its files."""
    results = dict(ws.ledger.request(request_id).results)
    results.setdefault("certificates", {})[model_id] = {k: v for k, v in cert.items() if k != "signature"}
    ws.ledger.set_request_results(request_id, results)
    write_certificate(ws, cert)


@_writes
def erase(ws: Workspace, request_id: int, *, keep_superseded: bool = False) -> Deletion:
    """Erase the payloads of a request made with ``erase=False`` (held records), keeping tombstones; then delete
    the weights of the models that saw them (unless ``keep_superseded``). The models' rows are checked for
    tampering first."""
    req = ws.ledger.request(request_id)
    ws.check_untampered([m for m in ws.ledger.models(status="active") if m.records & req.records])
    ws.ledger.erase(request_id)
    return ws.complete_erasure(keep_superseded=keep_superseded)


@_writes
def purge(ws: Workspace) -> Deletion:
    """Delete the weights of every model out of service (superseded or retired, kept ones included) and finish
    deletions an earlier command left pending."""
    return ws.purge()


@_writes
def retire(ws: Workspace, model_id: str) -> ModelRow:
    """Take a model out of service for good and delete its weights (its card, recipe and lineage stay)."""
    return ws.retire(model_id)


# -- standard formats in and out ----------------------------------------------------------------------------------

def export_model(ws: Workspace, model_id: str, out_dir: str | Path) -> transfer.Exported:
    """Write a model as a folder that loads without disgorge: a Hugging Face folder for a language model,
    ``model.safetensors`` + ``config.json`` + a README.md with a plain-torch loader for a classifier (both READMEs
    carry the model's lineage). See :mod:`disgorge.transfer`."""
    return transfer.export_model(ws, model_id, out_dir)


@_writes
def import_model(ws: Workspace, folder: str | Path, *, records: Sequence[str | Path] = (),
                 sources: Sequence[str] = (), license: str = "", origin: str = "", trained_on: Sequence[str] = (),
                 base: str | Path | None = None, recipe: str | Path | None = None, holdout: float = 0.0,
                 holdout_seed: int = 0) -> ModelRow:
    """Register a model trained elsewhere (a Hugging Face causal-LM folder, or a classifier folder as
    :func:`export_model` writes it) with the records it was trained on, so that ``forget`` can unlearn it: each file
    of ``records`` is ingested as the source of the same position in ``sources`` (under ``license``, with
    ``holdout`` as ``ingest_file`` takes it), and ``trained_on`` names sources already ingested. ``base`` is the
    Hugging Face folder a language model was fine-tuned from, ``recipe`` a recipe file declaring how it was trained:
    without either, no model retrained without forgotten records can be made, and its certificates are
    reference-free. The folder is checked before anything is written; a refusal leaves the workspace unchanged."""
    if len(records) != len(sources):
        raise InvalidRequest(f"give one --source NAME per --records FILE ({len(records)} file(s), {len(sources)} "
                             "source name(s))")
    for name in trained_on:
        ws.ledger.source(name)
    plan = transfer.read_import(folder, base=base, recipe=recipe)
    with ws.ledger.transaction():  # the new sources and the model row commit together, or nothing does
        for file, name in zip(records, sources, strict=True):
            ingest_file(ws, file, source=name, license=license, origin=origin, holdout=holdout,
                        holdout_seed=holdout_seed)
        return transfer.register_import(ws, plan, [*sources, *trained_on])
