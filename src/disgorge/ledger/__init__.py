"""The ledger: SQLite schema, records, sources, lineage bitmaps, erasure requests and tombstones."""

from .ledger import (
    IngestResult,
    Ledger,
    ModelRow,
    NewRecord,
    Record,
    RequestRow,
    Source,
    now,
)
from .schema import SCHEMA_VERSION

__all__ = ["SCHEMA_VERSION", "IngestResult", "Ledger", "ModelRow", "NewRecord", "Record", "RequestRow", "Source",
           "now"]
