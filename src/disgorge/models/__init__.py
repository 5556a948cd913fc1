"""Model families, the safetensors model store and model cards."""

from . import families  # noqa: F401  (registers linear, mlp and cnn)
from .registry import MODELS

__all__ = ["MODELS"]
