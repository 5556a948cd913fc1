"""Tasks: domain adapters (``classification``, ``causal_lm``) behind one protocol."""

from .._registry import Registry

TASKS: Registry = Registry("task", "known tasks: classification, causal_lm")

from .base import Batch, FigureSet, RecordDataset, Task  # noqa: E402
from .causal_lm import CausalLMTask  # noqa: E402
from .classification import ClassificationTask  # noqa: E402


def get_task(name: str) -> Task:
    """An instance of the task registered as ``name``."""
    return TASKS.get(name)()


__all__ = ["TASKS", "Batch", "CausalLMTask", "ClassificationTask", "FigureSet", "RecordDataset", "Task", "get_task"]
