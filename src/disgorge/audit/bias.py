"""Group figures of a model with fairlearn's :class:`~fairlearn.metrics.MetricFrame`: per group of each attribute
and per intersection of the attributes, the largest gap between groups (``difference()``) and the smallest ratio
(``ratio()``), each with bootstrap intervals (fairlearn's ``n_boot`` resampling).

Classifiers: accuracy, selection rate (share predicted ``positive``), true and false positive rates. Language
models: answer accuracy (the task's ``correct``: the greedy answer gives the key or reproduces the answer). Figures
in percent; differences in points."""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any

import numpy as np
import pandas as pd
from torch import nn

from ..errors import InvalidRequest
from ..evaluate.metrics import accuracy
from ..evidence.probes import predictions
from ..tasks import RecordDataset, Task

QUANTILES = [0.025, 0.975]
NO_VALUE = "(none)"
"""The group of records that carry no value for an attribute."""

Metric = Callable[[np.ndarray, np.ndarray], float]


def _rate(mask_of: Callable[[np.ndarray, np.ndarray], tuple[np.ndarray, np.ndarray]]) -> Metric:
    def metric(y_true: np.ndarray, y_pred: np.ndarray) -> float:
        among, hit = mask_of(np.asarray(y_true), np.asarray(y_pred))
        return float(hit[among].mean() * 100) if among.any() else float("nan")
    return metric


def classifier_metrics(positive: int) -> dict[str, Metric]:
    """Accuracy, selection rate, TPR and FPR (``positive``: the class that counts as selected), in percent."""
    return {
        "accuracy": lambda t, p: accuracy((np.asarray(t) == np.asarray(p)).astype(float)),
        "selection_rate": _rate(lambda t, p: (np.ones(len(t), bool), p == positive)),
        "tpr": _rate(lambda t, p: (t == positive, p == positive)),
        "fpr": _rate(lambda t, p: (t != positive, p == positive)),
    }


ANSWER_METRICS: dict[str, Metric] = {"answer_accuracy": lambda t, p: accuracy(np.asarray(p, dtype=float))}
"""A language model's metric: the share of answers given (``y_pred`` holds the task's 0/1 ``correct``)."""


def outcomes(task: Task, model: nn.Module, data: RecordDataset) -> tuple[np.ndarray, np.ndarray, bool]:
    """``(y_true, y_pred, classifier)``: labels and predicted classes for a classifier; for other tasks ones and
    the task's 0/1 ``correct``."""
    if "logits" in task.capabilities:
        return np.asarray(task.strata(data)), predictions(model, task, data), True
    correct = np.asarray(task.evaluate(model, data)["correct"], dtype=float)
    return np.ones(len(data)), correct, False


def _features(data: RecordDataset, by: Sequence[str]) -> pd.DataFrame:
    missing = [a for a in by if a not in data.attributes]
    if missing:
        known = ", ".join(sorted(data.attributes)) or "none (give --attribute COLUMN at ingest)"
        raise InvalidRequest(f"no record here carries attribute(s) {', '.join(missing)}; attributes: {known}")
    return pd.DataFrame({a: [NO_VALUE if v is None else str(v) for v in data.attributes[a]] for a in by})


def _round(v: Any) -> float | None:
    v = float(v)
    return None if np.isnan(v) or np.isinf(v) else round(v, 4)


def _frame(metrics: dict[str, Metric], y_true: np.ndarray, y_pred: np.ndarray, features: pd.DataFrame,
           n_boot: int, seed: int) -> dict[str, Any]:
    from fairlearn.metrics import MetricFrame

    boot = {"n_boot": n_boot, "ci_quantiles": QUANTILES, "random_state": seed} if n_boot else {}
    mf = MetricFrame(metrics=metrics, y_true=y_true, y_pred=y_pred, sensitive_features=features, **boot)
    names = list(metrics)
    counts = features.value_counts()
    groups = []
    for key, row in mf.by_group.iterrows():
        key = key if isinstance(key, tuple) else (key,)
        group = dict(zip(features.columns, map(str, key), strict=True))
        entry = {"group": group, "records": int(counts.get(key, 0)), "figures": {m: _round(row[m]) for m in names}}
        if n_boot:
            lo, hi = (ci.loc[key if len(key) > 1 else key[0]] for ci in mf.by_group_ci)
            entry["interval"] = {m: [_round(lo[m]), _round(hi[m])] for m in names}
        groups.append(entry)
    out: dict[str, Any] = {"by": list(features.columns), "groups": groups,
                           "overall": {m: _round(mf.overall[m]) for m in names},
                           "difference": {m: _round(v) for m, v in mf.difference().items()},
                           "ratio": {m: _round(v) for m, v in mf.ratio().items()}}
    if n_boot:
        for what, cis in (("overall", mf.overall_ci), ("difference", mf.difference_ci()), ("ratio", mf.ratio_ci())):
            out[f"{what}_interval"] = {m: [_round(cis[0][m]), _round(cis[1][m])] for m in names}
    return out


def bias_audit(task: Task, model: nn.Module, data: RecordDataset, by: Sequence[str], *, positive: int | None = None,
               n_boot: int = 200, seed: int = 0) -> dict[str, Any]:
    """Group figures of ``model`` on ``data`` split by each attribute of ``by`` and by their intersection (more
    than one attribute). ``positive`` (classifiers): the selected class; default 1 for two classes, else only
    accuracy is reported unless one is given."""
    if not by:
        raise InvalidRequest("give at least one attribute: --by ATTR[,ATTR]")
    if len(data) == 0:
        raise InvalidRequest("no records to audit on this split; ingest held-out records (--split test or "
                             "--holdout) or use --split train")
    if n_boot < 0:
        raise InvalidRequest(f"--boot must be >= 0, got {n_boot}")
    features = _features(data, by)
    y_true, y_pred, classifier = outcomes(task, model, data)
    if classifier:
        classes = int(max(y_true.max(initial=0), y_pred.max(initial=0))) + 1
        if positive is None and classes <= 2:
            positive = 1
        metrics = classifier_metrics(positive) if positive is not None else {
            "accuracy": classifier_metrics(0)["accuracy"]}
    else:
        metrics = ANSWER_METRICS
    frames = [_frame(metrics, y_true, y_pred, features[[a]], n_boot, seed) for a in by]
    if len(by) > 1:
        frames.append(_frame(metrics, y_true, y_pred, features, n_boot, seed))
    return {"records": len(data), "positive": positive, "metrics": list(metrics), "n_boot": n_boot,
            "quantiles": QUANTILES, "frames": frames}
