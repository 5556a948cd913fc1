"""The one registry of bundled scenarios, found by name."""

from __future__ import annotations

from .._registry import Registry

SCENARIOS: Registry = Registry("scenario", "see `disgorge scenarios`")
