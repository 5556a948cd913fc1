"""Tasks: domain adapters (``classification``, ``causal_lm``, ``text_classification``) behind one protocol."""

from __future__ import annotations

from ..errors import DisgorgeError
from ..spec import Recipe, RecipeError
from .base import Batch, FigureSet, RecordDataset, Task
from .causal_lm import CausalLMTask
from .classification import ClassificationTask
from .registry import TASKS
from .text_classification import TextClassificationTask


def get_task(name: str) -> Task:
    """An instance of the task registered as ``name``."""
    return TASKS.get(name)()


def check_recipe(recipe: Recipe, where: str = "recipe") -> Task:
    """The recipe's task, after checking the names only registries know: the task and its model family and
    parameters (nothing is built or loaded). A :class:`RecipeError` names what is wrong."""
    try:
        task = get_task(recipe.task)
        task.check_model(recipe.model)
        if (recipe.data.transform or recipe.data.shape) and not task.preprocessing:
            raise RecipeError(f"{where}: task {recipe.task!r} takes no [data] transform or shape (its records are "
                              "not numeric inputs); remove them")
    except RecipeError:
        raise
    except DisgorgeError as exc:
        raise RecipeError(f"{where}: {exc}") from None
    return task


__all__ = ["TASKS", "Batch", "CausalLMTask", "ClassificationTask", "FigureSet", "RecordDataset", "Task",
           "TextClassificationTask", "check_recipe", "get_task"]
