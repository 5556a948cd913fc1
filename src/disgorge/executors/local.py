"""Local executor: a process pool sized to the machine (one torch thread per worker), or in-process."""

from __future__ import annotations

import multiprocessing
import os
from collections.abc import Callable, Sequence
from concurrent.futures import ProcessPoolExecutor
from functools import partial
from typing import TypeVar

from .. import _progress
from .base import EXECUTORS, run_job

T = TypeVar("T")
R = TypeVar("R")


@EXECUTORS.register("local")
class LocalExecutor:
    """``workers`` processes (default: the CPU count); ``workers=1`` runs jobs in this process, in order."""

    name = "local"

    def __init__(self, workers: int | None = None) -> None:
        self.workers = max(1, workers or os.cpu_count() or 1)
        self._pool: ProcessPoolExecutor | None = None

    def map(self, fn: Callable[[T], R], jobs: Sequence[T], *, description: str = "jobs") -> list[R]:
        """Run ``fn`` over ``jobs``; results in input order."""
        if self.workers == 1 or len(jobs) <= 1:
            out = []
            with _progress.bar(description, len(jobs)) as bar:
                for job in jobs:
                    out.append(fn(job))
                    bar.advance()
            return out
        if self._pool is None:
            self._pool = ProcessPoolExecutor(self.workers, mp_context=multiprocessing.get_context("spawn"))
        threads = max(1, (os.cpu_count() or 1) // self.workers)
        futures = [self._pool.submit(partial(run_job, fn, job, threads)) for job in jobs]
        out = []
        with _progress.bar(description, len(jobs)) as bar:
            for f in futures:
                out.append(f.result())
                bar.advance()
        return out

    def close(self) -> None:
        """Shut the pool down."""
        if self._pool is not None:
            self._pool.shutdown()
            self._pool = None
