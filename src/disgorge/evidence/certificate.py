"""Verification: compare an unlearned model with its parent and a model retrained without the forget set.

Nothing here trains or looks anything up by name: the reference model and the effect probes are passed in."""

from __future__ import annotations

import json
import logging
import math
from collections.abc import Sequence
from dataclasses import asdict, dataclass
from typing import Any

import numpy as np
import torch
from pyroaring import BitMap
from torch import nn

from .._io import atomic_write_text
from ..errors import InvalidRequest
from ..evaluate.metrics import avg_gap
from ..ledger import ModelRow
from ..tasks import RecordDataset, Task
from ..tasks.base import CLASSIFICATION_FIGURES
from ..workspace import Workspace
from .probes import Probe

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class Thresholds:
    """Pass/fail limits of a certificate, in percentage points."""

    effect_gap: float = 5.0
    ta_drop: float = 3.0
    ra_drop: float = 5.0
    mia_gap: float = 10.0
    avg_gap: float = 5.0
    forget_quality: float = 0.05  # minimum KS p-value (language models)


@dataclass
class Measurement:
    """One model's figures and its per-example outputs on the forget set (for figures relative to a reference)."""

    figures: dict[str, float | None]
    forget: dict[str, np.ndarray]


def measure(task: Task, model: nn.Module, forget: RecordDataset, retain: RecordDataset, test: RecordDataset,
            probes: Sequence[Probe] = (), *, seed: int = 0, reference: Measurement | None = None) -> Measurement:
    """The task's figures for one model (UA, RA, TA and MIAs for classifiers; TOFU/MUSE figures for language
    models), the main effect probe (the first of ``probes``) on the held-out data and, given the reference's
    measurement, the relative figures."""
    outs = [task.evaluate(model, d) for d in (forget, retain, test)]
    figures: dict[str, float | None] = dict(task.split_figures(*outs, seed=seed))
    figures["effect"] = probes[0].measure(model, task, test) if probes else None
    figures = {k: _clean(v) for k, v in figures.items()}
    if reference is not None:
        relative = task.relative_figures(outs[0], figures, reference.forget, reference.figures)
        figures.update({k: _clean(v) for k, v in relative.items()})
    return Measurement(figures, outs[0])


def measure_reference(task: Task, model: nn.Module, forget: RecordDataset, retain: RecordDataset,
                      test: RecordDataset, probes: Sequence[Probe] = (), *, seed: int = 0) -> Measurement:
    """:func:`measure` for the retrained reference itself (its relative figures compare it with itself)."""
    ref = measure(task, model, forget, retain, test, probes, seed=seed)
    relative = task.relative_figures(ref.forget, ref.figures, ref.forget, ref.figures)
    ref.figures.update({k: _clean(v) for k, v in relative.items()})
    return ref


def _clean(v: float | None) -> float | None:
    """NaN to None; 4 decimals, or 4 significant digits for tiny values (a forget quality of 1e-29 is not 0)."""
    if v is None or math.isnan(v):
        return None
    return round(float(v), 4) if abs(v) >= 1e-3 else float(f"{float(v):.4g}")


def _same_weights(a: nn.Module, b: nn.Module) -> bool:
    sa, sb = a.state_dict(), b.state_dict()
    return all(torch.equal(sa[k], sb[k]) for k in sa)


def certify(ws: Workspace, *, task: Task, parent: ModelRow, parent_model: nn.Module, child: ModelRow,
            child_model: nn.Module, reference: ModelRow, reference_model: nn.Module, forget_ids: BitMap,
            request_id: int, method: str, config: dict[str, Any], report: dict[str, Any] | None = None,
            thresholds: Thresholds | None = None, probes: Sequence[Probe] = ()) -> dict[str, Any]:
    """Measure the original, unlearned and retrained reference models (each with ``probes``) and return the
    certificate (a JSON-ready dict)."""
    thresholds = thresholds or Thresholds()
    retain_ids = parent.records - forget_ids
    forget = ws.dataset(task, forget_ids)
    retain = ws.dataset(task, retain_ids)
    test = ws.dataset(task, ws.test_ids())
    if len(test) == 0:
        raise InvalidRequest("verification needs held-out records (split 'test'); ingest some with --split test")
    ref = measure_reference(task, reference_model, forget, retain, test, probes)
    metrics = {name: measure(task, m, forget, retain, test, probes, reference=ref).figures
               for name, m in (("original", parent_model), ("unlearned", child_model))}
    metrics["reference"] = ref.figures
    gaps = {name: round(avg_gap(metrics[name], metrics["reference"], task.figures.gap), 4)
            for name in ("original", "unlearned")}
    changed = not _same_weights(parent_model, child_model)
    checks = _checks(task, metrics, gaps["unlearned"], thresholds, changed)
    seconds = {"method": round(child.seconds, 4), "retrain": round(reference.seconds, 4)}
    return {
        "format": "disgorge-certificate/1",
        "request": request_id,
        "method": method,
        "config": config,
        "method_report": report or {},
        "scenario": ws.scenario,
        "task": task.name,
        "figures": {"keys": list(task.figures.keys), "labels": task.figures.labels, "gap": list(task.figures.gap),
                    "units": task.figures.units},
        "effect": probes[0].meta() if probes else None,
        "records": {"forgotten": len(forget_ids), "retained": len(retain_ids), "test": len(test)},
        "models": {
            "parent": {"id": parent.id, "sha256": parent.weights_sha256},
            "child": {"id": child.id, "sha256": child.weights_sha256},
            "reference": {"id": reference.id, "sha256": reference.weights_sha256},
        },
        "metrics": metrics,
        "avg_gap": gaps["unlearned"],
        "avg_gap_original": gaps["original"],
        "changed": changed,
        "seconds": seconds,
        "time_ratio": round(seconds["method"] / seconds["retrain"], 4) if seconds["retrain"] > 0 else None,
        "thresholds": asdict(thresholds),
        "checks": checks,
        "passed": all(c["passed"] for c in checks.values()),
    }


def _checks(task: Task, metrics: dict[str, dict[str, float | None]], gap: float, t: Thresholds,
            changed: bool) -> dict[str, dict[str, Any]]:
    u, r, keys = metrics["unlearned"], metrics["reference"], task.figures
    checks: dict[str, dict[str, Any]] = {
        "changed": {"value": changed, "limit": True, "passed": changed},
        "avg_gap": {"value": gap, "limit": t.avg_gap, "passed": gap <= t.avg_gap},
    }

    def diff(name: str, value: float | None, limit: float) -> None:
        if value is not None:
            checks[name] = {"value": round(value, 4), "limit": limit, "passed": value <= limit}

    diff("ta_drop", _sub(r[keys.test], u[keys.test]), t.ta_drop)
    diff("ra_drop", _sub(r[keys.retain], u[keys.retain]), t.ra_drop)
    diff("mia_gap", _abs(_sub(u[keys.mia], r[keys.mia])), t.mia_gap)
    diff("effect_gap", _abs(_sub(u["effect"], r["effect"])), t.effect_gap)
    if u.get("forget_quality") is not None:
        # TOFU's reading: a KS p-value below 0.05 tells the unlearned model's truth ratios from the retrained one's.
        value = u["forget_quality"]
        checks["forget_quality"] = {"value": value, "limit": t.forget_quality, "passed": value >= t.forget_quality}
    return checks


def _sub(a: float | None, b: float | None) -> float | None:
    return None if a is None or b is None else a - b


def _abs(a: float | None) -> float | None:
    return None if a is None else abs(a)


def write_certificate(ws: Workspace, certificate: dict[str, Any]) -> dict[str, str]:
    """Write ``certificate.json`` and ``certificate.md`` under ``reports/r<request>/<child>/``; return the paths."""
    folder = ws.report_dir(certificate["request"]) / certificate["models"]["child"]["id"]
    json_path, md_path = folder / "certificate.json", folder / "certificate.md"
    atomic_write_text(json_path, json.dumps(certificate, indent=2) + "\n")
    atomic_write_text(md_path, render_markdown(certificate))
    return {"json": str(json_path), "markdown": str(md_path)}


def figure_rows(certificate: dict[str, Any]) -> list[tuple[str, str, str, str]]:
    """(label, original, unlearned, reference) rows of a certificate's figures, formatted."""
    m = certificate["metrics"]
    keys = certificate.get("figures") or {"keys": CLASSIFICATION_FIGURES.keys, "labels": CLASSIFICATION_FIGURES.labels}
    eff = (certificate.get("effect") or {}).get("name")
    rows = []
    for key in keys["keys"]:
        if all(m[col].get(key) is None for col in m):
            continue
        label = eff.replace("_", " ") if key == "effect" and eff else keys["labels"][key]
        rows.append((label, *(_fmt(m[col].get(key)) for col in ("original", "unlearned", "reference"))))
    rows.append(("Avg Gap to reference", _fmt(certificate["avg_gap_original"]), _fmt(certificate["avg_gap"]), "0.00"))
    return rows


def _fmt(v: float | None) -> str:
    if v is None:
        return "-"
    return f"{v:.2g}" if 0 < abs(v) < 0.01 else f"{v:.2f}"


def render_markdown(c: dict[str, Any]) -> str:
    """The human-readable certificate."""
    verdict = "PASSED" if c["passed"] else "FAILED"
    lines = [
        f"# Unlearning certificate: request {c['request']} — {verdict}",
        "",
        f"Method `{c['method']}` turned model `{c['models']['parent']['id']}` into "
        f"`{c['models']['child']['id']}`, forgetting {c['records']['forgotten']} records; "
        f"reference `{c['models']['reference']['id']}` was retrained without them "
        f"({c['records']['retained']} records); held-out set of {c['records']['test']}. "
        f"{c.get('figures', {}).get('units', CLASSIFICATION_FIGURES.units)}",
        "",
        "| figure | original | unlearned | retrained reference |",
        "|---|---:|---:|---:|",
        *[f"| {a} | {b} | {d} | {e} |" for a, b, d, e in figure_rows(c)],
        "",
        f"Time: {c['seconds']['method']:.2f} s for the method, {c['seconds']['retrain']:.2f} s to retrain "
        f"(ratio {c['time_ratio']}).",
        "",
        "| check | value | limit | result |",
        "|---|---:|---:|---|",
        *[f"| {k} | {v['value']} | {v['limit']} | {'pass' if v['passed'] else 'FAIL'} |"
          for k, v in c["checks"].items()],
        "",
        "Weights sha256: "
        + "; ".join(f"{k} `{v['id']}` {v['sha256']}" for k, v in c["models"].items()),
        "",
    ]
    if not c["changed"]:
        lines.insert(2, "**The method changed nothing: the unlearned weights equal the original's.**\n")
    return "\n".join(lines)
