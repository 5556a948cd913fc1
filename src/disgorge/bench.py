"""Benchmarks: every method against retraining on the bundled scenarios, over seeds, with per-example
verification; results to JSON, a markdown table and a plot."""

from __future__ import annotations

import json
import logging
import math
import os
import platform
import shutil
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from . import methods as methods_package
from ._io import atomic_write_text
from .api import ingest_scenario, train
from .erasure import AUTO_MARGIN, AUTO_RECORD, AUTO_TOTAL, VERDICT_ORDER, auto_candidates
from .errors import InvalidRequest
from .evaluate.metrics import avg_gap
from .evidence.certificate import processor
from .executors import Executor, get_executor
from .jobs import Job, Problem, run, strong_test
from .methods import METHODS
from .methods.registry import parse_variant
from .report.benchmarks import scenario_results
from .scenarios import get_scenario
from .tasks import get_task
from .workspace import Workspace

log = logging.getLogger(__name__)

DEFAULT_SCENARIOS = ("digits-backdoor", "digits-classwise", "mnist", "bias", "people", "people-forget05",
                     "people-forget01", "book")
BENCH_MARKER = ".disgorge-bench"
"""File :func:`run_bench` leaves in the ``work`` folder it makes: only a folder carrying it (or an empty one) is
deleted without ``force``."""


@dataclass
class BenchSettings:
    """What to run: scenarios x methods over ``seeds``; ``strong_models`` K models per side for F (0: off)."""

    scenarios: list[str] = field(default_factory=lambda: list(DEFAULT_SCENARIOS))
    methods: list[str] | None = None  # None: each scenario's own bench set (all methods for classifiers)
    seeds: int = 3
    strong_models: int = 8
    executor: str = "local"
    workers: int | None = None
    device: str | None = None  # --device (None: each scenario recipe's train.device, auto)
    out: Path = Path("benchmarks/results")
    command: str = ""  # the command line that ran the bench, recorded in each scenario's results

    def __post_init__(self) -> None:
        if self.seeds < 1:
            raise InvalidRequest("the bench needs at least one seed")
        if self.strong_models and self.strong_models < 3:
            raise InvalidRequest("the strong test needs at least 3 models per side (or 0 to skip it)")
        for name in self.scenarios:
            get_scenario(name)
        for label in self.methods or []:
            parse_variant(label)


def run_bench(settings: BenchSettings, *, force: bool = False) -> list[dict[str, Any]]:
    """Run the grid; write ``<scenario>.json`` per scenario and ``summary.json``; return the summary rows.

    The scratch folder ``out/work`` is deleted afterwards, so an existing one is only used when it is empty, was
    made by an earlier bench (it holds :data:`BENCH_MARKER`) or ``force`` is given.
    """
    out = Path(settings.out)
    work = out / "work"
    if work.is_symlink() or (work.exists() and not work.is_dir()):
        raise InvalidRequest(f"{work} exists and is not a folder; choose another --out")
    if work.exists() and any(work.iterdir()) and not force and not (work / BENCH_MARKER).is_file():
        raise InvalidRequest(f"{work} exists and was not made by `disgorge bench`, which deletes it when done; "
                             "choose another --out, or pass --force to delete it")
    work.mkdir(parents=True, exist_ok=True)
    (work / BENCH_MARKER).write_text("made by `disgorge bench`: deleted when the bench ends\n", encoding="utf-8")
    executor = get_executor(settings.executor, workers=settings.workers)
    try:
        for scenario in settings.scenarios:
            started = time.perf_counter()
            result = bench_scenario(scenario, settings, executor, out / "work")
            result["wall_seconds"] = round(time.perf_counter() - started, 1)
            result["command"] = settings.command
            result["machine"] = machine()
            atomic_write_text(out / f"{scenario}.json", json.dumps(result, indent=1) + "\n")
            log.info("%s done in %.0fs", scenario, result["wall_seconds"])
    finally:
        executor.close()
        shutil.rmtree(out / "work", ignore_errors=True)
    return write_summary(out)


def bench_scenario(scenario: str, settings: BenchSettings, executor: Executor, work: Path) -> dict[str, Any]:
    """All seeds and methods of one scenario, plus the strong test on seed 0."""
    case = get_scenario(scenario)
    methods = settings.methods or list(case.bench_methods or METHODS.names())
    strong_models = settings.strong_models if case.strong_test else 0
    seeds = list(range(settings.seeds))
    roots = [work / f"{scenario}-s{s}" for s in seeds]
    for root in roots:
        shutil.rmtree(root, ignore_errors=True)
    log.info("%s: training %d original models", scenario, len(seeds))
    jobs = [(str(r), scenario, s, settings.device) for r, s in zip(roots, seeds, strict=True)]
    prepared = executor.map(prepare, jobs, description=f"{scenario}: train originals")
    problems = [Problem(p["root"], p["model"], p["forget"], settings.device) for p in prepared]
    log.info("%s: reference and %d methods for each seed", scenario, len(methods))
    cells = executor.map(run, [Job(problem, [seed], reference=True, methods=["original", *methods])
                               for problem, seed in zip(problems, seeds, strict=True)],
                         description=f"{scenario}: methods x seeds")
    per_seed = [{r["who"]: _light(r) for r in cell} for cell in cells]
    share = len(problems[0].forget) / prepared[0]["records"]
    rows = _aggregate(scenario, per_seed, methods)
    auto = auto_row(scenario, per_seed, methods, share)
    if auto is not None:
        rows.append(auto)
    strong: dict[str, Any] = {}
    if strong_models:
        # The per-example test costs K runs of each method and K retrainings; a method that does not close any of
        # the original's gap is already told apart by the population figures, so it is not run for it.
        original_gap = next(r["avg_gap"] for r in rows if r["method"] == "original")
        worth = [r["method"] for r in rows if r["method"] in methods and "refused" not in r
                 and (r["method"] == "retrain" or r["avg_gap"] < original_gap)]
        log.info("%s: strong test for %s", scenario, ", ".join(worth))
        strong = strong_test(problems[0], worth, strong_models, executor, scenario)
        for row in rows:
            row.update({k: strong.get(row["method"], {}).get(k) for k in ("forget_score", "final_score",
                                                                           "ulira_auc")})
            if row["method"] in methods and row["method"] not in strong and "refused" not in row:
                row["strong_skipped"] = "no better than the original (Avg Gap)"
    return {"scenario": scenario, "task": case.recipe().task, "purpose": case.purpose, "seeds": seeds,
            "forgotten": len(problems[0].forget), "training_records": prepared[0]["records"],
            "train_seconds": [p["train_seconds"] for p in prepared], "rows": rows, "per_seed": per_seed,
            "strong": strong}


def prepare(job: tuple[str, str, int, str | None]) -> dict[str, Any]:
    """Create a workspace at ``root`` holding ``scenario``, train its recipe with ``seed`` on ``device``, draw its
    forget set."""
    root, scenario, seed, device = job
    case = get_scenario(scenario)
    with Workspace.init(root) as ws:
        ws.device = device
        ingest_scenario(ws, scenario)
        row = train(ws, case.recipe().replace(seed=seed))
        forget = case.forget_ids(ws, seed)
    return {"root": root, "model": row.id, "forget": sorted(int(i) for i in forget), "train_seconds": row.seconds,
            "records": len(row.records)}


def _light(result: dict[str, Any]) -> dict[str, Any]:
    return {k: v for k, v in result.items() if k not in ("forget_loss", "forget_confidence", "who")}


def _mean(values: list[float | None]) -> float | None:
    vals = [v for v in values if v is not None]
    return round(float(np.mean(vals)), 4) if vals else None


def _aggregate(scenario: str, per_seed: list[dict[str, Any]], methods: list[str]) -> list[dict[str, Any]]:
    """Seed-averaged figures per method; Avg Gap of the averages (as SalUn), time ratio averaged per seed."""
    keys = get_task(get_scenario(scenario).recipe().task).figures

    probes = sorted({k for s in per_seed for run in s.values() if isinstance(run, dict)
                     for k in run.get("figures", {}) if k.startswith("effect:")})

    def figures(who: str) -> dict[str, float | None]:  # the task's figures and every further probe's
        return {k: _mean([s[who]["figures"].get(k) for s in per_seed]) for k in (*keys.keys, *probes)}

    reference = figures("reference")
    rows = []
    for who in ["original", *methods]:
        refused = next((s[who]["refused"] for s in per_seed if "refused" in s[who]), None)
        if refused:
            rows.append({"scenario": scenario, "method": who, "seeds": len(per_seed), "refused": refused})
            continue
        figs = figures(who)
        ratio = None if who == "original" else _mean([s[who]["seconds"] / s["reference"]["seconds"]
                                                      for s in per_seed])
        gap = avg_gap(figs, reference, keys.gap) if all(figs[k] is not None for k in keys.gap) else None
        figs.update(_group_gap(scenario, per_seed, who))
        rows.append({"scenario": scenario, "method": who, "seeds": len(per_seed), **figs,
                     "avg_gap": None if gap is None else round(gap, 4), "time_ratio": ratio,
                     "forget_score": None, **({} if who == "original" else _evidence(per_seed, who))})
    rows.insert(1, {"scenario": scenario, "method": "reference", "seeds": len(per_seed), **reference,
                    **_group_gap(scenario, per_seed, "reference"),
                    "avg_gap": 0.0, "time_ratio": 1.0, "forget_score": None,
                    "seconds": _mean([s["reference"]["seconds"] for s in per_seed])})
    return rows


def auto_row(scenario: str, per_seed: list[dict[str, Any]], methods: list[str], share: float) -> dict[str, Any] | None:
    """What ``--method auto`` with reference-free verification would have chosen and paid on each seed, replayed
    from the methods' own runs: candidates in :func:`~disgorge.erasure.auto_candidates` order (the order the
    package's bench record gives), each costing its seconds plus its reference-free verification's, until one passes
    with every decisive figure within :data:`~disgorge.erasure.AUTO_MARGIN` of its limit or the spending reaches
    :data:`~disgorge.erasure.AUTO_TOTAL` trainings (else the best verdict and score). The row's figures are the
    chosen models'; ``time_ratio`` is the whole cost over retraining. None when fewer than two candidates ran."""
    case = get_scenario(scenario)
    order = [m for m in auto_candidates(case.recipe().task, case.purpose, share) if m in methods]
    if len(order) < 2 or any("verdicts" not in s.get(m, {}) and "refused" not in s.get(m, {}) for s in per_seed
                             for m in order):
        return None
    keys = get_task(case.recipe().task).figures
    chosen, costs, tried = [], [], []
    for s in per_seed:
        pick, spent, count, budget = None, 0.0, 0, AUTO_TOTAL * s["reference"]["seconds"]
        ranked: list[tuple[tuple[int, float], str]] = []
        for m in order:
            cell = s[m]
            if "refused" in cell:
                continue
            count += 1
            spent += cell["seconds"] + cell.get("verify_seconds", 0.0)
            verdict, worst = cell["verdicts"].get("heldout"), cell.get("scores", {}).get("heldout")
            ranked.append(((VERDICT_ORDER.get(verdict or "failed", 2), math.inf if worst is None else worst), m))
            if verdict == "passed" and worst is not None and worst <= AUTO_MARGIN:
                pick = m
                break
            if spent >= budget:
                break
        chosen.append(pick or min(ranked)[1])
        costs.append(spent / s["reference"]["seconds"])
        tried.append(count)
    figs = {k: _mean([s[m]["figures"].get(k) for s, m in zip(per_seed, chosen, strict=True)]) for k in keys.keys}
    reference = {k: _mean([s["reference"]["figures"].get(k) for s in per_seed]) for k in keys.keys}
    gap = avg_gap(figs, reference, keys.gap) if all(figs[k] is not None for k in keys.gap) else None
    passed = [s[m]["verdicts"].get("heldout") == "passed" for s, m in zip(per_seed, chosen, strict=True)]
    return {"scenario": scenario, "method": "auto", "seeds": len(per_seed), **figs,
            "avg_gap": None if gap is None else round(gap, 4), "time_ratio": _mean(costs), "forget_score": None,
            "heldout_passed": round(sum(passed) / len(passed), 4), "verified_cost_ratio": _mean(costs),
            "auto_chosen": chosen, "auto_tried": _mean(tried), "auto_order": order}


def auto_record(results: list[dict[str, Any]]) -> dict[str, Any]:
    """The package's record of which methods did best on each bench scenario (what ``--method auto`` tries first on
    a similar request): methods ranked by the share of seeds passed reference-free, then exactly, then Avg Gap,
    then time; methods a scenario refused are left out."""
    scenarios = []
    for result in results:
        rows = [r for r in result["rows"] if r["method"] in METHODS.names() and r["method"] != "retrain"
                and "refused" not in r]

        def rank(r: dict[str, Any]) -> tuple[float, float, float, float]:
            return (-(r.get("heldout_passed") or 0.0), -(r.get("exact_passed") or 0.0),
                    math.inf if r.get("avg_gap") is None else r["avg_gap"],
                    math.inf if r.get("time_ratio") is None else r["time_ratio"])

        trained = result.get("training_records")
        case = get_scenario(result["scenario"])
        scenarios.append({"scenario": result["scenario"], "task": result.get("task", case.recipe().task),
                          "purpose": result.get("purpose", case.purpose),
                          "forget_share": round(result["forgotten"] / trained, 6) if trained else None,
                          "order": [r["method"] for r in sorted(rows, key=rank)]})
    return {"written_by": "make bench (disgorge.bench.write_auto_record)", "scenarios": scenarios}


def write_auto_record(out: Path | str, target: Path | None = None) -> Path:
    """Write :func:`auto_record` of the results in ``out`` to the package's ``methods/auto_order.json`` (or
    ``target``)."""
    path = target or Path(methods_package.__file__).with_name(AUTO_RECORD)
    atomic_write_text(path, json.dumps(auto_record(scenario_results(Path(out))), indent=1) + "\n")
    return path


def _group_gap(scenario: str, per_seed: list[dict[str, Any]], who: str) -> dict[str, float | None]:
    """``group_gap``: the seed mean of the first minus the second probe the scenario names (its
    :attr:`~disgorge.scenarios.Scenario.group_gap`), in points; nothing for scenarios that name none."""
    case = get_scenario(scenario)
    if case.group_gap is None:
        return {}
    names = [p.name for p in case.declare_probes([])]
    first, second = ("effect" if names.index(n) == 0 else f"effect:{n}" for n in case.group_gap)
    values = [s[who]["figures"].get(first) for s in per_seed], [s[who]["figures"].get(second) for s in per_seed]
    gaps = [None if a is None or b is None else a - b for a, b in zip(*values, strict=True)]
    mean = _mean(gaps)
    return {"group_gap": None if mean is None else round(mean, 4)}


def _evidence(per_seed: list[dict[str, Any]], who: str) -> dict[str, Any]:
    """A method's verification figures over seeds: the share of seeds passed at each evidence level, the
    verified cost ratio ((method + reference-free verification) over retraining, per seed, averaged) and the
    robustness attacks' recovery, beside the retrained reference's (the floor)."""
    cells = [s[who] for s in per_seed]

    def share(level: str) -> float | None:
        verdicts = [c["verdicts"][level] for c in cells if c.get("verdicts", {}).get(level) is not None]
        return round(sum(v == "passed" for v in verdicts) / len(verdicts), 4) if verdicts else None

    def recovered(attack: str, reference: bool = False) -> float | None:
        values = []
        for c in cells:
            block = (c.get("robustness") or {}).get(attack) or {}
            values.append((block.get("reference") or {}).get("recovered") if reference else block.get("recovered"))
        return _mean(values)

    return {"exact_passed": share("exact"), "heldout_passed": share("heldout"),
            "verified_cost_ratio": _mean([(s[who]["seconds"] + s[who]["verify_seconds"]) / s["reference"]["seconds"]
                                          for s in per_seed if "verify_seconds" in s[who]]),
            "relearn_recovered": recovered("relearn"), "relearn_recovered_retrain": recovered("relearn", True),
            "quantized_recovered": recovered("quantized")}


def write_summary(out: Path) -> list[dict[str, Any]]:
    """Collect every ``<scenario>.json`` in ``out`` into ``summary.json`` and their verdicts into
    ``verification.json``; return the summary rows."""
    results = scenario_results(out)
    rows = [row for result in results for row in result["rows"]]
    atomic_write_text(out / "summary.json", json.dumps(rows, indent=1) + "\n")
    atomic_write_text(out / "verification.json", json.dumps(verification(results), indent=1) + "\n")
    return rows


def verification(results: list[dict[str, Any]]) -> dict[str, Any]:
    """How far the reference-free verdict can be trusted: every (scenario, method, seed) judged at both levels;
    ``agreement`` = share of cases whose reference-free verdict (passed or not) equals the exact one;
    ``false_pass_rate`` = share of the exact level's non-passes that the reference-free level passed; both over
    the classifier scenarios (the targets) and over every scenario."""
    cases = []
    for result in results:
        for seed, cell in zip(result["seeds"], result["per_seed"], strict=True):
            for who, r in cell.items():
                verdicts = r.get("verdicts") or {}
                if verdicts.get("exact") is None or verdicts.get("heldout") is None:
                    continue
                cases.append({"scenario": result["scenario"], "task": result.get("task", "classification"),
                              "method": who, "seed": seed, "exact": verdicts["exact"],
                              "heldout": verdicts["heldout"]})

    def rates(chosen: list[dict[str, Any]]) -> dict[str, Any]:
        agree = [(c["exact"] == "passed") == (c["heldout"] == "passed") for c in chosen]
        not_passed = [c for c in chosen if c["exact"] != "passed"]
        return {"cases": len(chosen), "agreement": round(float(np.mean(agree)), 4) if agree else None,
                "false_pass_rate": round(float(np.mean([c["heldout"] == "passed" for c in not_passed])), 4)
                if not_passed else None,
                "exact_passed": sum(c["exact"] == "passed" for c in chosen),
                "heldout_passed": sum(c["heldout"] == "passed" for c in chosen)}

    scenarios = sorted({c["scenario"] for c in cases})
    return {"classifiers": rates([c for c in cases if c["task"] == "classification"]), "all": rates(cases),
            "by_scenario": {s: rates([c for c in cases if c["scenario"] == s]) for s in scenarios},
            "cases": cases}


def machine() -> dict[str, Any]:
    """What the benchmark ran on."""
    import torch

    mem = os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES") / 2**30 if hasattr(os, "sysconf") else None
    return {"cpu": processor(), "cores": os.cpu_count(), "memory_gib": round(mem, 1) if mem else None,
            "python": platform.python_version(), "torch": torch.__version__, "platform": platform.platform()}
