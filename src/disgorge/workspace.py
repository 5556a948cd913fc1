"""The workspace: one project's ledger, models and reports; the one object the CLI and the API pass around."""

from __future__ import annotations

import json
import logging
import os
import secrets
import shutil
import stat
from collections.abc import Iterable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
from filelock import FileLock, Timeout
from pyroaring import BitMap

from ._io import atomic_write_bytes, check_within, read_regular, sha256_bytes
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
LOCK = "lock"
"""File under ``.disgorge/`` that commands writing to the workspace hold (an OS file lock) one at a time."""
KEEP_SUPERSEDED = "keep_superseded"
"""Meta key: ids of superseded models whose weights the user chose to keep after an erasure."""
CONTENT_INFO_KEYS = ("vocab", "transform")
"""Entries of a model's data facts that hold training content (a word vocabulary, preprocessing statistics such as
a minimum that is one record's value); dropped when its weights go."""
PRIVATE_FILES = ("ledger.sqlite", "ledger.sqlite-wal", "ledger.sqlite-shm", "secret", SIGNING_KEY, LOCK)
"""Files under ``.disgorge/`` that only the owner may read (mode 0600; the folder itself is 0700)."""

log = logging.getLogger(__name__)


@dataclass
class Deletion:
    """What completing an erasure deleted: the weights of models that saw the records (``purged``), those kept
    on request (``kept``), and whether erased bytes may still sit in the ledger file (``pending``: a reader blocked
    the checkpoint; the next command finishes it)."""

    purged: list[str] = field(default_factory=list)
    kept: list[str] = field(default_factory=list)
    pending: bool = False


def permission_problems(root: Path) -> list[str]:
    """Files of a workspace's ``.disgorge/`` that others may read or write (it should be 0700, its files 0600)."""
    state = Path(root) / STATE_DIR
    problems = []
    for path in [state, *(state / name for name in PRIVATE_FILES)]:
        if path.exists() and stat.S_IMODE(path.stat().st_mode) & 0o077:
            problems.append(f"{path} is mode {stat.S_IMODE(path.stat().st_mode):o}; only its owner should "
                            f"read it ({'0700' if path == state else '0600'})")
    return problems


def secure_permissions(root: Path) -> None:
    """Set ``.disgorge/`` to 0700 and its files to 0600, whatever the umask was when they were made."""
    state = Path(root) / STATE_DIR
    os.chmod(state, 0o700)
    for name in PRIVATE_FILES:
        path = state / name
        if path.exists() and not path.is_symlink():
            os.chmod(path, 0o600)


class Workspace:
    """A folder holding ``.disgorge/`` (ledger and key), ``models/<id>/`` and ``reports/<request>/``."""

    def __init__(self, root: Path, ledger: Ledger) -> None:
        self.root = Path(root)
        self.ledger = ledger
        self.models_dir = self.root / "models"
        self.reports_dir = self.root / "reports"
        self._lock = FileLock(str(self.root / STATE_DIR / LOCK), mode=0o600)
        self.device: str | None = None
        """Where this session's models train and run (``auto``, ``cpu``, ``cuda``, ``cuda:N``, ``mps``), over any
        recipe's ``train.device``; None: each recipe's own (``auto`` by default)."""

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
        state.mkdir(parents=True, exist_ok=True, mode=0o700)
        os.chmod(state, 0o700)
        (root / "models").mkdir(exist_ok=True)
        (root / "reports").mkdir(exist_ok=True)
        key_path = state / "secret"
        if not key_path.exists():
            atomic_write_bytes(key_path, secrets.token_bytes(32), mode=0o600)
        if not (state / SIGNING_KEY).exists():
            atomic_write_bytes(state / SIGNING_KEY, secrets.token_bytes(SIGNING_KEY_BYTES), mode=0o600)
        os.close(os.open(state / "ledger.sqlite", os.O_CREAT | os.O_WRONLY, 0o600))  # SQLite keeps its mode
        ws = cls.open(root, _creating=True)
        secure_permissions(root)
        return ws

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
        key = read_regular(key_path, "workspace key")
        if len(key) < 16:
            raise IntegrityError(f"workspace key {key_path} is truncated; restore it from a backup")
        if stat.S_IMODE(key_path.stat().st_mode) & 0o077:
            log.warning("workspace key %s can be read by other users (mode %o); run `chmod 600 %s` or "
                        "`disgorge doctor --repair`", key_path, stat.S_IMODE(key_path.stat().st_mode), key_path)
        for folder in ("models", "reports"):
            if (root / folder).is_symlink():
                raise IntegrityError(f"{root / folder} is a symbolic link; a workspace's folders must be real "
                                     "folders inside it. Replace the link with the folder")
        ws = cls(root, Ledger(db, key))
        ws.models_dir.mkdir(exist_ok=True)
        ws.reports_dir.mkdir(exist_ok=True)
        return ws

    def close(self) -> None:
        """Close the ledger."""
        self.ledger.close()

    def __enter__(self) -> Workspace:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    # -- one writer at a time -------------------------------------------------------------------------
    @contextmanager
    def writing(self) -> Iterator[Workspace]:
        """Hold the workspace's write lock: commands that change the workspace run one after the other (a second
        one waits), so none reads a state that another is about to change. On entry it finishes what an earlier
        command left undone: deletions a crash or a reader interrupted, and model folders no ledger row names."""
        outermost = not self._lock.is_locked
        try:
            self._lock.acquire(timeout=0)
        except Timeout:
            log.warning("another disgorge command is changing %s; waiting for it to finish", self.root)
            self._lock.acquire()
        try:
            if outermost:
                self.finish_pending()
                self.remove_orphans()
            yield self
        finally:
            self._lock.release()

    def finish_pending(self) -> Deletion:
        """Complete deletions an earlier command could not finish: weights of models that saw erased records (not
        kept on request) and a checkpoint a reader blocked."""
        deletion = Deletion(purged=self.delete_weights(self.ledger.purge_due(keep=self.kept_superseded())))
        if self.ledger.checkpoint_pending:
            deletion.pending = not self.ledger.checkpoint()
        return deletion

    def remove_orphans(self) -> list[str]:
        """Delete model folders that no ledger row names (left by a command killed between writing a model and
        committing it); only safe under :meth:`writing`, when no other command is mid-write."""
        removed = self.orphans()
        for name in removed:
            shutil.rmtree(self.models_dir / name, ignore_errors=True)
        if removed:
            log.info("removed %d model folder(s) never committed: %s", len(removed), ", ".join(removed))
        return removed

    def orphans(self) -> list[str]:
        """Model folders no ledger row names (what :meth:`remove_orphans` would delete)."""
        known = {m.id for m in self.ledger.models()}
        return [f.name for f in [*self.models_dir.glob(".tmp-*"), *store.model_folders(self.models_dir)]
                if f.name not in known]

    # -- erasure completion, purge and retirement ---------------------------------------------------------
    def kept_superseded(self) -> list[str]:
        """Ids of superseded models whose weights the user kept (``--keep-superseded``)."""
        return json.loads(self.ledger.get_meta(KEEP_SUPERSEDED, "[]") or "[]")

    def complete_erasure(self, *, keep_superseded: bool = False) -> Deletion:
        """After records are erased: delete the weights of every model out of service that saw them (unless
        ``keep_superseded``, which records them as kept), then fold the WAL into the ledger file so the erased
        bytes leave the disk. ``pending`` says whether a reader blocked that last step."""
        due = self.ledger.purge_due(keep=self.kept_superseded())
        deletion = Deletion()
        if keep_superseded:
            deletion.kept = [m.id for m in due]
            self.ledger.set_meta(KEEP_SUPERSEDED, json.dumps(sorted({*self.kept_superseded(), *deletion.kept})))
        else:
            deletion.purged = self.delete_weights(due)
        deletion.pending = not self.ledger.checkpoint()
        if deletion.pending:
            log.warning("erased logically; physical deletion is pending because another process holds the ledger "
                        "open; the next disgorge command on this workspace finishes it")
        return deletion

    def delete_weights(self, rows: Iterable[ModelRow]) -> list[str]:
        """Delete the weights of these models (card, recipe, sha256 and lineage stay) and drop training content
        (a vocabulary) from their facts; returns their ids."""
        done = []
        for row in rows:
            store.delete_weights(self.models_dir, row.id, CONTENT_INFO_KEYS)
            self.ledger.mark_weights_deleted(row.id, CONTENT_INFO_KEYS)
            done.append(row.id)
        if done:
            log.info("deleted the weights of %s", ", ".join(done))
        return done

    def purge(self) -> Deletion:
        """Delete the weights of every model out of service (superseded or retired, kept ones included) and finish
        pending deletions."""
        deletion = self.finish_pending()
        rows = [m for m in self.ledger.models() if m.status != "active" and m.weights_deleted_at is None]
        deletion.purged += self.delete_weights(rows)
        self.ledger.set_meta(KEEP_SUPERSEDED, "[]")
        deletion.pending = not self.ledger.checkpoint()
        return deletion

    def retire(self, model_id: str) -> ModelRow:
        """Take a model out of service for good: it is no longer unlearned or used, and its weights are deleted."""
        row = self.ledger.model(model_id)
        if row.status == "retired":
            raise InvalidRequest(f"model {model_id} is already retired")
        self.ledger.set_model_status(model_id, "retired")
        self.delete_weights([row])
        return self.ledger.model(model_id)

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
        """The records with these ids as tensors for ``task``, with each record's source name and attributes."""
        records = self.ledger.records(ids)
        data = task.dataset(records)
        return data.with_attributes(records) if len(data) == len(records) else data

    def test_ids(self) -> BitMap:
        """Ids of the live held-out (test split) records."""
        return self.ledger.record_ids(split="test", states=("active", "held"))

    def training_ids(self, recipe: Recipe) -> BitMap:
        """Ids of the active training records the recipe's data selector picks."""
        return self.ledger.record_ids(sources=list(recipe.data.sources) or None,
                                      exclude_sources=list(recipe.data.exclude_sources), split="train")

    def select(self, *, sources: Sequence[str] = (), records: Sequence[int] = (),
               random_fraction: float | None = None, seed: int = 0, include_test: bool = False) -> BitMap:
        """Record ids named by sources, explicit ids, or a random share of the live training records.

        The held-out records (split ``test``) are what verification measures against, so they are only selected
        with ``include_test``: a source gives its training records (its held-out ones stay, and a source holding
        nothing else is refused), and explicit ids of held-out records are refused.
        """
        from .spec import MAX_SEED

        if not sources and not records and random_fraction is None:
            raise InvalidRequest("name what to forget: --source NAME, --records IDS or --random FRACTION")
        if isinstance(seed, bool) or not isinstance(seed, int) or not 0 <= seed <= MAX_SEED:
            raise InvalidRequest(f"--seed must be an integer from 0 to {MAX_SEED} (2**32 - 1), got {seed}")
        live = ("active", "held")
        ids = BitMap()
        for name in sources:
            found = self.ledger.record_ids(sources=[name], split=None, states=live)
            if not found:
                raise InvalidRequest(f"source {name!r} has no records left to forget (already erased?)")
            if not include_test:
                held_out = found & self.ledger.record_ids(sources=[name], split="test", states=live)
                found -= held_out
                if not found:
                    raise InvalidRequest(f"source {name!r} holds only held-out (split test) records; pass "
                                         "--include-test to forget them")
                if held_out:
                    log.info("source %r: its %d held-out (split test) record(s) stay; pass --include-test to forget "
                             "them too", name, len(held_out))
            ids |= found
        if records:
            beyond = [i for i in records if not 0 <= int(i) < 2**32]  # ids live in 32-bit bitmaps
            if beyond:
                raise NotFound(f"record id {beyond[0]} does not exist in this workspace (record ids are below 2**32)")
            chosen = self.ledger.check_ids(records)
            held_out = chosen & self.ledger.record_ids(split="test", states=live) if not include_test else BitMap()
            if held_out:
                shown = ", ".join(map(str, list(held_out)[:5])) + (" ..." if len(held_out) > 5 else "")
                raise InvalidRequest(f"{len(held_out)} of the record ids are held-out (split test) records ({shown}); "
                                     "pass --include-test to forget them")
            ids |= chosen
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
        """Rebuild a model from its recipe and load its weights, checking their recorded sha256, on the session's
        device (:meth:`device_for`)."""
        from .tasks import get_task
        from .training.trainer import build_network

        row = self.ledger.model(model_id)
        if row.weights_deleted_at is not None:
            raise InvalidRequest(f"model {model_id}'s weights were deleted on {row.weights_deleted_at} ({row.status}"
                                 "; it saw erased records or was retired); its card, recipe and lineage remain")
        task = get_task(row.task)
        recipe = self.recipe_of(row)
        model = build_network(task, recipe, row.info)
        state = store.read_weights(self.models_dir, model_id, row.weights_sha256)
        try:
            model.load_state_dict(state)
        except RuntimeError as exc:
            raise IntegrityError(f"model {model_id}: weights do not fit its recipe's network ({exc})") from None
        model.to(self.device_for(recipe)).eval()
        return model, row, task

    def device_for(self, recipe: Recipe) -> Any:
        """The torch device a model of ``recipe`` trains and runs on in this session: :attr:`device` when set, else
        the recipe's ``train.device``, resolved on this machine (``auto``: a GPU if there is one)."""
        from . import devices

        return devices.resolve(self.device or recipe.train.device)

    def model_file(self, model_id: str, name: str, sha256: str) -> bytes:
        """One file of a model's folder (a slice checkpoint), checked against the sha256 its ledger row records."""
        return store.read_checked(self.models_dir, model_id, name, sha256)

    def save_model(self, *, model: nn.Module, recipe: Recipe, records: BitMap, info: dict[str, Any], kind: str,
                   seconds: float, parent: str | None = None, method: str | None = None,
                   request_id: int | None = None, metrics: dict[str, Any] | None = None,
                   files: dict[str, bytes] | None = None) -> ModelRow:
        """Write a model folder (weights, recipe, config, card, and ``files``: a sharded model's slice checkpoints)
        atomically and return its ledger row, not yet inserted: the caller commits it (alone, or with an erasure
        request) or removes the folder."""
        model_id = self.ledger.reserve_model_id()
        weights, digest = store.serialize_weights(model)
        recipe_toml = recipe.to_toml()
        card = model_card(model_id=model_id, task=recipe.task, family=recipe.model.family, parent=parent, kind=kind,
                          method=method, sources=self.sources_of(records), n_records=len(records),
                          recipe_toml=recipe_toml, weights_sha256=digest, request_id=request_id, metrics=metrics,
                          privacy=info.get("privacy"), imported=info.get("imported"), base=info["data"].get("base"))
        config = {"id": model_id, "task": recipe.task, "family": recipe.model.family, "data": info["data"],
                  "parent": parent, "kind": kind, "method": method, "weights_sha256": digest}
        store.write_model_dir(self.models_dir, model_id, {
            store.WEIGHTS: weights,
            "recipe.toml": recipe_toml.encode(),
            "config.json": (json.dumps(config, indent=2) + "\n").encode(),
            "records.roaring": bm.dumps(records),
            "README.md": card.encode(),
            **(files or {}),
        })
        return ModelRow(id=model_id, parent=parent, kind=kind, status="active", task=recipe.task,
                        recipe=recipe_toml, recipe_sha256=recipe.sha256, weights_sha256=digest, records=records,
                        method=method, request_id=request_id, seconds=seconds, info=info, created_at=now())

    def model_file_problems(self, row: ModelRow) -> list[str]:
        """Where a model's folder disagrees with its ledger row: weights or slice checkpoints missing, not a regular
        file or not matching their sha256 (or present after deletion), ``records.roaring`` or ``config.json`` naming
        other records or weights."""
        folder = self.model_dir(row.id)
        if not folder.is_dir():
            return [f"model {row.id}: its folder {folder} is missing"]
        problems = []
        weights = folder / store.WEIGHTS
        if row.weights_deleted_at is not None:
            for left in sorted(folder.glob("*.safetensors")):  # the weights, or a sharded model's checkpoints
                problems.append(f"model {row.id}: its weights were recorded as deleted but {left} exists")
        else:
            try:
                if sha256_bytes(read_regular(weights, f"model {row.id}'s weights")) != row.weights_sha256:
                    problems.append(f"model {row.id}: {weights} does not match the sha256 in the ledger")
            except DisgorgeError as exc:
                problems.append(f"model {row.id}: {exc}")
            kept = {**row.info.get("sharding", {}).get("checkpoints", {}), **row.info.get("checkpoints", {}).get(
                "files", {})}
            for name, digest in kept.items():
                try:
                    self.model_file(row.id, name, digest)
                except DisgorgeError as exc:
                    problems.append(str(exc))
        try:
            if bm.loads(read_regular(folder / "records.roaring", "lineage bitmap")) != row.records:
                problems.append(f"model {row.id}: records.roaring names other records than the ledger does")
            config = json.loads(read_regular(folder / "config.json", "model config"))
            if config.get("weights_sha256") != row.weights_sha256:
                problems.append(f"model {row.id}: config.json names other weights than the ledger does")
        except (DisgorgeError, ValueError) as exc:
            problems.append(f"model {row.id}: {exc}")
        return problems

    def check_untampered(self, rows: Iterable[ModelRow] = ()) -> None:
        """Refuse to go on if any model or request row was changed outside disgorge (the HMAC chain) or the folder
        of a model in ``rows`` disagrees with its row; commands that erase call it before relying on them."""
        problems = self.ledger.chain_problems()
        for row in rows:
            problems += self.model_file_problems(row)
        if problems:
            more = f" (and {len(problems) - 1} more)" if len(problems) > 1 else ""
            raise IntegrityError(f"{problems[0]}{more}; nothing was changed. See `disgorge doctor`, and restore the "
                                 "workspace from a backup")

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
            by = models.setdefault(m.kind, {})
            by[m.status] = by.get(m.status, 0) + 1
            if m.weights_deleted_at is not None:
                by["weights_deleted"] = by.get("weights_deleted", 0) + 1
        requests = self.ledger.requests()
        disk = sum(f.stat().st_size for folder in (self.root / STATE_DIR, self.models_dir, self.reports_dir)
                   for f in folder.rglob("*") if f.is_file() and not f.is_symlink())
        return {"workspace": str(self.root), "schema": self.ledger.schema_version, "scenario": self.scenario,
                "sources": len(self.ledger.sources()),
                "records": {state: {"total": sum(by.values()), **by} for state, by in sorted(records.items())},
                "models": {kind: {"total": sum(v for k, v in by.items() if k != "weights_deleted"), **by}
                           for kind, by in sorted(models.items())},
                "requests": {"total": len(requests), "held": sum(r.status == "held" for r in requests),
                             "erased": sum(r.status == "erased" for r in requests)},
                "pending_erasures": [r.id for r in requests if r.status == "held"],
                "tombstones": self.ledger.tombstone_count(), "disk_bytes": disk,
                "deletion_pending": self.ledger.checkpoint_pending}

    def report_dir(self, request_id: int, *parts: str) -> Path:
        """Folder of an erasure request's reports (or a path inside it), checked to contain no symbolic link."""
        return check_within(self.root, self.reports_dir.joinpath(f"r{request_id}", *parts))

    def __repr__(self) -> str:
        return f"Workspace({os.fspath(self.root)!r})"
