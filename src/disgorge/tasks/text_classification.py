"""Classification of texts with a pretrained encoder (:mod:`disgorge.models.text`).

A record holds ``text`` (UTF-8 bytes: :func:`~disgorge.tasks.causal_lm.text_field` makes the field) and ``y`` (an
integer class), as ``disgorge ingest`` reads them from a CSV with a ``text`` column or JSON Lines with ``text`` and
``label``. A dataset keeps each text's bytes, padded, beside its length; the model turns them into token ids once
(it keeps them) and, for a frozen encoder, into sentence vectors once per process.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any, ClassVar

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from ..errors import InvalidRequest
from ..ledger import Record
from ..models.text import require_text, text_family
from ..spec import DataSpec, ModelSpec
from .base import Batch, RecordDataset, Task
from .causal_lm import field_text, pad_texts, text_field
from .classification import label_outputs, labelled_fields
from .registry import TASKS


def batch_texts(batch: Batch) -> list[str]:
    """The texts of a batch (or of a dataset's tensors)."""
    data, lengths = batch["text"].cpu().numpy(), batch["text_len"].cpu().tolist()
    return [data[i, :n].tobytes().decode("utf-8", errors="replace") for i, n in enumerate(lengths)]


@TASKS.register("text_classification")
class TextClassificationTask(Task):
    """Records hold ``text`` (UTF-8 bytes) and ``y`` (an integer class); the model is a pretrained encoder with a
    linear head (``[model] family = "pretrained"``)."""

    name: ClassVar[str] = "text_classification"
    capabilities: ClassVar[frozenset[str]] = frozenset({"labels", "logits"})

    # -- data -----------------------------------------------------------------------------------------
    def dataset(self, records: Sequence[Record]) -> RecordDataset:
        """Each record's text bytes (padded) and length, and its label."""
        values, ys = labelled_fields(records, "text", "text-classification")
        text, lengths = pad_texts([field_text(v) for v in values])
        return RecordDataset([r.id for r in records], text=text, text_len=lengths,
                             y=torch.tensor(ys, dtype=torch.long, device="cpu"))

    def batch_of(self, texts: Sequence[str], labels: Sequence[int] | None = None) -> Batch:
        """A batch of these texts (labels 0 unless given), for probes and users' own inputs."""
        text, lengths = pad_texts(texts)
        y = torch.tensor(list(labels) if labels is not None else [0] * len(texts), dtype=torch.long, device="cpu")
        return {"text": text, "text_len": lengths, "y": y}

    def user_records(self, data: Any, first_id: int = 0) -> list[Record]:
        """Texts and integer labels given as a pair ``(texts, labels)``, a list of ``(text, label)`` pairs, or a
        list of dicts with ``text`` and ``y`` (or ``label``)."""
        pairs = _pairs(data)
        out = []
        for i, (text, label) in enumerate(pairs):
            if not isinstance(text, str):
                raise InvalidRequest(f"item {i}: the text must be a string, got {type(text).__name__}")
            if isinstance(label, bool) or not isinstance(label, (int, np.integer)) or label < 0:
                raise InvalidRequest(f"item {i}: the label must be a non-negative integer class, got {label!r}")
            out.append(Record(first_id + i, "user", "", {"text": text_field(text),
                                                         "y": np.array([int(label)], dtype=np.int64)},
                              {}, "train", "active"))
        return out

    def data_info(self, data: RecordDataset, spec: ModelSpec | None = None,
                  prep: DataSpec | None = None) -> dict[str, Any]:
        """The number of classes (largest label + 1) and, given the recipe's ``spec``, the pretrained network the
        model starts from (``base``: its name and the SHA-256 of its weights), which the model card names. Texts
        take no ``[data]`` preprocessing (:func:`~disgorge.tasks.check_recipe` refuses it).

        Refuses a largest label that implies over ten times as many classes as distinct labels are present."""
        y = data.tensors["y"]
        if not len(y):
            raise InvalidRequest("no records to learn the classes from")
        info: dict[str, Any] = {"num_classes": int(y.max()) + 1}
        distinct = int(torch.unique(y).numel())
        if info["num_classes"] > 10 * distinct:
            raise InvalidRequest(f"a training record is labelled {info['num_classes'] - 1}, which implies "
                                 f"{info['num_classes']} classes, but the records hold only {distinct} distinct "
                                 "label(s); labels must number the classes 0, 1, 2, ...: fix or forget that record")
        if spec is not None:
            info["base"] = text_family(spec.family, spec.params).base()
        return info

    def model_info(self, model: nn.Module, data: RecordDataset) -> dict[str, Any]:
        """The class count from the width of the model's output."""
        with torch.no_grad():
            width = int(self.logits(model.eval(), data.tensors_slice(0, 1)).shape[1])
        return {"num_classes": width}

    def check_model(self, spec: ModelSpec) -> None:
        """The family must be registered and its parameters valid (its encoder folder or package present)."""
        require_text()
        text_family(spec.family, spec.params)

    def num_classes(self, info: dict[str, Any]) -> int:
        """The number of classes recorded in the model's data facts."""
        return int(info["num_classes"])

    def build_model(self, spec: ModelSpec, info: dict[str, Any]) -> nn.Module:
        """The recipe's encoder with a fresh head for the class count (uses the global torch RNG)."""
        require_text()
        return text_family(spec.family, spec.params).build(int(info["num_classes"]))

    # -- outputs --------------------------------------------------------------------------------------
    def logits(self, model: nn.Module, batch: Batch) -> torch.Tensor:
        """Class scores ``[B, C]`` on the model's device (the text bytes are read on the CPU, where the tokenizer
        runs; rows are zero-padded, so the model finds each text's end)."""
        return model(batch["text"])

    def per_example_loss(self, model: nn.Module, batch: Batch) -> torch.Tensor:
        """Cross-entropy of each example."""
        logits = self.logits(model, batch)
        return F.cross_entropy(logits, batch["y"].to(logits.device), reduction="none")

    def with_labels(self, batch: Batch, labels: torch.Tensor) -> Batch:
        """The batch with new class labels."""
        return {**batch, "y": labels}

    def random_labels(self, batch: Batch, num_classes: int, generator: torch.Generator | None = None) -> Batch:
        """The batch with each label replaced by a uniformly drawn *different* class (drawn on the CPU, so a seed
        means the same everywhere, then put where the labels are)."""
        y = batch["y"]
        shift = torch.randint(1, num_classes, y.shape, generator=generator).to(y.device)
        return {**batch, "y": (y + shift) % num_classes}

    def strata(self, data: RecordDataset) -> np.ndarray:
        """The class label of each record."""
        return data.tensors["y"].cpu().numpy()

    def evaluate(self, model: nn.Module, data: RecordDataset, batch_size: int = 512) -> dict[str, np.ndarray]:
        """Per-example loss, correctness, confidence in the true class, predicted class and the loss attack's
        membership score ``mia_loss`` (minus the loss), as for every classifier."""
        return label_outputs(self, model, data, batch_size)

    @torch.no_grad()
    def predict(self, model: nn.Module, texts: Sequence[str], batch_size: int = 512) -> np.ndarray:
        """The class the model gives each text."""
        was_training = model.training
        model.eval()
        preds = [self.logits(model, self.batch_of(texts[i:i + batch_size])).argmax(1).cpu()
                 for i in range(0, len(texts), batch_size)]
        model.train(was_training)
        return torch.cat(preds).numpy() if preds else np.zeros(0, dtype=np.int64)


def _pairs(data: Any) -> list[tuple[Any, Any]]:
    """``(text, label)`` pairs from the forms :meth:`TextClassificationTask.user_records` takes."""
    if isinstance(data, tuple) and len(data) == 2 and isinstance(data[0], (list, tuple)):
        texts, labels = data
        labels = labels.tolist() if isinstance(labels, (np.ndarray, torch.Tensor)) else list(labels)
        if len(texts) != len(labels):
            raise InvalidRequest(f"{len(texts)} texts but {len(labels)} labels; give one label per text")
        return list(zip(texts, labels, strict=True))
    if isinstance(data, (list, tuple)):
        out = []
        for i, item in enumerate(data):
            if isinstance(item, dict) and "text" in item and ("y" in item or "label" in item):
                out.append((item["text"], item["y"] if "y" in item else item["label"]))
            elif isinstance(item, (tuple, list)) and len(item) == 2:
                out.append((item[0], item[1]))
            else:
                raise InvalidRequest(f"item {i}: give a (text, label) pair or a dict with 'text' and 'y'")
        return out
    raise InvalidRequest("text-classification data must be (texts, labels), a list of (text, label) pairs or a list "
                         f"of dicts with 'text' and 'y'; got {type(data).__name__}")


__all__ = ["TextClassificationTask", "batch_texts", "pad_texts"]
