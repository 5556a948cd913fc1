"""Ray executor: the same jobs on a Ray cluster (or a local Ray instance). Install with ``disgorge[ray]``."""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any, TypeVar

from .. import _progress
from ..errors import DisgorgeError
from .base import EXECUTORS, run_job

T = TypeVar("T")
R = TypeVar("R")


@EXECUTORS.register("ray")
class RayExecutor:
    """Submits each job as a Ray task. ``address`` joins a running cluster; None starts a local instance."""

    name = "ray"

    def __init__(self, address: str | None = None, workers: int | None = None, threads: int = 1) -> None:
        try:
            import ray
        except ImportError:
            raise DisgorgeError("the ray executor needs Ray: pip install 'disgorge[ray]'") from None
        self._ray = ray
        self.threads = threads
        self.workers = workers
        self._started = not ray.is_initialized()
        if self._started:
            kwargs: dict[str, Any] = {"include_dashboard": False, "log_to_driver": False,
                                      "configure_logging": False}
            if address is None and workers is not None:
                kwargs["num_cpus"] = workers
            ray.init(address=address, **kwargs)
        self._task = ray.remote(num_cpus=threads)(run_job)

    def map(self, fn: Callable[[T], R], jobs: Sequence[T], *, description: str = "jobs") -> list[R]:
        """Run ``fn`` over ``jobs`` as Ray tasks; results in input order."""
        refs = [self._task.remote(fn, job, self.threads) for job in jobs]
        out = []
        with _progress.bar(description, len(jobs)) as bar:
            for ref in refs:
                out.append(self._ray.get(ref))
                bar.advance()
        return out

    def close(self) -> None:
        """Shut down the Ray instance this executor started."""
        if self._started and self._ray.is_initialized():
            self._ray.shutdown()
