"""Verification: compare an unlearned model with its parent and a model retrained without the forget set.

Nothing here trains or looks anything up by name: the reference model and the effect probes are passed in."""

from __future__ import annotations

import json
import logging
import math
import os
import platform
import time
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
from ..evaluate.intervals import Estimate
from ..evaluate.metrics import accuracy, avg_gap
from ..ledger import ModelRow, now
from ..spec import TrainSpec
from ..tasks import RecordDataset, Task
from ..tasks.base import CLASSIFICATION_FIGURES
from ..workspace import Workspace
from .judge import (
    EVIDENCE,
    EXACT,
    HELDOUT,
    PURPOSES,
    HeldOut,
    NoComparison,
    ProbeOutcomes,
    Purpose,
    Thresholds,
    decisive_figures,
    estimates,
    heldout_for,
    heldout_targets,
    judge,
    score,
    verdict,
)
from .probes import Probe
from .robustness import paraphrase_attack, quantization_attack, relearn_attack
from .signing import load_or_create_key, sign

log = logging.getLogger(__name__)


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
    for p in probes[1:]:  # every further probe of the workspace, under its own key
        figures[f"effect:{p.name}"] = p.measure(model, task, test)
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
    """Whether two models hold the same weights under the same names (a sharded child may have fewer shards)."""
    sa, sb = a.state_dict(), b.state_dict()
    return sa.keys() == sb.keys() and all(torch.equal(sa[k], sb[k]) for k in sa)


PROOF = {
    EXACT: ("A model was retrained from scratch without the forgotten records (same recipe and seed); on every "
            "decisive figure the unlearned model is within the measured noise of that model, or closed at least "
            "{closure:.0%} of the original's distance to it. The figures cannot tell the unlearned model from "
            "retraining.",
            "It does not prove that the weights equal a retrained model's, nor that a test other than these figures "
            "could not tell them apart (see `disgorge verify --strong` for the per-example test)."),
    HELDOUT: ("No model was retrained. On every decisive figure the unlearned model treats the forget set as it "
              "treats {heldout} held-out records it never saw (matched by {matched_by}): a membership AUC near 50, "
              "no accuracy gap, each effect at its base rate, within its 95% interval, or it closed at least "
              "{closure:.0%} of the original's distance to that level.",
              "It does not prove the model equals one retrained without the records, only that these figures cannot "
              "tell the forget set from unseen data; if the forget set is unlike its held-out comparison data, the "
              "figures measure that difference too. Use --verify exact for the retrained comparison."),
}
"""What each evidence level proves and what it does not (formatted with the certificate's facts)."""

CONSTRUCTION_PROOF = (
    "The model is sharded (SISA): every shard that held a forgotten record was retrained from its checkpoint before "
    "the first slice that held one, on its slices without those records; the other shards are the original's, "
    "untouched. The checks confirm from the ledger that no shard of the unlearned model, and no checkpoint it was "
    "retrained from, was trained on a forgotten record. Because each record's shard and slice depend on its own id "
    "(or source) only, and each stage is seeded by itself, the weights equal those of the same recipe trained from "
    "scratch without the records (bit-identical on the CPU): exact by construction, with no reference model.",
    "It does not prove anything about data the recipe never recorded (a pretrained network's own training data), "
    "and the aggregate's figures are shown, not judged: they are what retraining gives.")
"""What a sharded model's certificate proves (exact by construction) and what it does not."""

RETAIN_SAMPLE = 2000
"""At most this many retain records measure retain accuracy (a seeded sample; language models use fewer)."""
LM_RETAIN_SAMPLE = 200


def certify(ws: Workspace, *, task: Task, parent: ModelRow, parent_model: nn.Module, child: ModelRow,
            child_model: nn.Module, forget_ids: BitMap, request_id: int, method: str, config: dict[str, Any],
            reference: ModelRow | None = None, reference_model: nn.Module | None = None, purpose: str = "privacy",
            report: dict[str, Any] | None = None, thresholds: Thresholds | None = None, probes: Sequence[Probe] = (),
            selector: dict[str, Any] | None = None, reason: str = "", requested_at: str | None = None,
            robust: bool = True, seed: int = 0, construction: dict[str, Any] | None = None) -> dict[str, Any]:
    """Measure the original and unlearned models (and, given one, the retrained reference: the ``exact`` level;
    else the reference-free ``heldout`` level) and return the certificate, a JSON-ready dict.

    The request's ``purpose`` (see :data:`.judge.PURPOSES`) picks the decisive figures; each is judged against
    what a model that never saw the records scores (:mod:`.judge`), so the untouched original never passes. With
    ``robust``, the relearning and quantization attacks run on the unlearned model (and the reference). The
    certificate stands alone: it names the request (``selector`` as the user gave it, ``reason``, creation time
    ``requested_at``) and the sources of ``forget_ids`` with their record counts, the software versions, the
    machine and device, and every model's sha256; :func:`write_certificate` signs it.

    ``construction`` certifies a sharded model's exact removal instead (``exact`` evidence with no reference): its
    ``checks`` replace the figure checks (the figures are measured and shown) and its ``sharding`` block says which
    shards were retrained and at what cost."""
    started = time.perf_counter()
    thresholds = thresholds or Thresholds()
    level = HELDOUT if reference is None and construction is None else EXACT
    goal = _purpose(purpose, probes)
    retain_ids = parent.records - forget_ids
    forget = ws.dataset(task, forget_ids)
    retain = ws.dataset(task, _sample(retain_ids, LM_RETAIN_SAMPLE if task.figures.verbatim else RETAIN_SAMPLE,
                                      seed))
    test = ws.dataset(task, ws.test_ids())
    held = _heldout(ws, task, forget_ids, forget, test, level)
    models = {"original": parent_model, "unlearned": child_model}
    if reference_model is not None:
        models["reference"] = reference_model
    seen = _observe_all(task, models, forget, retain, test, held, probes, seed)
    measured = {name: o.measurement for name, o in seen.items()}
    metrics = {name: m.figures for name, m in measured.items()}
    changed = not _same_weights(parent_model, child_model)
    if construction is None:
        checks = level_checks(task, goal, level, seen, probes, thresholds, changed=changed, seed=seed)
    else:
        checks = {"changed": {"value": changed, "limit": True, "passed": changed}, **construction["checks"]}
    outcome = verdict(checks)
    gaps = {name: round(avg_gap(metrics[name], metrics["reference"], task.figures.gap), 4)
            for name in ("original", "unlearned")} if reference is not None else {"original": None, "unlearned": None}
    robustness = _robustness(task, models, forget, held, test, probes, ws.recipe_of(parent).train, seed) \
        if robust else None
    training = training_seconds(ws, parent)
    seconds = {"method": round(child.seconds, 4), "verification": round(time.perf_counter() - started, 4),
               "retrain": round(reference.seconds, 4) if reference is not None else None,
               "training": round(training, 4)}
    proves, limits = PROOF[level] if construction is None else CONSTRUCTION_PROOF
    facts = {"closure": thresholds.closure, "heldout": len(held.matched), "matched_by": held.matched_by}
    models_block = {"parent": {"id": parent.id, "sha256": parent.weights_sha256},
                    "child": {"id": child.id, "sha256": child.weights_sha256}}
    if reference is not None:
        models_block["reference"] = {"id": reference.id, "sha256": reference.weights_sha256}
    return {
        "format": "disgorge-certificate/3",
        "request": request_id,
        "issued_at": now(),
        "erasure_request": {"id": request_id, "selector": selector, "sources": ws.sources_of(forget_ids),
                            "reason": reason, "purpose": goal.name, "created_at": requested_at},
        "software": software_versions(),
        "machine": machine(*models.values()),
        "method": method,
        "config": config,
        "method_report": report or {},
        "scenario": ws.scenario,
        "task": task.name,
        "level": level,
        "evidence": EVIDENCE[level],
        "proves": proves.format(**facts),
        "does_not_prove": limits,
        "purpose": {"name": goal.name, "help": goal.help,
                    "decisive": [k for k, c in checks.items() if c.get("decisive")]},
        "figures": {"keys": list(task.figures.keys), "labels": task.figures.labels, "gap": list(task.figures.gap),
                    "units": task.figures.units},
        "effect": probes[0].meta() if probes else None,
        "probes": [p.meta() for p in probes],
        "records": {"forgotten": len(forget_ids), "retained": len(retain_ids), "retain_sample": len(retain),
                    "test": len(test), "heldout_matched": len(held.matched), "matched_by": held.matched_by},
        "models": models_block,
        "metrics": metrics,
        "evidence_figures": {name: {k: e.to_dict() for k, e in o.estimates.items()} for name, o in seen.items()},
        "avg_gap": gaps["unlearned"],
        "avg_gap_original": gaps["original"],
        "changed": checks["changed"]["passed"],
        "seconds": seconds,
        "time_ratio": _ratio(seconds["method"], seconds["retrain"] if reference is not None else training),
        "verified_time_ratio": _ratio(seconds["method"] + seconds["verification"], training),
        "thresholds": asdict(thresholds),
        "checks": checks,
        "verdict": outcome,
        "passed": outcome == "passed",
        "score": _finite_or_none(score(checks)),
        "robustness": robustness,
        "curves": loss_curves(measured),
        "privacy": parent.info.get("privacy"),  # what DP training of the original spent (None without [privacy])
        **({"sharding": construction["sharding"]} if construction is not None else {}),
    }


def _heldout(ws: Workspace, task: Task, forget_ids: BitMap, forget: RecordDataset, test: RecordDataset,
             level: str) -> HeldOut:
    """The held-out comparison data; at the exact level, where the reference gives the targets, all held-out
    records serve when none of the forget set's kind exist."""
    try:
        return heldout_for(ws, task, forget_ids, forget, test)
    except NoComparison:
        if level == HELDOUT or len(test) == 0:
            raise
        return HeldOut(test, test, "all")


def _purpose(name: str, probes: Sequence[Probe]) -> Purpose:
    """The request's purpose; one that only an effect probe can judge is refused without one."""
    if name not in PURPOSES:
        raise InvalidRequest(f"unknown purpose {name!r}; choose one of {', '.join(PURPOSES)}")
    goal = PURPOSES[name]
    if goal.needs_probe and not probes:
        raise InvalidRequest(f"purpose {name!r} is judged by an effect probe and this workspace declares none; use "
                             "--purpose privacy (bundled scenarios declare their probes)")
    return goal


def _sample(ids: BitMap, most: int, seed: int) -> BitMap:
    """At most ``most`` of ``ids``, drawn with ``seed`` (all of them when there are fewer)."""
    if len(ids) <= most:
        return ids
    rng = np.random.default_rng(seed)
    return BitMap(rng.choice(np.fromiter(ids, dtype=np.int64), size=most, replace=False).tolist())


@dataclass
class Observation:
    """One model seen by verification: its figures and per-example outputs, its decisive estimates (against the
    matched held-out records) and its probes' outcomes."""

    measurement: Measurement
    estimates: dict[str, Estimate]
    outcomes: list[ProbeOutcomes]
    utility_accuracy: float | None = None  # accuracy on the held-out records outside the matched ones


def observe(task: Task, model: nn.Module, forget: RecordDataset, retain: RecordDataset, test: RecordDataset,
            held: HeldOut, probes: Sequence[Probe] = (), *, seed: int = 0,
            reference: Measurement | None = None, is_reference: bool = False) -> Observation:
    """Everything verification measures on one model (``is_reference`` for the retrained reference itself;
    ``reference``, its measurement, for the relative figures of the others)."""
    outcomes = [ProbeOutcomes.measure(p, model, task, test) for p in probes]
    if is_reference:
        m = measure_reference(task, model, forget, retain, test, probes, seed=seed)
    else:
        m = measure(task, model, forget, retain, test, probes, seed=seed, reference=reference)
    rows = np.isin(test.ids, held.matched.ids)
    on_matched = {k: v[rows] for k, v in m.test.items() if len(v) == len(test)}
    correct = m.test.get("correct", np.zeros(0))
    utility = correct[np.isin(test.ids, held.utility.ids)] if len(correct) == len(test) else np.zeros(0)
    return Observation(m, estimates(task, m.forget, on_matched, outcomes, seed=seed), outcomes,
                       _clean(accuracy(utility)) if len(utility) else None)


def _observe_all(task: Task, models: dict[str, nn.Module], forget: RecordDataset, retain: RecordDataset,
                 test: RecordDataset, held: HeldOut, probes: Sequence[Probe], seed: int) -> dict[str, Observation]:
    """Every model observed (relative figures against the reference, when there is one)."""
    seen: dict[str, Observation] = {}
    for name in sorted(models, key=lambda n: n != "reference"):  # the reference first: others are relative to it
        ref = seen.get("reference")
        seen[name] = observe(task, models[name], forget, retain, test, held, probes, seed=seed,
                             reference=ref.measurement if ref else None, is_reference=name == "reference")
    return seen


def level_checks(task: Task, goal: Purpose, level: str, seen: dict[str, Observation], probes: Sequence[Probe],
                 t: Thresholds, *, changed: bool, seed: int) -> dict[str, dict[str, Any]]:
    """The certificate's checks from the observed models (``original``, ``unlearned`` and, at the exact level,
    ``reference``): changed, each decisive figure (:func:`.judge.judge`), utility, and TOFU's forget quality at the
    exact level. Reference-free, test accuracy is compared with the original's on the held-out records outside the
    forget set's kind (a class-wise request costs that class's accuracy by design)."""
    metrics = {k: o.measurement.figures for k, o in seen.items()}
    found = {k: o.estimates for k, o in seen.items()}
    outcomes = {k: o.outcomes for k, o in seen.items()}
    checks: dict[str, dict[str, Any]] = {"changed": {"value": changed, "limit": True, "passed": changed}}
    if level == EXACT:
        target = original_target = found["reference"]
    else:
        target = heldout_targets(task, outcomes["unlearned"])
        original_target = heldout_targets(task, outcomes["original"])
    for figure in decisive_figures(goal, task, probes):
        if figure in target and figure in original_target:
            check = judge(figure, found["unlearned"][figure], found["original"][figure], target[figure],
                          original_target[figure], t)
            if check is not None:
                checks[figure] = check
    base = metrics["reference" if level == EXACT else "original"]
    u, keys = metrics["unlearned"], task.figures
    for name, key, limit in (("ta_drop", keys.test, t.ta_drop), ("ra_drop", keys.retain, t.ra_drop)):
        drop = _sub(base[key], u[key])
        if level == HELDOUT and name == "ta_drop" and seen["unlearned"].utility_accuracy is not None:
            drop = _sub(seen["original"].utility_accuracy, seen["unlearned"].utility_accuracy)
        if drop is not None:
            checks[name] = {"value": round(drop, 4), "limit": limit, "passed": drop <= limit}
    if level == EXACT and goal.name in ("privacy", "copyright") and u.get("forget_quality") is not None:
        # TOFU's reading: a KS p-value below 0.05 tells the unlearned model's truth ratios from the retrained one's.
        value = u["forget_quality"]
        checks["forget_quality"] = {"value": value, "limit": t.forget_quality, "passed": value >= t.forget_quality}
    return checks


def _robustness(task: Task, models: dict[str, nn.Module], forget: RecordDataset, held: HeldOut,
                test: RecordDataset, probes: Sequence[Probe], train: TrainSpec, seed: int) -> dict[str, Any]:
    """The relearning and quantization attacks on the unlearned model (and the reference, when there is one)."""
    return {"relearn": relearn_attack(task, models, forget, held.matched, test, probes, train=train, seed=seed),
            "quantized": quantization_attack(task, models, forget, held.matched, test, probes),
            "paraphrased": paraphrase_attack(task, models, forget, held.matched, test, probes)}


def robustness_block(ws: Workspace, *, task: Task, parent: ModelRow, parent_model: nn.Module,
                     child_model: nn.Module, forget_ids: BitMap, reference_model: nn.Module | None = None,
                     probes: Sequence[Probe] = (), seed: int = 0) -> dict[str, Any]:
    """A certificate's ``robustness`` block on its own (for a certificate made with ``robust=False``)."""
    forget, test = ws.dataset(task, forget_ids), ws.dataset(task, ws.test_ids())
    held = _heldout(ws, task, forget_ids, forget, test, EXACT if reference_model is not None else HELDOUT)
    models = {"original": parent_model, "unlearned": child_model}
    if reference_model is not None:
        models["reference"] = reference_model
    return _robustness(task, models, forget, held, test, probes, ws.recipe_of(parent).train, seed)


def training_seconds(ws: Workspace, row: ModelRow) -> float:
    """Wall-clock of the training run at the root of a model's lineage."""
    while row.kind != "trained" and row.parent is not None:
        row = ws.ledger.model(row.parent)
    return row.seconds


def _ratio(a: float | None, b: float | None) -> float | None:
    return round(a / b, 4) if a is not None and b else None


def _finite_or_none(v: float) -> float | None:
    return v if math.isfinite(v) else None


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


def _sub(a: float | None, b: float | None) -> float | None:
    return None if a is None or b is None else a - b


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
    folder = ws.report_dir(certificate["request"], certificate["models"]["child"]["id"])
    json_path, md_path = folder / "certificate.json", folder / "certificate.md"
    atomic_write_text(json_path, json.dumps(plain, indent=2) + "\n")
    atomic_write_text(md_path, render_markdown(certificate))
    return {"json": str(json_path), "markdown": str(md_path)}


COLUMNS = (("original", "original"), ("unlearned", "unlearned"), ("reference", "retrained reference"))
"""A certificate's model columns (key in ``metrics``, heading); a reference-free one has no reference."""


def columns(certificate: dict[str, Any]) -> list[tuple[str, str]]:
    """The (key, heading) of each model column the certificate holds."""
    return [(k, h) for k, h in COLUMNS if k in certificate["metrics"]]


def figure_rows(certificate: dict[str, Any]) -> list[tuple[str, ...]]:
    """(label, original, unlearned[, reference]) rows of a certificate's figures, formatted; the Avg Gap row only
    where a reference was retrained."""
    m, cols = certificate["metrics"], [k for k, _ in columns(certificate)]
    keys = certificate.get("figures") or {"keys": CLASSIFICATION_FIGURES.keys, "labels": CLASSIFICATION_FIGURES.labels}
    eff = (certificate.get("effect") or {}).get("name")
    rows = []
    for key in keys["keys"]:
        if all(m[col].get(key) is None for col in cols):
            continue
        label = eff.replace("_", " ") if key == "effect" and eff else keys["labels"][key]
        rows.append((label, *(_fmt(m[col].get(key)) for col in cols)))
    if "reference" in cols and certificate.get("avg_gap") is not None:
        rows.append(("Avg Gap to reference", _fmt(certificate["avg_gap_original"]), _fmt(certificate["avg_gap"]),
                     "0.00"))
    return rows


def check_rows(certificate: dict[str, Any]) -> list[tuple[str, str, str, str, str]]:
    """(check, what it compares, value, limit, result) rows, decisive figures first, formatted."""
    rows = []
    checks = certificate["checks"]
    for name in sorted(checks, key=lambda k: not checks[k].get("decisive")):
        c = checks[name]
        if c.get("decisive") and "figure" not in c:  # a construction check: a count from the ledger
            what = f"{c['proves']} (original: {_fmt_value(c['original'])})"
            result = "pass" if c["passed"] else "FAIL"
        elif c.get("decisive"):
            what = (f"{c['figure']:.2f} [{c['interval'][0]:.2f}, {c['interval'][1]:.2f}] vs target "
                    f"{c['target']:.2f} (original {c['original']:.2f})")
            result = "pass" if c["passed"] else "FAIL"
            if c["indistinguishable"]:
                result += " (original within noise)"
        else:
            what, result = "", "pass" if c["passed"] else "FAIL"
        rows.append((name, what, _fmt_value(c["value"]), _fmt_value(c["limit"]), result))
    return rows


def robustness_rows(certificate: dict[str, Any]) -> list[tuple[str, str, str, str, str, str]]:
    """(attack, figure, original, unlearned before, after, recovered) rows of a certificate's robustness block."""
    rob = certificate.get("robustness") or {}
    rows = []
    quantized = [(f"quantized {v}", (rob.get("quantized") or {}).get(v)) for v in ("int8", "int4")]
    attacks = [("relearn", rob.get("relearn")), *quantized, ("paraphrased", rob.get("paraphrased"))]
    for name, block in attacks:
        for figure, f in ((block or {}).get("figures") or {}).items():
            rows.append((name, figure.replace("_", " "), _fmt(f.get("original")), _fmt(f.get("before")),
                         _fmt(f.get("after")), _fmt(f.get("recovered"))))
    return rows


def _fmt(v: float | None) -> str:
    if v is None:
        return "-"
    return f"{v:.2g}" if 0 < abs(v) < 0.01 else f"{v:.2f}"


def _fmt_value(v: Any) -> str:
    return str(v) if isinstance(v, bool) or not isinstance(v, (int, float)) else _fmt(float(v))


VERDICTS = {"passed": "PASSED", "failed": "FAILED", "indistinguishable": "INDISTINGUISHABLE BEFORE UNLEARNING"}
"""How each verdict is printed."""


def verdict_line(c: dict[str, Any]) -> str:
    """The verdict in words, with the evidence level."""
    verdict = c.get("verdict") or ("passed" if c["passed"] else "failed")
    return f"{VERDICTS[verdict]} ({c.get('evidence', 'exact')} evidence)"


def render_markdown(c: dict[str, Any]) -> str:
    """The human-readable certificate."""
    cols = columns(c)
    reference = c["models"].get("reference")
    if reference:
        compared = (f"reference `{reference['id']}` was retrained without them ({c['records']['retained']} "
                    "records)")
    else:
        compared = (f"no model was retrained: the forget set was compared with {c['records'].get('heldout_matched')}"
                    f" held-out records of the same kind (matched by {c['records'].get('matched_by')})")
    purpose = c.get("purpose") or {}
    lines = [
        f"# Unlearning certificate: request {c['request']} — {verdict_line(c)}",
        "",
        f"Method `{c['method']}` turned model `{c['models']['parent']['id']}` into "
        f"`{c['models']['child']['id']}`, forgetting {c['records']['forgotten']} records; {compared}; held-out set "
        f"of {c['records']['test']}. {c.get('figures', {}).get('units', CLASSIFICATION_FIGURES.units)}",
        "",
    ]
    if purpose:
        lines += [f"Purpose: **{purpose['name']}** ({purpose['help']}). Decisive: "
                  f"{', '.join(purpose['decisive']) or 'none'}.", ""]
    if c.get("proves"):
        lines += [f"**What this proves.** {c['proves']}", "", f"**What it does not prove.** {c['does_not_prove']}",
                  ""]
    lines += [
        "| figure | " + " | ".join(h for _, h in cols) + " |",
        "|---|" + "---:|" * len(cols),
        *["| " + " | ".join(row) + " |" for row in figure_rows(c)],
        "",
        _time_line(c),
        "",
        *stopping_lines(c),
        *sharding_lines(c),
        *_privacy_lines(c),
        "| check | measured | value | limit | result |",
        "|---|---|---:|---:|---|",
        *[f"| {a} | {b} | {v} | {limit} | {r} |" for a, b, v, limit, r in check_rows(c)],
        "",
    ]
    rob = robustness_rows(c)
    if rob:
        lines += ["Robustness (recovered: 0 = nothing came back, 1 = back to the original's level):", "",
                  "| attack | figure | original | unlearned | after attack | recovered |",
                  "|---|---|---:|---:|---:|---:|",
                  *["| " + " | ".join(r) + " |" for r in rob], ""]
    lines += ["Weights sha256: " + "; ".join(f"{k} `{v['id']}` {v['sha256']}" for k, v in c["models"].items()), "",
              *_provenance(c)]
    if not c["changed"]:
        lines.insert(2, "**The method changed nothing: the unlearned weights equal the original's.**\n")
    return "\n".join(lines)


def stopping_lines(c: dict[str, Any]) -> list[str]:
    """Why an iterative method stopped, and after how much of its budget (nothing for other methods)."""
    stop = (c.get("method_report") or {}).get("stopping")
    if not stop:
        return []
    budget = f" of a budget of {stop['budget_steps']}" if stop.get("budget_steps") else ""
    return [f"Stopped after {stop['steps']} steps{budget}: {stop['why'] or stop['stopped']}.", ""]


def sharding_lines(c: dict[str, Any]) -> list[str]:
    """What a sharded model's removal retrained and what it cost (nothing for other certificates)."""
    sh = c.get("sharding")
    if not sh:
        return []
    retrained = ", ".join(f"{s} (from slice {v['from_slice']})" for s, v in sh["retrained"].items()) or "none"
    layout = "one shard per source" if sh["shards"] == 0 else f"{sh['shards']} shards by {sh['by']}"
    return [f"Sharded model ({layout}, {sh['slices']} slices; {sh.get('members', '?')} hold records now): "
            f"retrained shard(s) "
            f"{retrained}; {len(sh['untouched'])} untouched; {len(sh.get('dropped', []))} dropped (no records left). "
            f"{sh['seconds']:.2f} s against "
            f"{sh['full_retrain_seconds']:.2f} s to train every shard (ratio {sh['time_ratio_full']}); "
            f"{sh['examples']:,} example-passes against {sh['monolithic_examples']:,} for a monolithic retrain "
            f"(ratio {sh['work_ratio_monolithic']}).", ""]


def _privacy_lines(c: dict[str, Any]) -> list[str]:
    """One line on the original's differentially private training (nothing for a model trained without it)."""
    p = c.get("privacy")
    if not p:
        return []
    return [f"Differential privacy: the original was trained with DP-SGD at epsilon {p['epsilon']:g} spent (target "
            f"{p['target_epsilon']:g}), delta {p['delta']:g}, max_grad_norm {p['max_grad_norm']:g}, noise multiplier "
            f"{p['noise_multiplier']:g} ({p.get('accountant', 'rdp')} accountant): before any unlearning, no record's "
            "influence on its weights exceeded that bound.", ""]


def _time_line(c: dict[str, Any]) -> str:
    s = c["seconds"]
    if s.get("retrain") is not None:
        return (f"Time: {s['method']:.2f} s for the method, {s['retrain']:.2f} s to retrain (ratio "
                f"{c['time_ratio']}).")
    line = f"Time: {s['method']:.2f} s for the method"
    if s.get("verification") is not None and s.get("training"):
        line += (f", {s['verification']:.2f} s to verify; {s['training']:.2f} s to train the original "
                 f"(method + verification: {c.get('verified_time_ratio')} of training)")
    return line + "."


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
