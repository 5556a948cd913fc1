"""``retrain``: exact unlearning by training from scratch on what remains (the gold standard, at full cost)."""

from __future__ import annotations

from dataclasses import dataclass
from typing import ClassVar

from torch import nn

from ..training.loop import make_optimizer, mean_loss
from ._tools import reinitialise
from .base import BudgetConfig, Method, UnlearnRequest, option
from .registry import register


@register
class Retrain(Method):
    """Re-initialise the network and train it on the retain set with the original recipe's settings.

    With the same seed it reproduces, bit for bit, what training the recipe without the forget set gives.
    """

    name: ClassVar[str] = "retrain"
    family: ClassVar[str] = "exact"
    summary: ClassVar[str] = "re-initialise and train from scratch on the retain set (exact, full cost)"
    paper: ClassVar[str] = "the exact baseline of every unlearning paper (e.g. Bourtoule et al., SISA, S&P 2021)"
    needs: ClassVar[frozenset[str]] = frozenset({"retain"})

    @dataclass
    class Config(BudgetConfig):
        """Retraining takes its settings from the original recipe; only the time budget can be set. It runs the
        recipe's whole schedule (a fresh network starts at the targets, so stopping by them would stop at once)."""

        stop: str = option("budget", "retraining always runs the recipe's whole schedule", choices=("budget",))

    def _unlearn(self, model: nn.Module, request: UnlearnRequest) -> nn.Module:
        reinitialise(model)
        optimizer = make_optimizer(model.parameters(), request.train)
        self.fit(model, request, request.loader("retain"), mean_loss(request.task), optimizer,
                                    epochs=request.train.epochs, guard=False)
        return model
