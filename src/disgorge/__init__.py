"""disgorge: trace, audit, unlearn and verify what a trained model learned from which data.

The public names below load on first use (PEP 562), so ``import disgorge`` and commands that only read the ledger
start without importing torch or scikit-learn.
"""

from __future__ import annotations

import importlib
from typing import Any

__version__ = "0.1.0"

_EXPORTS = {
    "ForgetResult": "api", "erase": "api", "evaluate_model": "api", "forget": "api", "ingest_file": "api",
    "ingest_scenario": "api", "train": "api", "verify": "api", "verify_strong": "api", "export_model": "api",
    "import_model": "api",
    "unlearn": "direct",
    "DisgorgeError": "errors",
    "Thresholds": "evidence.judge",
    "METHODS": "methods", "Method": "methods", "MethodConfig": "methods", "UnlearnRequest": "methods",
    "get_method": "methods",
    "Recipe": "spec",
    "Workspace": "workspace",
}


def __getattr__(name: str) -> Any:
    module = _EXPORTS.get(name)
    if module is None:
        raise AttributeError(f"module 'disgorge' has no attribute {name!r}")
    value = getattr(importlib.import_module(f".{module}", __name__), name)
    globals()[name] = value
    return value


def __dir__() -> list[str]:
    return sorted([*globals(), *_EXPORTS])


__all__ = [
    "METHODS",
    "DisgorgeError",
    "ForgetResult",
    "Method",
    "MethodConfig",
    "Recipe",
    "Thresholds",
    "UnlearnRequest",
    "Workspace",
    "__version__",
    "erase",
    "evaluate_model",
    "export_model",
    "forget",
    "get_method",
    "import_model",
    "ingest_file",
    "ingest_scenario",
    "train",
    "unlearn",
    "verify",
    "verify_strong",
]
