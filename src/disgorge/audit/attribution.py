"""Training-data attribution: from a behaviour of a model (a probe, a group's errors, one record's prediction) to
the training records and sources that drove it.

The scores are TracIn (Pruthi et al., NeurIPS 2020, "Estimating Training Data Influence by Tracing Gradient
Descent") as dattri implements it (:class:`dattri.algorithm.tracin.TracInAttributor`): for each training record z,
``sum over checkpoints c of lr_c * grad loss(z; w_c) . grad B(w_c)``, where B is the behaviour's loss (lower = more of
the behaviour): a positive score means a gradient step on z moved the model towards the behaviour. The checkpoints
are those the recipe kept (``train.checkpoints``), else the final weights alone (then the score is a gradient
similarity). Gradients are randomly projected to ``proj_dim`` dimensions (dattri's default, 512). Record scores sum
to source scores.

The behaviour's gradient is the gradient of its mean loss over at most ``max_behaviour`` of its rows (a seeded
sample), computed once per batch of training records: dattri sees the behaviour as one test item holding all its
rows, so a probe of thousands of inputs costs one gradient, not thousands."""

from __future__ import annotations

import logging
import time
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch
from torch import nn
from torch.utils.data import DataLoader, Dataset

from ..errors import InvalidRequest
from ..tasks import RecordDataset, Task

log = logging.getLogger(__name__)

MAX_BEHAVIOUR = 256
"""Most behaviour rows whose mean loss gradient is traced (a seeded sample of a larger probe)."""


@dataclass
class Behaviour:
    """What to attribute: rows whose mean loss, times ``sign``, falls as the behaviour grows (``sign`` -1: the
    behaviour is the rows' errors, so records that raise their loss drive it). ``what`` says it in words."""

    what: str
    data: RecordDataset
    sign: float = 1.0


@dataclass
class Attribution:
    """Per training record its score (``ids`` and ``sources`` row for row, ``scores``), and how it was computed."""

    ids: np.ndarray
    sources: np.ndarray
    scores: np.ndarray
    checkpoints: int
    seconds: float

    def by_source(self) -> list[dict[str, Any]]:
        """Per source: the sum of its records' scores, its record count and its share of the positive total, best
        first."""
        positive = float(np.clip(self.scores, 0, None).sum()) or 1.0
        out = []
        for name in np.unique(self.sources):
            rows = self.sources == name
            total = float(self.scores[rows].sum())
            out.append({"source": str(name), "score": total, "records": int(rows.sum()),
                        "share": float(np.clip(self.scores[rows], 0, None).sum()) / positive})
        return sorted(out, key=lambda d: -d["score"])

    def top_records(self, k: int) -> list[dict[str, Any]]:
        """The ``k`` records with the highest scores, best first."""
        order = np.argsort(-self.scores, kind="stable")[:k]
        return [{"id": int(self.ids[i]), "source": str(self.sources[i]), "score": float(self.scores[i])}
                for i in order]

    def precision_at(self, k: int, guilty: set[int]) -> float:
        """The share of the ``k`` best-scored records that are in ``guilty``."""
        top = self.top_records(k)
        return sum(r["id"] in guilty for r in top) / max(len(top), 1)


class _Rows(Dataset):
    """A dataset's rows as tuples of tensors in a fixed key order (dattri batches tuples)."""

    def __init__(self, data: RecordDataset, keys: list[str]) -> None:
        self.data, self.keys = data, keys

    def __len__(self) -> int:
        return len(self.data)

    def __getitem__(self, i: int) -> tuple[torch.Tensor, ...]:
        return tuple(self.data.tensors[k][i] for k in self.keys)


class _Whole(Dataset):
    """All rows of a dataset as one item (so the behaviour is one 'test sample' whose gradient is its mean's)."""

    def __init__(self, data: RecordDataset, keys: list[str]) -> None:
        self.item = tuple(data.tensors[k] for k in keys)

    def __len__(self) -> int:
        return 1

    def __getitem__(self, i: int) -> tuple[torch.Tensor, ...]:
        return self.item


class _Loss(nn.Module):
    """The task's loss over a model, as a module ``torch.func.functional_call`` can run with other weights."""

    def __init__(self, task: Task, model: nn.Module, keys: list[str]) -> None:
        super().__init__()
        self.task, self.model, self.keys = task, model, keys

    def forward(self, *tensors: torch.Tensor) -> torch.Tensor:
        return self.task.per_example_loss(self.model, dict(zip(self.keys, tensors, strict=True)))


def tracin(task: Task, model: nn.Module, train: RecordDataset, behaviour: Behaviour,
           checkpoints: list[tuple[dict[str, torch.Tensor], float]], *, batch_size: int = 128, proj_dim: int = 512,
           max_behaviour: int = MAX_BEHAVIOUR, seed: int = 0) -> Attribution:
    """TracIn scores of every record of ``train`` for ``behaviour`` on ``model``, over ``checkpoints`` (each a
    state dict and the learning rate it was trained with; none: the model's own weights, weight 1)."""
    from dattri.algorithm.tracin import TracInAttributor
    from dattri.task import AttributionTask

    if len(behaviour.data) == 0:
        raise InvalidRequest(f"{behaviour.what}: no rows to attribute from; give a behaviour the held-out data shows")
    if len(train) == 0:
        raise InvalidRequest("the model has no live training records to attribute to")
    start = time.perf_counter()
    data = behaviour.data
    if len(data) > max_behaviour:
        pick = np.sort(np.random.default_rng(seed).choice(len(data), size=max_behaviour, replace=False))
        data = data.subset(data.ids[pick]) if len(np.unique(data.ids)) == len(data) else RecordDataset(
            data.ids[pick], **{k: t[torch.from_numpy(pick)] for k, t in data.tensors.items()})
    keys = sorted(train.tensors)
    if sorted(data.tensors) != keys:
        raise InvalidRequest(f"{behaviour.what}: its rows hold {sorted(data.tensors)}, the training records {keys}; "
                             "give a behaviour in the model's data format")
    was_training = model.training
    model.eval()
    loss = _Loss(task, model, keys)
    sign = float(behaviour.sign)

    def train_loss(params: dict[str, torch.Tensor], batch: tuple[torch.Tensor, ...]) -> torch.Tensor:
        one = tuple(t.unsqueeze(0) for t in batch)  # dattri vmaps over records: each call sees one, unbatched
        return torch.func.functional_call(loss, params, one)[0]

    def target(params: dict[str, torch.Tensor], batch: tuple[torch.Tensor, ...]) -> torch.Tensor:
        return sign * torch.func.functional_call(loss, params, batch).mean()

    states = [s for s, _ in checkpoints] or [{k: v.detach() for k, v in loss.state_dict().items()}]
    weights = torch.tensor([lr for _, lr in checkpoints] or [1.0])
    states = [{k if k.startswith("model.") else f"model.{k}": v for k, v in s.items()} for s in states]
    device = next(model.parameters()).device
    attribution_task = AttributionTask(loss_func=train_loss, model=loss, checkpoints=states, target_func=target)
    trained = [n for n, p in loss.named_parameters() if p.requires_grad]
    frozen = len(trained) < len(list(loss.parameters()))
    attributor = TracInAttributor(attribution_task, weight_list=weights, normalized_grad=False,
                                  projector_kwargs={"proj_dim": proj_dim, "proj_seed": seed, "device": str(device)},
                                  layer_name=trained if frozen else None, device=str(device))
    try:
        scores = attributor.attribute(
            DataLoader(_Rows(_on(train, device), keys), batch_size=batch_size, shuffle=False),
            DataLoader(_Whole(_on(data, device), keys), batch_size=1, shuffle=False))
    finally:
        model.train(was_training)
    sources = train.sources if train.sources is not None else np.full(len(train), "", dtype=object)
    return Attribution(train.ids.copy(), sources, scores[:, 0].double().numpy(), len(checkpoints) or 1,
                       time.perf_counter() - start)


def _on(data: RecordDataset, device: torch.device) -> RecordDataset:
    """The dataset with its tensors on ``device``."""
    out = RecordDataset(data.ids, **{k: t.to(device) for k, t in data.tensors.items()})
    out.sources, out.attributes = data.sources, data.attributes
    return out
