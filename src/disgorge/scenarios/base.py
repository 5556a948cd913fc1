"""Scenarios: bundled, reproducible cases with real data, a default recipe and a known effect to remove."""

from __future__ import annotations

from abc import ABC, abstractmethod
from dataclasses import dataclass, field
from typing import Any, ClassVar

from pyroaring import BitMap
from torch import nn

from ..ledger import NewRecord
from ..tasks import RecordDataset, Task
from ..train.recipe import Recipe


@dataclass
class SourceData:
    """One source of a scenario and its records."""

    name: str
    license: str
    origin: str
    records: list[NewRecord] = field(default_factory=list)
    consent: str = "granted"


class Scenario(ABC):
    """A bundled case: its sources, a default recipe, the default erasure request and an effect probe."""

    name: ClassVar[str]
    description: ClassVar[str]
    effect_name: ClassVar[str | None] = None
    effect_help: ClassVar[str] = ""
    bench_methods: ClassVar[tuple[str, ...] | None] = None  # the methods `disgorge bench` runs here (None: all)
    strong_test: ClassVar[bool] = True  # whether the bench runs the per-example test (K retrainings) here

    @abstractmethod
    def sources(self) -> list[SourceData]:
        """The scenario's data, deterministically generated or read from an installed package."""

    @abstractmethod
    def recipe(self) -> Recipe:
        """The default training recipe."""

    @abstractmethod
    def forget_selector(self) -> dict[str, Any]:
        """The default erasure request: ``{"sources": [...]}`` or ``{"records": [...]}``."""

    def forget_ids(self, ws: Any, seed: int = 0) -> BitMap:
        """Record ids of the default erasure request in workspace ``ws`` (``seed`` for random requests)."""
        from ..erasure import select

        return select(ws, **self.forget_selector(), seed=seed)

    def effect(self, model: nn.Module, task: Task, test: RecordDataset) -> float | None:
        """The scenario's effect probe on held-out data (percent), or None when it has none."""
        return None
