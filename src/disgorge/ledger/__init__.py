"""The ledger: SQLite schema, records, sources, lineage bitmaps, erasure requests and tombstones."""

from .ledger import (
    AuditRow,
    DraftRow,
    IngestResult,
    Ledger,
    ModelRow,
    NewRecord,
    ProbeRow,
    Record,
    RequestRow,
    Source,
    now,
)
from .schema import SCHEMA_VERSION

__all__ = ["SCHEMA_VERSION", "AuditRow", "DraftRow", "IngestResult", "Ledger", "ModelRow", "NewRecord", "ProbeRow",
           "Record", "RequestRow", "Source", "now"]
