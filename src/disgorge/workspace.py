"""The workspace: one project's ledger, models and reports; the one object the CLI and the API pass around."""

from __future__ import annotations

import os
import secrets
from collections.abc import Iterable
from pathlib import Path
from typing import Any

from pyroaring import BitMap
from torch import nn

from ._io import atomic_write_bytes
from .errors import DisgorgeError, IntegrityError, NotFound
from .ledger import Ledger, ModelRow
from .models import store
from .tasks import RecordDataset, Task, get_task
from .train.recipe import Recipe

STATE_DIR = ".disgorge"


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

    # -- data -----------------------------------------------------------------------------------------
    def dataset(self, task: Task, ids: Iterable[int]) -> RecordDataset:
        """The records with these ids as tensors for ``task``."""
        return task.dataset(self.ledger.records(ids))

    def test_ids(self) -> BitMap:
        """Ids of the live held-out (test split) records."""
        return self.ledger.record_ids(split="test", states=("active", "held"))

    # -- models ---------------------------------------------------------------------------------------
    def model_dir(self, model_id: str) -> Path:
        """Folder of a model."""
        return self.models_dir / model_id

    def model_info(self, row: ModelRow) -> dict[str, Any]:
        """The data facts (input shape, classes) the model was built for."""
        return row.info["data"]

    def load_model(self, model_id: str) -> tuple[nn.Module, ModelRow, Task]:
        """Rebuild a model from its recipe and load its weights, checking their recorded sha256."""
        row = self.ledger.model(model_id)
        task = get_task(row.task)
        recipe = Recipe.from_toml(row.recipe, where=f"model {model_id}'s recipe")
        model = task.build_model(recipe.model, self.model_info(row))
        state = store.read_weights(self.models_dir, model_id, row.weights_sha256)
        try:
            model.load_state_dict(state)
        except RuntimeError as exc:
            raise IntegrityError(f"model {model_id}: weights do not fit its recipe's network ({exc})") from None
        model.eval()
        return model, row, task

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

    def report_dir(self, request_id: int) -> Path:
        """Folder of an erasure request's reports."""
        return self.reports_dir / f"r{request_id}"

    def __repr__(self) -> str:
        return f"Workspace({os.fspath(self.root)!r})"
