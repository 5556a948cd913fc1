"""The model store: one immutable folder per model (safetensors weights, recipe copy, config, model card)."""

from __future__ import annotations

import json
import os
import shutil
import uuid
from pathlib import Path
from typing import TYPE_CHECKING

from .._io import atomic_write_bytes, fsync_dir, read_regular, sha256_bytes
from ..errors import DisgorgeError, IntegrityError, NotFound

if TYPE_CHECKING:
    import torch
    from torch import nn

WEIGHTS = "model.safetensors"


def serialize_weights(model: nn.Module) -> tuple[bytes, str]:
    """The safetensors bytes of a model's state dict and their SHA-256 (equal weights give equal bytes)."""
    from safetensors.torch import save as st_save  # torch loads only where weights are

    state = {k: v.detach().contiguous().cpu().clone() for k, v in model.state_dict().items()}
    data = st_save(state, metadata={"format": "pt"})
    return data, sha256_bytes(data)


def write_model_dir(models_dir: Path, model_id: str, files: dict[str, bytes]) -> Path:
    """Write ``files`` into ``models_dir/model_id`` atomically (temp folder + fsync + rename), read-only.

    The folder either appears complete or not at all.
    """
    final = models_dir / model_id
    if final.exists():
        raise IntegrityError(f"model folder {final} already exists; models are immutable")
    tmp = models_dir / f".tmp-{model_id}-{uuid.uuid4().hex[:8]}"
    tmp.mkdir(parents=True)
    try:
        for name, content in files.items():
            path = tmp / name
            with open(path, "wb") as fh:
                fh.write(content)
                fh.flush()
                os.fsync(fh.fileno())
            os.chmod(path, 0o444)
        fsync_dir(tmp)
        os.rename(tmp, final)
        fsync_dir(models_dir)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return final


def read_checked(models_dir: Path, model_id: str, name: str, expected_sha256: str) -> bytes:
    """The bytes of one file of a model's folder, after checking them against the SHA-256 the ledger records."""
    path = models_dir / model_id / name
    try:
        data = read_regular(path, f"model {model_id}'s file {name}")
    except NotFound:
        raise IntegrityError(f"model {model_id}: {path} is missing; restore it from a backup or retrain the "
                             "model") from None
    except DisgorgeError as exc:
        raise IntegrityError(str(exc)) from None
    if sha256_bytes(data) != expected_sha256:
        raise IntegrityError(f"model {model_id}: {name} does not match its recorded sha256 (tampered or corrupt);"
                             f" restore {path} from a backup or retrain with `disgorge train`")
    return data


def read_weights(models_dir: Path, model_id: str, expected_sha256: str) -> dict[str, torch.Tensor]:
    """Load a model's weights after checking them against the SHA-256 recorded in the ledger."""
    from safetensors.torch import load as st_load
    path = models_dir / model_id / WEIGHTS
    data = read_checked(models_dir, model_id, WEIGHTS, expected_sha256)
    try:
        return st_load(data)
    except Exception as exc:  # safetensors raises its own error types for malformed headers
        raise IntegrityError(f"model {model_id}: weights file {path} is not valid safetensors ({exc})") from None


def delete_weights(models_dir: Path, model_id: str, content_keys: tuple[str, ...] = ()) -> None:
    """Delete a model's weights (and any other safetensors file of it, such as slice checkpoints) and drop
    ``content_keys`` from the data facts of its ``config.json`` (the card, recipe and lineage bitmap stay). A missing
    weights file is fine: a crash may have come after its deletion."""
    folder = models_dir / model_id
    (folder / WEIGHTS).unlink(missing_ok=True)
    for extra in folder.glob("*.safetensors"):  # a sharded model's slice checkpoints hold what the weights held
        extra.unlink()
    config = folder / "config.json"
    if content_keys and config.is_file() and not config.is_symlink():
        data = json.loads(config.read_text(encoding="utf-8"))
        if any(k in data.get("data", {}) for k in content_keys):
            for key in content_keys:
                data["data"].pop(key, None)
            config.unlink()
            atomic_write_bytes(config, (json.dumps(data, indent=2) + "\n").encode(), mode=0o444)
    fsync_dir(folder)


def model_folders(models_dir: Path) -> list[Path]:
    """The committed-looking model folders (``m<n>``), not temp folders."""
    return sorted(p for p in models_dir.iterdir() if p.name.startswith("m") and p.name[1:].isdigit())
