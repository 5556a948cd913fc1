"""BENCHMARKS.md and its plot, from ``benchmarks/results/*.json``."""

from __future__ import annotations

import json
import os
import re
from pathlib import Path
from typing import Any

from .._io import atomic_write_text
from ..tasks import FigureSet, get_task

BENCH_COLUMNS = (("avg_gap", "Avg Gap"), ("time_ratio", "time / retrain"))
"""Columns every scenario's table has after its task's figures (``FigureSet.bench``)."""
STRONG_COLUMNS = (("forget_score", "F"), ("final_score", "F x RA x TA"), ("ulira_auc", "U-LiRA AUC"))
"""Columns of the per-example (strong) test, shown for scenarios whose results have it."""
_DIGITS = {"time_ratio": 3, "forget_score": 3, "final_score": 3, "forget_quality": 3, "model_utility": 3,
           "forget_truth_ratio": 3}  # decimals where 2 are too few (ratios and 0..1 figures); 2 elsewhere


def _fmt(v: Any, digits: int = 2) -> str:
    if v is None:
        return "-"
    if isinstance(v, float) and 0 < abs(v) < 0.01:
        return f"{v:.1e}"
    return f"{v:.{digits}f}" if isinstance(v, float) else str(v)


def _task_name(result: dict[str, Any]) -> str:
    # results written before the bench recorded the task are all classification results
    return result.get("task", "classification")


def _is_lm(result: dict[str, Any]) -> bool:
    return _task_name(result) == "causal_lm"


def figure_set(result: dict[str, Any]) -> FigureSet:
    """The figures of the task a scenario's results come from (``result["task"]``)."""
    return get_task(_task_name(result)).figures


def columns(result: dict[str, Any]) -> list[tuple[str, str]]:
    """(key, label) of one scenario's table columns: its task's bench figures, Avg Gap and the time ratio, and the
    strong test's F, final score and U-LiRA AUC where it ran."""
    gap = [("group_gap", "group gap")] if any("group_gap" in r for r in result["rows"]) else []
    return [*figure_set(result).bench, *gap, *BENCH_COLUMNS, *(STRONG_COLUMNS if result.get("strong") else ())]


def scenario_table(result: dict[str, Any]) -> list[str]:
    """Markdown rows of one scenario, the original and the reference first, then methods by Avg Gap (classifiers)
    or by forget quality (language models; read it beside retain accuracy)."""
    rows = result["rows"]
    cols = columns(result)
    fixed = [r for r in rows if r["method"] in ("original", "reference")]
    order = (lambda r: -(r.get("forget_quality") or 0)) if _is_lm(result) else (lambda r: r["avg_gap"])
    ranked = sorted((r for r in rows if r["method"] not in ("original", "reference") and "refused" not in r),
                    key=order)
    lines = ["| method | " + " | ".join(label for _, label in cols) + " |",
             "|---|" + "---:|" * len(cols)]
    for r in fixed + ranked:
        lines.append(f"| {r['method']} | " + " | ".join(_fmt(r.get(k), _DIGITS.get(k, 2)) for k, _ in cols) + " |")
    for r in rows:
        if "refused" in r:
            lines.append(f"| {r['method']} | refused: {r['refused']} |" + " |" * (len(cols) - 1))
    return lines


def targets(result: dict[str, Any]) -> list[str]:
    """The issue's targets for this scenario, each marked met (by which methods) or missed (with the closest)."""
    rows = {r["method"]: r for r in result["rows"] if "refused" not in r}
    ref, orig = rows["reference"], rows["original"]
    methods = [r for name, r in rows.items() if name not in ("original", "reference", "retrain")]
    if _is_lm(result):
        return lm_targets(result, rows, methods)
    if result["scenario"] == "digits-backdoor":
        text = ("attack success within 2 points of retraining, test accuracy within 1 point, Avg Gap <= 2.0, "
                "time <= 10% of retraining")

        def ok(r: dict[str, Any]) -> bool:
            return (abs(r["effect"] - ref["effect"]) <= 2 and abs(r["ta"] - ref["ta"]) <= 1 and r["avg_gap"] <= 2.0
                    and r["time_ratio"] <= 0.10)
    elif result["scenario"] == "mnist":
        text = (f"Avg Gap <= 1.0 and at most a third of the original's ({orig['avg_gap']:.2f}), time <= 5% of "
                "retraining")

        def ok(r: dict[str, Any]) -> bool:
            return r["avg_gap"] <= min(1.0, orig["avg_gap"] / 3) and r["time_ratio"] <= 0.05
    elif result["scenario"] == "bias":
        text = ("group gap (accuracy, White - Black) within 2 points of retraining's "
                f"({ref['group_gap']:.2f}; original {orig['group_gap']:.2f}), test accuracy within 1 point")

        def ok(r: dict[str, Any]) -> bool:
            return abs(r["group_gap"] - ref["group_gap"]) <= 2 and abs(r["ta"] - ref["ta"]) <= 1
    else:
        return []
    met = [r["method"] for r in methods if ok(r)]
    if met:
        return [f"Target ({text}): **met** by {', '.join(met)}."]
    best = min(methods, key=lambda r: r["avg_gap"])
    fast = [r for r in methods if r["time_ratio"] <= (0.10 if result["scenario"] == "digits-backdoor" else 0.05)]
    closest = min(fast, key=lambda r: r["avg_gap"]) if fast else None
    line = (f"Target ({text}): **missed**. Smallest Avg Gap: {best['method']} at {best['avg_gap']:.2f} "
            f"({best['time_ratio']:.3f} of retraining, TA {best['ta']:.2f} vs {ref['ta']:.2f}")
    if best.get("effect") is not None:
        line += f", effect {best['effect']:.2f} vs {ref['effect']:.2f}"
    line += ")"
    if closest is not None:
        line += f"; within the time budget: {closest['method']} at {closest['avg_gap']:.2f}"
    return [line + "."]


def auto_lines(result: dict[str, Any]) -> list[str]:
    """What ``--method auto`` chose and paid on each seed (its row, replayed from the methods' runs), if it ran."""
    auto = next((r for r in result["rows"] if r["method"] == "auto"), None)
    if auto is None:
        return []
    return [f"`auto` is replayed from these runs as `--method auto` with reference-free verification would go: "
            f"candidates in the package's bench order ({', '.join(auto['auto_order'][:4])}, ...), each costing its "
            "own seconds plus its verification's, stopping at the first that passes with margin. It chose "
            f"{', '.join(auto['auto_chosen'])} (per seed) after {_fmt(auto['auto_tried'], 1)} candidates on average; "
            f"its time / retrain ({_fmt(auto['time_ratio'], 3)}) is that whole cost.", ""]


PASS_TARGET_SCENARIOS = ("people-forget01",)
"""Scenarios whose target is a request passing verification at defaults, with ``auto`` finding it within one
retraining's cost."""


def pass_target(result: dict[str, Any]) -> list[str]:
    """The small-request target: some method passes verification (exact, every seed) at its defaults, and ``auto``
    finds a passing model within the cost of one retraining."""
    if result["scenario"] not in PASS_TARGET_SCENARIOS:
        return []
    # at defaults: a variant (``npo[forget_span=key]``) sets options, and retraining is the exact baseline
    rows = [r for r in result["rows"] if "refused" not in r and "[" not in r["method"]
            and r["method"] not in ("original", "reference", "retrain", "auto")]
    passing = [r["method"] for r in rows if (r.get("exact_passed") or 0) >= 1 or (r.get("heldout_passed") or 0) >= 1]
    auto = next((r for r in result["rows"] if r["method"] == "auto"), None)
    auto_ok = auto is not None and (auto.get("heldout_passed") or 0) >= 1 and (auto["time_ratio"] or 9) <= 1.0
    text = ("a method passes verification at its defaults on every seed, and `auto` finds a passing model within the "
            "cost of one retraining")
    said = (f"passing: {', '.join(passing) or 'none'}; auto: "
            + ("not run" if auto is None else f"passed on {_fmt(100 * (auto.get('heldout_passed') or 0), 0)}% of "
               f"seeds at {_fmt(auto['time_ratio'], 3)} of retraining"))
    return [f"Target ({text}): **{'met' if passing and auto_ok else 'missed'}** ({said}).", ""]


def lm_targets(result: dict[str, Any], rows: dict[str, dict[str, Any]], methods: list[dict[str, Any]]) -> list[str]:
    """Language-model targets: forget quality with retain accuracy held (people), verbatim memorisation at the
    retrained level with the rest held (book)."""
    ref, orig = rows["reference"], rows["original"]
    keep = 0.95 * orig["retain_accuracy"]
    if result["scenario"].startswith("people"):
        text = (f"forget quality >= 0.5 with retain answer accuracy >= 95% of the original's ({keep:.1f}), time <= 10%"
                " of retraining")

        def ok(r: dict[str, Any]) -> bool:
            return ((r.get("forget_quality") or 0) >= 0.5 and r["retain_accuracy"] >= keep
                    and r["time_ratio"] <= 0.10)
    else:
        text = (f"VerbMem within 5 points of the retrained model's ({ref['verbmem']:.1f}) with retain accuracy >= 95% "
                f"of the original's ({keep:.1f}), time <= 10% of retraining")

        def ok(r: dict[str, Any]) -> bool:
            return (abs(r["verbmem"] - ref["verbmem"]) <= 5 and r["retain_accuracy"] >= keep
                    and r["time_ratio"] <= 0.10)
    met = [r["method"] for r in methods if ok(r)]
    notes = []
    if "retrain" in rows and rows["retrain"].get("forget_quality") is not None:
        seeds = [s["retrain"]["figures"].get("forget_quality") for s in result["per_seed"] if "retrain" in s]
        notes.append(f"For scale: a model retrained from scratch with other seeds scores forget quality "
                     f"{_fmt(rows['retrain']['forget_quality'], 3)} on average (per seed: "
                     f"{', '.join(_fmt(v, 3) for v in seeds)}), the ceiling a method can expect here.")
    if met:
        return [f"Target ({text}): **met** by {', '.join(met)}.", *notes]
    held = [r for r in methods if r["retain_accuracy"] >= keep]
    if not held:
        return [f"Target ({text}): **missed**: no method kept retain accuracy."]
    if result["scenario"].startswith("people"):
        best = max(held, key=lambda r: r.get("forget_quality") or 0)
        per_seed = [s[best["method"]]["figures"].get("forget_quality") for s in result["per_seed"]]
        what = (f"Best forget quality with retain accuracy held: {best['method']} at "
                f"{_fmt(best.get('forget_quality'), 3)} (per seed: {', '.join(_fmt(v, 3) for v in per_seed)}; ")
    else:
        best = min(held, key=lambda r: abs(r["verbmem"] - ref["verbmem"]))
        what = f"Closest VerbMem with retain accuracy held: {best['method']} ("
    return [f"Target ({text}): **missed**. {what}retain {best['retain_accuracy']:.1f}, VerbMem "
            f"{best['verbmem']:.1f} vs {ref['verbmem']:.1f}, {best['time_ratio']:.3f} of retraining).", *notes]


def plot(results: list[dict[str, Any]], path: Path) -> dict[str, dict[str, tuple[float, float]]]:
    """Avg Gap against time ratio, one panel per scenario (PNG); returns the points drawn, per scenario and method,
    as (time ratio, Avg Gap) read back from the figure."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, len(results), figsize=(5.5 * len(results), 4.5), squeeze=False)
    drawn: dict[str, dict[str, tuple[float, float]]] = {}
    for ax, result in zip(axes[0], results, strict=True):
        points = drawn.setdefault(result["scenario"], {})
        rows = [r for r in result["rows"] if "refused" not in r and r.get("time_ratio") is not None
                and r["method"] != "reference"]
        for r in rows:
            x, y = ax.scatter(r["time_ratio"], r["avg_gap"], s=30).get_offsets()[0]
            points[r["method"]] = (float(x), float(y))
            ax.annotate(r["method"], (r["time_ratio"], r["avg_gap"]), fontsize=7, xytext=(3, 3),
                        textcoords="offset points")
        orig = next(r for r in result["rows"] if r["method"] == "original")
        ax.axhline(orig["avg_gap"], color="grey", linestyle="--", linewidth=1, label="original (do nothing)")
        ax.set_xscale("log")
        ax.set_xlabel("time / retraining time (log)")
        ax.set_ylabel("Avg Gap to retraining (points)")
        ax.set_title(result["scenario"])
        ax.legend(fontsize=7)
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return drawn


RESULT_FILES = ("summary.json", "verification.json", "reliability.json", "sharding.json", "audit.json")
"""Files of a results folder that are not one scenario's results (the last two: ``benchmarks/reliability.py``'s and
``benchmarks/sharding.py``'s)."""


def scenario_results(out: Path) -> list[dict[str, Any]]:
    """Every ``<scenario>.json`` in ``out``, by name."""
    return [json.loads(p.read_text()) for p in sorted(Path(out).glob("*.json")) if p.name not in RESULT_FILES]


def write_report(results_dir: Path, report: Path, *, command: str, machine: dict[str, Any]) -> None:
    """Write ``report`` (markdown) and ``results_dir/avg_gap_vs_time.png`` from the results JSON files; each
    scenario names the command that produced it (``command`` for results that do not)."""
    results = scenario_results(results_dir)
    png = Path(results_dir) / "avg_gap_vs_time.png"
    plot(results, png)
    runs: dict[str, list[dict[str, Any]]] = {}
    for result in results:
        runs.setdefault(result.get("command") or command, []).append(result)
    produced = "; ".join(
        f"`{cmd}` ({', '.join(r['scenario'] for r in rs)}: {sum(r['wall_seconds'] for r in rs) / 60:.1f} min"
        + _elsewhere(rs, machine) + ")" for cmd, rs in runs.items())
    lines = [
        "# Benchmarks",
        "",
        f"Produced by {produced} on {machine['cpu']} ({machine['cores']} cores, {machine['memory_gib']} GiB, no GPU; "
        f"Python {machine['python']}, torch {machine['torch']}). `make bench` runs all of them in one command. Every "
        "figure below comes from those runs; `benchmarks/results/` holds the raw per-seed results and "
        "`summary.json`.",
        "",
        "Figures in percent, averaged over seeds (each seed trains its own original model and draws its own forget "
        "set). UA = 100 - forget accuracy; RA, TA = retain, test accuracy; MIA-eff. = SalUn's SVC membership attack "
        "(share of the forget set called non-member); effect = the scenario's probe. Avg Gap = mean |method - "
        "retrained| over UA, RA, TA and MIA-eff. of the seed averages; `reference` is the model retrained from "
        "scratch without the forget set (same recipe and seed); `original` does nothing. time / retrain = the "
        "method's wall-clock over retraining's, measured in the same process, averaged over seeds.",
        "",
        "F is the NeurIPS 2023 unlearning challenge's forgetting score from K unlearned models (method seeds) and K "
        "retrained models (other seeds) of seed 0: per forget example the best of a threshold and a logistic "
        "attack on the loss gives an epsilon; 2/2^bin(epsilon), bins of 0.5, averaged. F x RA x TA is the "
        "challenge's final score (RA, TA as ratios to retraining). U-LiRA AUC tells unlearned from retrained "
        "models per example by a Gaussian likelihood ratio, leave-one-out: 50 is indistinguishable. With small K, F "
        "is biased low even for retraining itself: the `retrain` row (other seeds than the references) is the "
        "ceiling at this K. The strong test is not run for a method whose Avg Gap is no better than the original's "
        "(F shows '-'): the population figures already tell it apart from retraining.",
        "",
        "Language-model scenarios (`people`, `book`) use TOFU's and MUSE's figures instead: answer accuracy (percent "
        "of questions whose greedy answer contains the fact; for a book, of verses whose second half is reproduced "
        "word for word) on forget, retain and held-out data; forget quality = KS-test p-value of the forget set's "
        "truth ratios against the retrained model's (averaged over seeds; >= 0.05 is indistinguishable), always to "
        "be read beside retain accuracy; model utility = harmonic mean of retain answer probability, ROUGE-L recall "
        "and truth-ratio score; forget TR = mean min(R, 1/R); VerbMem = ROUGE-L F1 (percent) of greedy "
        "continuations of forget items; Min-K% AUC = Min-40% Prob attack, forget vs held-out (50 = unseen); "
        "privleak = MUSE's relative AUC gap to the retrained model (0 ideal, negative = still recognisable, "
        "positive = over-unlearned). Avg Gap there averages forget, retain and held-out accuracy and the Min-K% AUC.",
        "",
        f"![Avg Gap against time ratio]({Path(os.path.relpath(png, Path(report).parent)).as_posix()})",
        "",
    ]
    for result in results:
        k = next(iter(result["strong"].values()), {}).get("models") if result["strong"] else None
        lines += [f"## {result['scenario']}", "",
                  f"{len(result['seeds'])} seeds; {result['forgotten']} records forgotten (seed 0); training took "
                  f"{sum(result['train_seconds']) / len(result['train_seconds']):.1f} s on average; "
                  + (f"strong test with K = {k} models per side; " if k else "no strong test; ")
                  + f"scenario wall time {result['wall_seconds'] / 60:.1f} min.", ""]
        lines += [*scenario_table(result), "", *auto_lines(result), *targets(result), *pass_target(result), ""]
    lines += verification_section(results, Path(results_dir) / "verification.json")
    atomic_write_text(report, "\n".join(lines))


def _elsewhere(results: list[dict[str, Any]], machine: dict[str, Any]) -> str:
    """A note when results were measured on another CPU than the report's (or did not record theirs)."""
    cpus = {(r.get("machine") or {}).get("cpu") for r in results}
    if cpus == {machine["cpu"]}:
        return ""
    return ", on " + " and ".join(sorted(c or "a machine it did not record" for c in cpus))


VERIFICATION_COLUMNS = (("exact_passed", "exact pass"), ("heldout_passed", "reference-free pass"),
                        ("verified_cost_ratio", "(method + ref.-free verification) / retrain"),
                        ("relearn_recovered", "relearn recovered"),
                        ("relearn_recovered_retrain", "retrained model's relearn recovered"),
                        ("quantized_recovered", "quantized recovered"))
"""Per-method columns of the verification section (shares of seeds; ratios; recovered shares 0..1)."""
AGREEMENT_TARGET, FALSE_PASS_TARGET, PEOPLE_COST_TARGET = 0.95, 0.02, 0.2


def verification_section(results: list[dict[str, Any]], path: Path) -> list[str]:
    """BENCHMARKS.md's section on verification without retraining: per scenario and method, the share of seeds
    passed at each level, the verified cost and the robustness attacks; then agreement and false passes against
    their targets (met or missed)."""
    if not path.exists():
        return []
    summary = json.loads(path.read_text())
    lines = ["## Verification without retraining", "",
             "Every method's model of every seed is judged twice: at the exact level (against the model retrained "
             "without the forget set) and reference-free (against held-out records of the same kind, nothing "
             "trained), with the scenario's purpose (digits-backdoor: poison, judged by the attack success rate "
             "against its base rate; others: privacy, judged by membership AUC and forget/held-out accuracy "
             "parity, plus any effect probe). Pass columns are the share of seeds passed. The cost ratio adds the "
             "reference-free verification (measuring the original and the unlearned model, and the robustness "
             "attacks) to the method's time, over retraining's in the same process. Relearn: 20 fine-tuning steps "
             "on 10% of the forget set, recovery measured on the other 90% (0 = nothing came back, 1 = back to the "
             "original); the retrained model's own recovery under the same attack is the floor. Quantized: the "
             "larger recovery of int8 (torch dynamic) and 4-bit round-to-nearest weights.", ""]
    for result in results:
        rows = [r for r in result["rows"] if r.get("heldout_passed") is not None or r.get("exact_passed") is not None]
        if not rows:
            continue
        heads = " | ".join(c for _, c in VERIFICATION_COLUMNS)
        lines += [f"### {result['scenario']}", "", f"| method | {heads} |",
                  "|---|" + "---:|" * len(VERIFICATION_COLUMNS)]
        lines += ["| " + " | ".join([r["method"], *(_fmt(r.get(k), 3) for k, _ in VERIFICATION_COLUMNS)]) + " |"
                  for r in rows]
        lines.append("")
    cls = summary["classifiers"]
    met = (cls["agreement"] is not None and cls["agreement"] >= AGREEMENT_TARGET
           and (cls["false_pass_rate"] or 0.0) <= FALSE_PASS_TARGET)
    lines += [f"Agreement over the classifier scenarios: {_fmt(cls['agreement'], 3)} over {cls['cases']} cases "
              f"(exact passed {cls['exact_passed']}, reference-free passed {cls['heldout_passed']}); false pass "
              f"rate {_fmt(cls['false_pass_rate'], 3)}. Target (agreement >= {AGREEMENT_TARGET}, false pass rate <= "
              f"{FALSE_PASS_TARGET}): **{'met' if met else 'missed'}**.", ""]
    for name, r in summary["by_scenario"].items():
        lines.append(f"- {name}: agreement {_fmt(r['agreement'], 3)} over {r['cases']} cases, false pass rate "
                     f"{_fmt(r['false_pass_rate'], 3)}")
    people = next((x for x in results if x["scenario"] == "people"), None)
    if people is not None:
        cheap = [r for r in people["rows"] if (r.get("heldout_passed") or 0) > 0
                 and r.get("verified_cost_ratio") is not None and r["verified_cost_ratio"] <= PEOPLE_COST_TARGET]
        lines += ["", f"Target on people (a method passing reference-free at a verified cost ratio <= "
                      f"{PEOPLE_COST_TARGET}): **{'met' if cheap else 'missed'}**"
                      + (f" by {', '.join(r['method'] for r in cheap)}." if cheap else ".")]
    return [*lines, ""]


def write_section(path: Path, text: str, start: str, end: str) -> None:
    """Replace the part of the markdown file ``path`` between the markers ``start`` and ``end`` (``text`` includes
    them) or append ``text``; the rest of the file is left as it is (bench scripts each own one section)."""
    old = path.read_text(encoding="utf-8") if path.exists() else ""
    pattern = re.compile(re.escape(start) + ".*?" + re.escape(end), re.DOTALL)
    new = pattern.sub(lambda _: text, old, count=1) if pattern.search(old) else \
        old.rstrip("\n") + ("\n\n" if old.strip() else "") + text + "\n"
    atomic_write_text(path, new)
