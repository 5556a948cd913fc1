"""Small network families for classification: ``linear``, ``mlp`` and ``cnn``."""

from __future__ import annotations

import math
from dataclasses import dataclass, field, fields
from typing import Any

import torch
from torch import nn

from ..errors import DisgorgeError
from .registry import MODELS


class ModelConfigError(DisgorgeError):
    """Model parameters in a recipe that a family cannot use."""


@dataclass(frozen=True)
class Family:
    """A model family: its parameter dataclass and a builder."""

    name: str
    config: type
    doc: str

    def build(self, params: dict[str, Any], input_shape: tuple[int, ...], num_classes: int) -> nn.Module:
        """Validate ``params`` and build the network."""
        return family_config(self.name, self.config, params).build(tuple(input_shape), num_classes)


def family_config(name: str, config: type, params: dict[str, Any]) -> Any:
    """``config(**params)`` for a recipe's ``[model]`` table, unknown or ill-typed parameters refused by name."""
    known = {f.name for f in fields(config)}
    unknown = sorted(set(params) - known)
    if unknown:
        raise ModelConfigError(f"model family {name!r} has no parameter(s) {', '.join(unknown)}"
                               f" (known: {', '.join(sorted(known)) or 'none'})")
    try:
        return config(**params)
    except TypeError as exc:
        raise ModelConfigError(f"model family {name!r}: {exc}") from None


def _ints(name: str, values: Any) -> tuple[int, ...]:
    if not isinstance(values, (list, tuple)) or not all(isinstance(v, int) and v > 0 for v in values):
        raise ModelConfigError(f"model.{name} must be a list of positive integers, got {values!r}")
    return tuple(values)


def _dropout(p: Any) -> None:
    if not isinstance(p, (int, float)) or not 0 <= p < 1:
        raise ModelConfigError(f"model.dropout must be in [0, 1), got {p!r}")


@dataclass(frozen=True)
class LinearConfig:
    """Multinomial logistic regression (one linear layer on the flattened input)."""

    def build(self, input_shape: tuple[int, ...], num_classes: int) -> nn.Module:
        """Build the network."""
        return nn.Sequential(nn.Flatten(), nn.Linear(math.prod(input_shape), num_classes))


@dataclass(frozen=True)
class MLPConfig:
    """Fully connected network on the flattened input."""

    hidden: tuple[int, ...] = field(default=(128,))
    dropout: float = 0.0

    def __post_init__(self) -> None:
        object.__setattr__(self, "hidden", _ints("hidden", self.hidden))
        _dropout(self.dropout)

    def build(self, input_shape: tuple[int, ...], num_classes: int) -> nn.Module:
        """Build the network."""
        layers: list[nn.Module] = [nn.Flatten()]
        width = math.prod(input_shape)
        for h in self.hidden:
            layers += [nn.Linear(width, h), nn.ReLU()]
            if self.dropout:
                layers.append(nn.Dropout(self.dropout))
            width = h
        layers.append(nn.Linear(width, num_classes))
        return nn.Sequential(*layers)


@dataclass(frozen=True)
class CNNConfig:
    """Small convolutional network: 3x3 conv + ReLU blocks, max-pooling after each, then a linear head."""

    channels: tuple[int, ...] = field(default=(16, 32))
    hidden: int = 64
    dropout: float = 0.0

    def __post_init__(self) -> None:
        object.__setattr__(self, "channels", _ints("channels", self.channels))
        if not isinstance(self.hidden, int) or self.hidden <= 0:
            raise ModelConfigError(f"model.hidden must be a positive integer, got {self.hidden!r}")
        _dropout(self.dropout)

    def build(self, input_shape: tuple[int, ...], num_classes: int) -> nn.Module:
        """Build the network (input ``(C, H, W)`` or ``(H, W)``)."""
        if len(input_shape) == 2:
            input_shape = (1, *input_shape)
        if len(input_shape) != 3:
            raise ModelConfigError(f"model family 'cnn' needs image inputs (C, H, W); got shape {input_shape}: give "
                                   "the recipe a [data] shape such as [1, 28, 28] for flat rows of images")
        shape = (int(input_shape[0]), int(input_shape[1]), int(input_shape[2]))
        c, h, w = shape
        layers: list[nn.Module] = []
        for out in self.channels:
            layers += [nn.Conv2d(c, out, 3, padding=1), nn.ReLU()]
            if min(h, w) >= 2:
                layers.append(nn.MaxPool2d(2))
                h, w = h // 2, w // 2
            c = out
        layers += [nn.Flatten(), nn.Linear(c * h * w, self.hidden), nn.ReLU()]
        if self.dropout:
            layers.append(nn.Dropout(self.dropout))
        layers.append(nn.Linear(self.hidden, num_classes))
        return Reshape(shape, nn.Sequential(*layers))


class Reshape(nn.Module):
    """Gives 2-D images a channel axis before the wrapped network."""

    def __init__(self, shape: tuple[int, int, int], net: nn.Module) -> None:
        super().__init__()
        self.shape = shape
        self.net = net

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.net(x.reshape(x.shape[0], *self.shape))


for _family in (Family("linear", LinearConfig, "logistic regression on flattened inputs"),
                Family("mlp", MLPConfig, "fully connected network (hidden = [sizes], dropout)"),
                Family("cnn", CNNConfig, "small CNN for images (channels = [sizes], hidden, dropout)")):
    MODELS.register(_family.name)(_family)
