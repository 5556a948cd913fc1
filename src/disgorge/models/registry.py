"""The one registry of classifier model families, found by the name a recipe's ``[model] family`` gives."""

from __future__ import annotations

from .._registry import Registry

MODELS: Registry = Registry("model family", "known model families: linear, mlp, cnn")
