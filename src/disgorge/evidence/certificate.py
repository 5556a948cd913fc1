"""Verification: compare an unlearned model with its parent and a model retrained without the forget set.

Nothing here trains or looks anything up by name: the reference model and the effect probes are passed in."""

from __future__ import annotations

import json
import logging
import math
import os
import platform
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field
from importlib import metadata
from typing import Any

import numpy as np
import torch
from pyroaring import BitMap
from sklearn.metrics import roc_auc_score, roc_curve
from torch import nn

from .._io import atomic_write_text
from ..errors import InvalidRequest
from ..evaluate.metrics import avg_gap
from ..ledger import ModelRow, now
from ..tasks import RecordDataset, Task
from ..tasks.base import CLASSIFICATION_FIGURES
from ..workspace import Workspace
from .probes import Probe
from .signing import load_or_create_key, sign

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
    """One model's figures and its per-example outputs on the forget set (for figures relative to a reference) and
    on the held-out set (for the certificate's loss histograms and membership ROC curves)."""

    figures: dict[str, float | None]
    forget: dict[str, np.ndarray]
    test: dict[str, np.ndarray] = field(default_factory=dict)


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
    return Measurement(figures, outs[0], outs[2])


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
            thresholds: Thresholds | None = None, probes: Sequence[Probe] = (), selector: dict[str, Any] | None = None,
            reason: str = "", requested_at: str | None = None) -> dict[str, Any]:
    """Measure the original, unlearned and retrained reference models (each with ``probes``) and return the
    certificate (a JSON-ready dict). It stands alone: it names the request (``selector`` as the user gave it,
    ``reason``, creation time ``requested_at``) and the sources of ``forget_ids`` with their record counts, the
    software versions, the machine and device, and every model's sha256; :func:`write_certificate` signs it."""
    thresholds = thresholds or Thresholds()
    retain_ids = parent.records - forget_ids
    forget = ws.dataset(task, forget_ids)
    retain = ws.dataset(task, retain_ids)
    test = ws.dataset(task, ws.test_ids())
    if len(test) == 0:
        raise InvalidRequest("verification needs held-out records (split 'test'); ingest some with --split test")
    ref = measure_reference(task, reference_model, forget, retain, test, probes)
    measured = {name: measure(task, m, forget, retain, test, probes, reference=ref)
                for name, m in (("original", parent_model), ("unlearned", child_model))}
    measured["reference"] = ref
    metrics = {name: m.figures for name, m in measured.items()}
    gaps = {name: round(avg_gap(metrics[name], metrics["reference"], task.figures.gap), 4)
            for name in ("original", "unlearned")}
    changed = not _same_weights(parent_model, child_model)
    checks = _checks(task, metrics, gaps["unlearned"], thresholds, changed)
    seconds = {"method": round(child.seconds, 4), "retrain": round(reference.seconds, 4)}
    return {
        "format": "disgorge-certificate/2",
        "request": request_id,
        "issued_at": now(),
        "erasure_request": {"id": request_id, "selector": selector, "sources": ws.sources_of(forget_ids),
                            "reason": reason, "created_at": requested_at},
        "software": software_versions(),
        "machine": machine(parent_model, child_model, reference_model),
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
        "curves": loss_curves(measured),
    }


CURVE_BINS = 30
"""Bins of the certificate's loss histograms (shared by every model and both sets)."""
ROC_POINTS = 100
"""At most this many points of each membership ROC curve are kept."""
LOSS_FLOOR = 1e-6
"""Losses below this go into the histograms' first bin (the bins are even on a log scale)."""


def loss_curves(measured: dict[str, Measurement], *, bins: int = CURVE_BINS,
                roc_points: int = ROC_POINTS) -> dict[str, Any]:
    """The data of a certificate's plots, kept because the forget set is erased after certification: per model,
    histograms of the per-example loss on the forget and the held-out set, on bins shared by all models and both
    sets (``edges`` in loss units, even in log10 of the loss; ``counts`` per bin, summing to the set's size), and the
    ROC curve of the loss-threshold membership attack (score -loss; members = forget, non-members = held-out),
    thinned to at most ``roc_points`` points from (0, 0) to (1, 1), with its AUC in percent."""
    losses = {name: {side: _finite(getattr(m, side).get("loss")) for side in ("forget", "test")}
              for name, m in measured.items()}
    every = np.concatenate([v for sides in losses.values() for v in sides.values()] + [np.zeros(0)])
    if every.size == 0:
        return {"format": "disgorge-curves/1", "models": {}}
    logs = np.log10(np.maximum(every, LOSS_FLOOR))
    low, high = float(logs.min()), float(logs.max())
    if high - low < 1e-9:
        low, high = low - 0.5, high + 0.5
    log_edges = np.linspace(low, high, bins + 1)
    models: dict[str, Any] = {}
    for name, sides in losses.items():
        hist = {side: np.histogram(np.clip(np.log10(np.maximum(v, LOSS_FLOOR)), low, high), log_edges)[0]
                for side, v in sides.items()}
        entry: dict[str, Any] = {"forget_counts": hist["forget"].tolist(), "test_counts": hist["test"].tolist(),
                                 "roc": None}
        forget, test = sides["forget"], sides["test"]
        if forget.size and test.size:
            y = np.concatenate([np.ones(forget.size), np.zeros(test.size)])
            score = -np.concatenate([forget, test])
            fpr, tpr, _ = roc_curve(y, score)
            keep = _thin(len(fpr), roc_points)
            entry["roc"] = {"fpr": [round(float(v), 4) for v in fpr[keep]],
                            "tpr": [round(float(v), 4) for v in tpr[keep]],
                            "auc": round(float(roc_auc_score(y, score)) * 100, 2)}
        models[name] = entry
    return {"format": "disgorge-curves/1", "scale": "log10", "floor": LOSS_FLOOR,
            "edges": [float(f"{10 ** e:.4g}") for e in log_edges],
            "forget": len(next(iter(losses.values()))["forget"]),
            "test": len(next(iter(losses.values()))["test"]), "models": models}


def _finite(values: np.ndarray | None) -> np.ndarray:
    """A 1-D float array of losses with NaN dropped and infinities set to the largest finite loss."""
    arr = np.asarray(values if values is not None else np.zeros(0), dtype=float).ravel()
    arr = arr[~np.isnan(arr)]
    finite = arr[np.isfinite(arr)]
    return np.where(np.isfinite(arr), arr, finite.max() if finite.size else 0.0)


def _thin(n: int, most: int) -> np.ndarray:
    """Indices of at most ``most`` of ``n`` points, evenly spread, the first and the last always among them."""
    if n <= most:
        return np.arange(n)
    return np.unique(np.round(np.linspace(0, n - 1, most)).astype(int))


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


SOFTWARE = ("disgorge", "torch", "numpy", "scikit-learn", "safetensors", "cryptography")
"""Distributions whose versions every certificate records (None when not installed as a distribution)."""
OPTIONAL_SOFTWARE = ("transformers", "peft")
"""Distributions recorded only when installed."""


def software_versions() -> dict[str, str | None]:
    """Python's version and the installed versions of :data:`SOFTWARE` and :data:`OPTIONAL_SOFTWARE` (read from the
    package metadata, nothing imported)."""
    out: dict[str, str | None] = {"python": platform.python_version()}
    for name in SOFTWARE + OPTIONAL_SOFTWARE:
        try:
            out[name] = metadata.version(name)
        except metadata.PackageNotFoundError:
            if name in SOFTWARE:
                out[name] = None
    return out


def machine(*models: nn.Module) -> dict[str, Any]:
    """The machine (platform, processor, cores) and the device(s) the ``models``' weights are on."""
    devices = sorted({str(p.device) for m in models for p in m.parameters()}) or ["cpu"]
    out: dict[str, Any] = {"platform": platform.platform(), "machine": platform.machine(),
                           "processor": processor(), "cores": os.cpu_count(), "torch_threads": torch.get_num_threads(),
                           "device": ", ".join(devices)}
    cuda = [d for d in devices if d.startswith("cuda")]
    if cuda:
        out["accelerator"] = ", ".join(torch.cuda.get_device_name(torch.device(d)) for d in cuda)
    return out


def processor() -> str:
    """The CPU's model name where the system tells it (Linux), else what :func:`platform.processor` says."""
    try:
        with open("/proc/cpuinfo", encoding="utf-8", errors="replace") as fh:
            for line in fh:
                if line.lower().startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def write_certificate(ws: Workspace, certificate: dict[str, Any]) -> dict[str, str]:
    """Sign the certificate with the workspace's key (its ``signature`` block, set in ``certificate`` too, covers
    every other key; see :mod:`.signing`), then write ``certificate.json`` and ``certificate.md`` under
    ``reports/r<request>/<child>/``; return the paths."""
    certificate.pop("signature", None)
    plain = json.loads(json.dumps(certificate))  # exactly what the file holds, so the signature covers its content
    plain["signature"] = certificate["signature"] = sign(plain, load_or_create_key(ws))
    folder = ws.report_dir(certificate["request"]) / certificate["models"]["child"]["id"]
    json_path, md_path = folder / "certificate.json", folder / "certificate.md"
    atomic_write_text(json_path, json.dumps(plain, indent=2) + "\n")
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
        *_provenance(c),
    ]
    if not c["changed"]:
        lines.insert(2, "**The method changed nothing: the unlearned weights equal the original's.**\n")
    return "\n".join(lines)


def _provenance(c: dict[str, Any]) -> list[str]:
    """The request, issue time, software, machine and signature lines of a certificate (those it records)."""
    lines = []
    req = c.get("erasure_request")
    if isinstance(req, dict):
        sources = ", ".join(f"{s['name']} ({s['records']} records)" for s in req.get("sources") or []) or "none"
        lines += [f"Request {req.get('id')}, created {req.get('created_at') or 'at certification'}; reason: "
                  f"{req.get('reason') or '-'}; forgotten records by source: {sources}.", ""]
    if c.get("issued_at"):
        software = ", ".join(f"{k} {v}" for k, v in (c.get("software") or {}).items() if v)
        m = c.get("machine") or {}
        lines += [f"Issued {c['issued_at']} with {software}; on {m.get('platform')} ({m.get('processor')}, "
                  f"{m.get('cores')} cores), device {m.get('device')}.", ""]
    sig = c.get("signature")
    if isinstance(sig, dict):
        lines += [f"Signed ({sig.get('algorithm')}, over the {sig.get('signed')}) with public key "
                  f"`{sig.get('public_key')}`; `disgorge certificate check certificate.json` verifies it.", ""]
    return lines
