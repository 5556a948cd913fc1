"""Effect probes: a named behaviour measured on any model, in percent (a backdoor's attack success, the accuracy
on a class that must be forgotten). Verification measures every probe it is given on the original, the unlearned
and the reference model; bundled scenarios declare theirs, and nothing here knows where a probe comes from.

A probe gives one 0/1 outcome per probe input (:meth:`Probe.outcomes`), so that its value comes with a bootstrap
interval, and says what a model that never learned the behaviour would score (its *base rate*): either a constant
(:attr:`Probe.base_rate`: a class never seen is never predicted) or the outcomes of the same inputs without the
change (:meth:`Probe.baseline`: untriggered images sent to the target label). Reference-free verification judges the
probe against that base rate."""

from __future__ import annotations

from abc import ABC, abstractmethod
from typing import ClassVar

import numpy as np
import torch
from torch import nn

from ..tasks import RecordDataset, Task


class Probe(ABC):
    """One behaviour to measure: ``name`` (a figure key such as ``attack_success_rate``) and ``help`` say what it
    is; :meth:`measure` computes it on held-out data."""

    name: ClassVar[str]
    help: ClassVar[str]
    base_rate: ClassVar[float | None] = None  # percent a model that never learned the behaviour scores, if constant

    @abstractmethod
    def outcomes(self, model: nn.Module, task: Task, heldout: RecordDataset) -> np.ndarray:
        """One 0/1 outcome per probe input (1 = the behaviour shows); empty when the held-out data cannot show it."""

    def baseline(self, model: nn.Module, task: Task, heldout: RecordDataset) -> np.ndarray | None:
        """The outcomes of the same inputs without the change (None: the base rate is :attr:`base_rate`)."""
        return None

    def measure(self, model: nn.Module, task: Task, heldout: RecordDataset) -> float | None:
        """The behaviour's value on ``model`` in percent (None when the held-out data cannot show it)."""
        hits = self.outcomes(model, task, heldout)
        return float(np.mean(hits) * 100) if len(hits) else None

    def meta(self) -> dict[str, str | float | None]:
        """What a certificate records about the probe."""
        return {"name": self.name, "help": self.help, "base_rate": self.base_rate}


@torch.no_grad()
def predicted_as(model: nn.Module, task: Task, x: torch.Tensor, cls: int, batch_size: int = 512) -> np.ndarray:
    """For each input of ``x``, 1.0 if ``model`` classifies it as ``cls`` else 0.0 (capability ``logits``)."""
    if len(x) == 0:
        return np.zeros(0)
    was_training = model.training
    model.eval()
    pred = torch.cat([task.logits(model, {"x": x[i:i + batch_size]}).argmax(1).cpu()
                      for i in range(0, len(x), batch_size)])
    model.train(was_training)
    return (pred == cls).float().numpy()
