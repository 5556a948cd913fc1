"""The ledger: one SQLite database (WAL mode) that is the single source of truth about data and models."""

from __future__ import annotations

import hashlib
import hmac
import json
import logging
import sqlite3
import time
from collections.abc import Iterable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

import numpy as np
from pyroaring import BitMap

from ..errors import DisgorgeError, IntegrityError, InvalidRequest, NotFound
from . import bitmap as bm
from . import fingerprint as fp
from . import payload as pl
from .schema import MIGRATIONS, MODEL_KINDS, REBUILDS, SCHEMA_VERSION

log = logging.getLogger(__name__)

SPLITS = ("train", "test")
STATES = ("active", "held", "erased")
MODEL_STATUSES = ("active", "superseded", "retired")
CHAIN_KINDS = {"model": "models", "request": "requests"}
"""What the HMAC chain seals: a kind of ledger row and its table."""
BUSY_TIMEOUT_MS = 30_000
"""How long a statement waits for another connection's lock (writers are serialised by the workspace lock)."""
CHECKPOINT_PENDING = "checkpoint_pending"
"""Meta key set while erased bytes may still sit in the database file or its WAL (a checkpoint was blocked)."""


def now() -> str:
    """Current UTC time as ISO 8601."""
    return datetime.now(timezone.utc).isoformat(timespec="seconds")


@dataclass(frozen=True)
class Source:
    """Who or what a group of records came from."""

    id: int
    name: str
    license: str
    origin: str
    consent: str
    created_at: str


@dataclass
class NewRecord:
    """A record before ingest: its content fields, group attributes and split."""

    fields: dict[str, np.ndarray]
    attributes: dict[str, Any] = field(default_factory=dict)
    split: str = "train"


@dataclass(frozen=True)
class Record:
    """One stored training datum (``fields`` is None once erased)."""

    id: int
    source: str
    hash: str
    fields: dict[str, np.ndarray] | None
    attributes: dict[str, Any]
    split: str
    state: str


@dataclass(frozen=True)
class ModelRow:
    """A model as the ledger knows it."""

    id: str
    parent: str | None
    kind: str
    status: str
    task: str
    recipe: str
    recipe_sha256: str
    weights_sha256: str
    records: BitMap
    method: str | None
    request_id: int | None
    seconds: float
    info: dict[str, Any]
    created_at: str
    weights_deleted_at: str | None = None


@dataclass(frozen=True)
class RequestRow:
    """An erasure request."""

    id: int
    selector: dict[str, Any]
    reason: str
    method: str
    status: str
    records: BitMap
    affected: list[str]
    results: dict[str, Any]
    created_at: str
    completed_at: str | None


@dataclass(frozen=True)
class ProbeRow:
    """A declared effect probe: its kind, its settings (``spec``) and its own inputs (``inputs``, and the same
    inputs without the change, ``baseline``), each a list of record fields."""

    name: str
    kind: str
    spec: dict[str, Any]
    inputs: list[dict[str, np.ndarray]]
    baseline: list[dict[str, np.ndarray]] | None
    created_at: str


@dataclass(frozen=True)
class AuditRow:
    """A stored audit or attribution of a model: the JSON file (relative to the workspace) and its sha256."""

    id: int
    model_id: str
    kind: str
    args: dict[str, Any]
    path: str
    sha256: str
    created_at: str


@dataclass(frozen=True)
class DraftRow:
    """A draft erasure request (proposed by an attribution; ``forget --request ID`` executes it)."""

    id: int
    selector: dict[str, Any]
    reason: str
    audit_id: int | None
    status: str
    created_at: str


@dataclass(frozen=True)
class IngestResult:
    """What an ingest did: the new record ids and how many exact duplicates were skipped."""

    source: str
    added: BitMap
    duplicates: int


class Ledger:
    """SQLite-backed ledger of sources, records, models, erasure requests and tombstones.

    ``key`` is the workspace secret used to HMAC record content, so hashes cannot be matched across workspaces.
    """

    def __init__(self, path: Path, key: bytes) -> None:
        self.path = Path(path)
        self._key = key
        self._db = sqlite3.connect(self.path, isolation_level=None, timeout=BUSY_TIMEOUT_MS / 1000)
        self._db.row_factory = sqlite3.Row
        try:
            self._db.execute("PRAGMA journal_mode=WAL")
            self._db.execute("PRAGMA foreign_keys=ON")
            self._db.execute("PRAGMA secure_delete=ON")
            self._db.execute("PRAGMA synchronous=FULL")
            self._migrate()
        except sqlite3.DatabaseError as exc:
            self._db.close()
            raise IntegrityError(f"ledger {self.path} is not a readable SQLite database ({exc})") from None

    # -- plumbing -------------------------------------------------------------------------------------
    def close(self) -> None:
        """Close the database connection."""
        self._db.close()

    @property
    def schema_version(self) -> int:
        """The schema version stored in the database."""
        return int(self._db.execute("PRAGMA user_version").fetchone()[0])

    def _migrate(self) -> None:
        version = self.schema_version
        if version > SCHEMA_VERSION:
            raise DisgorgeError(
                f"ledger schema version {version} is newer than this disgorge understands ({SCHEMA_VERSION});"
                " upgrade disgorge"
            )
        for v in range(version, SCHEMA_VERSION):
            if v in REBUILDS:
                self._db.execute("PRAGMA foreign_keys=OFF")  # a no-op inside a transaction, so before it
            try:
                with self.transaction() as db:
                    for stmt in _statements(MIGRATIONS[v]):
                        db.execute(stmt)
                    if v in REBUILDS and db.execute("PRAGMA foreign_key_check").fetchone() is not None:
                        raise IntegrityError(f"ledger {self.path}: migration {v + 1} broke a foreign key; "
                                             "restore the ledger from a backup")
                    if v == 1:  # the chain starts with the rows that exist when it is introduced
                        for kind, table in CHAIN_KINDS.items():
                            for (ref,) in db.execute(f"SELECT id FROM {table} ORDER BY rowid").fetchall():
                                self._seal(db, kind, ref)
                    db.execute(f"PRAGMA user_version={v + 1}")
            finally:
                self._db.execute("PRAGMA foreign_keys=ON")

    @contextmanager
    def transaction(self) -> Iterator[sqlite3.Connection]:
        """One write transaction: everything inside commits together or not at all."""
        if self._db.in_transaction:
            yield self._db
            return
        self._db.execute("BEGIN IMMEDIATE")
        try:
            yield self._db
        except BaseException:
            self._db.execute("ROLLBACK")
            raise
        self._db.execute("COMMIT")

    def checkpoint(self, attempts: int = 3) -> bool:
        """Fold the WAL into the database file and truncate it, so that deleted bytes leave the WAL and the
        database file's old pages are overwritten. Returns whether it completed; a reader holding an old snapshot
        blocks it, and then :data:`CHECKPOINT_PENDING` stays set for a later command to finish."""
        for attempt in range(attempts):
            self._db.execute("PRAGMA busy_timeout=250")  # a reader may hold its snapshot for hours: do not wait 30 s
            try:
                busy, _, _ = self._db.execute("PRAGMA wal_checkpoint(TRUNCATE)").fetchone()
            finally:
                self._db.execute(f"PRAGMA busy_timeout={BUSY_TIMEOUT_MS}")
            if not busy:
                if self.get_meta(CHECKPOINT_PENDING) is not None:
                    with self.transaction() as db:
                        db.execute("DELETE FROM meta WHERE key=?", (CHECKPOINT_PENDING,))
                    self._db.execute("PRAGMA wal_checkpoint(TRUNCATE)")
                return True
            time.sleep(0.2 * (attempt + 1))
        return False

    @property
    def checkpoint_pending(self) -> bool:
        """Whether erased bytes may still be in the database file or WAL (a checkpoint has not completed)."""
        return self.get_meta(CHECKPOINT_PENDING) is not None

    def integrity_problems(self) -> list[str]:
        """SQLite's own checks (``integrity_check``, ``foreign_key_check``): an empty list when the file is sound."""
        problems = [r[0] for r in self._db.execute("PRAGMA integrity_check") if r[0] != "ok"]
        problems += [f"foreign key broken: {tuple(r)}" for r in self._db.execute("PRAGMA foreign_key_check")]
        return problems

    def hash_content(self, data: bytes) -> str:
        """HMAC-SHA256 of a record's canonical content bytes under the workspace key."""
        return hmac.new(self._key, data, hashlib.sha256).hexdigest()

    # -- meta -----------------------------------------------------------------------------------------
    def get_meta(self, key: str, default: str | None = None) -> str | None:
        """A workspace-level setting."""
        row = self._db.execute("SELECT value FROM meta WHERE key=?", (key,)).fetchone()
        return row[0] if row else default

    def set_meta(self, key: str, value: str) -> None:
        """Set a workspace-level setting."""
        with self.transaction() as db:
            db.execute("INSERT INTO meta(key, value) VALUES(?, ?) ON CONFLICT(key) DO UPDATE SET value=excluded.value",
                       (key, value))

    # -- sources --------------------------------------------------------------------------------------
    def add_source(self, name: str, license: str, origin: str = "", consent: str = "granted") -> Source:
        """Register a source (idempotent when the licence matches)."""
        if not name or not name.strip():
            raise InvalidRequest("a source needs a non-empty name; pass --source NAME")
        if not license or not license.strip():
            raise InvalidRequest(f"source {name!r} needs a licence; pass --license (an SPDX id such as CC-BY-4.0)")
        existing = self.find_source(name)
        if existing is not None:
            if existing.license != license:
                raise InvalidRequest(
                    f"source {name!r} already exists with licence {existing.license!r}, not {license!r};"
                    " use another source name"
                )
            return existing
        with self.transaction() as db:
            db.execute("INSERT INTO sources(name, license, origin, consent, created_at) VALUES(?,?,?,?,?)",
                       (name, license, origin, consent, now()))
        return self.source(name)

    def find_source(self, name: str) -> Source | None:
        """The source called ``name``, or None."""
        row = self._db.execute("SELECT * FROM sources WHERE name=?", (name,)).fetchone()
        return Source(**dict(row)) if row else None

    def source(self, name: str) -> Source:
        """The source called ``name``; raises :class:`NotFound` with the known names."""
        src = self.find_source(name)
        if src is None:
            names = [s.name for s in self.sources()]
            hint = ", ".join(names[:8]) + (" ..." if len(names) > 8 else "") if names else "none yet"
            raise NotFound(f"no source named {name!r} in this workspace (known: {hint}); see `disgorge sources`")
        return src

    def sources(self) -> list[Source]:
        """All sources, in creation order."""
        return [Source(**dict(r)) for r in self._db.execute("SELECT * FROM sources ORDER BY id")]

    def source_counts(self) -> dict[str, dict[str, int]]:
        """Per source name, the number of records in each state."""
        out: dict[str, dict[str, int]] = {s.name: {} for s in self.sources()}
        q = ("SELECT s.name, r.state, COUNT(*) FROM records r JOIN sources s ON s.id=r.source_id "
             "GROUP BY s.name, r.state")
        for name, state, n in self._db.execute(q):
            out[name][state] = n
        return out

    # -- records --------------------------------------------------------------------------------------
    def add_records(self, source: Source, records: Iterable[NewRecord]) -> IngestResult:
        """Ingest records under ``source`` in one transaction.

        Exact duplicates of live records are skipped and counted. Content matching a tombstone (erased earlier)
        is refused: the whole ingest is rolled back and nothing changes.
        """
        rows = []
        for rec in records:
            if rec.split not in SPLITS:
                raise InvalidRequest(f"split must be one of {SPLITS}, got {rec.split!r}")
            data = pl.encode(rec.fields)
            rows.append((self.hash_content(data), data, json.dumps(rec.attributes, sort_keys=True), rec.split))
        if not rows:
            raise InvalidRequest(f"nothing to ingest into source {source.name!r}: the input has no records")
        added = BitMap()
        duplicates = 0
        stamp = now()
        with self.transaction() as db:
            hashes = [r[0] for r in rows]
            erased = self._count_in(db, "SELECT COUNT(*) FROM tombstones WHERE hash IN ({})", hashes)
            if erased:
                raise InvalidRequest(
                    f"{erased} of these records match content erased by an earlier request (tombstones);"
                    " erased data can never be ingested again: remove them from the input"
                )
            near = self._near_duplicates(db, [pl.decode(r[1]) for r in rows])
            if near:
                raise InvalidRequest(
                    f"{len(near)} of these records are near-duplicates of content erased by an earlier request "
                    f"(input record(s) {', '.join(str(i + 1) for i in near[:5])}{' ...' if len(near) > 5 else ''});"
                    " erased data can never be ingested again, converted or slightly edited: remove them"
                )
            seen: set[str] = set()
            for h, data, attrs, split in rows:
                if h in seen or db.execute(
                        "SELECT 1 FROM records WHERE hash=? AND state!='erased'", (h,)).fetchone():
                    duplicates += 1
                    continue
                seen.add(h)
                cur = db.execute(
                    "INSERT INTO records(source_id, hash, payload, attributes, split, created_at) "
                    "VALUES(?,?,?,?,?,?)", (source.id, h, data, attrs, split, stamp))
                added.add(int(cur.lastrowid))
        return IngestResult(source.name, added, duplicates)

    def _near_duplicates(self, db: sqlite3.Connection, contents: list[dict[str, np.ndarray]]) -> list[int]:
        """Positions of ``contents`` whose near-duplicate fingerprint shares at least :data:`fingerprint.MIN_MATCH`
        band keys with one erased record's (none to check while nothing was erased)."""
        if db.execute("SELECT 1 FROM tombstone_bands LIMIT 1").fetchone() is None:
            return []
        found = []
        for i, fields in enumerate(contents):
            bands = fp.fingerprint(fields, self._key)
            if not bands:
                continue
            q = (f"SELECT 1 FROM tombstone_bands WHERE band IN ({','.join('?' * len(bands))}) "
                 "GROUP BY record_id HAVING COUNT(*) >= ? LIMIT 1")
            if db.execute(q, [*bands, fp.MIN_MATCH]).fetchone() is not None:
                found.append(i)
        return found

    def near_duplicate_share(self, ids: Iterable[int]) -> float:
        """Share of these (live) records that a re-ingest would refuse as near-duplicates of erased content: the
        false-refusal rate of the near-duplicate tombstones on live data."""
        records = [r for r in self.records(ids) if r.fields is not None]
        if not records:
            return 0.0
        return len(self._near_duplicates(self._db, [r.fields for r in records])) / len(records)

    @staticmethod
    def _count_in(db: sqlite3.Connection, query: str, values: Sequence[Any]) -> int:
        return sum(db.execute(query.format(",".join("?" * len(part))), part).fetchone()[0]
                   for part in _chunks(values))

    def record_ids(self, *, sources: Sequence[str] | None = None, exclude_sources: Sequence[str] = (),
                   split: str | None = "train", states: Sequence[str] = ("active",)) -> BitMap:
        """Ids of records matching a selector (source names, split, states)."""
        q = "SELECT r.id FROM records r JOIN sources s ON s.id=r.source_id WHERE 1=1"
        args: list[Any] = []
        if split is not None:
            q += " AND r.split=?"
            args.append(split)
        if states:
            q += f" AND r.state IN ({','.join('?' * len(states))})"
            args += list(states)
        if sources:
            for name in sources:
                self.source(name)
            q += f" AND s.name IN ({','.join('?' * len(sources))})"
            args += list(sources)
        if exclude_sources:
            for name in exclude_sources:
                self.source(name)
            q += f" AND s.name NOT IN ({','.join('?' * len(exclude_sources))})"
            args += list(exclude_sources)
        return BitMap(r[0] for r in self._db.execute(q, args))

    def check_ids(self, ids: Iterable[int]) -> BitMap:
        """Return ``ids`` as a bitmap after checking they all exist and are not erased yet."""
        wanted = bm.to_bitmap(ids)
        if not wanted:
            raise InvalidRequest("the selection is empty: name at least one record id or source")
        found: dict[int, str] = {}
        values = list(wanted)
        for part in _chunks(values):
            for rid, state in self._db.execute(
                    f"SELECT id, state FROM records WHERE id IN ({','.join('?' * len(part))})", part):
                found[rid] = state
        missing = [i for i in values if i not in found]
        if missing:
            shown = ", ".join(map(str, missing[:5])) + (" ..." if len(missing) > 5 else "")
            raise NotFound(f"{len(missing)} record id(s) do not exist in this workspace: {shown}")
        erased = [i for i in values if found[i] == "erased"]
        if erased:
            shown = ", ".join(map(str, erased[:5])) + (" ..." if len(erased) > 5 else "")
            raise InvalidRequest(f"{len(erased)} record(s) were already erased: {shown}")
        return wanted

    def records(self, ids: Iterable[int], *, with_payload: bool = True) -> list[Record]:
        """The records with these ids, in id order."""
        values = sorted(int(i) for i in ids)
        out: list[Record] = []
        cols = "r.id, s.name, r.hash, r.payload, r.attributes, r.split, r.state" if with_payload else \
            "r.id, s.name, r.hash, NULL, r.attributes, r.split, r.state"
        for part in _chunks(values):
            q = (f"SELECT {cols} FROM records r JOIN sources s ON s.id=r.source_id "
                 f"WHERE r.id IN ({','.join('?' * len(part))}) ORDER BY r.id")
            for rid, src, h, data, attrs, split, state in self._db.execute(q, part):
                out.append(Record(rid, src, h, pl.decode(data) if data is not None else None,
                                  json.loads(attrs), split, state))
        if len(out) != len(values):
            raise NotFound(f"{len(values) - len(out)} of the requested record ids do not exist")
        return out

    def record_index(self, *, sources: Sequence[str] | None = None, split: str | None = None,
                     states: Sequence[str] | None = None) -> list[tuple[int, str, str, str]]:
        """(id, source, split, state) of every record matching the selector, in id order; no payloads read."""
        q = "SELECT r.id, s.name, r.split, r.state FROM records r JOIN sources s ON s.id=r.source_id WHERE 1=1"
        args: list[Any] = []
        if sources:
            for name in sources:
                self.source(name)
            q += f" AND s.name IN ({','.join('?' * len(sources))})"
            args += list(sources)
        if split is not None:
            if split not in SPLITS:
                raise InvalidRequest(f"split must be one of {', '.join(SPLITS)}, got {split!r}")
            q += " AND r.split=?"
            args.append(split)
        if states:
            unknown = sorted(set(states) - set(STATES))
            if unknown:
                raise InvalidRequest(f"record state must be one of {', '.join(STATES)}, got {', '.join(unknown)}")
            q += f" AND r.state IN ({','.join('?' * len(states))})"
            args += list(states)
        return [tuple(r) for r in self._db.execute(q + " ORDER BY r.id", args)]

    def record_counts(self) -> dict[str, dict[str, int]]:
        """Number of records per state and split."""
        out: dict[str, dict[str, int]] = {}
        for state, split, n in self._db.execute("SELECT state, split, COUNT(*) FROM records GROUP BY state, split"):
            out.setdefault(state, {})[split] = n
        return out

    def count_records(self) -> dict[str, int]:
        """Number of records per state."""
        return {s: n for s, n in self._db.execute("SELECT state, COUNT(*) FROM records GROUP BY state")}

    # -- models ---------------------------------------------------------------------------------------
    def _reserve(self, counter: str) -> int:
        with self.transaction() as db:
            db.execute("INSERT INTO counters(name, value) VALUES(?, 1) "
                       "ON CONFLICT(name) DO UPDATE SET value=value+1", (counter,))
            return int(db.execute("SELECT value FROM counters WHERE name=?", (counter,)).fetchone()[0])

    def reserve_model_id(self) -> str:
        """Allocate a model id that is never reused, even if the model is never committed."""
        return f"m{self._reserve('model')}"

    def reserve_request_id(self) -> int:
        """Allocate an erasure request id that is never reused."""
        return self._reserve("request")

    def insert_model(self, row: ModelRow) -> None:
        """Insert and seal a model row (inside the caller's transaction, if any).

        Refuses a model that holds an erased record: a model trained while an erasure of some of its records was
        committed must not be kept (train again).
        """
        with self.transaction() as db:
            gone = row.records & self.erased_ids()
            if gone:
                raise InvalidRequest(f"{len(gone)} of the records model {row.id} was trained on were erased while it "
                                     "was being made, so it is not kept; run the command again")
            db.execute(
                "INSERT INTO models(id, parent, kind, status, task, recipe, recipe_sha256, weights_sha256, records,"
                " n_records, method, request_id, seconds, info, created_at) VALUES(?,?,?,?,?,?,?,?,?,?,?,?,?,?,?)",
                (row.id, row.parent, row.kind, row.status, row.task, row.recipe, row.recipe_sha256,
                 row.weights_sha256, bm.dumps(row.records), len(row.records), row.method, row.request_id,
                 row.seconds, json.dumps(row.info, sort_keys=True), row.created_at))
            self._seal(db, "model", row.id)

    def erased_ids(self) -> BitMap:
        """Ids of every erased record."""
        return BitMap(r[0] for r in self._db.execute("SELECT id FROM records WHERE state='erased'"))

    def set_model_status(self, model_id: str, status: str) -> None:
        """Mark a model superseded or retired (sealed)."""
        if status not in MODEL_STATUSES:
            raise InvalidRequest(f"model status must be one of {', '.join(MODEL_STATUSES)}, got {status!r}")
        with self.transaction() as db:
            db.execute("UPDATE models SET status=? WHERE id=?", (status, model_id))
            self._seal(db, "model", model_id)

    def mark_weights_deleted(self, model_id: str, content_keys: Sequence[str] = ()) -> None:
        """Record that a model's weights file was deleted, and drop ``content_keys`` (entries of its data facts
        that hold training content, such as a word vocabulary) from its info; sealed."""
        with self.transaction() as db:
            info = json.loads(db.execute("SELECT info FROM models WHERE id=?", (model_id,)).fetchone()[0])
            for key in content_keys:
                info.get("data", {}).pop(key, None)
            db.execute("UPDATE models SET weights_deleted_at=?, info=? WHERE id=?",
                       (now(), json.dumps(info, sort_keys=True), model_id))
            self._seal(db, "model", model_id)

    def purge_due(self, keep: Iterable[str] = ()) -> list[ModelRow]:
        """Models out of service whose weights still exist and that saw erased records (``keep``: ids the user
        chose to keep)."""
        erased, kept = self.erased_ids(), set(keep)
        return [m for m in self.models() if m.status != "active" and m.weights_deleted_at is None
                and m.id not in kept and m.records & erased]

    # -- the HMAC chain ---------------------------------------------------------------------------------
    def _row_digest(self, db: sqlite3.Connection, kind: str, ref: str | int) -> str | None:
        row = db.execute(f"SELECT * FROM {CHAIN_KINDS[kind]} WHERE id=?", (ref,)).fetchone()
        if row is None:
            return None
        canonical = {k: hashlib.sha256(v).hexdigest() if isinstance(v, bytes) else v for k, v in dict(row).items()}
        return hashlib.sha256(json.dumps(canonical, sort_keys=True).encode()).hexdigest()

    def _chain_mac(self, previous: str, kind: str, ref: str, digest: str) -> str:
        key = hmac.new(self._key, b"disgorge ledger chain", hashlib.sha256).digest()
        return hmac.new(key, f"{previous}|{kind}|{ref}|{digest}".encode(), hashlib.sha256).hexdigest()

    def _seal(self, db: sqlite3.Connection, kind: str, ref: str | int) -> None:
        """Append the row's current digest to the chain: each entry's MAC covers the previous entry's."""
        digest = self._row_digest(db, kind, ref)
        last = db.execute("SELECT mac FROM chain ORDER BY seq DESC LIMIT 1").fetchone()
        mac = self._chain_mac(last[0] if last else "", kind, str(ref), digest or "")
        db.execute("INSERT INTO chain(kind, ref, digest, mac, at) VALUES(?,?,?,?,?)", (kind, str(ref), digest, mac,
                                                                                    now()))

    def chain_problems(self, kind: str | None = None, refs: Iterable[str | int] | None = None) -> list[str]:
        """Where the ledger's model and request rows differ from what disgorge sealed: a chain entry altered,
        removed or inserted, or a row edited, added or deleted outside disgorge (only ``refs`` of ``kind`` when
        given). An empty list means the rows are as disgorge left them, to anyone without the workspace key."""
        problems: list[str] = []
        latest: dict[tuple[str, str], str] = {}
        previous = ""
        for seq, k, ref, digest, mac in self._db.execute("SELECT seq, kind, ref, digest, mac FROM chain ORDER BY seq"):
            if not hmac.compare_digest(mac, self._chain_mac(previous, k, ref, digest)):
                problems.append(f"chain entry {seq} ({k} {ref}) does not follow from the one before it: the chain "
                                "was edited, or entries were removed")
            previous = mac
            latest[(k, ref)] = digest
        wanted = None if refs is None else {str(r) for r in refs}
        for k, table in CHAIN_KINDS.items():
            if kind is not None and k != kind:
                continue
            ids = [str(r[0]) for r in self._db.execute(f"SELECT id FROM {table}")]
            for ref in ids:
                if wanted is not None and ref not in wanted:
                    continue
                sealed = latest.get((k, ref))
                if sealed is None:
                    problems.append(f"{k} {ref} was added to the ledger outside disgorge (it has no sealed entry)")
                elif sealed != self._row_digest(self._db, k, ref):
                    problems.append(f"the ledger row of {k} {ref} was edited outside disgorge (it no longer matches "
                                    "its sealed digest)")
            for (k2, ref), digest in latest.items():
                if k2 == k and digest and ref not in ids and (wanted is None or ref in wanted):
                    problems.append(f"{k} {ref} was deleted from the ledger outside disgorge")
        return problems

    @staticmethod
    def _model(r: sqlite3.Row) -> ModelRow:
        d = dict(r)
        d.pop("n_records")
        d["records"] = bm.loads(d["records"])
        d["info"] = json.loads(d["info"])
        return ModelRow(**d)

    def find_model(self, model_id: str) -> ModelRow | None:
        """The model with this id, or None."""
        r = self._db.execute("SELECT * FROM models WHERE id=?", (model_id,)).fetchone()
        return self._model(r) if r else None

    def model(self, model_id: str) -> ModelRow:
        """The model with this id; raises :class:`NotFound`."""
        m = self.find_model(model_id)
        if m is None:
            raise NotFound(f"no model {model_id!r} in this workspace; see `disgorge models`")
        return m

    def models(self, *, kinds: Sequence[str] = MODEL_KINDS,
               status: str | None = None) -> list[ModelRow]:
        """Models of the given kinds (and status), oldest first."""
        q = f"SELECT * FROM models WHERE kind IN ({','.join('?' * len(kinds))})"
        args: list[Any] = list(kinds)
        if status:
            q += " AND status=?"
            args.append(status)
        q += " ORDER BY created_at, CAST(SUBSTR(id, 2) AS INTEGER)"
        return [self._model(r) for r in self._db.execute(q, args)]

    def find_reference(self, recipe_sha256: str, records: BitMap) -> ModelRow | None:
        """A cached reference model trained with this recipe on exactly these records."""
        for r in self._db.execute("SELECT * FROM models WHERE kind IN ('reference', 'unlearned', 'trained') "
                                  "AND recipe_sha256=? AND n_records=? AND weights_deleted_at IS NULL",
                                  (recipe_sha256, len(records))):
            m = self._model(r)
            if m.records == records and (m.kind == "reference" or m.method == "retrain" or m.kind == "trained"):
                return m
        return None

    # -- probes, audits and drafts ---------------------------------------------------------------------
    def add_probe(self, name: str, kind: str, spec: dict[str, Any], inputs: Sequence[dict[str, np.ndarray]] = (),
                  baseline: Sequence[dict[str, np.ndarray]] | None = None) -> None:
        """Declare an effect probe; refuses a name already taken."""
        blob = {f"inputs.{i}.{k}": v for i, rec in enumerate(inputs) for k, v in rec.items()}
        blob |= {f"baseline.{i}.{k}": v for i, rec in enumerate(baseline or ()) for k, v in rec.items()}
        meta = {**spec, "n_inputs": len(inputs), "n_baseline": None if baseline is None else len(baseline),
                "content": sorted({self.hash_content(pl.encode(r)) for r in [*inputs, *(baseline or ())]})}
        with self.transaction() as db:
            if db.execute("SELECT 1 FROM probes WHERE name=?", (name,)).fetchone():
                raise InvalidRequest(f"a probe named {name!r} exists; pick another name or `disgorge probe remove "
                                     f"{name}` first")
            db.execute("INSERT INTO probes(name, kind, spec, payload, created_at) VALUES(?,?,?,?,?)",
                       (name, kind, json.dumps(meta, sort_keys=True), pl.encode(blob) if blob else None, now()))

    def remove_probe(self, name: str) -> None:
        """Forget a declared probe; raises :class:`NotFound`."""
        with self.transaction() as db:
            if db.execute("DELETE FROM probes WHERE name=?", (name,)).rowcount == 0:
                raise NotFound(f"no probe named {name!r} in this workspace; see `disgorge probes`")

    def probes(self) -> list[ProbeRow]:
        """Every declared probe, in the order declared (the first is the main effect)."""
        out = []
        for r in self._db.execute("SELECT name, kind, spec, payload, created_at FROM probes ORDER BY id"):
            spec = json.loads(r["spec"])
            blob = pl.decode(r["payload"]) if r["payload"] is not None else {}
            parts: dict[str, list[dict[str, np.ndarray]]] = {
                "inputs": [{} for _ in range(spec.pop("n_inputs"))],
                "baseline": [{} for _ in range(spec.get("n_baseline") or 0)]}
            for key, value in blob.items():
                part, i, name = key.split(".", 2)
                parts[part][int(i)][name] = value
            baseline = parts["baseline"] if spec.pop("n_baseline") is not None else None
            spec.pop("content", None)
            out.append(ProbeRow(r["name"], r["kind"], spec, parts["inputs"], baseline, r["created_at"]))
        return out

    def add_audit(self, model_id: str, kind: str, args: dict[str, Any], path: str, sha256: str) -> int:
        """Record an audit of a model stored at ``path``; returns its id."""
        with self.transaction() as db:
            cur = db.execute("INSERT INTO audits(model_id, kind, args, path, sha256, created_at) VALUES(?,?,?,?,?,?)",
                             (model_id, kind, json.dumps(args, sort_keys=True), path, sha256, now()))
            return int(cur.lastrowid)

    def audits(self, model_id: str | None = None) -> list[AuditRow]:
        """Stored audits, oldest first (of one model, given ``model_id``)."""
        q, args = "SELECT * FROM audits", ()
        if model_id is not None:
            q, args = q + " WHERE model_id=?", (model_id,)
        return [AuditRow(**{**dict(r), "args": json.loads(r["args"])}) for r in self._db.execute(q + " ORDER BY id",
                                                                                                  args)]

    def add_draft(self, selector: dict[str, Any], reason: str, audit_id: int | None = None) -> int:
        """Store a draft erasure request under a fresh request id; returns the id."""
        draft_id = self.reserve_request_id()
        with self.transaction() as db:
            db.execute("INSERT INTO drafts(id, selector, reason, audit_id, created_at) VALUES(?,?,?,?,?)",
                       (draft_id, json.dumps(selector, sort_keys=True), reason, audit_id, now()))
        return draft_id

    def draft(self, draft_id: int) -> DraftRow:
        """The draft request with this id; raises :class:`NotFound`."""
        valid = isinstance(draft_id, int) and 0 <= draft_id < 2**63
        r = self._db.execute("SELECT * FROM drafts WHERE id=?", (draft_id,)).fetchone() if valid else None
        if r is None:
            raise NotFound(f"no draft request {draft_id} in this workspace; `disgorge attribute ... --to-request` "
                           "makes one, `disgorge requests` lists them")
        return DraftRow(**{**dict(r), "selector": json.loads(r["selector"])})

    def drafts(self) -> list[DraftRow]:
        """Every draft request, oldest first."""
        return [self.draft(r[0]) for r in self._db.execute("SELECT id FROM drafts ORDER BY id")]

    def set_draft_executed(self, draft_id: int) -> None:
        """Mark a draft as carried out (inside the caller's transaction, if any)."""
        with self.transaction() as db:
            db.execute("UPDATE drafts SET status='executed' WHERE id=?", (draft_id,))

    # -- requests and erasure -------------------------------------------------------------------------
    def request(self, request_id: int) -> RequestRow:
        """The erasure request with this id; raises :class:`NotFound`."""
        if not isinstance(request_id, int) or not 0 <= request_id < 2**63:
            raise NotFound(f"no erasure request {request_id} in this workspace; see `disgorge requests`")
        r = self._db.execute("SELECT * FROM requests WHERE id=?", (request_id,)).fetchone()
        if r is None:
            raise NotFound(f"no erasure request {request_id} in this workspace; see `disgorge requests`")
        d = dict(r)
        d.pop("n_records")
        d["records"] = bm.loads(d["records"])
        for k in ("selector", "affected", "results"):
            d[k] = json.loads(d[k])
        return RequestRow(**d)

    def find_request(self, request_id: int) -> RequestRow | None:
        """The erasure request with this id, or None."""
        try:
            return self.request(request_id)
        except NotFound:
            return None

    def erasure_leftovers(self) -> list[tuple[int, str]]:
        """(record id, what) of erased records that still hold a payload or attributes (none, unless tampered)."""
        q = ("SELECT id, payload IS NOT NULL, attributes != '{}' FROM records WHERE state='erased' "
             "AND (payload IS NOT NULL OR attributes != '{}')")
        return [(rid, "its payload" if has_payload else "its attributes")
                for rid, has_payload, _ in self._db.execute(q)]

    def requests(self) -> list[RequestRow]:
        """All erasure requests, oldest first."""
        return [self.request(r[0]) for r in self._db.execute("SELECT id FROM requests ORDER BY id")]

    def commit_request(self, *, request_id: int, selector: dict[str, Any], reason: str, method: str,
                       records: BitMap, affected: list[str], children: list[ModelRow], supersede: list[str],
                       results: dict[str, Any], erase: bool, created_at: str | None = None) -> None:
        """Record an erasure request and its child models in one transaction (``created_at``: when the request was
        made, if not now).

        Models in ``supersede`` (the parents, and cached references that saw the records) are marked superseded.
        With ``erase`` the records' payloads are deleted (secure_delete) and tombstones kept; otherwise the records
        are held (excluded from training, kept for verification) until :meth:`erase`.
        """
        stamp = now()
        with self.transaction() as db:
            db.execute(
                "INSERT INTO requests(id, selector, reason, method, status, records, n_records, affected, results,"
                " created_at) VALUES(?,?,?,?,?,?,?,?,?,?)",
                (request_id, json.dumps(selector, sort_keys=True), reason, method, "held", bm.dumps(records),
                 len(records), json.dumps(affected), json.dumps(results, sort_keys=True), created_at or stamp))
            for child in children:
                self.insert_model(child)
            for model_id in supersede:
                self.set_model_status(model_id, "superseded")
            self._set_state(db, records, "held")
            if erase:
                self._erase(db, request_id, records, stamp)
            self._seal(db, "request", request_id)
        if erase:
            self.checkpoint()

    def erase(self, request_id: int) -> None:
        """Delete the payloads of a held request's records and keep tombstones."""
        req = self.request(request_id)
        if req.status == "erased":
            raise InvalidRequest(f"request {request_id} is already erased")
        with self.transaction() as db:
            self._erase(db, request_id, req.records, now())
            self._seal(db, "request", request_id)
        self.checkpoint()

    def set_request_results(self, request_id: int, results: dict[str, Any]) -> None:
        """Replace the stored results (e.g. certificate paths) of a request."""
        with self.transaction() as db:
            db.execute("UPDATE requests SET results=? WHERE id=?", (json.dumps(results, sort_keys=True),
                                                                    request_id))
            self._seal(db, "request", request_id)

    def _set_state(self, db: sqlite3.Connection, ids: BitMap, state: str) -> None:
        values = list(ids)
        for part in _chunks(values):
            db.execute(f"UPDATE records SET state=? WHERE id IN ({','.join('?' * len(part))})", [state, *part])

    def _erase(self, db: sqlite3.Connection, request_id: int, ids: BitMap, stamp: str) -> None:
        """Delete the payloads and attributes (secure_delete zeroes their pages), keep tombstones, supersede every
        active model that saw the records, and mark the physical deletion pending until a checkpoint completes."""
        values = list(ids)
        for part in _chunks(values):
            marks = ",".join("?" * len(part))
            for rid, data in db.execute(f"SELECT id, payload FROM records WHERE id IN ({marks}) AND payload IS NOT "
                                        "NULL", part).fetchall():
                db.executemany("INSERT INTO tombstone_bands(band, record_id, request_id) VALUES(?,?,?)",
                               [(band, rid, request_id) for band in fp.fingerprint(pl.decode(data), self._key)])
            db.execute(f"INSERT OR IGNORE INTO tombstones(hash, record_id, request_id, erased_at) "
                       f"SELECT hash, id, ?, ? FROM records WHERE id IN ({marks})", [request_id, stamp, *part])
            db.execute(f"UPDATE records SET payload=NULL, attributes='{{}}', state='erased' WHERE id IN ({marks})",
                       part)
        for m in self.models(status="active"):
            if m.records & ids:
                self.set_model_status(m.id, "superseded")
        self._drop_probes_holding(db, ids)
        db.execute("UPDATE requests SET status='erased', completed_at=? WHERE id=?", (stamp, request_id))
        db.execute("INSERT INTO meta(key, value) VALUES(?, ?) ON CONFLICT(key) DO UPDATE SET value=excluded.value",
                   (CHECKPOINT_PENDING, stamp))

    def _drop_probes_holding(self, db: sqlite3.Connection, ids: BitMap) -> None:
        """Delete every probe whose inputs hold the content of an erased record (a held-out record erased with
        ``--include-test`` that a backdoor probe copied): erased means gone from the probes too."""
        erased: set[str] = set()
        for part in _chunks(list(ids)):
            erased |= {h for (h,) in db.execute(f"SELECT hash FROM records WHERE id IN ({','.join('?' * len(part))})",
                                                part)}
        for name, spec in db.execute("SELECT name, spec FROM probes").fetchall():
            if erased & set(json.loads(spec).get("content", ())):
                db.execute("DELETE FROM probes WHERE name=?", (name,))
                log.warning("probe %r held erased records' content and was removed with them", name)

    def tombstone_count(self) -> int:
        """How many erased contents are remembered."""
        return int(self._db.execute("SELECT COUNT(*) FROM tombstones").fetchone()[0])


def _chunks(values: Sequence[Any], size: int = 900) -> Iterator[list[Any]]:
    """Slices small enough for one ``IN (...)`` (SQLite caps the number of bound parameters)."""
    for i in range(0, len(values), size):
        yield list(values[i:i + size])


def _statements(script: str) -> list[str]:
    return [s.strip() for s in script.split(";") if s.strip()]
