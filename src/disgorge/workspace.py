"""The workspace: one project's ledger, models and reports; the one object the CLI and the API pass around."""

from __future__ import annotations

import json
import os
import secrets
from collections.abc import Iterable, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
from pyroaring import BitMap

from ._io import atomic_write_bytes
from .errors import DisgorgeError, IntegrityError, InvalidRequest, NotFound
from .ledger import Ledger, ModelRow, now
from .ledger import bitmap as bm
from .models import store
from .models.card import model_card
from .spec import Recipe

if TYPE_CHECKING:
    from torch import nn

    from .tasks import RecordDataset, Task

# Opening a workspace and reading its ledger loads neither torch nor scikit-learn (commands such as `disgorge
# models` start fast); the methods that build tensors or networks import the task layer when called.

STATE_DIR = ".disgorge"
SIGNING_KEY = "signing.key"
"""File under ``.disgorge/`` holding the workspace's certificate signing key: 32 random bytes (an Ed25519 private key
in raw form, see :mod:`disgorge.evidence.signing`), mode 0600."""
SIGNING_KEY_BYTES = 32


class Workspace:
    """A folder holding ``.disgorge/`` (ledger and key), ``models/<id>/`` and ``reports/<request>/``."""

    def __init__(self, root: Path, ledger: Ledger) -> None:
        self.root = Path(root)
        self.ledger = ledger
        self.models_dir = self.root / "models"
        self.reports_dir = self.root / "reports"

    # -- lifecycle ------------------------------------------------------------------------------------
    @classmethod
    def init(cls, root: str | Path) -> Workspace:
        """Create a workspace in ``root`` (created if missing); refuses to overwrite an existing one."""
        root = Path(root)
        state = root / STATE_DIR
        if (state / "ledger.sqlite").exists():
            raise DisgorgeError(f"{root} already holds a disgorge workspace; open it instead of re-initialising")
        if root.exists() and not root.is_dir():
            raise DisgorgeError(f"{root} exists and is not a folder")
        state.mkdir(parents=True, exist_ok=True)
        (root / "models").mkdir(exist_ok=True)
        (root / "reports").mkdir(exist_ok=True)
        key_path = state / "secret"
        if not key_path.exists():
            atomic_write_bytes(key_path, secrets.token_bytes(32), mode=0o600)
        if not (state / SIGNING_KEY).exists():
            atomic_write_bytes(state / SIGNING_KEY, secrets.token_bytes(SIGNING_KEY_BYTES), mode=0o600)
        return cls.open(root, _creating=True)

    @classmethod
    def open(cls, root: str | Path, *, _creating: bool = False) -> Workspace:
        """Open the workspace in ``root``."""
        root = Path(root)
        state = root / STATE_DIR
        db = state / "ledger.sqlite"
        key_path = state / "secret"
        if not state.is_dir():
            raise NotFound(f"no disgorge workspace at {root}; create one with `disgorge init {root}`")
        if not key_path.exists():
            raise IntegrityError(f"workspace {root} has no key file {key_path}; restore it from a backup")
        if not db.exists() and not _creating:
            raise IntegrityError(f"workspace {root} has no ledger {db}; restore it from a backup")
        key = key_path.read_bytes()
        if len(key) < 16:
            raise IntegrityError(f"workspace key {key_path} is truncated; restore it from a backup")
        ws = cls(root, Ledger(db, key))
        ws.models_dir.mkdir(exist_ok=True)
        ws.reports_dir.mkdir(exist_ok=True)
        store.remove_orphans(ws.models_dir)
        return ws

    def close(self) -> None:
        """Close the ledger."""
        self.ledger.close()

    def __enter__(self) -> Workspace:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    # -- settings -------------------------------------------------------------------------------------
    @property
    def scenario(self) -> str | None:
        """The bundled scenario ingested here, if any (it supplies the effect probe)."""
        return self.ledger.get_meta("scenario")

    @property
    def signing_key_path(self) -> Path:
        """The file of the workspace's certificate signing key (``.disgorge/signing.key``)."""
        return self.root / STATE_DIR / SIGNING_KEY

    def signing_key(self) -> bytes:
        """The 32 secret bytes of the workspace's certificate signing key; a workspace made before certificates
        were signed gets its key on first use."""
        path = self.signing_key_path
        if not path.exists():
            atomic_write_bytes(path, secrets.token_bytes(SIGNING_KEY_BYTES), mode=0o600)
        key = path.read_bytes()
        if len(key) != SIGNING_KEY_BYTES:
            raise IntegrityError(f"signing key {path} is {len(key)} bytes, not {SIGNING_KEY_BYTES} (corrupt); restore "
                                 "it from a backup, since certificates signed with it name its public key")
        return key

    # -- data -----------------------------------------------------------------------------------------
    def dataset(self, task: Task, ids: Iterable[int]) -> RecordDataset:
        """The records with these ids as tensors for ``task``."""
        return task.dataset(self.ledger.records(ids))

    def test_ids(self) -> BitMap:
        """Ids of the live held-out (test split) records."""
        return self.ledger.record_ids(split="test", states=("active", "held"))

    def training_ids(self, recipe: Recipe) -> BitMap:
        """Ids of the active training records the recipe's data selector picks."""
        return self.ledger.record_ids(sources=list(recipe.data.sources) or None,
                                      exclude_sources=list(recipe.data.exclude_sources), split="train")

    def select(self, *, sources: Sequence[str] = (), records: Sequence[int] = (),
               random_fraction: float | None = None, seed: int = 0) -> BitMap:
        """Record ids named by sources, explicit ids, or a random share of the live training records."""
        if not sources and not records and random_fraction is None:
            raise InvalidRequest("name what to forget: --source NAME, --records IDS or --random FRACTION")
        ids = BitMap()
        for name in sources:
            found = self.ledger.record_ids(sources=[name], split=None, states=("active", "held"))
            if not found:
                raise InvalidRequest(f"source {name!r} has no records left to forget (already erased?)")
            ids |= found
        if records:
            ids |= self.ledger.check_ids(records)
        if random_fraction is not None:
            if not 0 < random_fraction < 1:
                raise InvalidRequest(f"--random takes a fraction in (0, 1), got {random_fraction}")
            pool = np.array(self.ledger.record_ids(split="train"), dtype=np.int64)
            if len(pool) == 0:
                raise InvalidRequest("--random found no live training records to draw from")
            k = max(1, round(random_fraction * len(pool)))
            ids |= BitMap(np.random.default_rng(seed).choice(pool, size=k, replace=False).tolist())
        if not ids:
            raise InvalidRequest("the selection is empty: it names no live records")
        return ids

    # -- models ---------------------------------------------------------------------------------------
    def model_dir(self, model_id: str) -> Path:
        """Folder of a model."""
        return self.models_dir / model_id

    def model_info(self, row: ModelRow) -> dict[str, Any]:
        """The data facts (input shape, classes) the model was built for."""
        return row.info["data"]

    def load_model(self, model_id: str) -> tuple[nn.Module, ModelRow, Task]:
        """Rebuild a model from its recipe and load its weights, checking their recorded sha256."""
        from .tasks import get_task

        row = self.ledger.model(model_id)
        task = get_task(row.task)
        recipe = self.recipe_of(row)
        model = task.build_model(recipe.model, self.model_info(row))
        state = store.read_weights(self.models_dir, model_id, row.weights_sha256)
        try:
            model.load_state_dict(state)
        except RuntimeError as exc:
            raise IntegrityError(f"model {model_id}: weights do not fit its recipe's network ({exc})") from None
        model.eval()
        return model, row, task

    def save_model(self, *, model: nn.Module, recipe: Recipe, records: BitMap, info: dict[str, Any], kind: str,
                   seconds: float, parent: str | None = None, method: str | None = None,
                   request_id: int | None = None, metrics: dict[str, Any] | None = None) -> ModelRow:
        """Write a model folder (weights, recipe, config, card) atomically and return its ledger row, not yet
        inserted: the caller commits it (alone, or with an erasure request) or removes the folder."""
        model_id = self.ledger.reserve_model_id()
        weights, digest = store.serialize_weights(model)
        recipe_toml = recipe.to_toml()
        card = model_card(model_id=model_id, task=recipe.task, family=recipe.model.family, parent=parent, kind=kind,
                          method=method, sources=self.sources_of(records), n_records=len(records),
                          recipe_toml=recipe_toml, weights_sha256=digest, request_id=request_id, metrics=metrics)
        config = {"id": model_id, "task": recipe.task, "family": recipe.model.family, "data": info["data"],
                  "parent": parent, "kind": kind, "method": method, "weights_sha256": digest}
        store.write_model_dir(self.models_dir, model_id, {
            store.WEIGHTS: weights,
            "recipe.toml": recipe_toml.encode(),
            "config.json": (json.dumps(config, indent=2) + "\n").encode(),
            "records.roaring": bm.dumps(records),
            "README.md": card.encode(),
        })
        return ModelRow(id=model_id, parent=parent, kind=kind, status="active", task=recipe.task,
                        recipe=recipe_toml, recipe_sha256=recipe.sha256, weights_sha256=digest, records=records,
                        method=method, request_id=request_id, seconds=seconds, info=info, created_at=now())

    def recipe_of(self, row: ModelRow) -> Recipe:
        """The recipe a model was trained with, as stored in the ledger."""
        return Recipe.from_toml(row.recipe, where=f"model {row.id}'s recipe")

    def sources_of(self, ids: BitMap) -> list[dict[str, Any]]:
        """Per source, its licence, origin and how many of ``ids`` it contributed."""
        counts: dict[str, int] = {}
        for rec in self.ledger.records(ids, with_payload=False):
            counts[rec.source] = counts.get(rec.source, 0) + 1
        out = []
        for src in self.ledger.sources():
            if src.name in counts:
                out.append({"name": src.name, "license": src.license, "origin": src.origin,
                            "records": counts[src.name]})
        return out

    def status(self) -> dict[str, Any]:
        """A summary of the workspace: sources; records by state and split; models by kind and status; requests
        by status, with the deferred erasures still pending; tombstones; bytes on disk."""
        records = self.ledger.record_counts()
        models: dict[str, dict[str, int]] = {}
        for m in self.ledger.models():
            models.setdefault(m.kind, {}).setdefault(m.status, 0)
            models[m.kind][m.status] += 1
        requests = self.ledger.requests()
        disk = sum(f.stat().st_size for folder in (self.root / STATE_DIR, self.models_dir, self.reports_dir)
                   for f in folder.rglob("*") if f.is_file() and not f.is_symlink())
        return {"workspace": str(self.root), "schema": self.ledger.schema_version, "scenario": self.scenario,
                "sources": len(self.ledger.sources()),
                "records": {state: {"total": sum(by.values()), **by} for state, by in sorted(records.items())},
                "models": {kind: {"total": sum(by.values()), **by} for kind, by in sorted(models.items())},
                "requests": {"total": len(requests), "held": sum(r.status == "held" for r in requests),
                             "erased": sum(r.status == "erased" for r in requests)},
                "pending_erasures": [r.id for r in requests if r.status == "held"],
                "tombstones": self.ledger.tombstone_count(), "disk_bytes": disk}

    def report_dir(self, request_id: int) -> Path:
        """Folder of an erasure request's reports."""
        return self.reports_dir / f"r{request_id}"

    def __repr__(self) -> str:
        return f"Workspace({os.fspath(self.root)!r})"
