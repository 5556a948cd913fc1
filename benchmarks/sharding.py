"""Exact by design: what SISA sharding and differential privacy cost and buy, measured in one run per scenario.

Run from the repository root, on a quiet machine (every figure is a wall-clock time or a ratio of two)::

    .venv/bin/python benchmarks/sharding.py --out benchmarks/results --report BENCHMARKS.md \\
        [--scenarios mnist,people] [--shards 1,4,8,16] [--lm-shards 4,8] [--sliced 8:4] [--epsilons 1,8] \\
        [--dp-epochs 2] [--lm-epochs 10] [--quick]

For each scenario it builds a workspace, then, in throwaway copies of it:

1. the monolithic model (the recipe without ``[sharding]``): its test accuracy (TA), the percent of held-out records
   it classifies right (``mnist``) or of held-out answer tokens it predicts (``people``: next-token accuracy), and
   its training time; then the same recipe retrained from scratch without one source and without a 1% random sample
   of the training records (``fit_recipe``, timed): the monolithic retrains every removal is compared with;
2. for each S and ``by`` in (record, source): the recipe with ``[sharding] shards = S, slices = 1, by = ...``
   (``slices = 1``: each shard trains once on all its records; one extra row by source with more slices), its TA,
   then ``disgorge forget`` of the same source and of the same 1% sample (each in its own copy of the workspace;
   ``method = "sisa"``, no verification), timed by the child model's ``seconds`` (the shards' retraining). S = 1 is
   the monolithic model itself, whose removal is the full retrain (time ratio 1 by definition);
3. differential privacy: the monolithic recipe with ``[privacy] epsilon = E`` (DP-SGD through opacus): TA, the loss
   membership-inference AUC (``disgorge.evaluate.metrics.mia_auc``: a sample of training records against the
   held-out records; 50 = members look unseen), and its training time over the non-private one of the same epochs
   (on ``mnist`` ``--dp-epochs``, default 2, with a non-private model of those epochs trained for the comparison).

``mnist`` is the bundled scenario's data dealt to 20 contributor sources (``contributor-00`` .. ``contributor-19``;
every shifted copy of an image in one source) with its MLP recipe; the removal is ``contributor-07``. ``people`` is
the bundled 200-person scenario with a small character-level GPT-2 (a sharded language model needs the ``char``
tokenizer; the scenario's word-level recipe trains too slowly to repeat on 2 cores); the removal is ``person-007``.

It writes ``OUT/sharding.json`` (every figure, the command, the machine), replaces the ``sisa-*`` and ``dp-*`` rows of
its scenarios in ``OUT/summary.json`` (``disgorge bench`` rewrites that file, so ``make bench`` runs this script
after it) and writes the section ``## Exact by design: SISA sharding and differential privacy`` of the report
(between ``<!-- sharding:start -->`` and ``<!-- sharding:end -->``, replaced on each run, appended the first time).
``--quick`` is a smoke run of every step on tiny data (minutes), not a measurement.
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import platform
import shlex
import shutil
import sys
import tempfile
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, replace
from importlib.metadata import PackageNotFoundError, version
from pathlib import Path
from typing import Any

import numpy as np
import torch
from pyroaring import BitMap

from disgorge import api
from disgorge._io import atomic_write_text
from disgorge.errors import DisgorgeError
from disgorge.evaluate.metrics import mia_auc
from disgorge.evidence.certificate import processor
from disgorge.ledger import NewRecord
from disgorge.report.benchmarks import write_section
from disgorge.scenarios import get_scenario
from disgorge.spec import ModelSpec, PrivacySpec, Recipe, ShardingSpec, TrainSpec
from disgorge.tasks import RecordDataset, Task, get_task
from disgorge.training.loop import warm_up
from disgorge.training.trainer import fit_recipe
from disgorge.workspace import Workspace

log = logging.getLogger("sharding")

START, END = "<!-- sharding:start -->", "<!-- sharding:end -->"
TITLE = "## Exact by design: SISA sharding and differential privacy"
CONTRIBUTORS = 20
"""The ``mnist`` images are dealt to this many contributor sources."""
MNIST_SOURCE = "contributor-07"
PEOPLE_SOURCE = "person-007"
RANDOM_FRACTION, RANDOM_SEED = 0.01, 0
"""The random removal: ``forget(random_fraction=0.01, seed=0)``, the same records for every model of a scenario."""
ACCURACY_WINDOW = 2.0
"""The target: a sharded model whose TA is within this many points of the monolithic model's."""
LM_MODEL = {"n_layer": 2, "n_embd": 64, "n_head": 4, "max_length": 128, "tokenizer": "char"}
"""The ``people`` network: a 2-layer character-level GPT-2 (every question and answer fits in 128 bytes)."""
LM_EPOCHS = 10
"""Epochs of the ``people`` recipe: the monolithic model trains in about a minute on 2 quiet cores."""
MNIST_DP_EPOCHS = 2
"""Epochs of the private ``mnist`` models: opacus materialises each example's gradient of the MLP's 784 x 1024 layer,
so an epoch of DP-SGD costs dozens of non-private epochs on a CPU; 20 epochs at two epsilons would take hours."""
QUICK_IMAGES = 300
"""``--quick``: training and held-out ``mnist`` images kept (each training image in 9 shifted copies)."""


# -- the scenarios -------------------------------------------------------------------------------------------------

@dataclass
class Case:
    """One scenario of the bench: how its workspace is filled, its recipe and what is removed."""

    name: str
    recipe: Recipe
    source: str
    shards: list[int]
    sliced: tuple[int, int] | None
    sample: int
    fill: Callable[[Workspace], dict[str, Any]]
    description: str
    dp_epochs: int | None = None
    """Epochs of the private models and of their non-private comparison (None: the recipe's own)."""


def mnist_records(images: int | None) -> tuple[dict[str, list[NewRecord]], list[NewRecord], Any]:
    """The ``mnist`` scenario's training records dealt to :data:`CONTRIBUTORS` sources (an image's shifted copies
    together; images dealt round-robin in a seeded random order), its held-out records and the training source's
    data (licence, origin); ``images``: keep only that many training and held-out images, drawn at random
    (``--quick``)."""
    sources = get_scenario("mnist").sources()
    train_source = next(s for s in sources if all(r.split == "train" for r in s.records))
    train = train_source.records
    test = [r for s in sources for r in s.records if r.split == "test"]
    chosen = sorted({int(r.attributes["image"]) for r in train})
    if images is not None:  # the images are sorted by label: keep a random subset of each split
        rng = np.random.default_rng(0)
        chosen = sorted(rng.choice(chosen, images, replace=False).tolist())
        test = [test[i] for i in sorted(rng.choice(len(test), min(images, len(test)), replace=False).tolist())]
    order = np.random.default_rng(0).permutation(len(chosen))
    owner = {chosen[k]: f"contributor-{i % CONTRIBUTORS:02d}" for i, k in enumerate(order)}
    groups: dict[str, list[NewRecord]] = {name: [] for name in sorted(set(owner.values()))}
    for r in train:
        name = owner.get(int(r.attributes["image"]))
        if name is not None:
            groups[name].append(r)
    return groups, test, train_source


def fill_mnist(ws: Workspace, images: int | None) -> dict[str, Any]:
    """Ingest the contributors' records and the held-out source; return what was ingested."""
    groups, test, train_source = mnist_records(images)
    with ws.writing(), ws.ledger.transaction():
        for name, records in groups.items():
            ws.ledger.add_records(ws.ledger.add_source(name, train_source.license, train_source.origin), records)
        ws.ledger.add_records(ws.ledger.add_source("mnist-heldout", train_source.license, train_source.origin), test)
    return {"sources": len(groups), "train_records": sum(len(r) for r in groups.values()),
            "test_records": len(test), "images_per_source": round(len(groups[MNIST_SOURCE]) / 9, 1)}


def fill_people(ws: Workspace, scenario: str) -> dict[str, Any]:
    """Ingest a bundled people scenario; return what was ingested."""
    results = api.ingest_scenario(ws, scenario)
    return {"sources": len(results) - 1, "train_records": len(ws.ledger.record_ids(split="train")),
            "test_records": len(ws.test_ids())}


def lm_recipe(name: str, epochs: int) -> Recipe:
    """The ``people`` recipe of this bench: :data:`LM_MODEL`, AdamW as the scenario's own recipe."""
    return Recipe(name=f"{name}-char", task="causal_lm", seed=0, model=ModelSpec("gpt2", dict(LM_MODEL)),
                  train=TrainSpec(optimizer="adamw", lr=2e-3, batch_size=32, epochs=epochs))


def cases(args: argparse.Namespace) -> list[Case]:
    """The scenarios ``--scenarios`` asks for, sized by the arguments (and ``--quick``)."""
    out = []
    if "mnist" in args.scenarios:
        recipe = get_scenario("mnist").recipe()
        images = QUICK_IMAGES if args.quick else None
        if args.quick:
            recipe = replace(recipe, train=replace(recipe.train, epochs=2))
        out.append(Case(
            "mnist", recipe, MNIST_SOURCE, args.shards, args.sliced, 1000, lambda ws: fill_mnist(ws, images),
            f"the `mnist` scenario's {str(images) + ' random ' if images else ''}training images (9 shifted "
            f"copies each) dealt to {CONTRIBUTORS} contributor sources, its MLP recipe ({recipe.train.epochs} "
            f"epochs); removal: `{MNIST_SOURCE}`", args.dp_epochs or None))
    if "people" in args.scenarios:
        name = args.lm_scenario
        recipe = lm_recipe(name, args.lm_epochs)
        out.append(Case(
            name, recipe, PEOPLE_SOURCE, args.lm_shards, None, 400, lambda ws: fill_people(ws, name),
            f"the `{name}` scenario (one source per person) with a character-level GPT-2 ({LM_MODEL['n_layer']} "
            f"layers, {LM_MODEL['n_embd']} dimensions, {args.lm_epochs} epochs); removal: `{PEOPLE_SOURCE}`"))
    return out


# -- measuring -----------------------------------------------------------------------------------------------------

@torch.no_grad()
def losses(task: Task, model: torch.nn.Module, data: RecordDataset, batch: int = 128) -> np.ndarray:
    """Each record's loss under ``model`` (the task's per-example training loss)."""
    model.eval()
    parts = [task.per_example_loss(model, data.tensors_slice(i, i + batch)).float().numpy()
             for i in range(0, len(data), batch)]
    return np.concatenate(parts) if parts else np.zeros(0)


def figures(task: Task, model: torch.nn.Module, test: RecordDataset, sample: RecordDataset, *,
            membership: bool = False) -> dict[str, float]:
    """TA (held-out), RA (the retained sample) in percent and, with ``membership``, the loss attack's AUC (percent)
    of the retained sample (members) against the held-out records."""
    out = {"ta": round(task.quick_accuracy(model, test), 2), "ra": round(task.quick_accuracy(model, sample), 2)}
    if membership:
        out["mia_auc"] = round(mia_auc(-losses(task, model, sample), -losses(task, model, test)), 2)
    return out


def copy(src: Path, dst: Path) -> Path:
    """A fresh copy of a (closed) workspace folder."""
    shutil.rmtree(dst, ignore_errors=True)
    shutil.copytree(src, dst)
    return dst


class Bench:
    """The measurements of one case, in workspaces under ``work``."""

    def __init__(self, case: Case, work: Path, epsilons: list[float], workers: int = 1) -> None:
        self.case, self.work, self.epsilons, self.workers = case, work, epsilons, workers
        self.task = get_task(case.recipe.task)
        self.base = work / f"{case.name}-base"
        self.removals: dict[str, BitMap] = {}
        self.test: RecordDataset
        self.sample: RecordDataset

    def prepare(self) -> dict[str, Any]:
        """Fill the base workspace; fix the removals and the retained sample every model is measured on."""
        started = time.perf_counter()
        with Workspace.init(self.base) as ws:
            setup = self.case.fill(ws)
            self.removals = {"source": ws.select(sources=[self.case.source]),
                             "random": ws.select(random_fraction=RANDOM_FRACTION, seed=RANDOM_SEED)}
            keep = ws.training_ids(self.case.recipe) - self.removals["source"] - self.removals["random"]
            pick = np.random.default_rng(0).choice(np.array(keep, dtype=np.int64), min(self.case.sample, len(keep)),
                                                   replace=False)
            self.sample = ws.dataset(self.task, BitMap(pick.tolist()))
            self.test = ws.dataset(self.task, ws.test_ids())
        setup.update({"description": self.case.description, "recipe": self.case.recipe.to_dict(),
                      "source": self.case.source, "source_records": len(self.removals["source"]),
                      "random_fraction": RANDOM_FRACTION, "random_seed": RANDOM_SEED,
                      "random_records": len(self.removals["random"]), "retained_sample": len(self.sample),
                      "ingest_seconds": round(time.perf_counter() - started, 1)})
        log.info("%s: %d training records in %d sources, %d held out; removals: %s (%d records), 1%% (%d records)",
                 self.case.name, setup["train_records"], setup["sources"], setup["test_records"], self.case.source,
                 setup["source_records"], setup["random_records"])
        return setup

    def monolithic(self) -> dict[str, Any]:
        """The monolithic model, its retrains without each removal, and the private models."""
        recipe, task = self.case.recipe, self.task
        root = copy(self.base, self.work / f"{self.case.name}-monolithic")
        with Workspace.open(root) as ws:
            row = api.train(ws, recipe)
            model, _, _ = ws.load_model(row.id)
            out: dict[str, Any] = {"train_seconds": round(row.seconds, 3),
                                   **figures(task, model, self.test, self.sample, membership=True)}
            log.info("%s: monolithic model: TA %.2f, trained in %.1fs", self.case.name, out["ta"], row.seconds)
            for what, ids in self.removals.items():
                data = ws.dataset(task, row.records - ids)
                info = task.data_info(data, recipe.model)
                started = time.perf_counter()
                retrained, result = fit_recipe(task, recipe, data, info)
                seconds = time.perf_counter() - started
                out[f"retrain_{what}"] = {"seconds": round(seconds, 3), "fit_seconds": round(result.seconds, 3),
                                          "records": len(data), **figures(task, retrained, self.test, self.sample)}
                log.info("%s: monolithic retrain without the %s removal: %.1fs", self.case.name, what, seconds)
            out["dp"] = self.private(ws, out)
        shutil.rmtree(root, ignore_errors=True)
        return out

    def private(self, ws: Workspace, mono: dict[str, Any]) -> dict[str, Any]:
        """The recipe with ``[privacy]`` at each epsilon: TA, membership AUC, cost against the non-private training
        of the same epochs (the monolithic model, or one trained here with the private models' epochs);
        ``supported`` false (with the reason) when the DP implementation refuses the recipe."""
        recipe = self.case.recipe
        epochs = self.case.dp_epochs or recipe.train.epochs
        if epochs == recipe.train.epochs:
            plain = {"epochs": epochs, "monolithic": True, **{k: mono[k] for k in ("train_seconds", "ta", "ra",
                                                                                   "mia_auc")}}
        else:
            recipe = recipe.replace(name=f"{recipe.name}-{epochs}ep", train=replace(recipe.train, epochs=epochs))
            row = api.train(ws, recipe)
            model, _, _ = ws.load_model(row.id)
            plain = {"epochs": epochs, "monolithic": False, "train_seconds": round(row.seconds, 3),
                     **figures(self.task, model, self.test, self.sample, membership=True)}
            log.info("%s: non-private model of %s (the private models'): TA %.2f, MIA AUC %.2f, %.1fs",
                     self.case.name, _epochs(epochs), plain["ta"], plain["mia_auc"], row.seconds)
        rows: list[dict[str, Any]] = []
        for epsilon in self.epsilons:
            private = recipe.replace(name=f"{self.case.recipe.name}-dp-eps{epsilon:g}",
                                     privacy=PrivacySpec(epsilon=float(epsilon)))
            try:
                row = api.train(ws, private)
            except (DisgorgeError, ImportError) as exc:
                log.warning("%s: differential privacy not supported: %s", self.case.name, exc)
                return {"supported": False, "reason": str(exc).splitlines()[0] if str(exc) else type(exc).__name__,
                        "nonprivate": plain, "rows": rows}
            model, _, _ = ws.load_model(row.id)
            spent = row.info.get("privacy", {})
            measured = figures(self.task, model, self.test, self.sample, membership=True)
            rows.append({"target_epsilon": float(epsilon), "epsilon": spent.get("epsilon"),
                         "delta": spent.get("delta"), "noise_multiplier": spent.get("noise_multiplier"),
                         "epochs": epochs, "train_seconds": round(row.seconds, 3),
                         "time_ratio": round(row.seconds / plain["train_seconds"], 3), **measured})
            log.info("%s: DP epsilon %g: TA %.2f, MIA AUC %.2f, %.1fs (%.2fx)", self.case.name, epsilon,
                     measured["ta"], measured["mia_auc"], row.seconds, rows[-1]["time_ratio"])
        return {"supported": True, "nonprivate": plain, "rows": rows}

    def sharded(self, shards: int, by: str, slices: int) -> dict[str, Any]:
        """Train the sharded recipe, then forget the source in one copy and the random sample in another."""
        recipe = self.case.recipe.replace(name=f"{self.case.recipe.name}-sisa-{shards}-{by}-{slices}",
                                          sharding=ShardingSpec(shards=shards, slices=slices, by=by))
        label = f"S={shards} by {by}, {slices} slice(s)"
        first = copy(self.base, self.work / f"{self.case.name}-sisa-{shards}-{by}-{slices}-a")
        with Workspace.open(first) as ws:
            row = api.train(ws, recipe, workers=self.workers)
            model, _, _ = ws.load_model(row.id)
            out: dict[str, Any] = {"shards": shards, "by": by, "slices": slices,
                                   "train_seconds": round(row.seconds, 3),
                                   "members": len(row.info["sharding"]["members"]),
                                   **figures(self.task, model, self.test, self.sample, membership=True)}
        log.info("%s: %s: TA %.2f, trained in %.1fs", self.case.name, label, out["ta"], row.seconds)
        second = copy(first, self.work / f"{self.case.name}-sisa-{shards}-{by}-{slices}-b")
        for what, root, selection in (("source", first, {"sources": [self.case.source]}),
                                      ("random", second, {"random_fraction": RANDOM_FRACTION, "seed": RANDOM_SEED})):
            with Workspace.open(root) as ws:
                started = time.perf_counter()
                result = api.forget(ws, method="sisa", verify="none", workers=self.workers, **selection)
                wall = time.perf_counter() - started
                child = result.children[0]
                if result.records != len(self.removals[what]):
                    log.warning("%s: the %s removal selected %d records, not the %d expected", label, what,
                                result.records, len(self.removals[what]))
                report = child.info["report"]
                child_model, _, _ = ws.load_model(child.id)
                out[what] = {"seconds": round(child.seconds, 3), "forget_wall_seconds": round(wall, 3),
                             "records": result.records, "retrained_shards": len(report["retrained_shards"]),
                             "shards": report["shards"], "examples": report["examples"],
                             "monolithic_examples": report["monolithic_examples"],
                             "work_ratio": round(report["examples"] / report["monolithic_examples"], 4),
                             "report": report, **figures(self.task, child_model, self.test, self.sample)}
            shutil.rmtree(root, ignore_errors=True)
            log.info("%s: %s: %s removal retrained %d of %d shards in %.1fs", self.case.name, label, what,
                     out[what]["retrained_shards"], report["shards"], child.seconds)
        return out

    def run(self) -> dict[str, Any]:
        """Every measurement of the case; the time ratios against the monolithic retrains of this run."""
        started = time.perf_counter()
        setup = self.prepare()
        mono = self.monolithic()
        rows = []
        for shards in self.case.shards:
            if shards == 1:
                rows.append(self.unsharded(mono))
                continue
            for by in ("record", "source"):
                rows.append(self.sharded(shards, by, 1))
        if self.case.sliced is not None:
            rows.append(self.sharded(self.case.sliced[0], "source", self.case.sliced[1]))
        for row in rows:
            complete(row, mono)
        shutil.rmtree(self.base, ignore_errors=True)
        return {"scenario": self.case.name, "task": self.case.recipe.task, "setup": setup, "monolithic": mono,
                "sharded": rows, "seconds": round(time.perf_counter() - started, 1)}

    @staticmethod
    def unsharded(mono: dict[str, Any]) -> dict[str, Any]:
        """S = 1: the monolithic model itself; its removals are the full retrains (time ratio 1 by definition)."""
        row: dict[str, Any] = {"shards": 1, "by": None, "slices": 1, "train_seconds": mono["train_seconds"],
                               "members": 1, "monolithic": True,
                               **{k: mono[k] for k in ("ta", "ra", "mia_auc")}}
        for what in ("source", "random"):
            retrain = mono[f"retrain_{what}"]
            row[what] = {"seconds": retrain["seconds"], "records": retrain["records"], "retrained_shards": 1,
                         "shards": 1, "work_ratio": 1.0, "ta": retrain["ta"], "ra": retrain["ra"]}
        return complete(row, mono)


def complete(row: dict[str, Any], mono: dict[str, Any]) -> dict[str, Any]:
    """Add to a row what compares it with the monolithic model: its TA difference, and each removal's time over the
    monolithic retrain's for the same removal."""
    row["ta_monolithic"] = mono["ta"]
    row["ta_delta"] = round(row["ta"] - mono["ta"], 2)
    for what in ("source", "random"):
        row[what]["time_ratio"] = round(row[what]["seconds"] / mono[f"retrain_{what}"]["seconds"], 4)
    return row


# -- results ---------------------------------------------------------------------------------------------------------

def method_name(row: dict[str, Any]) -> str:
    """The summary's method name of a sharded row: ``sisa-<S>-<by>`` (``sisa-1``: the monolithic model;
    ``-slices<L>`` for more than one slice)."""
    if row["shards"] == 1 and row.get("monolithic"):
        return "sisa-1"
    return f"sisa-{row['shards']}-{row['by']}" + (f"-slices{row['slices']}" if row["slices"] > 1 else "")


def summary_rows(result: dict[str, Any]) -> list[dict[str, Any]]:
    """The scenario's rows of ``summary.json``: ``seconds`` is the one-source removal's, ``time_ratio`` and
    ``time_ratio_random`` the one-source and 1% removals' time over the monolithic retrain's."""
    scenario, mono = result["scenario"], result["monolithic"]
    rows = [{"scenario": scenario, "method": method_name(r), "shards": r["shards"], "by": r["by"],
             "slices": r["slices"], "ta": r["ta"], "ta_monolithic": r["ta_monolithic"],
             "time_ratio": r["source"]["time_ratio"], "time_ratio_random": r["random"]["time_ratio"],
             "seconds": r["source"]["seconds"], "seconds_random": r["random"]["seconds"],
             "train_seconds": r["train_seconds"], "ta_after_source": r["source"]["ta"],
             "ta_after_random": r["random"]["ta"], "retrained_shards": r["source"]["retrained_shards"],
             "retrained_shards_random": r["random"]["retrained_shards"]} for r in result["sharded"]]
    dp = mono["dp"]
    plain = dp["nonprivate"]
    for r in dp["rows"]:
        rows.append({"scenario": scenario, "method": f"dp-eps{r['target_epsilon']:g}", "epsilon": r["epsilon"],
                     "target_epsilon": r["target_epsilon"], "delta": r["delta"], "epochs": r["epochs"],
                     "ta": r["ta"], "ta_nonprivate": plain["ta"], "mia_auc": r["mia_auc"],
                     "mia_auc_nonprivate": plain["mia_auc"], "time_ratio": r["time_ratio"],
                     "seconds": r["train_seconds"]})
    if not dp["supported"]:
        rows.append({"scenario": scenario, "method": "dp", "refused": f"not supported: {dp['reason']}"})
    return rows


def update_summary(path: Path, results: list[dict[str, Any]]) -> None:
    """Replace the ``sisa-*``, ``dp-*`` (and a refused ``dp``) rows of these scenarios in ``summary.json``; other rows
    are kept."""
    old = json.loads(path.read_text(encoding="utf-8")) if path.exists() else []
    names = {r["scenario"] for r in results}
    kept = [row for row in old if not (row.get("scenario") in names and (str(row.get("method")).startswith(
        ("sisa-", "dp-")) or row.get("method") == "dp"))]
    atomic_write_text(path, json.dumps(kept + [row for r in results for row in summary_rows(r)], indent=1) + "\n")


def target(result: dict[str, Any]) -> dict[str, Any]:
    """The target on ``mnist``: some S > 1 whose sharded model removes one source in at most 1/S of the monolithic
    retrain's time (no allowance for overhead) with a TA within :data:`ACCURACY_WINDOW` points of the monolithic
    model's."""
    hits = [method_name(r) for r in result["sharded"] if r["shards"] > 1
            and r["source"]["time_ratio"] <= 1 / r["shards"] and abs(r["ta_delta"]) <= ACCURACY_WINDOW]
    return {"met": bool(hits), "rows": hits}


def _num(value: float | None, digits: int = 2) -> str:
    return "-" if value is None else f"{value:.{digits}f}"


def _signed(value: float | None) -> str:
    return "-" if value is None else f"{value:+.2f}"


def scenario_table(result: dict[str, Any]) -> list[str]:
    """The sharding table of one scenario (the S = 1 row is the monolithic model and its full retrains)."""
    mono = result["monolithic"]
    lines = [f"| S | by | slices | train s | TA | TA - monolithic | `{result['setup']['source']}` removal s (shards "
             "retrained) | ratio | 1% removal s (shards retrained) | ratio | TA after (source / 1%) |",
             "|---:|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|"]
    rows = result["sharded"]
    if not any(r.get("monolithic") for r in rows):
        rows = [Bench.unsharded(mono), *rows]
    for r in rows:
        by = "monolithic" if r.get("monolithic") else r["by"]
        cells = [str(r["shards"]), by, str(r["slices"]), _num(r["train_seconds"], 1), _num(r["ta"]),
                 _signed(r["ta_delta"])]
        for what in ("source", "random"):
            m = r[what]
            cells += [f"{m['seconds']:.1f} ({m['retrained_shards']}/{m['shards']})", _num(m["time_ratio"], 3)]
        cells.append(f"{_num(r['source']['ta'])} / {_num(r['random']['ta'])}")
        lines.append("| " + " | ".join(cells) + " |")
    return lines


def dp_table(results: list[dict[str, Any]]) -> list[str]:
    """The differential-privacy table over the scenarios (the non-private model first)."""
    lines = ["| scenario | epochs | target epsilon | epsilon spent (delta) | TA | TA - non-private | MIA AUC | train s "
             "| cost ratio |", "|---|---:|---:|---:|---:|---:|---:|---:|---:|"]
    for result in results:
        dp, name = result["monolithic"]["dp"], result["scenario"]
        plain = dp["nonprivate"]
        lines.append(f"| {name} | {plain['epochs']} | ∞ (non-private) | - | {_num(plain['ta'])} | - | "
                     f"{_num(plain['mia_auc'])} | {plain['train_seconds']:.1f} | 1.00 |")
        for r in dp["rows"]:
            lines.append(f"| {name} | {r['epochs']} | {r['target_epsilon']:g} | {_num(r['epsilon'])} "
                         f"({r['delta']:g}) | {_num(r['ta'])} | {_signed(r['ta'] - plain['ta'])} | "
                         f"{_num(r['mia_auc'])} | {r['train_seconds']:.1f} | {_num(r['time_ratio'])} |")
        if not dp["supported"]:
            lines.append(f"| {name} | - | - | not supported: {dp['reason']} | - | - | - | - | - |")
    return lines


def _ratios(rows: list[dict[str, Any]], what: str, *, by: bool = False) -> str:
    """``S=4: 0.27 (1/4 shards)``, ... for the rows (``by``: with the sharding key)."""
    return ", ".join(f"S={r['shards']}{' by ' + r['by'] if by else ''}: {r[what]['time_ratio']:.2f} "
                     f"({r[what]['retrained_shards']}/{r[what]['shards']} shards)" for r in rows)


def reading(result: dict[str, Any]) -> str:
    """One paragraph on a scenario's sharding figures, every statement computed from them."""
    mono, name = result["monolithic"], result["scenario"]
    source = result["setup"]["source"]
    text = [f"On `{name}` the monolithic model reached TA {mono['ta']:.2f} in {mono['train_seconds']:.0f} s; "
            f"retraining it without `{source}` took {mono['retrain_source']['seconds']:.0f} s and without the 1% "
            f"sample {mono['retrain_random']['seconds']:.0f} s."]
    plain = [r for r in result["sharded"] if r["shards"] > 1 and r["slices"] == 1]
    for by in ("source", "record"):
        rows = [r for r in plain if r["by"] == by]
        if rows:
            deltas = ", ".join(f"S={r['shards']}: {r['ta_delta']:+.2f}" for r in rows)
            text.append(f"Sharded by {by}, removing `{source}` took, as a share of the monolithic retrain's time, "
                        f"{_ratios(rows, 'source')}; the sharded models' TA differed from the monolithic model's by "
                        f"{deltas} points.")
    if plain:
        text.append(f"The 1% random removal took {_ratios(plain, 'random', by=True)}.")
    sliced = [r for r in result["sharded"] if r["slices"] > 1]
    for r in sliced:
        text.append(f"With {r['slices']} slices (S={r['shards']} by {r['by']}) the source removal restarted its "
                    f"shards from slice(s) {sorted(set(r['source']['report']['retrained_shards'].values()))} and "
                    f"took {r['source']['time_ratio']:.2f} of the retrain, the 1% removal "
                    f"{r['random']['time_ratio']:.2f}.")
    return " ".join(text)


def _epochs(n: int) -> str:
    return f"{n} epoch" + ("" if n == 1 else "s")


def dp_reading(results: list[dict[str, Any]]) -> str:
    """One paragraph on the private models, every statement computed from the figures."""
    text = []
    for result in results:
        dp = result["monolithic"]["dp"]
        plain = dp["nonprivate"]
        if not dp["supported"]:
            text.append(f"On `{result['scenario']}` differential privacy was not supported ({dp['reason']}).")
            continue
        parts = [f"epsilon {r['target_epsilon']:g}: TA {r['ta']:.2f} ({r['ta'] - plain['ta']:+.2f}), MIA AUC "
                 f"{r['mia_auc']:.2f}, {r['time_ratio']:.2f}x the training time" for r in dp["rows"]]
        if parts:
            text.append(f"On `{result['scenario']}` the non-private model of {_epochs(plain['epochs'])} had TA "
                        f"{plain['ta']:.2f} and MIA AUC {plain['mia_auc']:.2f} (50 = training records look unseen); "
                        f"with DP-SGD, {'; '.join(parts)}.")
    return " ".join(text)


def _workers(results: dict[str, Any]) -> str:
    """How the shards were spread, in words."""
    workers = results["settings"].get("workers", 1)
    return "one after another in the bench's process" if workers == 1 else f"in a pool of {workers} processes"


def _closest(result: dict[str, Any]) -> str:
    """The row that came nearest to the target, when it was missed: the fastest source removal within 1/S, or
    else the most accurate sharded model."""
    if result["target"]["met"]:
        return ""
    rows = [r for r in result["sharded"] if r["shards"] > 1]
    fast = [r for r in rows if r["source"]["time_ratio"] <= 1 / r["shards"]]
    if not rows:
        return ""
    best = max(fast, key=lambda r: r["ta_delta"]) if fast else max(rows, key=lambda r: r["ta_delta"])
    return (f" Closest: {method_name(best)} removed the source at {best['source']['time_ratio']:.3f} of the retrain "
            f"(1/S = {1 / best['shards']:.3f}) with TA {best['ta_delta']:+.2f} points.")


def section(results: dict[str, Any], json_path: Path) -> str:
    """The report's section, between its markers."""
    scenarios = results["scenarios"]
    machine = results["machine"]
    lines = [START, TITLE, "",
             f"Produced by `{results['command']}` ({results['seconds'] / 60:.1f} min, disgorge {results['version']}, "
             f"{machine['cpu']}, {machine['cpu_count']} cores, torch {machine['torch']} with "
             f"{machine['torch_threads']} threads; load average at start {machine['load_average_at_start']})"
             + (", a `--quick` smoke run on tiny data: not a measurement" if results["quick"] else "") + ". "
             "Each scenario is measured in one process: the monolithic model (its recipe without `[sharding]`), the "
             "same recipe retrained from scratch without one source and without a 1% random sample of the training "
             f"records (`random_fraction={RANDOM_FRACTION}, seed={RANDOM_SEED}`), then for each S the recipe with "
             "`[sharding] shards = S, slices = 1` (each shard trains once on all its records) by record and by "
             "source, and the same two removals with `forget(method=\"sisa\", verify=\"none\")` (each in its "
             "own copy of the workspace), timed by the child model's retraining seconds; shards train "
             f"{_workers(results)}, each on one torch thread, and the monolithic model on all of them. ratio = "
             "removal time / the "
             "monolithic retrain's time for the same removal. S = 1 is the monolithic model itself: its removal is "
             "the full retrain, ratio 1 by definition. TA = held-out accuracy in percent (for the language model, "
             "next-token accuracy on the held-out people's answers); TA after = the unlearned model's. "
             f"Raw results: `{json_path}`.", ""]
    for result in scenarios:
        lines += [f"### {result['scenario']}", "", f"{result['setup']['description']}; "
                  f"{result['setup']['train_records']} training records in {result['setup']['sources']} sources, "
                  f"{result['setup']['test_records']} held out; {result['seconds'] / 60:.1f} min.", "",
                  *scenario_table(result), ""]
        if result["scenario"] == "mnist":
            goal = result["target"]
            lines += [f"Target: some S removes one source at <= 1/S of a monolithic retrain's time with accuracy "
                      f"within {ACCURACY_WINDOW:g} points of the monolithic model on mnist: "
                      f"**{'met' if goal['met'] else 'missed'}**"
                      + (f" ({', '.join(goal['rows'])})" if goal["rows"] else "") + ". The check is simply "
                      "ratio <= 1/S for the one-source removal (no allowance for aggregation or checkpoint "
                      f"overhead), and the sharded model's TA at most {ACCURACY_WINDOW:g} points above or below "
                      "the monolithic model's, over the rows with S > 1." + _closest(result), ""]
        lines += [reading(result), ""]
    if scenarios:
        lines += ["### Differential privacy", "",
                  "The monolithic recipe with `[privacy] epsilon = E` (DP-SGD through opacus, delta 1e-5, per-example "
                  "gradients clipped to norm 1; the epsilon spent is the accountant's), each compared with the "
                  "non-private recipe of the same epochs (on mnist the private models train fewer epochs than the "
                  "sharding rows' recipe when `--dp-epochs` says so: per-example gradients of its wide MLP make an "
                  "epoch of DP-SGD dozens of times slower). MIA AUC = the loss attack's ROC AUC (percent), a sample "
                  "of training records against the held-out records (50 = members look unseen); cost ratio = "
                  "training time / the non-private training's.", "", *dp_table(scenarios), "",
                  dp_reading(scenarios), ""]
    lines.append(END)
    return "\n".join(lines)


def write_report(path: Path, text: str) -> None:
    """Replace this script's section of the report, or append it; the rest of the file is left as it is."""
    write_section(path, text, START, END)


# -- the machine -----------------------------------------------------------------------------------------------------

def machine() -> dict[str, Any]:
    """What the bench ran on."""
    return {"platform": platform.platform(), "processor": platform.processor(), "cpu": processor(),
            "cpu_count": os.cpu_count(), "torch_threads": torch.get_num_threads(),
            "python": platform.python_version(), "torch": torch.__version__,
            "transformers": _version("transformers"), "opacus": _version("opacus"),
            "load_average_at_start": _load()}


def _load() -> list[float] | None:
    try:
        return [round(v, 2) for v in os.getloadavg()]
    except OSError:
        return None


def _version(package: str) -> str | None:
    try:
        return version(package)
    except PackageNotFoundError:
        return None


# -- main ------------------------------------------------------------------------------------------------------------

def _ints(text: str) -> list[int]:
    return [int(v) for v in text.split(",") if v.strip()]


def parse_args(argv: Sequence[str] | None = None) -> argparse.Namespace:
    """The command line; ``--quick`` changes the defaults of the sizes not given."""
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--out", type=Path, default=Path("benchmarks/results"), help="folder for sharding.json and "
                        "summary.json")
    parser.add_argument("--report", type=Path, default=None, help="markdown report to write the section into")
    parser.add_argument("--scenarios", default="mnist,people", help="comma-separated: mnist, people")
    parser.add_argument("--shards", default=None, help="S values on mnist (default 1,4,8,16; quick 1,2)")
    parser.add_argument("--lm-shards", default=None, help="S values on people (default 4,8; quick 2)")
    parser.add_argument("--sliced", default=None, help="S:L, one more mnist row by source with L slices (default "
                        "8:4; quick 2:2; 'none' to skip)")
    parser.add_argument("--epsilons", default="1,8", help="DP epsilons (default 1,8; empty to skip)")
    parser.add_argument("--dp-epochs", type=int, default=None, help="epochs of the private mnist models and of "
                        "their non-private comparison (default 2; quick 1; 0: the recipe's own)")
    parser.add_argument("--lm-scenario", default=None, help="people or people-mini (default people; quick "
                        "people-mini)")
    parser.add_argument("--lm-epochs", type=int, default=None, help=f"epochs of the people recipe (default "
                        f"{LM_EPOCHS}; quick 2)")
    parser.add_argument("--quick", action="store_true", help="a smoke run of every step on tiny data (not a "
                        "measurement)")
    parser.add_argument("--work", type=Path, default=None, help="folder for the workspaces (default: a temporary "
                        "folder, removed afterwards)")
    parser.add_argument("--workers", type=int, default=os.cpu_count() or 1,
                        help="processes that train shards at once (default: the CPU count; each shard trains on one "
                             "torch thread, the monolithic model on all of them)")
    parser.add_argument("-v", "--verbose", action="store_true", help="debug logging")
    args = parser.parse_args(argv)
    args.scenarios = [s.strip() for s in args.scenarios.split(",") if s.strip()]
    unknown = sorted(set(args.scenarios) - {"mnist", "people"})
    if unknown:
        parser.error(f"--scenarios takes mnist and people, got {', '.join(unknown)}")
    try:
        args.shards = _ints(args.shards or ("1,2" if args.quick else "1,4,8,16"))
        args.lm_shards = _ints(args.lm_shards or ("2" if args.quick else "4,8"))
        args.epsilons = [float(v) for v in args.epsilons.split(",") if v.strip()]
        sliced = args.sliced or ("2:2" if args.quick else "8:4")
        args.sliced = None if sliced == "none" else tuple(_ints(sliced.replace(":", ",")))
    except ValueError as exc:
        parser.error(f"a number list is malformed: {exc}")
    if args.sliced is not None and (len(args.sliced) != 2 or min(args.sliced) < 1 or args.sliced[1] < 2):
        parser.error("--sliced takes S:L with S >= 1 and L >= 2, or none")
    if any(s < 1 for s in args.shards + args.lm_shards) or any(e <= 0 for e in args.epsilons):
        parser.error("shard counts must be >= 1 and epsilons > 0")
    args.lm_scenario = args.lm_scenario or ("people-mini" if args.quick else "people")
    if args.lm_scenario not in ("people", "people-mini"):
        parser.error("--lm-scenario takes people or people-mini")
    args.lm_epochs = args.lm_epochs or (2 if args.quick else LM_EPOCHS)
    if args.dp_epochs is None:
        args.dp_epochs = 1 if args.quick else MNIST_DP_EPOCHS
    if args.dp_epochs < 0 or args.lm_epochs < 1:
        parser.error("--dp-epochs must be >= 0 and --lm-epochs >= 1")
    return args


def main(argv: Sequence[str] | None = None) -> int:
    """Run the scenarios, write sharding.json, the summary rows and the report section; print the tables."""
    args = parse_args(argv)
    logging.basicConfig(level=logging.DEBUG if args.verbose else logging.INFO,
                        format="%(asctime)s %(levelname)s %(name)s: %(message)s", datefmt="%H:%M:%S")
    command = "python benchmarks/sharding.py " + shlex.join(sys.argv[1:] if argv is None else argv)
    started = time.perf_counter()
    results: dict[str, Any] = {"command": command, "version": _version("disgorge") or "unknown",
                               "machine": machine(), "quick": args.quick,
                               "settings": {"shards": args.shards, "lm_shards": args.lm_shards,
                                            "sliced": args.sliced, "epsilons": args.epsilons,
                                            "lm_scenario": args.lm_scenario, "lm_epochs": args.lm_epochs,
                                            "dp_epochs": args.dp_epochs, "workers": args.workers,
                                            "contributors": CONTRIBUTORS, "accuracy_window": ACCURACY_WINDOW},
                               "scenarios": []}
    warm_up()
    work = args.work or Path(tempfile.mkdtemp(prefix="disgorge-sharding-"))
    work.mkdir(parents=True, exist_ok=True)
    log.info("workspaces in %s", work)
    try:
        for case in cases(args):
            result = Bench(case, work, args.epsilons, args.workers).run()
            if case.name == "mnist":
                result["target"] = target(result)
            results["scenarios"].append(result)
            log.info("%s done in %.1f min", case.name, result["seconds"] / 60)
    finally:
        if args.work is None:
            shutil.rmtree(work, ignore_errors=True)
    results["seconds"] = round(time.perf_counter() - started, 1)
    results["minutes"] = round(results["seconds"] / 60, 1)
    results["machine"]["load_average_at_end"] = _load()
    args.out.mkdir(parents=True, exist_ok=True)
    path = args.out / "sharding.json"
    atomic_write_text(path, json.dumps(results, indent=1) + "\n")
    update_summary(args.out / "summary.json", results["scenarios"])
    text = section(results, path)
    if args.report is not None:
        write_report(args.report, text)
    print(text)
    log.info("done in %.1f min; results in %s%s", results["minutes"], path,
             f"; report {args.report}" if args.report else "")
    return 0


if __name__ == "__main__":
    sys.exit(main())
