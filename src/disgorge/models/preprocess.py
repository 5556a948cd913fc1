"""Input preprocessing that travels with a model: a recipe's ``[data] transform`` and ``shape``.

The statistics are fitted on the training records only (scikit-learn's scalers do the fitting), kept in the model's
data facts (``info["data"]["transform"]``) and inside the network itself as buffers of a first layer, so that every
path that runs the model (training, unlearning, verification, audits, an exported folder) applies the same transform:
none can forget it. A model without preprocessing has no such layer, so its weights and outputs are unchanged.
"""

from __future__ import annotations

import math
from typing import Any

import numpy as np
import torch
from sklearn.preprocessing import MinMaxScaler, StandardScaler
from torch import nn

from ..errors import DisgorgeError
from ..spec import parse_transform


class PreprocessError(DisgorgeError):
    """Preprocessing that does not fit the data (a ``shape`` of another size than the inputs)."""


def fit_transform(transform: str, shape: tuple[int, ...] | list[int], x: np.ndarray) -> dict[str, Any] | None:
    """The data facts of ``[data] transform``/``shape`` fitted on the training inputs ``x`` (``[N, ...]``):
    ``kind``, ``input_shape``, ``shape`` (the network's), and for fitted kinds ``shift``/``scale`` per feature
    (lists, flattened); None when the recipe asks for neither."""
    kind, divisor = parse_transform(transform)
    if not kind and not shape:
        return None
    input_shape = [int(d) for d in x.shape[1:]]
    shape = [int(d) for d in shape] or input_shape
    if math.prod(shape) != math.prod(input_shape):
        raise PreprocessError(f"data.shape {shape} holds {math.prod(shape)} values but each input has "
                              f"{math.prod(input_shape)} (shape {input_shape}); give a shape of the same size")
    facts: dict[str, Any] = {"kind": transform, "input_shape": input_shape, "shape": shape}
    if kind == "scale":
        facts.update(shift=[0.0], scale=[float(divisor)])
    elif kind:
        flat = np.asarray(x, dtype=np.float64).reshape(len(x), -1)
        if kind == "standardize":
            fitted = StandardScaler().fit(flat)
            shift, scale = fitted.mean_, fitted.scale_
        else:
            fitted = MinMaxScaler().fit(flat)
            # X * scale_ + min_ = (X - data_min_) / range, with constant features left unscaled (range 1).
            scale = 1.0 / fitted.scale_
            shift = -fitted.min_ * scale
        facts.update(shift=[float(v) for v in shift], scale=[float(v) for v in scale])
    return facts


def refit(facts: dict[str, Any] | None, x: np.ndarray) -> dict[str, Any] | None:
    """The same preprocessing fitted again on other inputs (the records a model keeps after an erasure)."""
    if facts is None or not len(x):
        return facts
    return fit_transform(facts["kind"], facts["shape"], x)


class Preprocess(nn.Module):
    """``(x - shift) / scale`` reshaped to the network's input shape; the statistics are buffers, never trained."""

    def __init__(self, facts: dict[str, Any]) -> None:
        super().__init__()
        self.shape = tuple(facts["shape"])
        for name in ("shift", "scale"):
            values = torch.tensor(facts.get(name, [0.0 if name == "shift" else 1.0]), dtype=torch.float32)
            self.register_buffer(name, values if values.numel() == 1 else values.reshape(facts["input_shape"]))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return ((x - self.shift) / self.scale).reshape(x.shape[0], *self.shape)

    def load_facts(self, facts: dict[str, Any]) -> None:
        """Replace the statistics in place (after a refit)."""
        fresh = Preprocess(facts)
        with torch.no_grad():
            for name in ("shift", "scale"):
                getattr(self, name).copy_(getattr(fresh, name).to(getattr(self, name).device))


class Preprocessed(nn.Module):
    """A network behind its preprocessing: ``net(transform(x))``. State dict keys ``transform.*`` and ``net.*``."""

    def __init__(self, transform: Preprocess, net: nn.Module) -> None:
        super().__init__()
        self.transform = transform
        self.net = net

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.net(self.transform(x))


def wrap(net: nn.Module, facts: dict[str, Any] | None) -> nn.Module:
    """``net`` behind the preprocessing ``facts`` describe (``net`` itself when there are none)."""
    return net if facts is None else Preprocessed(Preprocess(facts), net)


def network_shape(info: dict[str, Any]) -> tuple[int, ...]:
    """The input shape the network behind the preprocessing is built for."""
    facts = info.get("transform")
    return tuple(facts["shape"] if facts else info["input_shape"])
