"""Where tensors live: one device decision for a run, and the moves that follow a model.

The rule every layer follows: models are built and seeded on the CPU (so a recipe's initial weights are the same
everywhere) and then moved to the chosen device; data is moved to the device of the model it meets, never the other
way; random draws come from CPU generators and are moved to where they are used (so a seed means the same on every
device); results leave for numpy through ``.cpu()``. On the CPU every move is a no-op, so CPU runs are bit-identical
to runs that never heard of devices.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import torch
from torch import nn

from .errors import DisgorgeError
from .spec import check_device


class DeviceError(DisgorgeError):
    """A device that is not present on this machine."""


def resolve(name: str | None = "auto") -> torch.device:
    """The torch device ``name`` stands for on this machine: ``auto`` (or None) is the first GPU if there is one
    (CUDA, then Apple's MPS), else the CPU; a device this machine lacks is refused in one line."""
    name = check_device(name or "auto")
    if name == "auto":
        if torch.cuda.is_available():
            return torch.device("cuda")
        if _mps_available():
            return torch.device("mps")
        return torch.device("cpu")
    if name.startswith("cuda"):
        if not torch.cuda.is_available():
            raise DeviceError(f"device {name!r} asked for, but this machine has no CUDA GPU that torch "
                              f"{torch.__version__} can use; use --device cpu (or auto)")
        device = torch.device(name)
        if device.index is not None and device.index >= torch.cuda.device_count():
            raise DeviceError(f"device {name!r} asked for, but this machine has {torch.cuda.device_count()} CUDA "
                              "GPU(s)")
        return device
    if name == "mps" and not _mps_available():
        raise DeviceError("device 'mps' asked for, but Apple's Metal backend is not available here; use --device cpu")
    return torch.device(name)


def _mps_available() -> bool:
    backend = getattr(torch.backends, "mps", None)
    return bool(backend is not None and backend.is_available())


def of(model: nn.Module) -> torch.device:
    """The device of a model's first parameter or buffer (the CPU for a model without either)."""
    for tensor in (*model.parameters(), *model.buffers()):
        return tensor.device
    return torch.device("cpu")


def move(batch: Mapping[str, Any], device: torch.device) -> dict[str, Any]:
    """The batch with every tensor on ``device`` (other values, such as texts, kept); a no-op where they are."""
    return {k: v.to(device, non_blocking=True) if isinstance(v, torch.Tensor) else v for k, v in batch.items()}


def to_model(model: nn.Module, batch: Mapping[str, Any]) -> dict[str, Any]:
    """The batch on the model's device."""
    return move(batch, of(model))


def numpy(tensor: torch.Tensor) -> Any:
    """A tensor as a numpy array, from wherever it lives."""
    return tensor.detach().cpu().numpy()
