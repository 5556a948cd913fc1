"""Checking a certificate: its signature always; given the workspace it came from, also the signing key's owner, the
models' weights files and the ledger's rows. Every check is reported with what it looked at; a failed check never
raises."""

from __future__ import annotations

import hashlib
import json
import re
from pathlib import Path
from typing import Any

from pyroaring import BitMap

from .._io import read_text
from ..errors import DisgorgeError, IntegrityError, InvalidRequest, NotFound
from ..models import store
from ..workspace import Workspace
from .signing import SIGNATURE, signature_problem, workspace_public_key

MODEL_ID = re.compile(r"m\d+")
ROLES = ("parent", "child", "reference")


def check(cert: dict[str, Any], ws: Workspace | None = None) -> dict[str, Any]:
    """Every check of ``cert`` as ``{"valid", "scope", "checks": [{"name", "passed", "detail"}], "skipped"}``;
    ``valid`` is true when every check ran passed. Without ``ws`` only the signature is checked."""
    checks: list[dict[str, Any]] = []
    skipped: list[dict[str, str]] = []
    _signature(cert, checks)
    if ws is None:
        scope = ("signature only: no workspace was given, so the signing key's owner, the models' weights files and "
                 "the ledger were not checked")
    else:
        scope = (f"signature, and against workspace {ws.root}: its signing key, the models' weights files and the "
                 "ledger's model and request rows")
        try:
            _against_workspace(cert, ws, checks, skipped)
        except (AttributeError, KeyError, TypeError, ValueError) as exc:  # a hand-edited, malformed certificate
            _add(checks, "structure", False, f"the certificate's content is malformed, so it cannot be checked "
                                              f"against the workspace ({type(exc).__name__}: {exc})")
    return {"valid": all(c["passed"] for c in checks), "scope": scope, "format": cert.get("format"),
            "request": cert.get("request"), "checks": checks, "skipped": skipped}


def _against_workspace(cert: dict[str, Any], ws: Workspace, checks: list[dict[str, Any]],
                       skipped: list[dict[str, str]]) -> None:
    """The checks of ``cert`` against the workspace: its key, the weights files, the ledger's rows."""
    _workspace_key(cert, ws, checks)
    models = _models(cert, checks)
    if models is not None:
        rejected = cert.get("outcome") == "rejected"
        for role, (model_id, sha) in models.items():
            if role == "child" and rejected:
                skipped.append({"name": "weights:child", "detail": f"model {model_id} of a rejected certificate "
                                "was discarded, never committed, so it has no weights file"})
                _absent_model(ws, model_id, checks)
                continue
            row = ws.ledger.find_model(model_id)
            if row is not None and row.weights_deleted_at is not None:
                skipped.append({"name": f"weights:{role}", "detail": f"{role} model {model_id}'s weights were "
                                f"deleted on {row.weights_deleted_at} (it saw erased records, or was retired); "
                                "the ledger's sealed sha256 is checked instead"})
            else:
                _weights(ws, role, model_id, sha, checks)
            _model_row(ws, role, model_id, sha, checks)
        _lineage(cert, ws, models, rejected, checks)
        chain = ws.ledger.chain_problems("model", [m for m, _ in models.values()])
        _add(checks, "ledger:sealed", not chain, "the ledger rows of these models are as disgorge sealed them "
             "(HMAC chain)" if not chain else "; ".join(chain))
        _request(cert, ws, models, rejected, checks, skipped)


def _add(checks: list[dict[str, Any]], name: str, passed: bool, detail: str) -> None:
    checks.append({"name": name, "passed": bool(passed), "detail": detail})


def _signature(cert: dict[str, Any], checks: list[dict[str, Any]]) -> None:
    block = cert.get(SIGNATURE)
    key = block.get("public_key") if isinstance(block, dict) else None
    what = f"Ed25519 over the canonical JSON of every key but 'signature', public key {key}"
    problem = signature_problem(cert)
    _add(checks, "signature", problem is None, f"{what}: " + ("valid" if problem is None else problem))


def _workspace_key(cert: dict[str, Any], ws: Workspace, checks: list[dict[str, Any]]) -> None:
    block = cert.get(SIGNATURE)
    signed_by = block.get("public_key") if isinstance(block, dict) else None
    try:
        mine = workspace_public_key(ws)
    except DisgorgeError as exc:
        _add(checks, "workspace_key", False, f"the workspace's signing key cannot be read: {exc}")
        return
    if mine is None:
        _add(checks, "workspace_key", False, f"workspace {ws.root} has no signing key ({ws.signing_key_path}), "
             "so it cannot have signed this certificate")
    elif signed_by == mine:
        _add(checks, "workspace_key", True, f"signed with this workspace's key ({ws.signing_key_path}), public key "
             f"{mine}")
    else:
        _add(checks, "workspace_key", False, f"signed with public key {signed_by}, but this workspace's key "
             f"({ws.signing_key_path}) has public key {mine}: another workspace or someone else signed it")


def _models(cert: dict[str, Any], checks: list[dict[str, Any]]) -> dict[str, tuple[str, str]] | None:
    """role -> (model id, sha256) as the certificate names them; a failed check when they are malformed."""
    models = cert.get("models")
    out: dict[str, tuple[str, str]] = {}
    # a reference-free certificate names no reference; the signature covers which kind it claims to be
    roles = ROLES if cert.get("evidence", "exact") == "exact" else ROLES[:2]
    for role in roles:
        entry = models.get(role) if isinstance(models, dict) else None
        model_id = entry.get("id") if isinstance(entry, dict) else None
        sha = entry.get("sha256") if isinstance(entry, dict) else None
        if not isinstance(model_id, str) or not MODEL_ID.fullmatch(model_id) or not isinstance(sha, str):
            _add(checks, "models", False, f"the certificate does not name the {role} model's id (m<number>) and "
                 "sha256 under 'models'")
            return None
        out[role] = (model_id, sha)
    return out


def _file_sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as fh:
        for block in iter(lambda: fh.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def _weights(ws: Workspace, role: str, model_id: str, sha: str, checks: list[dict[str, Any]]) -> None:
    path = ws.model_dir(model_id) / store.WEIGHTS
    try:
        found = _file_sha256(path)
    except OSError as exc:
        _add(checks, f"weights:{role}", False, f"{role} model {model_id}: weights file {path} cannot be read "
             f"({exc.strerror or exc})")
        return
    _add(checks, f"weights:{role}", found == sha,
         f"sha256 of {role} model {model_id}'s weights file {path}: {found}"
         + (" equals the certificate's" if found == sha else f", but the certificate says {sha}"))


def _model_row(ws: Workspace, role: str, model_id: str, sha: str, checks: list[dict[str, Any]]) -> None:
    row = ws.ledger.find_model(model_id)
    if row is None:
        _add(checks, f"ledger:{role}", False, f"the ledger has no model {model_id} ({role})")
    else:
        same = row.weights_sha256 == sha
        _add(checks, f"ledger:{role}", same, f"the ledger's row of {role} model {model_id} records sha256 "
             f"{row.weights_sha256}" + (", as the certificate does" if same else f", the certificate {sha}"))


def _absent_model(ws: Workspace, model_id: str, checks: list[dict[str, Any]]) -> None:
    absent = ws.ledger.find_model(model_id) is None
    _add(checks, "ledger:child", absent, f"the ledger {'has no' if absent else 'has a'} model {model_id}"
         + (", as a rejected certificate's child is never committed" if absent else
            ", but a rejected certificate's child is never committed"))


def _lineage(cert: dict[str, Any], ws: Workspace, models: dict[str, tuple[str, str]], rejected: bool,
             checks: list[dict[str, Any]]) -> None:
    if rejected:
        return
    child = ws.ledger.find_model(models["child"][0])
    if child is None:
        return  # ledger:child already failed
    parent, request = models["parent"][0], cert.get("request")
    same = child.parent == parent and child.request_id == request
    _add(checks, "ledger:lineage", same, f"the ledger records model {child.id} as made from {child.parent} by "
         f"request {child.request_id}" + ("" if same else f"; the certificate says from {parent} by request "
                                          f"{request}"))


def _request(cert: dict[str, Any], ws: Workspace, models: dict[str, tuple[str, str]], rejected: bool,
             checks: list[dict[str, Any]], skipped: list[dict[str, str]]) -> None:
    request_id = cert.get("request")
    req = None
    if isinstance(request_id, int):
        try:
            req = ws.ledger.request(request_id)
        except NotFound:
            req = None
    if rejected:
        _add(checks, "ledger:request", req is None, f"the ledger {'has no' if req is None else 'has a'} request "
             f"{request_id}" + (", as a rejected request is never committed" if req is None else
                                ", but a rejected request is never committed"))
        return
    if req is None:
        _add(checks, "ledger:request", False, f"the ledger has no erasure request {request_id!r}")
        return
    facts = cert.get("erasure_request")
    if not isinstance(facts, dict):
        _add(checks, "ledger:request", True, f"the ledger holds request {req.id} (status {req.status})")
        skipped.append({"name": "ledger:request_facts", "detail": "the certificate (format "
                        f"{cert.get('format')}) does not record the request's selector, reason and sources"})
        return
    wrong = [name for name, mine, theirs in (("selector", req.selector, facts.get("selector")),
                                             ("reason", req.reason, facts.get("reason")),
                                             ("created_at", req.created_at, facts.get("created_at")))
             if theirs is not None and mine != theirs]
    parent = ws.ledger.find_model(models["parent"][0])
    if parent is not None:
        forgotten: BitMap = parent.records & req.records
        if len(forgotten) != (cert.get("records") or {}).get("forgotten"):
            wrong.append("records.forgotten")
        if _source_counts(ws.sources_of(forgotten)) != _source_counts(facts.get("sources")):
            wrong.append("sources")
    _add(checks, "ledger:request", not wrong,
         f"the ledger's request {req.id} (status {req.status}, created {req.created_at}): selector, reason, "
         "creation time, and the forgotten records per source of the parent's training set "
         + ("agree with the certificate" if not wrong else f"differ from the certificate in {', '.join(wrong)}"))


def _source_counts(sources: Any) -> dict[str, Any] | None:
    if not isinstance(sources, list):
        return None
    return {s.get("name"): s.get("records") for s in sources if isinstance(s, dict)}


CERTIFICATE_FORMAT = "disgorge-certificate/"


def check_certificate(path: str | Path, ws: Workspace | None = None) -> dict[str, Any]:
    """Check a certificate file: its Ed25519 signature over the canonical JSON always; given the workspace it came
    from, also that the workspace's key signed it, that each named model's weights file has the recorded sha256, and
    that the ledger's model and request rows agree with it.

    Returns ``{"valid": bool, "scope": str, "checks": [{"name", "passed", "detail"}, ...], "skipped": [...]}``; a
    failed check (a tampered file) makes ``valid`` false and never raises. Only unreadable input raises: a missing
    file (:class:`NotFound`), a file that is not JSON (:class:`IntegrityError`) or not a disgorge certificate
    (:class:`InvalidRequest`).
    """
    path = Path(path)
    text = read_text(path, "certificate file", IntegrityError)
    try:
        cert = json.loads(text)
    except json.JSONDecodeError as exc:
        raise IntegrityError(f"certificate {path} is not valid JSON ({exc.msg} at line {exc.lineno}, column "
                             f"{exc.colno}); it is corrupt or not a certificate") from None
    fmt = cert.get("format") if isinstance(cert, dict) else None
    if not isinstance(fmt, str) or not fmt.startswith(CERTIFICATE_FORMAT):
        raise InvalidRequest(f"{path} is not a disgorge certificate (no 'format': '{CERTIFICATE_FORMAT}N' key)")
    result = check(cert, ws)
    result["file"] = str(path)
    return result
