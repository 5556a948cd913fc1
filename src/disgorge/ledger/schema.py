"""SQLite schema of the ledger, as an ordered list of migrations (``PRAGMA user_version`` is the version)."""

from __future__ import annotations

MIGRATIONS: list[str] = [
    # version 1
    """
    CREATE TABLE meta (
        key   TEXT PRIMARY KEY,
        value TEXT NOT NULL
    );
    CREATE TABLE sources (
        id         INTEGER PRIMARY KEY,
        name       TEXT NOT NULL UNIQUE,
        license    TEXT NOT NULL,
        origin     TEXT NOT NULL DEFAULT '',
        consent    TEXT NOT NULL DEFAULT 'granted',
        created_at TEXT NOT NULL
    );
    CREATE TABLE records (
        id         INTEGER PRIMARY KEY,
        source_id  INTEGER NOT NULL REFERENCES sources(id),
        hash       TEXT NOT NULL,
        payload    BLOB,
        attributes TEXT NOT NULL DEFAULT '{}',
        split      TEXT NOT NULL CHECK (split IN ('train', 'test')),
        state      TEXT NOT NULL DEFAULT 'active' CHECK (state IN ('active', 'held', 'erased')),
        created_at TEXT NOT NULL
    );
    CREATE UNIQUE INDEX records_live_hash ON records(hash) WHERE state != 'erased';
    CREATE INDEX records_source ON records(source_id);
    CREATE TABLE models (
        id             TEXT PRIMARY KEY,
        parent         TEXT REFERENCES models(id),
        kind           TEXT NOT NULL CHECK (kind IN ('trained', 'unlearned', 'reference')),
        status         TEXT NOT NULL DEFAULT 'active' CHECK (status IN ('active', 'superseded')),
        task           TEXT NOT NULL,
        recipe         TEXT NOT NULL,
        recipe_sha256  TEXT NOT NULL,
        weights_sha256 TEXT NOT NULL,
        records        BLOB NOT NULL,
        n_records      INTEGER NOT NULL,
        method         TEXT,
        request_id     INTEGER REFERENCES requests(id),
        seconds        REAL NOT NULL,
        info           TEXT NOT NULL DEFAULT '{}',
        created_at     TEXT NOT NULL
    );
    CREATE INDEX models_reference ON models(kind, recipe_sha256);
    CREATE TABLE requests (
        id           INTEGER PRIMARY KEY,
        selector     TEXT NOT NULL,
        reason       TEXT NOT NULL DEFAULT '',
        method       TEXT NOT NULL,
        status       TEXT NOT NULL CHECK (status IN ('held', 'erased')),
        records      BLOB NOT NULL,
        n_records    INTEGER NOT NULL,
        affected     TEXT NOT NULL,
        results      TEXT NOT NULL,
        created_at   TEXT NOT NULL,
        completed_at TEXT
    );
    CREATE TABLE tombstones (
        hash       TEXT PRIMARY KEY,
        record_id  INTEGER NOT NULL,
        request_id INTEGER NOT NULL REFERENCES requests(id),
        erased_at  TEXT NOT NULL
    );
    CREATE TABLE counters (
        name  TEXT PRIMARY KEY,
        value INTEGER NOT NULL
    );
    """,
    # version 2: retired models and deleted weights; the HMAC chain over model and request rows; near-duplicate
    # fingerprints of erased content. SQLite cannot alter a CHECK constraint, so the models table is rebuilt
    # (``Ledger._migrate`` runs this one with foreign keys off, as SQLite's documentation prescribes).
    """
    CREATE TABLE models_v2 (
        id             TEXT PRIMARY KEY,
        parent         TEXT REFERENCES models(id),
        kind           TEXT NOT NULL CHECK (kind IN ('trained', 'unlearned', 'reference')),
        status         TEXT NOT NULL DEFAULT 'active' CHECK (status IN ('active', 'superseded', 'retired')),
        task           TEXT NOT NULL,
        recipe         TEXT NOT NULL,
        recipe_sha256  TEXT NOT NULL,
        weights_sha256 TEXT NOT NULL,
        records        BLOB NOT NULL,
        n_records      INTEGER NOT NULL,
        method         TEXT,
        request_id     INTEGER REFERENCES requests(id),
        seconds        REAL NOT NULL,
        info           TEXT NOT NULL DEFAULT '{}',
        created_at     TEXT NOT NULL,
        weights_deleted_at TEXT
    );
    INSERT INTO models_v2(id, parent, kind, status, task, recipe, recipe_sha256, weights_sha256, records, n_records,
                          method, request_id, seconds, info, created_at)
        SELECT id, parent, kind, status, task, recipe, recipe_sha256, weights_sha256, records, n_records, method,
               request_id, seconds, info, created_at FROM models;
    DROP TABLE models;
    ALTER TABLE models_v2 RENAME TO models;
    CREATE INDEX models_reference ON models(kind, recipe_sha256);
    CREATE TABLE chain (
        seq    INTEGER PRIMARY KEY,
        kind   TEXT NOT NULL CHECK (kind IN ('model', 'request')),
        ref    TEXT NOT NULL,
        digest TEXT NOT NULL,
        mac    TEXT NOT NULL,
        at     TEXT NOT NULL
    );
    CREATE INDEX chain_ref ON chain(kind, ref);
    CREATE TABLE tombstone_bands (
        band       TEXT NOT NULL,
        record_id  INTEGER NOT NULL,
        request_id INTEGER NOT NULL REFERENCES requests(id)
    );
    CREATE INDEX tombstone_bands_band ON tombstone_bands(band);
    """,
    # version 3: models trained elsewhere and registered with their records (kind 'imported', see disgorge.transfer).
    # The CHECK constraint changes, so the models table is rebuilt as in version 2; its columns and values stay, so
    # every row keeps the digest the HMAC chain sealed.
    """
    CREATE TABLE models_v3 (
        id             TEXT PRIMARY KEY,
        parent         TEXT REFERENCES models(id),
        kind           TEXT NOT NULL CHECK (kind IN ('trained', 'unlearned', 'reference', 'imported')),
        status         TEXT NOT NULL DEFAULT 'active' CHECK (status IN ('active', 'superseded', 'retired')),
        task           TEXT NOT NULL,
        recipe         TEXT NOT NULL,
        recipe_sha256  TEXT NOT NULL,
        weights_sha256 TEXT NOT NULL,
        records        BLOB NOT NULL,
        n_records      INTEGER NOT NULL,
        method         TEXT,
        request_id     INTEGER REFERENCES requests(id),
        seconds        REAL NOT NULL,
        info           TEXT NOT NULL DEFAULT '{}',
        created_at     TEXT NOT NULL,
        weights_deleted_at TEXT
    );
    INSERT INTO models_v3 SELECT id, parent, kind, status, task, recipe, recipe_sha256, weights_sha256, records,
                                 n_records, method, request_id, seconds, info, created_at, weights_deleted_at
                          FROM models;
    DROP TABLE models;
    ALTER TABLE models_v3 RENAME TO models;
    CREATE INDEX models_reference ON models(kind, recipe_sha256);
    """,
    # version 4: effect probes declared by the user or a bundled scenario (their own inputs, never training records),
    # audits and attributions of a model (the JSON lies beside the model; the row names it and its sha256), and draft
    # erasure requests an attribution proposes (their ids come from the request counter, so `forget --request ID`
    # commits the request under the id the draft was shown with).
    """
    CREATE TABLE probes (
        id         INTEGER PRIMARY KEY,
        name       TEXT NOT NULL UNIQUE,
        kind       TEXT NOT NULL,
        spec       TEXT NOT NULL,
        payload    BLOB,
        created_at TEXT NOT NULL
    );
    CREATE TABLE audits (
        id         INTEGER PRIMARY KEY,
        model_id   TEXT NOT NULL REFERENCES models(id),
        kind       TEXT NOT NULL,
        args       TEXT NOT NULL,
        path       TEXT NOT NULL,
        sha256     TEXT NOT NULL,
        created_at TEXT NOT NULL
    );
    CREATE INDEX audits_model ON audits(model_id);
    CREATE TABLE drafts (
        id         INTEGER PRIMARY KEY,
        selector   TEXT NOT NULL,
        reason     TEXT NOT NULL,
        audit_id   INTEGER REFERENCES audits(id),
        status     TEXT NOT NULL DEFAULT 'open' CHECK (status IN ('open', 'executed')),
        created_at TEXT NOT NULL
    );
    """,
]

MODEL_KINDS = ("trained", "unlearned", "reference", "imported")
"""What a model row can be: trained here, unlearned from a parent, a verification reference, or imported (trained
elsewhere and registered with the records it was trained on)."""

REBUILDS = {1, 2}
"""Migrations (by index) that rebuild a table and so must run with foreign keys off."""

SCHEMA_VERSION = len(MIGRATIONS)
