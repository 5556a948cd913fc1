"""Scenarios: bundled, reproducible cases with real data, a default recipe and a known effect to remove."""

from __future__ import annotations

from abc import ABC, abstractmethod
from dataclasses import dataclass, field
from typing import Any, ClassVar

from pyroaring import BitMap

from ..evidence.probes import Probe
from ..ledger import NewRecord
from ..spec import Recipe
from ..workspace import Workspace


@dataclass
class SourceData:
    """One source of a scenario and its records."""

    name: str
    license: str
    origin: str
    records: list[NewRecord] = field(default_factory=list)
    consent: str = "granted"


class Scenario(ABC):
    """A bundled case: its sources, a default recipe, the default erasure request and its effect probes."""

    name: ClassVar[str]
    description: ClassVar[str]
    bench_methods: ClassVar[tuple[str, ...] | None] = None  # the methods `disgorge bench` runs here (None: all)
    strong_test: ClassVar[bool] = True  # whether the bench runs the per-example test (K retrainings) here
    purpose: ClassVar[str] = "privacy"  # why its default request erases the records: picks the decisive figures

    @abstractmethod
    def sources(self) -> list[SourceData]:
        """The scenario's data, deterministically generated or read from an installed package."""

    @abstractmethod
    def recipe(self) -> Recipe:
        """The default training recipe."""

    @abstractmethod
    def forget_selector(self) -> dict[str, Any]:
        """The default erasure request: ``{"sources": [...]}`` or ``{"records": [...]}``."""

    def forget_ids(self, ws: Workspace, seed: int = 0) -> BitMap:
        """Record ids of the default erasure request in workspace ``ws`` (``seed`` for random requests)."""
        return ws.select(**self.forget_selector(), seed=seed)

    def probes(self) -> list[Probe]:
        """The behaviours verification measures on this scenario's models, the main effect first (none here)."""
        return []
