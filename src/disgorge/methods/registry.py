"""The one registry of unlearning methods: CLI, API, recipes and benchmarks all look methods up here."""

from __future__ import annotations

from typing import Any

from .._registry import Registry
from .base import Method, MethodConfig

METHODS: Registry = Registry("method", "see `disgorge methods`")


def register(cls: type[Method]) -> type[Method]:
    """Class decorator: register a method under its ``name``."""
    for attr in ("name", "family", "summary", "paper"):
        if not getattr(cls, attr, None):
            raise TypeError(f"method class {cls.__name__} must define {attr!r}")
    if not issubclass(cls.Config, MethodConfig):
        raise TypeError(f"{cls.__name__}.Config must subclass MethodConfig")
    return METHODS.register(cls.name)(cls)


def get_method(name: str, **options: Any) -> Method:
    """An instance of method ``name`` configured with ``options`` (validated)."""
    return METHODS.get(name)(**options)
