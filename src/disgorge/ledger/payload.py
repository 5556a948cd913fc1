"""Record payloads: a dict of named numpy arrays, stored as safetensors bytes (safe to load, deterministic)."""

from __future__ import annotations

import numpy as np
from safetensors.numpy import load, save


def encode(fields: dict[str, np.ndarray]) -> bytes:
    """Canonical bytes of a record's content; equal content gives equal bytes."""
    return save({k: np.ascontiguousarray(v) for k, v in fields.items()})


def decode(data: bytes) -> dict[str, np.ndarray]:
    """Inverse of :func:`encode`."""
    return load(data)
