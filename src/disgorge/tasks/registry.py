"""The one registry of tasks (domain adapters), found by name."""

from __future__ import annotations

from .._registry import Registry

TASKS: Registry = Registry("task", "known tasks: classification, causal_lm, text_classification")
