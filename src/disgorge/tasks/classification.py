"""Classification of fixed-size numeric inputs (tabular rows, small images)."""

from __future__ import annotations

import logging
from collections.abc import Sequence
from typing import Any, ClassVar

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn
from torch.utils.data import DataLoader, TensorDataset

from .. import devices
from ..errors import InvalidRequest
from ..ledger import Record
from ..models import preprocess
from ..models.families import family_config
from ..models.registry import MODELS
from ..spec import DataSpec, ModelSpec
from .base import Batch, RecordDataset, Task
from .registry import TASKS

log = logging.getLogger(__name__)


@TASKS.register("classification")
class ClassificationTask(Task):
    """Records hold ``x`` (features, any fixed shape) and ``y`` (an integer class)."""

    name: ClassVar[str] = "classification"
    capabilities: ClassVar[frozenset[str]] = frozenset({"labels", "logits", "adversarial"})
    preprocessing: ClassVar[bool] = True

    def user_records(self, data: Any, first_id: int = 0) -> list[Record]:
        """Inputs and integer labels given as a pair ``(x, y)`` of tensors or arrays, a ``TensorDataset`` of them,
        or a ``DataLoader`` yielding ``(x, y)`` batches."""
        x, y = _inputs_and_labels(data)
        if len(x) != len(y):
            raise InvalidRequest(f"{len(x)} inputs but {len(y)} labels; give one label per input")
        if y.dtype.kind not in "iu" or y.ndim != 1:
            raise InvalidRequest(f"labels must be one integer class per input, got {y.dtype} of shape {y.shape}")
        return [Record(first_id + i, "user", "", {"x": xi, "y": np.array([yi], dtype=np.int64)}, {}, "train",
                       "active") for i, (xi, yi) in enumerate(zip(x, y.tolist(), strict=True))]

    def model_info(self, model: nn.Module, data: RecordDataset) -> dict[str, Any]:
        """Input shape from the data; the class count from the width of the model's output."""
        with torch.no_grad():
            width = int(self.logits(model.eval(), data.tensors_slice(0, 1)).shape[1])
        return {"input_shape": list(data.tensors["x"].shape[1:]), "num_classes": width}

    def data_info(self, data: RecordDataset, spec: ModelSpec | None = None,
                  prep: DataSpec | None = None) -> dict[str, Any]:
        """Input shape, number of classes (largest label + 1) and, where the recipe's ``[data]`` (``prep``) asks for
        it, the preprocessing fitted on these records (``transform``, see :mod:`disgorge.models.preprocess`).

        Refuses a largest label that implies over ten times as many classes as distinct labels are present (a stray
        label such as 999 among 0..9 would build a 1000-class model), and, given the recipe's ``spec``, a model over
        :data:`~disgorge.spec.MAX_PARAMETERS` (counted without allocating it).
        """
        from ..spec import MAX_PARAMETERS

        y = data.tensors["y"]
        info = {"input_shape": list(data.tensors["x"].shape[1:]), "num_classes": int(y.max()) + 1}
        if prep is not None:
            facts = preprocess.fit_transform(prep.transform, prep.shape, data.tensors["x"].numpy())
            if facts is not None:
                info["transform"] = facts
            _warn_unscaled(prep, data.tensors["x"])
        distinct = int(torch.unique(y).numel())
        if info["num_classes"] > 10 * distinct:
            raise InvalidRequest(f"a training record is labelled {info['num_classes'] - 1}, which implies "
                                 f"{info['num_classes']} classes, but the records hold only {distinct} distinct "
                                 "label(s); labels must number the classes 0, 1, 2, ...: fix or forget that record")
        if spec is not None:
            with torch.device("meta"):  # shapes only: nothing is allocated
                size = sum(p.numel() for p in self.build_model(spec, info).parameters())
            if size > MAX_PARAMETERS:
                raise InvalidRequest(f"this recipe's model would have {size:,} parameters on these inputs "
                                     f"{preprocess.network_shape(info)}; models are capped at {MAX_PARAMETERS:,} "
                                     "(MAX_PARAMETERS): use smaller widths")
        return info

    def dataset(self, records: Sequence[Record]) -> RecordDataset:
        """Stack the records' ``x`` and ``y`` fields."""
        if not records:
            return RecordDataset([], x=torch.zeros(0, device="cpu"), y=torch.zeros(0, dtype=torch.long, device="cpu"))
        xs, ys = labelled_fields(records, "x", "classification")
        shapes = {x.shape for x in xs}
        if len(shapes) > 1:
            raise InvalidRequest(f"records have different input shapes {sorted(shapes)}; they cannot share a model")
        x = torch.from_numpy(np.stack(xs).astype(np.float32))
        return RecordDataset([r.id for r in records], x=x, y=torch.tensor(ys, dtype=torch.long, device="cpu"))

    def check_model(self, spec: ModelSpec) -> None:
        """The family must be registered and its parameters valid."""
        family = MODELS.get(spec.family)
        family_config(family.name, family.config, spec.params)

    def num_classes(self, info: dict[str, Any]) -> int:
        """The number of classes recorded in the model's data facts."""
        return int(info["num_classes"])

    def build_model(self, spec: ModelSpec, info: dict[str, Any]) -> nn.Module:
        """Build the recipe's model family for this input shape and class count, behind the preprocessing the data
        facts hold (if any)."""
        family = MODELS.get(spec.family)
        net = family.build(spec.params, preprocess.network_shape(info), int(info["num_classes"]))
        return preprocess.wrap(net, info.get("transform"))

    def prune_vocabulary(self, model: nn.Module, data_info: dict[str, Any],
                         retain: RecordDataset) -> tuple[nn.Module, dict[str, Any]]:
        """After an erasure: preprocessing statistics fitted again on the records kept (a min or max may be a
        forgotten record's own value), in the data facts and in the model's transform layer."""
        if "transform" not in data_info or not len(retain):
            return model, data_info
        facts = preprocess.refit(data_info["transform"], retain.tensors["x"].numpy())
        for module in model.modules():
            if isinstance(module, preprocess.Preprocess):
                module.load_facts(facts)
        return model, {**data_info, "transform": facts}

    def retrained_info(self, data_info: dict[str, Any], retain: RecordDataset, spec: ModelSpec) -> dict[str, Any]:
        """The original's data facts (every class kept), with preprocessing fitted on the retained records as
        training on them alone would fit it."""
        if "transform" not in data_info or not len(retain):
            return data_info
        return {**data_info, "transform": preprocess.refit(data_info["transform"], retain.tensors["x"].numpy())}

    def per_example_loss(self, model: nn.Module, batch: Batch) -> torch.Tensor:
        """Cross-entropy of each example (on the model's device)."""
        batch = devices.to_model(model, batch)
        return F.cross_entropy(model(batch["x"]), batch["y"], reduction="none")

    def logits(self, model: nn.Module, batch: Batch) -> torch.Tensor:
        """Class scores (on the model's device)."""
        return model(devices.to_model(model, batch)["x"])

    def with_labels(self, batch: Batch, labels: torch.Tensor) -> Batch:
        """The batch with new class labels."""
        return {**batch, "y": labels}

    def nearest_wrong_labels(self, model: nn.Module, batch: Batch, step: float) -> torch.Tensor:
        """Boundary Shrink's neighbour search: the class predicted after an FGSM step of size ``step`` on the input.

        If the step does not leave the true class, the runner-up class of the perturbed input is used instead. The
        step is taken on the network's own inputs, after the model's preprocessing, so its size does not depend on
        the scale the records are stored in.
        """
        batch = devices.to_model(model, batch)
        net, x = model, batch["x"]
        if isinstance(model, preprocess.Preprocessed):
            net, x = model.net, model.transform(x)
        x = x.detach().clone().requires_grad_(True)
        loss = F.cross_entropy(net(x), batch["y"])
        (grad,) = torch.autograd.grad(loss, x)
        with torch.no_grad():
            logits = net(x + step * grad.sign())
            logits.scatter_(1, batch["y"][:, None], float("-inf"))
            return logits.argmax(1)

    def evaluate(self, model: nn.Module, data: RecordDataset, batch_size: int = 512) -> dict[str, np.ndarray]:
        """Per-example loss, correctness, confidence in the true class, predicted class and the loss attack's
        membership score ``mia_loss`` (minus the loss)."""
        return label_outputs(self, model, data, batch_size)

    def strata(self, data: RecordDataset) -> np.ndarray:
        """The class label of each record."""
        return data.tensors["y"].numpy()

    def random_labels(self, batch: Batch, num_classes: int, generator: torch.Generator | None = None) -> Batch:
        """The batch with each label replaced by a uniformly drawn *different* class."""
        y = batch["y"]
        where = generator.device if generator is not None else y.device  # drawn where the seed is, then moved
        shift = torch.randint(1, num_classes, y.shape, generator=generator, device=where).to(y.device)
        return {**batch, "y": (y + shift) % num_classes}



def labelled_fields(records: Sequence[Record], field: str, kind: str) -> tuple[list[Any], list[int]]:
    """Each record's ``field`` and integer label ``y``; a one-line error for an erased record or one of another
    kind (``kind`` names the task in it)."""
    values, labels = [], []
    for r in records:
        if r.fields is None:
            raise InvalidRequest(f"record {r.id} was erased; its content is gone")
        if field not in r.fields or "y" not in r.fields:
            raise InvalidRequest(f"record {r.id} is not a {kind} record (needs fields {field} and y)")
        values.append(r.fields[field])
        labels.append(int(np.asarray(r.fields["y"]).reshape(-1)[0]))
    return values, labels


@torch.no_grad()
def label_outputs(task: Task, model: nn.Module, data: RecordDataset, batch_size: int = 512) -> dict[str, np.ndarray]:
    """What a classifier's ``evaluate`` returns, from the task's class scores on ``data`` (computed on the model's
    device, returned as numpy): per-example ``loss``, ``correct``, ``confidence``, ``pred`` and ``mia_loss``."""
    was_training = model.training
    model.eval()
    outs: dict[str, list[np.ndarray]] = {"loss": [], "correct": [], "confidence": [], "pred": []}
    for i in range(0, len(data), batch_size):
        batch = data.tensors_slice(i, i + batch_size)
        logits = task.logits(model, batch)
        yb = batch["y"].to(logits.device)
        if int(yb.max()) >= logits.shape[1]:
            raise InvalidRequest(f"a record is labelled {int(yb.max())} but the model has only {logits.shape[1]} "
                                 "classes; it cannot be evaluated on these records")
        nll = -F.log_softmax(logits.float(), dim=1).gather(1, yb[:, None]).squeeze(1)
        pred = logits.argmax(1)
        outs["loss"].append(devices.numpy(nll))
        outs["confidence"].append(devices.numpy(torch.exp(-nll)))
        outs["correct"].append(devices.numpy((pred == yb).float()))
        outs["pred"].append(devices.numpy(pred))
    model.train(was_training)
    if not len(data):
        return {k: np.zeros(0) for k in (*outs, "mia_loss")}
    result = {k: np.concatenate(v) for k, v in outs.items()}
    result["mia_loss"] = -result["loss"]
    return result


def _inputs_and_labels(data: Any) -> tuple[np.ndarray, np.ndarray]:
    """``(x, y)`` as numpy arrays from a pair, a ``TensorDataset`` or a ``DataLoader`` of ``(x, y)`` batches."""
    if isinstance(data, TensorDataset):
        data = data.tensors
    if isinstance(data, DataLoader):
        batches = list(data)
        if not batches or not all(isinstance(b, (tuple, list)) and len(b) == 2 for b in batches):
            raise InvalidRequest("a classification DataLoader must yield (inputs, labels) batches")
        data = tuple(torch.cat([torch.as_tensor(b[i]) for b in batches]) for i in (0, 1))
    if not isinstance(data, (tuple, list)) or len(data) != 2:
        raise InvalidRequest("classification data must be (inputs, labels): a pair of tensors or arrays, a "
                             f"TensorDataset or a DataLoader of such batches; got {type(data).__name__}")
    x, y = (np.asarray(torch.as_tensor(t).detach().cpu()) for t in data)
    return x.astype(np.float32, copy=False), y


RAW_SCALE = 10.0
"""Inputs whose largest magnitude exceeds this, fed to the network as stored, draw a warning at training."""


def _warn_unscaled(prep: DataSpec, x: torch.Tensor) -> None:
    """Warn when a recipe feeds large raw inputs (pixels at 0-255, counts, money) to the network unprepared:
    unlearning steps of default size then move its first layer far more than on unit-scale inputs, and the retain
    guard may roll the methods back to the original."""
    if prep.transform or not x.is_floating_point() or x.numel() == 0:
        return
    largest = float(x.abs().max())
    if largest > RAW_SCALE:
        log.warning("the inputs reach %g and the recipe prepares none: add transform = \"standardize\" under [data] "
                    "so that training and unlearning defaults do not depend on the inputs' raw scale", largest)
