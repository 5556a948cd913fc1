"""Effect probes: a named behaviour measured on any model, in percent (a backdoor's attack success, the accuracy
on a class that must be forgotten). Verification measures every probe it is given on the original, the unlearned
and the reference model; bundled scenarios declare theirs, and nothing here knows where a probe comes from."""

from __future__ import annotations

from abc import ABC, abstractmethod
from typing import ClassVar

import torch
from torch import nn

from ..tasks import RecordDataset, Task


class Probe(ABC):
    """One behaviour to measure: ``name`` (a figure key such as ``attack_success_rate``) and ``help`` say what it
    is; :meth:`measure` computes it on held-out data."""

    name: ClassVar[str]
    help: ClassVar[str]

    @abstractmethod
    def measure(self, model: nn.Module, task: Task, heldout: RecordDataset) -> float | None:
        """The behaviour's value on ``model`` in percent (None when the held-out data cannot show it)."""

    def meta(self) -> dict[str, str]:
        """What a certificate records about the probe."""
        return {"name": self.name, "help": self.help}


@torch.no_grad()
def share_predicted(model: nn.Module, task: Task, x: torch.Tensor, cls: int, batch_size: int = 512) -> float:
    """Percent of inputs ``x`` that ``model`` classifies as ``cls`` (capability ``logits``)."""
    was_training = model.training
    model.eval()
    pred = torch.cat([task.logits(model, {"x": x[i:i + batch_size]}).argmax(1).cpu()
                      for i in range(0, len(x), batch_size)])
    model.train(was_training)
    return float((pred == cls).float().mean() * 100)
