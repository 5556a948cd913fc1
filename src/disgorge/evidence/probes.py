"""Effect probes: a named behaviour measured on any model, in percent (a backdoor's attack success, the accuracy
on a group or on a class that must be forgotten, the reproduction of a person's answers). Verification, every
certificate and the bench measure every probe a workspace declares on the original, the unlearned and the reference
model; a probe is a ledger object (`disgorge probe add`, or a bundled scenario's declaration at ingest), and nothing
here knows where one comes from.

A probe gives one 0/1 outcome per probe input (:meth:`Probe.outcomes`), so that its value comes with a bootstrap
interval, and says what a model that never learned the behaviour would score (its *base rate*): either a constant
(:attr:`Probe.base_rate`: a class never seen is never predicted) or the outcomes of the same inputs without the
change (:meth:`Probe.baseline`: untriggered images sent to the target label). Reference-free verification judges the
probe against that base rate.

Kinds (:data:`PROBE_KINDS`), each built from a :class:`~disgorge.ledger.ProbeRow`:

- ``target``: the share of the probe's own inputs a classifier sends to one label (a backdoor's success);
- ``group``: the accuracy on the held-out records whose attribute (or ``label``) has one value;
- ``answers``: the share of the probe's own records whose answer the model gives (a language model reproducing a
  completion; a classifier predicting the given labels)."""

from __future__ import annotations

from abc import ABC, abstractmethod
from dataclasses import dataclass, field
from typing import Any, ClassVar

import numpy as np
import torch
from torch import nn

from .._registry import Registry
from ..errors import InvalidRequest
from ..ledger import ProbeRow, Record
from ..tasks import RecordDataset, Task
from ..workspace import Workspace


class Probe(ABC):
    """One behaviour to measure: ``name`` (a figure key such as ``attack_success_rate``) and ``help`` say what it
    is; :meth:`measure` computes it on held-out data."""

    name: str
    help: str
    base_rate: float | None = None  # percent a model that never learned the behaviour scores, if constant

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

    def meta(self) -> dict[str, Any]:
        """What a certificate records about the probe."""
        return {"name": self.name, "help": self.help, "base_rate": self.base_rate}


@torch.no_grad()
def predictions(model: nn.Module, task: Task, data: RecordDataset, batch_size: int = 512) -> np.ndarray:
    """The class ``model`` predicts for each record of ``data`` (capability ``logits``)."""
    if len(data) == 0:
        return np.zeros(0, dtype=np.int64)
    was_training = model.training
    model.eval()
    pred = torch.cat([task.logits(model, data.tensors_slice(i, i + batch_size)).argmax(1).cpu()
                      for i in range(0, len(data), batch_size)])
    model.train(was_training)
    return pred.numpy()


def predicted_as(model: nn.Module, task: Task, data: RecordDataset, cls: int, batch_size: int = 512) -> np.ndarray:
    """For each record of ``data``, 1.0 if ``model`` classifies it as ``cls`` else 0.0 (capability ``logits``)."""
    return (predictions(model, task, data, batch_size) == cls).astype(np.float64)


@dataclass
class Behaviour:
    """What attribution traces: rows whose mean loss, times ``sign``, falls as the behaviour grows (``sign`` -1:
    the behaviour is the rows' errors). ``what`` says it in words."""

    what: str
    data: RecordDataset
    sign: float = 1.0


@dataclass
class ProbeSpec:
    """A probe as declared (by `disgorge probe add` or a bundled scenario), before it is stored: its ``kind``
    (:data:`PROBE_KINDS`), what it measures (``help``), the kind's settings and its own inputs as record fields."""

    name: str
    kind: str
    help: str
    settings: dict[str, Any] = field(default_factory=dict)
    inputs: list[dict[str, np.ndarray]] = field(default_factory=list)
    baseline: list[dict[str, np.ndarray]] | None = None

    def row(self) -> ProbeRow:
        """The ledger row this declaration becomes."""
        return ProbeRow(self.name, self.kind, {"help": self.help, **self.settings}, self.inputs, self.baseline, "")

    def build(self) -> Probe:
        """The probe itself (checks the settings)."""
        return build_probe(self.row())

    def store(self, ws: Workspace) -> None:
        """Check the declaration and add it to the workspace's ledger."""
        self.build()
        ws.ledger.add_probe(self.name, self.kind, {"help": self.help, **self.settings}, self.inputs, self.baseline)


PROBE_KINDS: Registry[type[DeclaredProbe]] = Registry("probe kind", "kinds are target, group and answers")


def build_probe(row: ProbeRow) -> Probe:
    """The probe a ledger row declares."""
    return PROBE_KINDS.get(row.kind)(row)


def workspace_probes(ws: Workspace) -> list[Probe]:
    """Every probe the workspace declares, in the order declared (the first is the main effect)."""
    return [build_probe(r) for r in ws.ledger.probes()]


class DeclaredProbe(Probe):
    """A probe built from its ledger row: name, help and base rate from the row; :meth:`_inputs` gives its own
    inputs (and baseline) as a dataset of the model's task."""

    kind: ClassVar[str]

    def __init__(self, row: ProbeRow) -> None:
        self.name, self.row = row.name, row
        self.help = str(row.spec.get("help") or self.kind)
        rate = row.spec.get("base_rate")
        if rate is not None and not (isinstance(rate, (int, float)) and 0 <= rate <= 100):
            raise InvalidRequest(f"probe {row.name!r}: base rate must be a percentage in [0, 100], got {rate!r}")
        self.base_rate = None if rate is None else float(rate)

    def _dataset(self, task: Task, fields: list[dict[str, np.ndarray]]) -> RecordDataset:
        return task.dataset([Record(i, "probe", "", f, {}, "test", "active") for i, f in enumerate(fields)])

    def behaviour(self, task: Task, heldout: RecordDataset) -> Behaviour:
        """The rows whose loss traces the behaviour, for attribution."""
        raise NotImplementedError(f"probe kind {self.kind!r} cannot be traced to training records")

    def meta(self) -> dict[str, Any]:
        """The certificate's record of the probe: its kind and settings besides name, help and base rate."""
        settings = {k: v for k, v in self.row.spec.items() if k not in ("help", "base_rate")}
        return {**super().meta(), "kind": self.kind, **settings, "inputs": len(self.row.inputs) or None}


@PROBE_KINDS.register("target")
class TargetProbe(DeclaredProbe):
    """The share of the probe's inputs a classifier sends to label ``target`` (a backdoor's attack success);
    baseline: the same inputs without the change."""

    kind: ClassVar[str] = "target"

    def __init__(self, row: ProbeRow) -> None:
        super().__init__(row)
        target = row.spec.get("target")
        if not isinstance(target, int) or isinstance(target, bool) or target < 0:
            raise InvalidRequest(f"probe {row.name!r}: --target must be a class label (an integer >= 0)")
        if not row.inputs:
            raise InvalidRequest(f"probe {row.name!r} has no inputs; give a file with at least one")
        self.target = target

    def outcomes(self, model: nn.Module, task: Task, heldout: RecordDataset) -> np.ndarray:
        """Whether each probe input goes to the target label."""
        return predicted_as(model, task, self._dataset(task, self.row.inputs), self.target)

    def baseline(self, model: nn.Module, task: Task, heldout: RecordDataset) -> np.ndarray | None:
        """Whether each baseline input goes to the target label (None without a baseline)."""
        if not self.row.baseline:
            return None
        return predicted_as(model, task, self._dataset(task, self.row.baseline), self.target)

    def behaviour(self, task: Task, heldout: RecordDataset) -> Behaviour:
        """The probe's inputs labelled with the target: records that lower their loss send inputs to it. (Not
        against the baseline inputs: that difference credits every record that keeps clean inputs off the target,
        and on mnist-backdoor it ranked the poisoner below clean sources.)"""
        data = self._dataset(task, self.row.inputs)
        y = torch.full((len(data),), self.target, dtype=torch.long)
        return Behaviour(f"probe {self.name}", RecordDataset(data.ids, **task.with_labels(data.tensors, y)), 1.0)


@PROBE_KINDS.register("group")
class GroupProbe(DeclaredProbe):
    """Accuracy on the held-out records whose attribute ``attribute`` is ``value`` (``label``: the record's class).
    A classifier's class that must be forgotten is the group ``label=K`` with base rate 0."""

    kind: ClassVar[str] = "group"

    def __init__(self, row: ProbeRow) -> None:
        super().__init__(row)
        self.attribute, self.value = str(row.spec.get("attribute") or ""), str(row.spec.get("value", ""))
        if not self.attribute:
            raise InvalidRequest(f"probe {row.name!r}: give the group as ATTR=VALUE")

    def members(self, task: Task, heldout: RecordDataset) -> np.ndarray:
        """A mask of the held-out rows in the group."""
        if self.attribute == "label":
            kinds = task.strata(heldout)
            return np.zeros(len(heldout), bool) if kinds is None else np.array([str(k) for k in kinds]) == self.value
        values = heldout.attributes.get(self.attribute)
        return np.zeros(len(heldout), bool) if values is None else values == self.value

    def outcomes(self, model: nn.Module, task: Task, heldout: RecordDataset) -> np.ndarray:
        """Whether the model answers each held-out record of the group correctly."""
        rows = self.members(task, heldout)
        if not rows.any():
            return np.zeros(0)
        return np.asarray(task.evaluate(model, heldout.subset(heldout.ids[rows]))["correct"], dtype=np.float64)

    def behaviour(self, task: Task, heldout: RecordDataset) -> Behaviour:
        """The group's held-out records: records that raise their loss cause the group's errors."""
        return Behaviour(f"errors on held-out {self.attribute}={self.value}",
                         heldout.subset(heldout.ids[self.members(task, heldout)]), -1.0)


@PROBE_KINDS.register("answers")
class AnswersProbe(DeclaredProbe):
    """The share of the probe's own records whose answer the model gives: a language model reproducing each
    prompt's completion (greedy decoding, as the task's ``correct``), a classifier predicting each input's label."""

    kind: ClassVar[str] = "answers"

    def __init__(self, row: ProbeRow) -> None:
        super().__init__(row)
        if not row.inputs:
            raise InvalidRequest(f"probe {row.name!r} has no records; give a file with at least one")

    def outcomes(self, model: nn.Module, task: Task, heldout: RecordDataset) -> np.ndarray:
        """Whether the model gives each record's answer."""
        return np.asarray(task.evaluate(model, self._dataset(task, self.row.inputs))["correct"], dtype=np.float64)

    def behaviour(self, task: Task, heldout: RecordDataset) -> Behaviour:
        """The probe's records: records that lower their loss make the model give their answers."""
        return Behaviour(f"probe {self.name}", self._dataset(task, self.row.inputs), 1.0)
