"""Tasks: domain adapters (``classification``; ``causal_lm`` later) behind one protocol."""

from .._registry import Registry

TASKS: Registry = Registry("task", "known tasks: classification")

from .base import Batch, RecordDataset, Task  # noqa: E402
from .classification import ClassificationTask  # noqa: E402


def get_task(name: str) -> Task:
    """An instance of the task registered as ``name``."""
    return TASKS.get(name)()


__all__ = ["TASKS", "Batch", "ClassificationTask", "RecordDataset", "Task", "get_task"]
