"""What `disgorge probe add`, `audit bias`, `audit memorization` and `attribute` do on a workspace: read the user's
request, run the audit (:mod:`.bias`, :mod:`.memorization`, :mod:`.attribution`) and store it beside the model."""

from __future__ import annotations

import re
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch
from pyroaring import BitMap
from safetensors.torch import load as load_safetensors

from ..data import load_file
from ..errors import InvalidRequest, NotFound
from ..evidence.probes import PROBE_KINDS, Behaviour, ProbeSpec, predictions, workspace_probes
from ..ledger import AuditRow
from ..tasks import RecordDataset, Task
from ..workspace import Workspace
from .attribution import Attribution, Checkpoint, tracin
from .bias import bias_audit
from .memorization import memorization_audit
from .store import read_audit, store_audit

PROBE_NAME = re.compile(r"^[a-z][a-z0-9_\-]{0,63}$")
SPLITS = ("train", "test")


def _fields(path: str | Path, label: str, attributes: Sequence[str] = ()) -> list[dict[str, np.ndarray]]:
    return [r.fields for r in load_file(path, label=label, attributes=attributes)]


def _group(text: str) -> tuple[str, str]:
    """``ATTR=VALUE`` as its two parts; a one-line error for anything else."""
    attribute, sep, value = text.partition("=")
    if not sep or not attribute or not value:
        raise InvalidRequest(f"--group takes ATTR=VALUE (e.g. sex=F), got {text!r}")
    return attribute, value


def declare_probe(ws: Workspace, name: str, file: str | Path | None = None, *, target: int | None = None,
                  baseline: str | Path | None = None, group: str | None = None, label: str = "label",
                  attributes: Sequence[str] = (), help: str = "", base_rate: float | None = None) -> ProbeSpec:
    """Declare and store a probe: ``file`` with ``target`` (share of its inputs sent to the label; ``baseline``:
    the same inputs without the change), ``group`` ``ATTR=VALUE`` (accuracy on those held-out records), or
    ``file`` alone (the share of its records whose answer the model gives: a JSON Lines file of prompts and
    completions for a language model). ``label`` and ``attributes`` name a CSV's label and non-feature columns, as
    at ingest (a probe keeps only the inputs)."""
    if not isinstance(name, str) or not PROBE_NAME.match(name):
        raise InvalidRequest(f"probe name {name!r}: use lowercase letters, digits, '_' or '-' (at most 64), starting "
                             "with a letter")
    if group is not None:
        if file is not None or target is not None or baseline is not None:
            raise InvalidRequest("a --group probe measures held-out records: give no FILE, --target or --baseline")
        attribute, value = _group(group)
        spec = ProbeSpec(name, "group", help or f"accuracy on held-out records with {attribute}={value}, in percent",
                         {"attribute": attribute, "value": value, "base_rate": base_rate})
    elif file is None:
        raise InvalidRequest("give the probe's FILE (with --target LABEL for a classifier's behaviour), or --group "
                             "ATTR=VALUE")
    elif target is not None:
        inputs = _fields(file, label, attributes)
        spec = ProbeSpec(name, "target", help or f"share of {Path(file).name}'s inputs classified as {target}, in "
                         "percent", {"target": target, "base_rate": base_rate}, inputs,
                         _fields(baseline, label, attributes) if baseline is not None else None)
        if not 0 <= target < 2**31:
            raise InvalidRequest(f"--target must be a class label (an integer >= 0), got {target}")
        _check_rows(ws, inputs + (spec.baseline or []), labelled=True)
    else:
        if baseline is not None:
            raise InvalidRequest("--baseline goes with --target (the same inputs without the change)")
        rows = _fields(file, label, attributes)
        _check_rows(ws, rows, labelled=False)
        spec = ProbeSpec(name, "answers", help or f"share of {Path(file).name}'s records whose answer the model "
                         "gives, in percent", {"base_rate": base_rate}, rows)
    spec.store(ws)
    return spec


def _check_rows(ws: Workspace, rows: list[dict[str, np.ndarray]], *, labelled: bool) -> None:
    """Refuse probe rows of another kind or shape than the workspace's records (no model here could read them);
    ``labelled``: the rows are a classifier's inputs (a ``--target`` probe)."""
    present = ws.ledger.record_ids(split=None, states=("active", "held"))
    if not present:
        raise InvalidRequest("ingest the workspace's records before declaring a probe on their kind of data")
    (old,) = ws.ledger.records([present.min()])
    if old.fields is None:
        return
    kind = "inputs and labels (x, y)" if "x" in old.fields else "labelled texts" if "y" in old.fields else "texts"
    for r in rows:
        same = ("x" in r) == ("x" in old.fields) and ("y" in r) == ("y" in old.fields)
        if not same:
            raise InvalidRequest(f"the probe's rows are not {kind} like this workspace's records; give a file of the "
                                 "kind ingested here")
        if "x" in r and tuple(r["x"].shape) != tuple(old.fields["x"].shape):
            raise InvalidRequest(f"probe inputs have shape {tuple(r['x'].shape)} but this workspace's records have "
                                 f"{tuple(old.fields['x'].shape)}")
    if labelled and "y" not in old.fields:
        raise InvalidRequest("--target needs a classifier's workspace; for a language model give a .jsonl of prompts "
                             "and completions without --target")


def probe_listing(ws: Workspace) -> list[dict[str, Any]]:
    """Every declared probe as a certificate records it."""
    return [p.meta() for p in workspace_probes(ws)]


def _split_data(ws: Workspace, task: Task, model_records: BitMap, split: str) -> RecordDataset:
    if split not in SPLITS:
        raise InvalidRequest(f"--split must be train or test, got {split!r}")
    live = ws.ledger.record_ids(split="train", states=("active", "held")) & model_records
    return ws.dataset(task, ws.test_ids() if split == "test" else live)


def audit_bias(ws: Workspace, model_id: str, by: Sequence[str], *, compare: str | None = None, split: str = "test",
               positive: int | None = None, n_boot: int = 200, seed: int = 0) -> tuple[dict[str, Any], AuditRow]:
    """Group figures of a model (and of ``compare``, on the same records) split by ``by``; stored."""
    result: dict[str, Any] = {"kind": "bias", "split": split, "models": {}}
    args = {"by": list(by), "compare": compare, "split": split, "positive": positive, "n_boot": n_boot}
    for mid in [model_id] + ([compare] if compare else []):
        row = ws.ledger.model(mid)
        if mid == compare and row.weights_deleted_at is not None:
            result["models"][mid] = _stored_bias(ws, mid, args)
            continue
        model, row, task = ws.load_model(mid)
        data = _split_data(ws, task, row.records, split)
        result["models"][mid] = bias_audit(task, model, data, list(by), positive=positive, n_boot=n_boot, seed=seed)
    result["model"], result["compare"] = model_id, compare
    return result, store_audit(ws, model_id, "bias", args, result)


def _stored_bias(ws: Workspace, model_id: str, args: dict[str, Any]) -> dict[str, Any]:
    """The latest stored bias audit of a model whose weights are gone (a parent after an erasure), on the same
    attributes, split and positive class: the "before" of a before-and-after comparison."""
    same = [a for a in ws.ledger.audits(model_id) if a.kind == "bias" and all(
        a.args.get(k) == args[k] for k in ("by", "split", "positive"))]
    if not same:
        raise InvalidRequest(f"model {model_id}'s weights were deleted by an erasure and it has no stored bias audit "
                             f"by {','.join(args['by'])} on the {args['split']} split; audit it before forgetting "
                             "(or forget with --defer-erase) to compare before and after")
    stored = read_audit(ws, same[-1])
    return {**stored["models"][model_id], "stored_audit": same[-1].id}


def audit_memorization(ws: Workspace, model_id: str, *, top: int = 20) -> tuple[dict[str, Any], AuditRow]:
    """Per-record membership scores of a model's live training records; stored."""
    if top < 1:
        raise InvalidRequest(f"--top must be at least 1, got {top}")
    model, row, task = ws.load_model(model_id)
    train = _split_data(ws, task, row.records, "train")
    references = [(lambda mid=other.id: ws.load_model(mid)[0], other.records) for other in ws.ledger.models()
                  if other.id != model_id and other.recipe_sha256 == row.recipe_sha256
                  and other.weights_deleted_at is None and other.kind in ("reference", "trained")
                  and not (row.records <= other.records)]
    result = {"kind": "memorization", "model": model_id,
              **memorization_audit(task, model, train, ws.dataset(task, ws.test_ids()), references=references,
                                   top=top)}
    return result, store_audit(ws, model_id, "memorization", {"top": top}, result)


def _behaviour(ws: Workspace, task: Task, model: torch.nn.Module, *, probe: str | None, group: str | None,
               record: int | None) -> Behaviour:
    given = [x for x in (probe, group, record) if x is not None]
    if len(given) != 1:
        raise InvalidRequest("attribute one behaviour: --probe NAME, --group ATTR=VALUE or --record ID")
    if probe is not None:
        found = {p.name: p for p in workspace_probes(ws)}
        if probe not in found:
            raise NotFound(f"no probe named {probe!r} in this workspace; see `disgorge probes`")
        try:
            return found[probe].behaviour(task, ws.dataset(task, ws.test_ids()))
        except NotImplementedError as exc:
            raise InvalidRequest(str(exc)) from None
    if group is not None:
        attribute, value = _group(group)
        row = ProbeSpec("group", "group", "", {"attribute": attribute, "value": value}).row()
        return PROBE_KINDS.get("group")(row).behaviour(task, ws.dataset(task, ws.test_ids()))
    if not 0 <= record < 2**32:
        raise NotFound(f"record id {record} does not exist in this workspace (record ids are below 2**32)")
    (found_record,) = ws.ledger.records(ws.ledger.check_ids([record]))
    if found_record.fields is None:
        raise InvalidRequest(f"record {record} was erased; there is nothing left to attribute")
    data = ws.dataset(task, [record])
    if "labels" in task.capabilities:
        y = torch.as_tensor(predictions(model, task, data), dtype=torch.long)
        data = RecordDataset(data.ids, **task.with_labels(data.tensors, y))
    return Behaviour(f"the model's output on record {record}", data, 1.0)


def _checkpoints(ws: Workspace, model_id: str, device: torch.device) -> list[tuple[Checkpoint, float]]:
    """Each kept checkpoint as a loader (read, checked and moved only when used) and its learning rate."""
    row = ws.ledger.model(model_id)
    kept = row.info.get("checkpoints") or {}

    def loader(name: str, sha: str) -> Checkpoint:
        return lambda: {k: v.to(device) for k, v in load_safetensors(ws.model_file(model_id, name, sha)).items()}

    return [(loader(name, sha), float(kept["lr"])) for name, sha in sorted(kept.get("files", {}).items())]


def attribute(ws: Workspace, model_id: str, *, probe: str | None = None, group: str | None = None,
              record: int | None = None, top: int = 20, to_request: int = 0,
              seed: int = 0) -> tuple[dict[str, Any], AuditRow]:
    """Trace a behaviour of a model to its training records and sources (TracIn over the checkpoints the recipe
    kept); stored. ``to_request``: also draft an erasure request of the ``to_request`` best-scored sources."""
    if top < 1:
        raise InvalidRequest(f"--top must be at least 1, got {top}")
    if to_request < 0:
        raise InvalidRequest(f"--to-request takes how many top sources to draft for erasure, got {to_request}")
    model, row, task = ws.load_model(model_id)
    behaviour = _behaviour(ws, task, model, probe=probe, group=group, record=record)
    if "labels" in task.capabilities and len(behaviour.data) and "y" in behaviour.data.tensors:
        classes = task.num_classes(row.info["data"])
        if int(behaviour.data.tensors["y"].max()) >= classes:
            raise InvalidRequest(f"{behaviour.what}: its label is beyond this model's {classes} classes")
    train = _split_data(ws, task, row.records, "train")
    kept = _checkpoints(ws, model_id, next(model.parameters()).device)
    found: Attribution = tracin(task, model, train, behaviour, kept, seed=seed)
    result = {"kind": "attribution", "model": model_id, "behaviour": behaviour.what,
              "method": "TracIn-CP (exact dot products, forward-mode JVP)", "checkpoints": found.checkpoints,
              "seconds": round(found.seconds, 3), "training_seconds": row.seconds,
              "sources": found.by_source(), "records": found.top_records(top)}
    args = {"probe": probe, "group": group, "record": record, "top": top}
    chosen = [s["source"] for s in result["sources"][:to_request] if s["score"] > 0]
    if to_request and not chosen:
        raise InvalidRequest("no source drives the behaviour (every score is <= 0); nothing to draft")
    stored = store_audit(ws, model_id, "attribution", args, result)
    if to_request:
        draft = ws.ledger.add_draft({"sources": chosen},
                                    f"attribution {stored.id}: {behaviour.what} on model {model_id}", stored.id)
        result["draft_request"] = {"id": draft, "sources": chosen}
    return result, stored
