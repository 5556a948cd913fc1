"""``disgorge doctor``: can a workspace be trusted as it is? Every check says what it looked at and what it found.

The checks, each independent of the others:

- ``integrity``: SQLite's ``integrity_check`` and ``foreign_key_check`` of the ledger;
- ``chain``: the HMAC chain over model and request rows (a row edited, added or removed outside disgorge, or the
  chain itself altered); only someone holding the workspace key could forge it;
- ``models``: each model folder against its ledger row: weights present, regular and matching their sha256 (absent
  when deleted), the lineage bitmap ``records.roaring`` and ``config.json`` agreeing with the ledger;
- ``certificates``: each certificate file's Ed25519 signature, and for committed requests its equality with the
  copy the ledger holds;
- ``erasure``: erased records hold no payload and no attributes, no active model holds an erased record, no model
  out of service that saw erased records keeps its weights (unless kept on request), and no erased bytes wait for
  a checkpoint;
- ``orphans``: model folders no ledger row names;
- ``permissions``: ``.disgorge/`` is 0700 and its files 0600.

``repair`` fixes what can be fixed without judgement (orphans, pending deletions, permissions); tampering is only
reported: the auditor decides.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from ._io import read_regular
from .errors import DisgorgeError
from .evidence.signing import same_certificate, signature_problem
from .workspace import Workspace, permission_problems, secure_permissions


@dataclass
class Finding:
    """One check: what it covers and the problems it found (none means it passed)."""

    name: str
    covers: str
    problems: list[str] = field(default_factory=list)
    repairable: bool = False

    @property
    def ok(self) -> bool:
        """Whether the check found nothing wrong."""
        return not self.problems

    def to_dict(self) -> dict[str, Any]:
        """The finding as JSON-ready data."""
        return {"ok": self.ok, "covers": self.covers, "problems": self.problems, "repairable": self.repairable}


def _integrity(ws: Workspace) -> list[str]:
    return ws.ledger.integrity_problems()


def _chain(ws: Workspace) -> list[str]:
    return ws.ledger.chain_problems()


def _models(ws: Workspace) -> list[str]:
    return [p for row in ws.ledger.models() for p in ws.model_file_problems(row)]


def _certificates(ws: Workspace) -> list[str]:
    problems = []
    for path in sorted(ws.reports_dir.glob("r*/*/certificate.json")):
        try:
            cert = json.loads(read_regular(path, "certificate"))
        except (DisgorgeError, ValueError) as exc:
            problems.append(f"{path}: unreadable ({exc})")
            continue
        problem = signature_problem(cert)
        if problem:
            problems.append(f"{path}: {problem}")
            continue
        request_id = cert.get("request")
        committed = ws.ledger.find_request(request_id) if isinstance(request_id, int) else None
        stored = committed.results.get("certificates", {}).get(path.parent.name) if committed else None
        if stored is not None and not same_certificate(cert, stored):
            problems.append(f"{path}: differs from the certificate the ledger holds for request {request_id}")
    return problems


def _erasure(ws: Workspace) -> list[str]:
    problems = [f"record {rid}: erased but still holds {what}" for rid, what in ws.ledger.erasure_leftovers()]
    erased = ws.ledger.erased_ids()
    for row in ws.ledger.models(status="active"):
        if row.records & erased:
            problems.append(f"model {row.id} is active but saw {len(row.records & erased)} erased record(s)")
    for row in ws.ledger.purge_due(keep=ws.kept_superseded()):
        problems.append(f"model {row.id} ({row.status}) saw erased records and its weights are still on disk")
    if ws.ledger.checkpoint_pending:
        problems.append("erased bytes may still be in the ledger file: a checkpoint is pending")
    return problems


def _orphans(ws: Workspace) -> list[str]:
    return [f"models/{name} is named by no ledger row (a command was killed before committing it)"
            for name in ws.orphans()]


def _permissions(ws: Workspace) -> list[str]:
    return permission_problems(ws.root)


CHECKS: dict[str, tuple[str, Callable[[Workspace], list[str]], bool]] = {
    "integrity": ("SQLite integrity_check and foreign_key_check of the ledger", _integrity, False),
    "chain": ("the HMAC chain over every model and request row", _chain, False),
    "models": ("each model folder: weights against sha256, records.roaring and config.json against the ledger",
               _models, False),
    "certificates": ("each certificate file's signature and its equality with the ledger's copy", _certificates,
                     False),
    "erasure": ("erased records hold nothing; no model in use or out of service keeps erased records' effect; no "
                "pending checkpoint", _erasure, True),
    "orphans": ("model folders with no ledger row", _orphans, True),
    "permissions": (".disgorge/ is 0700 and its files 0600", _permissions, True),
}
"""Each check: what it covers, the function that finds problems, and whether ``repair`` can fix them."""


def examine(ws: Workspace) -> list[Finding]:
    """Run every check on the workspace."""
    return [Finding(name, covers, fn(ws), repairable) for name, (covers, fn, repairable) in CHECKS.items()]


def repair(ws: Workspace) -> list[str]:
    """Fix what needs no judgement: remove orphan model folders, finish pending deletions (under the write lock),
    set private permissions. Returns the problems fixed; tampering is left for a person to judge."""
    before = examine(ws)
    with ws.writing():  # entering finishes pending deletions and removes orphans
        pass
    secure_permissions(ws.root)
    after = {f.name: set(f.problems) for f in examine(ws)}
    return [p for f in before if f.repairable for p in f.problems if p not in after[f.name]]


def report(findings: list[Finding]) -> dict[str, Any]:
    """The findings as JSON-ready data: ``ok`` and each check."""
    return {"ok": all(f.ok for f in findings), "checks": {f.name: f.to_dict() for f in findings}}
