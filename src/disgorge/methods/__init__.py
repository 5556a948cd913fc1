"""Unlearning methods, one file each, found by name in one registry.

Every module of this package whose name does not start with ``_`` (``base`` and ``registry`` aside) is a method
file and is imported here, so a new method needs no import line; a method file that registers no method, or a
method class left unregistered, stops the import with an error instead of silently missing from the registry.
"""

from __future__ import annotations

import importlib
import inspect
import pkgutil

from .base import (
    BudgetConfig,
    ConfigError,
    FineTuneConfig,
    GuardedConfig,
    Method,
    MethodConfig,
    UnlearnRequest,
    option,
)
from .registry import METHODS, get_method, register

_NOT_METHODS = {"base", "registry"}


def discover(package: str, path: list[str]) -> None:
    """Import every method module of ``package`` (found on ``path``) and check each registers what it defines."""
    for info in pkgutil.iter_modules(path):
        if info.name.startswith("_") or info.name in _NOT_METHODS:
            continue
        module = importlib.import_module(f"{package}.{info.name}")
        defined = [cls for _, cls in inspect.getmembers(module, inspect.isclass)
                   if issubclass(cls, Method) and cls.__module__ == module.__name__ and not inspect.isabstract(cls)]
        if not defined:
            raise ImportError(f"{module.__name__} defines no method; helpers belong in a module named _{info.name}")
        for cls in defined:
            if getattr(cls, "name", None) not in METHODS or METHODS.get(cls.name) is not cls:
                raise ImportError(f"method class {cls.__qualname__} in {module.__name__} is not registered; "
                                  "decorate it with @register")


discover(__name__, list(__path__))

__all__ = ["METHODS", "BudgetConfig", "ConfigError", "FineTuneConfig", "GuardedConfig", "Method", "MethodConfig",
           "UnlearnRequest", "discover", "get_method", "option", "register"]
