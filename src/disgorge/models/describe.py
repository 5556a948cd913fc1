"""What ``disgorge families`` lists: every model family a recipe's ``[model] family`` can name, by task, with each
parameter's type and default (read from the families' config dataclasses, so the list cannot drift from them)."""

from __future__ import annotations

from dataclasses import MISSING, fields
from typing import Any

from .families import MODELS
from .language import LM_FAMILIES
from .text import TEXT_FAMILIES


def _default(field: Any) -> Any:
    """A field's default as plain data (tuples as lists; None when it has none)."""
    if field.default is not MISSING:
        value = field.default
    elif field.default_factory is not MISSING:
        value = field.default_factory()
    else:
        return None
    return list(value) if isinstance(value, tuple) else value


def describe_families() -> list[dict[str, Any]]:
    """One entry per family: ``task``, ``family``, ``summary`` and ``params`` (name, type, default), classifiers
    first."""
    out = []
    for task, registry in (("classification", MODELS), ("causal_lm", LM_FAMILIES),
                           ("text_classification", TEXT_FAMILIES)):
        for name in registry.names():
            entry = registry.get(name)
            config = getattr(entry, "config", entry)  # classifier families wrap their config; LM families are one
            summary = getattr(entry, "doc", None) or (config.__doc__ or "").strip().splitlines()[0]
            params = [{"name": f.name, "type": str(f.type), "default": _default(f)} for f in fields(config)]
            out.append({"task": task, "family": name, "summary": summary, "params": params})
    return out
