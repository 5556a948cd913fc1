"""The one reproducible training loop, and training a recipe's network on a dataset."""

from .loop import FitResult, NonFiniteLoss, fit, make_optimizer, mean_loss

__all__ = ["FitResult", "NonFiniteLoss", "fit", "make_optimizer", "mean_loss"]
