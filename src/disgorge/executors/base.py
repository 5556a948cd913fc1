"""The Executor protocol: run a picklable function over independent jobs and return results in order."""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any, Protocol, TypeVar

from .._registry import Registry

T = TypeVar("T")
R = TypeVar("R")

EXECUTORS: Registry = Registry("executor", "known executors: local, ray")


class Executor(Protocol):
    """Runs independent jobs; ``map`` keeps the input order. Jobs must be module-level functions."""

    name: str

    def map(self, fn: Callable[[T], R], jobs: Sequence[T], *, description: str = "jobs") -> list[R]:
        """``[fn(job) for job in jobs]``, possibly in parallel."""

    def close(self) -> None:
        """Release workers."""


def get_executor(name: str = "local", **options: Any) -> Executor:
    """An executor by name: ``local`` (process pool sized to the machine) or ``ray`` (optional extra)."""
    return EXECUTORS.get(name)(**options)


def run_job(fn: Callable[[T], R], job: T, threads: int) -> R:
    """Run one job with a fixed number of torch threads (workers share the machine's cores)."""
    import torch

    torch.set_num_threads(threads)
    return fn(job)
