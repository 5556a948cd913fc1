"""Scenarios: bundled, reproducible cases with real data, a default recipe and a known effect to remove."""

from __future__ import annotations

import importlib.util
from abc import ABC, abstractmethod
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, ClassVar

import numpy as np
from pyroaring import BitMap

from ..errors import DisgorgeError
from ..evidence.probes import Probe, ProbeSpec
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


Fields = dict[str, np.ndarray]


def package_file(package: str, relative: str, missing: str) -> Path:
    """A data file an installed package ships, found without importing the package (``missing``: the error if the
    package or the file is not there)."""
    spec = importlib.util.find_spec(package)
    locations = list(spec.submodule_search_locations or []) if spec else []
    path = Path(locations[0]) / relative if locations else None
    if path is None or not path.is_file():
        raise DisgorgeError(missing)
    return path


def heldout_fields(sources: list[SourceData]) -> list[Fields]:
    """The fields of every held-out (test split) record of a scenario's sources."""
    return [r.fields for src in sources for r in src.records if r.split == "test"]


def backdoor_probe(sources: list[SourceData], trigger: Callable[[Fields], Fields], target: int,
                   help: str) -> ProbeSpec:
    """The attack success rate: the held-out records whose class is not ``target``, with the trigger, sent to
    ``target``; baseline: the same records without the trigger."""
    clean = [f for f in heldout_fields(sources) if int(f["y"][0]) != target]
    return ProbeSpec("attack_success_rate", "target", help, {"target": target},
                     inputs=[trigger(f) for f in clean], baseline=clean)


class Scenario(ABC):
    """A bundled case: its sources, a default recipe, the default erasure request and its effect probes."""

    name: ClassVar[str]
    description: ClassVar[str]
    bench_methods: ClassVar[tuple[str, ...] | None] = None  # the methods `disgorge bench` runs here (None: all)
    strong_test: ClassVar[bool] = True  # whether the bench runs the per-example test (K retrainings) here
    purpose: ClassVar[str] = "privacy"  # why its default request erases the records: picks the decisive figures
    group_gap: ClassVar[tuple[str, str] | None] = None  # two probes whose difference the bench reports (group_gap)

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

    def declare_probes(self, sources: list[SourceData]) -> list[ProbeSpec]:
        """The behaviours verification measures on this scenario's models, the main effect first, declared from the
        scenario's own data (``sources``); ingest stores them in the workspace's ledger (none here)."""
        return []

    def probes(self) -> list[Probe]:
        """The declared probes, built (reads the scenario's data)."""
        return [p.build() for p in self.declare_probes(self.sources())]
