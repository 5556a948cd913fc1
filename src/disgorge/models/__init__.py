"""Model families, the safetensors model store and model cards."""

from .._registry import Registry

MODELS: Registry = Registry("model family", "known model families: linear, mlp, cnn")

from . import families  # noqa: E402,F401

__all__ = ["MODELS"]
