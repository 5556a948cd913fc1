"""Audits kept beside the model they audit (``models/<id>/audits/<kind>-<n>.json``), each with a ledger row that
names the file and its sha256."""

from __future__ import annotations

import json
from typing import Any

from .._io import atomic_write_text, read_regular, sha256_bytes
from ..errors import IntegrityError
from ..ledger import AuditRow
from ..workspace import Workspace


def store_audit(ws: Workspace, model_id: str, kind: str, args: dict[str, Any], result: dict[str, Any]) -> AuditRow:
    """Write ``result`` as JSON beside the model and record it in the ledger; returns the row."""
    folder = ws.model_dir(model_id) / "audits"
    folder.mkdir(exist_ok=True)
    n = 1 + sum(1 for a in ws.ledger.audits(model_id) if a.kind == kind)
    path = folder / f"{kind}-{n}.json"
    text = json.dumps(result, indent=2, sort_keys=True) + "\n"
    atomic_write_text(path, text)
    relative = str(path.relative_to(ws.root))
    audit_id = ws.ledger.add_audit(model_id, kind, args, relative, sha256_bytes(text.encode()))
    return next(a for a in ws.ledger.audits(model_id) if a.id == audit_id)


def read_audit(ws: Workspace, row: AuditRow) -> dict[str, Any]:
    """A stored audit's JSON, checked against the sha256 its ledger row records."""
    data = read_regular(ws.root / row.path, f"audit {row.id}")
    if sha256_bytes(data) != row.sha256:
        raise IntegrityError(f"audit {row.id} ({row.path}) does not match the sha256 in the ledger; it was changed "
                             "outside disgorge: run the audit again")
    return json.loads(data)
