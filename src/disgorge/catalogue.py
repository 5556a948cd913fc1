"""The method catalogue: what ``disgorge methods`` shows, read from ``methods/catalogue.json`` without importing
torch (the methods themselves import it). ``python -m disgorge.methods.registry`` rewrites the file from the
registry; ``tests/test_methods.py`` fails when the file and the registry disagree."""

from __future__ import annotations

import json
from importlib import resources
from typing import Any

from .errors import NotFound

FILE = "methods/catalogue.json"


def load() -> dict[str, dict[str, Any]]:
    """Every method's description (family, summary, paper, needs, doc, options), by name."""
    return json.loads(resources.files("disgorge").joinpath(FILE).read_text(encoding="utf-8"))


def describe(name: str) -> dict[str, Any]:
    """One method's description; a :class:`NotFound` naming close matches otherwise."""
    import difflib

    methods = load()
    if name not in methods:
        close = difflib.get_close_matches(name, methods, n=3)
        hint = f" (did you mean {', '.join(close)}?)" if close else ""
        raise NotFound(f"unknown method {name!r}{hint}; see `disgorge methods`")
    return methods[name]


def render(methods: dict[str, dict[str, Any]]) -> str:
    """The catalogue file's text (sorted keys, one trailing newline), so equal catalogues give equal files."""
    return json.dumps(methods, indent=1, sort_keys=True) + "\n"
