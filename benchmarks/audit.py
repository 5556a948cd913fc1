"""Blind attribution: does `disgorge attribute` find the source that causes a behaviour without being told?

Run from the repository root, on a quiet machine (the time ratios are wall-clock)::

    .venv/bin/python benchmarks/audit.py --out benchmarks/results --report BENCHMARKS.md [--seeds 3]

For each scenario and seed it builds a workspace, trains the scenario's recipe with that seed (the recipes keep
training checkpoints: digits-backdoor 10, mnist-backdoor 15, people-mini 10; bias none, so its final weights) and
runs ``api.attribute`` on one behaviour, knowing nothing of which source is guilty:

- ``digits-backdoor``, ``mnist-backdoor``: the scenario's probe (triggered held-out images sent to the target);
  the guilty source is the poisoner, ``contributor-07``;
- ``bias``: the scenario's probe (accuracy on held-out Black arrestees; attribution traces its errors); the guilty
  source is the precinct that relabelled them, ``precinct-07``;
- ``people-mini``: an ``answers`` probe of the last forget person's questions, paraphrased, with that person's
  answers (a JSON Lines file of prompts and completions, as a user would declare it); the guilty source is that
  person's.

Per run: the guilty source's rank among all sources (1 = first), its score over the next source's, precision at k
of the records (k = the guilty source's record count: the share of the k best-scored records that are the guilty
source's; chance is k / training records), and the attribution's time over the training time of the same model.
It writes ``OUT/audit.json`` and the section ``## Audit: blind attribution`` of the report (between
``<!-- audit:start -->`` and ``<!-- audit:end -->``).
"""

from __future__ import annotations

import argparse
import json
import shlex
import sys
import tempfile
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

from disgorge import api
from disgorge._io import atomic_write_text
from disgorge.report.benchmarks import write_section
from disgorge.scenarios import get_scenario
from disgorge.tasks.causal_lm import field_text
from disgorge.workspace import Workspace

START, END = "<!-- audit:start -->", "<!-- audit:end -->"
TITLE = "## Audit: blind attribution"
SCENARIOS = ("digits-backdoor", "mnist-backdoor", "bias", "people-mini")


def person_probe(ws: Workspace, person: str, folder: Path) -> str:
    """Declare an ``answers`` probe of ``person``'s paraphrased questions with their answers; returns its name."""
    path = folder / f"{person}.jsonl"
    with path.open("w", encoding="utf-8") as f:
        for r in ws.ledger.records(ws.ledger.record_ids(sources=[person])):
            f.write(json.dumps({"prompt": field_text(r.fields["paraphrase"]),
                                "completion": field_text(r.fields["answer"])}) + "\n")
    api.add_probe(ws, "person_answers", path)
    return "person_answers"


def one(scenario: str, seed: int, folder: Path) -> dict[str, Any]:
    """Attribute one behaviour of one seed's model; the guilty source's rank, margin, precision at k and time."""
    case = get_scenario(scenario)
    with Workspace.init(folder / f"{scenario}-s{seed}") as ws:
        api.ingest_scenario(ws, scenario)
        row = api.train(ws, case.recipe().replace(seed=seed))
        if ws.ledger.probes():
            guilty_source, probe = case.forget_selector()["sources"][0], ws.ledger.probes()[0].name
        else:
            guilty_source = case.forget_selector()["sources"][-1]
            probe = person_probe(ws, guilty_source, folder)
        guilty = set(ws.ledger.record_ids(sources=[guilty_source], split="train"))
        result, _ = api.attribute(ws, row.id, probe=probe, top=len(guilty))
    sources = [s["source"] for s in result["sources"]]
    rank = sources.index(guilty_source) + 1
    scores = [s["score"] for s in result["sources"]]
    margin = scores[0] / scores[1] if rank == 1 and len(scores) > 1 and scores[1] > 0 else None
    return {"scenario": scenario, "seed": seed, "behaviour": result["behaviour"], "guilty": guilty_source,
            "rank": rank, "sources": len(sources), "margin": None if margin is None else round(margin, 2),
            "precision_at_k": round(sum(r["source"] == guilty_source for r in result["records"]) / len(guilty), 4),
            "k": len(guilty), "chance": round(len(guilty) / len(row.records), 4),
            "checkpoints": result["checkpoints"], "attribution_seconds": result["seconds"],
            "training_seconds": round(row.seconds, 3), "time_ratio": round(result["seconds"] / row.seconds, 4)}


def section(runs: list[dict[str, Any]], command: str) -> str:
    """The report's section: one row per scenario, seeds aggregated."""
    lines = [TITLE, "", f"Measured by `{command}` ({len({r['seed'] for r in runs})} seed(s) per scenario; every run "
             "blind: the attribution is given only the behaviour). Rank = the guilty source's place among all "
             "sources, in every seed; margin = its score over the next source's (median over the seeds where another "
             "source scored above 0); P@k = precision at k of "
             "the records, k = the guilty source's record count (mean; chance in brackets); time = attribution / "
             "training of the same model (mean).", "",
             "| scenario | behaviour | guilty source | rank per seed | margin | P@k (chance) | checkpoints | time |",
             "|---|---|---|---|---:|---:|---:|---:|"]
    for scenario in dict.fromkeys(r["scenario"] for r in runs):
        rs = [r for r in runs if r["scenario"] == scenario]
        margins = [r["margin"] for r in rs if r["margin"] is not None]
        alone = sum(r["rank"] == 1 and r["margin"] is None for r in rs)  # every other source scored <= 0
        margin = ", ".join(([f"{np.median(margins):.1f}x"] if margins else [])
                           + ([f"{alone} seed(s): every other source <= 0"] if alone else [])) or "-"
        lines.append(f"| {scenario} | {rs[0]['behaviour']} | {rs[0]['guilty']} (of {rs[0]['sources']}) | "
                     f"{', '.join(str(r['rank']) for r in rs)} | {margin} | "
                     f"{np.mean([r['precision_at_k'] for r in rs]):.2f} ({rs[0]['chance']:.2f}) | "
                     f"{rs[0]['checkpoints']} | {np.mean([r['time_ratio'] for r in rs]):.2f} |")
    first = all(r["rank"] == 1 for r in runs)
    lines += ["", f"Target (the guilty source ranked first in every seed, blind): **{'met' if first else 'missed'}**."]
    return "\n".join(lines) + "\n"


def main(argv: Sequence[str] | None = None) -> int:
    """Run every scenario and seed; write the JSON and the report section."""
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--out", type=Path, default=Path("benchmarks/results"))
    parser.add_argument("--report", type=Path, default=None)
    parser.add_argument("--seeds", type=int, default=3)
    parser.add_argument("--scenarios", default=",".join(SCENARIOS))
    args = parser.parse_args(argv)
    command = "python benchmarks/audit.py " + shlex.join(sys.argv[1:] if argv is None else list(argv))
    with tempfile.TemporaryDirectory() as tmp:
        runs = [one(s, seed, Path(tmp)) for s in args.scenarios.split(",") for seed in range(args.seeds)]
    args.out.mkdir(parents=True, exist_ok=True)
    atomic_write_text(args.out / "audit.json", json.dumps({"command": command, "runs": runs}, indent=1) + "\n")
    if args.report is not None:
        write_section(args.report, f"{START}\n{section(runs, command)}{END}", START, END)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
