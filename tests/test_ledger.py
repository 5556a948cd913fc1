"""The ledger: schema, WAL, ingest with provenance, duplicates, tombstones, secure deletion."""

from __future__ import annotations

import sqlite3

import numpy as np
import pytest
from pyroaring import BitMap

from disgorge import Workspace
from disgorge.errors import DisgorgeError, InvalidRequest, NotFound
from disgorge.ledger import SCHEMA_VERSION, NewRecord


def _records(n: int, offset: float = 0.0) -> list[NewRecord]:
    return [NewRecord({"x": np.full(4, i + offset, np.float32), "y": np.array([i % 2])}, {"g": str(i % 3)})
            for i in range(n)]


@pytest.fixture
def ws(tmp_path):
    with Workspace.init(tmp_path / "w") as w:
        yield w


def test_init_creates_wal_ledger_with_schema_version(ws, tmp_path):
    """A new ledger is in WAL mode, carries the schema version, and its key is private."""
    assert ws.ledger.schema_version == SCHEMA_VERSION >= 1
    db = sqlite3.connect(ws.ledger.path)
    assert db.execute("PRAGMA journal_mode").fetchone()[0] == "wal"
    assert (ws.root / ".disgorge" / "secret").stat().st_mode & 0o077 == 0
    with pytest.raises(DisgorgeError, match="already holds"):
        Workspace.init(ws.root)


def test_open_missing_workspace_says_how_to_create(tmp_path):
    """Opening a folder that is no workspace names `disgorge init`."""
    with pytest.raises(NotFound, match="disgorge init"):
        Workspace.open(tmp_path / "nothing")


def test_ingest_keeps_provenance_and_skips_exact_duplicates(ws):
    """Records get ids, HMAC hashes, attributes and a source; exact duplicates are skipped and counted."""
    src = ws.ledger.add_source("alice", "CC-BY-4.0", "survey 2024")
    first = ws.ledger.add_records(src, _records(5))
    assert len(first.added) == 5 and first.duplicates == 0
    again = ws.ledger.add_records(src, _records(5) + _records(2, offset=100))
    assert len(again.added) == 2 and again.duplicates == 5
    recs = ws.ledger.records(first.added)
    assert [r.source for r in recs] == ["alice"] * 5
    assert recs[1].attributes == {"g": "1"}
    assert all(len(r.hash) == 64 for r in recs) and len({r.hash for r in recs}) == 5
    np.testing.assert_array_equal(recs[3].fields["x"], np.full(4, 3, np.float32))


def test_hash_is_keyed_per_workspace(ws, tmp_path):
    """The same content hashes differently in another workspace (HMAC with a per-workspace key)."""
    with Workspace.init(tmp_path / "other") as other:
        a = ws.ledger.add_records(ws.ledger.add_source("s", "MIT"), _records(1))
        b = other.ledger.add_records(other.ledger.add_source("s", "MIT"), _records(1))
        assert ws.ledger.records(a.added)[0].hash != other.ledger.records(b.added)[0].hash


def test_source_licence_conflict_and_unknown_source(ws):
    """A source keeps one licence; unknown sources are named in the error."""
    ws.ledger.add_source("alice", "CC-BY-4.0")
    with pytest.raises(InvalidRequest, match="already exists"):
        ws.ledger.add_source("alice", "MIT")
    with pytest.raises(NotFound, match="no source named 'bob'"):
        ws.ledger.record_ids(sources=["bob"])


def test_erasure_deletes_payload_bytes_and_refuses_reingest(ws):
    """Erased payloads leave the database file (secure_delete + WAL checkpoint); their content is refused again."""
    src = ws.ledger.add_source("alice", "CC-BY-4.0")
    marker = np.frombuffer(b"SECRETPAYLOAD123", dtype=np.float32).copy()
    res = ws.ledger.add_records(src, [NewRecord({"x": marker, "y": np.array([1])}), *_records(3)])
    secret_id = min(res.added)
    ws.ledger.checkpoint()
    assert b"SECRETPAYLOAD123" in ws.ledger.path.read_bytes()
    request = ws.ledger.reserve_request_id()
    ws.ledger.commit_request(request_id=request, selector={}, reason="test", method="none",
                             records=BitMap([secret_id]), affected=[], children=[], supersede=[], results={},
                             erase=True)
    raw = ws.ledger.path.read_bytes()
    wal = ws.ledger.path.with_name(ws.ledger.path.name + "-wal")
    raw += wal.read_bytes() if wal.exists() else b""
    assert b"SECRETPAYLOAD123" not in raw
    (rec,) = ws.ledger.records([secret_id])
    assert rec.state == "erased" and rec.fields is None
    assert ws.ledger.tombstone_count() == 1
    before = ws.ledger.count_records()
    with pytest.raises(InvalidRequest, match="erased"):
        ws.ledger.add_records(src, [NewRecord({"x": marker, "y": np.array([1])}), *_records(2, offset=50)])
    assert ws.ledger.count_records() == before


def test_check_ids_rejects_unknown_and_erased(ws):
    """Record selections must name live records."""
    res = ws.ledger.add_records(ws.ledger.add_source("s", "MIT"), _records(3))
    assert ws.ledger.check_ids(res.added) == res.added
    with pytest.raises(NotFound, match="do not exist"):
        ws.ledger.check_ids([max(res.added) + 10])
    with pytest.raises(InvalidRequest, match="empty"):
        ws.ledger.check_ids([])


def test_newer_schema_is_refused(ws):
    """A ledger written by a newer disgorge is not silently used."""
    path = ws.ledger.path
    ws.close()
    db = sqlite3.connect(path)
    db.execute(f"PRAGMA user_version={SCHEMA_VERSION + 1}")
    db.commit()
    db.close()
    with pytest.raises(DisgorgeError, match="newer"):
        Workspace.open(ws.root)


def test_corrupt_ledger_is_a_clear_error(tmp_path):
    """A ledger file that is not SQLite gives one clear error."""
    with Workspace.init(tmp_path / "w") as w:
        path = w.ledger.path
    for suffix in ("-wal", "-shm"):
        path.with_name(path.name + suffix).unlink(missing_ok=True)
    path.write_bytes(b"this is not a database" * 100)
    with pytest.raises(DisgorgeError, match="not a readable SQLite"):
        Workspace.open(tmp_path / "w")
