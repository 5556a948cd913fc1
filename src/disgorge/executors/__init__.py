"""Executors for independent jobs (bench cells, reference and shadow models): a local process pool or Ray."""

from . import ray_backend  # noqa: F401  (registers "ray"; imports ray only when used)
from .base import EXECUTORS, Executor, get_executor
from .local import LocalExecutor

__all__ = ["EXECUTORS", "Executor", "LocalExecutor", "get_executor"]
