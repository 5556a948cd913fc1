"""Recipes and the one reproducible training loop."""

from .loop import FitResult, NonFiniteLoss, fit, make_optimizer, mean_loss
from .recipe import DataSpec, ModelSpec, Recipe, RecipeError, TrainSpec

__all__ = ["DataSpec", "FitResult", "ModelSpec", "NonFiniteLoss", "Recipe", "RecipeError", "TrainSpec", "fit",
           "make_optimizer", "mean_loss"]
