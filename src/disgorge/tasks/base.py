"""The Task protocol: the domain adapter between records and models that methods and metrics rely on."""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any, ClassVar

import numpy as np
import torch
from torch import nn
from torch.utils.data import DataLoader, Dataset

from ..evaluate.metrics import accuracy, split_figures
from ..ledger import Record
from ..spec import DataSpec, ModelSpec

Batch = dict[str, torch.Tensor]


class RecordDataset(Dataset):
    """Records as tensors in memory, one dict per item; ``ids`` are the ledger record ids, row for row, and, where
    the workspace knows them, ``sources`` (the name of each record's source) and ``attributes`` (each group
    attribute given at ingest, one value per row as a string, None where a record has none)."""

    def __init__(self, ids: Sequence[int], **tensors: torch.Tensor) -> None:
        self.ids = np.asarray(ids, dtype=np.int64)
        self.sources: np.ndarray | None = None
        self.attributes: dict[str, np.ndarray] = {}
        n = len(self.ids)
        for k, t in tensors.items():
            if len(t) != n:
                raise ValueError(f"tensor {k!r} has {len(t)} rows, expected {n}")
        self.tensors = tensors

    def __len__(self) -> int:
        return len(self.ids)

    def __getitem__(self, i: int) -> Batch:
        return {k: t[i] for k, t in self.tensors.items()}

    def tensors_slice(self, start: int, stop: int) -> Batch:
        """Rows ``start:stop`` as one batch."""
        return {k: t[start:stop] for k, t in self.tensors.items()}

    def subset(self, ids: Sequence[int] | Any) -> RecordDataset:
        """The rows whose record ids are in ``ids`` (order of this dataset)."""
        mask = np.isin(self.ids, np.fromiter((int(i) for i in ids), dtype=np.int64))
        idx = torch.from_numpy(np.nonzero(mask)[0])
        out = RecordDataset(self.ids[mask], **{k: t[idx] for k, t in self.tensors.items()})
        out.sources = self.sources[mask] if self.sources is not None else None
        out.attributes = {k: v[mask] for k, v in self.attributes.items()}
        return out

    def with_attributes(self, records: Sequence[Record]) -> RecordDataset:
        """This dataset (built from ``records``, row for row) with each record's source and group attributes."""
        self.sources = np.array([r.source for r in records], dtype=object)
        names = sorted({k for r in records for k in r.attributes})
        self.attributes = {k: np.array([None if r.attributes.get(k) is None else str(r.attributes[k])
                                        for r in records], dtype=object) for k in names}
        return self


@dataclass(frozen=True)
class FigureSet:
    """The verification figures a task reports: display order and labels, the keys Avg Gap averages, which
    figure plays each role the certificate checks (forget/retain/test accuracy, the membership signal), the
    figures the benchmark table shows (``bench``: key and short column label, in order), and the per-example outputs
    of :meth:`Task.evaluate` that reference-free evidence compares between the forget set and held-out data
    (``membership``: a score where higher means more member-like; ``verbatim``: reproduction of the record's text,
    None where the task has none)."""

    keys: tuple[str, ...]
    labels: dict[str, str]
    gap: tuple[str, ...]
    retain: str
    test: str
    mia: str
    units: str = "Figures in percent."
    bench: tuple[tuple[str, str], ...] = ()
    membership: str = "mia_loss"
    verbatim: str | None = None


CLASSIFICATION_FIGURES = FigureSet(
    keys=("ua", "ra", "ta", "mia_efficacy", "mia_auc", "effect"),
    labels={"ua": "UA (forget error)", "ra": "RA (retain acc.)", "ta": "TA (test acc.)", "mia_efficacy": "MIA-efficacy",
            "mia_auc": "MIA AUC (loss)", "effect": "effect"},
    gap=("ua", "ra", "ta", "mia_efficacy"), retain="ra", test="ta", mia="mia_efficacy",
    bench=(("ua", "UA"), ("ra", "RA"), ("ta", "TA"), ("mia_efficacy", "MIA-eff."), ("effect", "effect")))


class Task(ABC):
    """A domain adapter. Methods see only this: per-example loss, outputs and targets, never pixels or tokens.

    ``capabilities`` names what the task offers beyond the basics, so a method that needs something a task lacks is
    refused before it runs: ``labels`` (discrete targets that can be replaced), ``logits`` (class scores).
    """

    name: ClassVar[str]
    capabilities: ClassVar[frozenset[str]] = frozenset()
    quick_accuracy_name: ClassVar[str] = "accuracy"  # what :meth:`quick_accuracy` measures, as printed
    preprocessing: ClassVar[bool] = False  # whether a recipe's [data] transform and shape apply to its inputs
    figures: ClassVar[FigureSet] = CLASSIFICATION_FIGURES

    @abstractmethod
    def data_info(self, data: RecordDataset, spec: ModelSpec | None = None,
                  prep: DataSpec | None = None) -> dict[str, Any]:
        """Facts about the training data a model must be built for (input shape, number of classes, a trained
        vocabulary, preprocessing fitted on the records as the recipe's ``[data]`` table, ``prep``, asks); stored
        with the model, so a model retrained on less data is built the same way."""

    @abstractmethod
    def dataset(self, records: Sequence[Record]) -> RecordDataset:
        """Tensors for these records."""

    @abstractmethod
    def user_records(self, data: Any, first_id: int = 0) -> list[Record]:
        """A user's own data, given outside any ledger, as records numbered from ``first_id`` (each task says
        which forms it takes); a one-line error for data it cannot read."""

    def user_dataset(self, data: Any, first_id: int = 0) -> RecordDataset:
        """A user's own data as tensors for this task (a :class:`RecordDataset` is taken as it is)."""
        if isinstance(data, RecordDataset):
            return data
        return self.dataset(self.user_records(data, first_id))

    def model_info(self, model: nn.Module, data: RecordDataset) -> dict[str, Any]:
        """The data facts (:meth:`data_info`) of a model built outside disgorge, read from the model where the data
        cannot tell (a classifier's class count)."""
        return self.data_info(data)

    def prune_vocabulary(self, model: nn.Module, data_info: dict[str, Any],
                         retain: RecordDataset) -> tuple[nn.Module, dict[str, Any]]:
        """After an erasure: the model (possibly changed in place) and its data facts without what only the
        forgotten records contributed to them, such as vocabulary words ``retain`` never uses. Nothing here: a
        classifier's data facts name no record's content."""
        return model, data_info

    def retrained_info(self, data_info: dict[str, Any], retain: RecordDataset, spec: ModelSpec) -> dict[str, Any]:
        """The data facts a model retrained on ``retain`` alone (a verification reference) is built with, given the
        original's ``data_info``: the original's here, so a classifier keeps every class (even one no retained record
        has) and is compared with the original class for class."""
        return data_info

    @abstractmethod
    def check_model(self, spec: ModelSpec) -> None:
        """Refuse, with a one-line error, a model family or parameters this task cannot build (nothing is built)."""

    @abstractmethod
    def build_model(self, spec: ModelSpec, info: dict[str, Any]) -> nn.Module:
        """A freshly initialised network (uses the global torch RNG; callers seed it)."""

    @abstractmethod
    def per_example_loss(self, model: nn.Module, batch: Batch) -> torch.Tensor:
        """Loss of each example in the batch, shape ``[B]``."""

    def batch_size(self, batch: Batch) -> int:
        """How many examples a batch holds."""
        return len(next(iter(batch.values())))

    def logits(self, model: nn.Module, batch: Batch) -> torch.Tensor:
        """Class scores ``[B, C]`` (capability ``logits``)."""
        raise NotImplementedError(f"task {self.name!r} has no logits")

    def num_classes(self, info: dict[str, Any]) -> int:
        """How many classes a model built for ``info`` (:meth:`data_info`) predicts (capability ``labels``)."""
        raise NotImplementedError(f"task {self.name!r} has no classes")

    def random_labels(self, batch: Batch, num_classes: int, generator: torch.Generator | None = None) -> Batch:
        """The batch with each target replaced by a different random class (capability ``labels``)."""
        raise NotImplementedError(f"task {self.name!r} has no replaceable labels")

    def with_labels(self, batch: Batch, labels: torch.Tensor) -> Batch:
        """The batch with new targets (capability ``labels``)."""
        raise NotImplementedError(f"task {self.name!r} has no replaceable labels")

    def nearest_wrong_labels(self, model: nn.Module, batch: Batch, step: float) -> torch.Tensor:
        """For each example, the class a small adversarial input step pushes it to (capability ``adversarial``)."""
        raise NotImplementedError(f"task {self.name!r} has no adversarial inputs")

    def blocks(self, model: nn.Module) -> list[nn.Module]:
        """The model's blocks in order, those :meth:`hidden_states` counts (capability ``hidden_states``)."""
        raise NotImplementedError(f"task {self.name!r} exposes no blocks")

    def hidden_states(self, model: nn.Module, batch: Batch, layer: int) -> tuple[torch.Tensor, torch.Tensor]:
        """Activations after block ``layer`` and their mask (capability ``hidden_states``)."""
        raise NotImplementedError(f"task {self.name!r} exposes no hidden states")

    def key_span(self, data: RecordDataset) -> RecordDataset:
        """The records with answers cut to start at their key (capability ``text``)."""
        raise NotImplementedError(f"task {self.name!r} has no text answers")

    def with_answers(self, batch: Batch, answers: Sequence[str]) -> Batch:
        """The batch with new answer texts (capability ``text``)."""
        raise NotImplementedError(f"task {self.name!r} has no text answers")

    def accelerator(self, precision: str = "fp32") -> Any:
        """An ``accelerate.Accelerator`` the training loop runs through (``precision``: a recipe's
        ``train.precision``), or None for a plain loop."""
        return None

    def quick_accuracy(self, model: nn.Module, data: RecordDataset) -> float:
        """A cheap utility score in percent for guards (accuracy here)."""
        return accuracy(self.evaluate(model, data)["correct"])

    @abstractmethod
    def evaluate(self, model: nn.Module, data: RecordDataset, batch_size: int = 512) -> dict[str, np.ndarray]:
        """Per-example ``loss``, ``correct`` (0/1), ``confidence`` (probability of the true target) and the
        membership score named by ``figures.membership`` (higher = more member-like)."""

    def strata(self, data: RecordDataset) -> np.ndarray | None:
        """A discrete kind per record (a classifier's label) that held-out data must match for a like-with-like
        comparison with a forget set, or None when the task has none."""
        return None

    def split_figures(self, forget: dict[str, np.ndarray], retain: dict[str, np.ndarray],
                      test: dict[str, np.ndarray], *, seed: int = 0) -> dict[str, float]:
        """The figures of one model from its per-example outputs on the three splits (UA, RA, TA, MIAs here)."""
        return split_figures(forget, retain, test, seed=seed)

    def relative_figures(self, forget: dict[str, np.ndarray], figures: dict[str, float | None],
                         reference_forget: dict[str, np.ndarray],
                         reference_figures: dict[str, float | None]) -> dict[str, float | None]:
        """Figures that compare a model with the retrained reference directly (none here)."""
        return {}

    def loader(self, data: RecordDataset, batch_size: int, *, shuffle: bool,
               generator: torch.Generator | None = None) -> DataLoader:
        """A DataLoader over ``data`` (shuffling drawn from ``generator``, so it is reproducible)."""
        return DataLoader(data, batch_size=batch_size, shuffle=shuffle, generator=generator)
