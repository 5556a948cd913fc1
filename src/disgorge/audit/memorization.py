"""Per-record memorisation: how member-like each training record looks to the model.

``score``: the share (percent) of held-out records whose loss is above the record's (ties count half), i.e. the
record's loss placed in the held-out loss distribution (Yeom et al., 2018, as a rank): 50 is a typical unseen
record, near 100 a record the model fits better than almost any record it never saw.

``calibrated`` (where the ledger keeps models of the same recipe trained without the record: verification
references, retrained models): the loss of those models on the record minus this model's, averaged over them: the
difficulty-calibrated membership score (Watson et al., ICLR 2022), a one-sided likelihood ratio in log space
(LiRA's offline variant without the Gaussian fit; Carlini et al., 2022). Positive: this model fits the record better
than models that never saw it, so the record's own content, not its easiness, is what the model learned."""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any

import numpy as np
from pyroaring import BitMap
from scipy.stats import rankdata
from sklearn.metrics import roc_auc_score
from torch import nn

from ..errors import InvalidRequest
from ..tasks import RecordDataset, Task

MEMORIZED = 95.0
"""A record whose score is at least this (percent) counts as memorised in the per-source totals."""


def heldout_rank(losses: np.ndarray, heldout: np.ndarray) -> np.ndarray:
    """For each loss, the percent of ``heldout`` losses above it (ties half)."""
    ranks = rankdata(np.concatenate([heldout, losses]))[len(heldout):]
    own = rankdata(losses)  # each loss's rank among the training losses, removed to leave its place among held-out
    below_or_tied = ranks - own  # held-out losses below it, ties counted half
    return 100.0 * (1.0 - below_or_tied / max(len(heldout), 1))


def memorization_audit(task: Task, model: nn.Module, train: RecordDataset, heldout: RecordDataset, *,
                       references: Sequence[tuple[Callable[[], nn.Module], BitMap]] = (),
                       top: int = 20) -> dict[str, Any]:
    """Scores of every record of ``train`` on ``model`` against ``heldout``; ``references``: models of the same
    recipe (each loaded when used, one at a time) with the records each was trained on, for the calibrated
    score."""
    if len(train) == 0:
        raise InvalidRequest("the model has no live training records to audit")
    if len(heldout) == 0:
        raise InvalidRequest("the memorisation audit compares training losses with held-out ones; ingest held-out "
                             "records (--split test or --holdout)")
    loss = np.asarray(task.evaluate(model, train)["loss"], dtype=float)
    held = np.asarray(task.evaluate(model, heldout)["loss"], dtype=float)
    score = heldout_rank(loss, held)
    calibrated = np.full(len(train), np.nan)
    seen = np.zeros(len(train))
    for ref, records in references:
        unseen = ~np.isin(train.ids, np.fromiter(records, dtype=np.int64, count=len(records)))
        if not unseen.any():
            continue
        ref_loss = np.asarray(task.evaluate(ref(), train.subset(train.ids[unseen]))["loss"], dtype=float)
        calibrated[unseen] = np.nan_to_num(calibrated[unseen]) + (ref_loss - loss[unseen])
        seen[unseen] += 1
    calibrated = np.where(seen > 0, calibrated / np.maximum(seen, 1), np.nan)
    auc = roc_auc_score(np.r_[np.ones(len(loss)), np.zeros(len(held))], -np.r_[loss, held]) * 100
    sources = train.sources if train.sources is not None else np.full(len(train), "", dtype=object)
    key = np.where(np.isnan(calibrated), -np.inf, calibrated) if (seen > 0).any() else score
    order = np.argsort(-key, kind="stable")[:top]
    per_source = []
    for name in np.unique(sources):
        rows = sources == name
        cal = calibrated[rows][~np.isnan(calibrated[rows])]
        per_source.append({"source": str(name), "records": int(rows.sum()),
                           "mean_score": round(float(score[rows].mean()), 4),
                           "memorized": int((score[rows] >= MEMORIZED).sum()),
                           "mean_calibrated": round(float(cal.mean()), 4) if len(cal) else None})
    per_source.sort(key=lambda d: (-d["mean_score"], d["source"]))
    return {"records": len(train), "heldout": len(heldout), "membership_auc": round(float(auc), 4),
            "memorized_threshold": MEMORIZED, "references": len(references),
            "calibrated_records": int((seen > 0).sum()),
            "top": [{"id": int(train.ids[i]), "source": str(sources[i]), "score": round(float(score[i]), 4),
                     "loss": round(float(loss[i]), 6),
                     "calibrated": None if np.isnan(calibrated[i]) else round(float(calibrated[i]), 6)}
                    for i in order],
            "sources": per_source}
