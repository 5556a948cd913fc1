"""The ``disgorge`` command line: thin commands over the public API, printed with rich."""

from __future__ import annotations

import logging
import sys
from pathlib import Path
from typing import Annotated, Any

import typer
from rich.console import Console
from rich.logging import RichHandler
from rich.table import Table

from . import api
from .errors import DisgorgeError, InvalidRequest
from .evidence.certificate import figure_rows
from .workspace import Workspace

app = typer.Typer(help="Trace, audit, unlearn and verify what a trained model learned from which data.",
                  no_args_is_help=True, pretty_exceptions_enable=False, add_completion=False)
out = Console(soft_wrap=True)
log = logging.getLogger("disgorge")

WorkspaceOpt = Annotated[Path, typer.Option("--workspace", "-w", envvar="DISGORGE_WORKSPACE",
                                            help="workspace folder (default: current folder)")]


def _ws(path: Path) -> Workspace:
    return Workspace.open(path)


@app.callback()
def _root(verbose: Annotated[bool, typer.Option("--verbose", "-v", help="log each step")] = False) -> None:
    logging.basicConfig(level=logging.INFO if verbose else logging.WARNING, format="%(message)s",
                        handlers=[RichHandler(console=Console(stderr=True), show_path=False)], force=True)


@app.command()
def init(path: Annotated[Path, typer.Argument(help="folder to create the workspace in")] = Path(".")) -> None:
    """Create a workspace (ledger, key, models/, reports/)."""
    with Workspace.init(path) as ws:
        out.print(f"created workspace {ws.root} (ledger schema v{ws.ledger.schema_version})")


@app.command()
def ingest(
    file: Annotated[Path | None, typer.Argument(help="a .csv, .npz or .jsonl (texts) file")] = None,
    scenario: Annotated[str | None, typer.Option(help="ingest a bundled scenario instead of a file")] = None,
    source: Annotated[str | None, typer.Option(help="source name the records come from")] = None,
    license: Annotated[str | None, typer.Option("--license", help="licence of the source (SPDX id)")] = None,
    origin: Annotated[str, typer.Option(help="where the source came from (URL, contract, ...)")] = "",
    label: Annotated[str, typer.Option(help="CSV label column")] = "label",
    attribute: Annotated[list[str] | None, typer.Option(help="CSV column kept as a group attribute")] = None,
    split: Annotated[str, typer.Option(help="train or test")] = "train",
    workspace: WorkspaceOpt = Path("."),
) -> None:
    """Add records with their provenance: a bundled scenario or a user file."""
    with _ws(workspace) as ws:
        if scenario is not None:
            if file is not None:
                raise InvalidRequest("give either a FILE or --scenario, not both")
            results = api.ingest_scenario(ws, scenario)
        elif file is None:
            raise InvalidRequest("give a FILE to ingest or --scenario NAME (see `disgorge scenarios`)")
        else:
            if not source or not license:
                raise InvalidRequest("a file needs --source NAME and --license SPDX-ID for its provenance")
            results = [api.ingest_file(ws, file, source=source, license=license, origin=origin, label=label,
                                       attributes=attribute or (), split=split)]
        added = sum(len(r.added) for r in results)
        dups = sum(r.duplicates for r in results)
        out.print(f"ingested {added} records from {len(results)} source(s); skipped {dups} exact duplicate(s)")


@app.command()
def sources(workspace: WorkspaceOpt = Path(".")) -> None:
    """List sources with their licences and record counts."""
    with _ws(workspace) as ws:
        table = Table("source", "licence", "origin", "active", "held", "erased")
        counts = ws.ledger.source_counts()
        for s in ws.ledger.sources():
            c = counts.get(s.name, {})
            table.add_row(s.name, s.license, s.origin, *(str(c.get(k, 0)) for k in ("active", "held", "erased")))
        out.print(table)


@app.command()
def scenarios() -> None:
    """List the bundled scenarios."""
    from .scenarios import SCENARIOS, get_scenario

    table = Table("scenario", "what it shows", "effect probe")
    for name in SCENARIOS:
        s = get_scenario(name)
        table.add_row(name, s.description, ", ".join(p.name for p in s.probes()) or "-")
    out.print(table)


@app.command()
def recipe(scenario: Annotated[str, typer.Argument(help="a bundled scenario")]) -> None:
    """Print a scenario's default recipe as TOML (save it, edit it, `disgorge train` it)."""
    from .scenarios import get_scenario

    sys.stdout.write(get_scenario(scenario).recipe().to_toml())


@app.command()
def train(recipe_file: Annotated[Path, typer.Argument(metavar="RECIPE", help="recipe TOML file")],
          workspace: WorkspaceOpt = Path(".")) -> None:
    """Train a model from a recipe; writes an immutable model folder."""
    with _ws(workspace) as ws:
        row = api.train(ws, recipe_file)
        out.print(f"trained {row.id} on {len(row.records)} records in {row.seconds:.1f}s; "
                  f"weights sha256 {row.weights_sha256}")


@app.command()
def models(workspace: WorkspaceOpt = Path("."),
           all_: Annotated[bool, typer.Option("--all", help="include superseded models and references")] = False
           ) -> None:
    """List models with their lineage."""
    with _ws(workspace) as ws:
        kinds = ("trained", "unlearned", "reference") if all_ else ("trained", "unlearned")
        table = Table("model", "kind", "status", "parent", "method", "request", "records", "seconds", "sha256")
        for m in ws.ledger.models(kinds=kinds, status=None if all_ else "active"):
            table.add_row(m.id, m.kind, m.status, m.parent or "-", m.method or "-",
                          str(m.request_id) if m.request_id else "-", str(len(m.records)), f"{m.seconds:.1f}",
                          m.weights_sha256[:12])
        out.print(table)


@app.command()
def methods() -> None:
    """List the unlearning methods."""
    from .methods import METHODS

    table = Table("method", "family", "needs", "what it does", "paper")
    for name in METHODS:
        m = METHODS.get(name)
        table.add_row(name, m.family, ", ".join(sorted(m.needs)) or "-", m.summary, m.paper)
    out.print(table)


def _parse_options(values: list[str] | None) -> dict[str, Any]:
    from .methods.registry import parse_options

    return parse_options(values or [])


def _parse_ids(text: str | None) -> list[int]:
    if not text:
        return []
    ids: list[int] = []
    for part in text.split(","):
        part = part.strip()
        lo, sep, hi = part.partition("-")
        try:
            ids += list(range(int(lo), int(hi) + 1)) if sep else [int(part)]
        except ValueError:
            raise InvalidRequest(f"--records takes ids like 3,7,10-20; {part!r} is not one") from None
    return ids


@app.command()
def forget(
    source: Annotated[list[str] | None, typer.Option(help="forget every record of this source")] = None,
    records: Annotated[str | None, typer.Option(help="record ids to forget, e.g. 3,7,10-20")] = None,
    random: Annotated[float | None, typer.Option(help="forget this share of training records, drawn at random")
                      ] = None,
    seed: Annotated[int, typer.Option(help="seed for --random")] = 0,
    model: Annotated[str | None, typer.Option(help="only this model (default: every model that saw them)")] = None,
    method: Annotated[str, typer.Option(help="unlearning method (see `disgorge methods`), or auto")] = "grad_diff",
    option: Annotated[list[str] | None, typer.Option("--option", "-o", help="method option KEY=VALUE")] = None,
    max_seconds: Annotated[float | None, typer.Option(help="time budget of the method, in seconds")] = None,
    max_steps: Annotated[int | None, typer.Option(help="step budget of the method")] = None,
    lora: Annotated[int | None, typer.Option(help="fine-tune methods: train only LoRA adapters of this rank (peft), "
                                                  "merged into the weights afterwards")] = None,
    budget: Annotated[float, typer.Option(help="--method auto: each candidate's share of the training time")] = 0.5,
    accept_failed: Annotated[bool, typer.Option(help="commit and erase even if verification fails")] = False,
    reason: Annotated[str, typer.Option(help="why the records are erased (kept in the ledger)")] = "",
    verify: Annotated[bool, typer.Option(help="verify against a retrained reference before erasing")] = True,
    defer_erase: Annotated[bool, typer.Option(help="hold the payloads (for `disgorge verify`) until "
                                                     "`disgorge erase REQUEST`")] = False,
    workspace: WorkspaceOpt = Path("."),
) -> None:
    """Remove records' effect from every model that saw them, verify, and erase the records."""
    with _ws(workspace) as ws:
        options = _parse_options(option)
        options.update({k: v for k, v in (("max_seconds", max_seconds), ("max_steps", max_steps),
                                          ("lora_rank", lora)) if v is not None})
        result = api.forget(ws, sources=source or (), records=_parse_ids(records), random_fraction=random, seed=seed,
                            model=model, method=method, options=options, reason=reason, verify=verify,
                            erase=not defer_erase, accept_failed=accept_failed, budget_fraction=budget)
        out.print(f"request {result.request_id}: {result.records} records; "
                  f"{len(result.children)} model(s) unlearned with {method}: "
                  + ", ".join(f"{c.parent} -> {c.id}" for c in result.children))
        for cert in result.certificates:
            _print_certificate(cert, result.paths[cert["models"]["child"]["id"]]["json"])
        out.print("records erased (tombstones kept)" if result.erased else
                  f"records held; erase them with `disgorge erase {result.request_id}`")


@app.command()
def verify(model: Annotated[str, typer.Argument(help="an unlearned model id")],
           strong: Annotated[bool, typer.Option(help="also the per-example test against many retrained models")
                             ] = False,
           strong_models: Annotated[int, typer.Option(help="--strong: models per side")] = 8,
           executor: Annotated[str, typer.Option(help="--strong: local or ray")] = "local",
           workers: Annotated[int | None, typer.Option(help="--strong: parallel workers")] = None,
           workspace: WorkspaceOpt = Path(".")) -> None:
    """Compare an unlearned model with its parent and a model retrained without the forgotten records."""
    with _ws(workspace) as ws:
        if strong:
            cert = api.verify_strong(ws, model, models=strong_models, executor=executor, workers=workers)
        else:
            cert = api.verify(ws, model)
        path = ws.report_dir(cert["request"]) / model / "certificate.json"
        _print_certificate(cert, str(path))
        if "strong" in cert:
            s = cert["strong"]
            out.print(f"strong test ({s['models']} models per side, {s['examples']} forget examples): forgetting "
                      f"score F {s['forget_score']:.3f}, final score {s['final_score']:.3f}, U-LiRA AUC "
                      f"{s['ulira_auc']:.1f}% (50 = indistinguishable from retraining)")
        if not cert["passed"]:
            raise typer.Exit(1)


@app.command()
def bench(
    scenario: Annotated[list[str] | None, typer.Option(help="scenario (repeatable; default: the bench set)")] = None,
    methods: Annotated[str | None, typer.Option(help="comma-separated methods (default: each scenario's set: all "
                                                   "for classifiers, the language-model methods for LMs)")] = None,
    seeds: Annotated[int, typer.Option(help="seeds per scenario")] = 3,
    strong_models: Annotated[int, typer.Option(help="models per side of the per-example test (0: skip)")] = 8,
    executor: Annotated[str, typer.Option(help="local or ray")] = "local",
    workers: Annotated[int | None, typer.Option(help="parallel workers (default: the CPU count)")] = None,
    out_dir: Annotated[Path, typer.Option("--out", help="results folder")] = Path("benchmarks/results"),
    report: Annotated[Path | None, typer.Option(help="write this markdown report (e.g. BENCHMARKS.md)")] = None,
) -> None:
    """Every method against retraining on the bundled scenarios; results JSON, summary and a report."""
    import time as _time

    from .bench import DEFAULT_SCENARIOS, BenchSettings, machine, run_bench
    from .report.benchmarks import write_report

    chosen = [m.strip() for m in methods.split(",") if m.strip()] if methods else None
    command = "disgorge " + " ".join(sys.argv[1:])
    settings = BenchSettings(scenarios=list(scenario or DEFAULT_SCENARIOS), methods=chosen, seeds=seeds,
                             strong_models=strong_models, executor=executor, workers=workers, out=out_dir,
                             command=command)
    started = _time.perf_counter()
    rows = run_bench(settings)
    wall = _time.perf_counter() - started
    if report is not None:
        write_report(out_dir, report, command=command, machine=machine())
    table = Table("scenario", "method", "Avg Gap", "time / retrain", "F")
    for r in rows:
        if "refused" not in r:
            table.add_row(r["scenario"], r["method"], f"{r['avg_gap']:.2f}",
                          "-" if r["time_ratio"] is None else f"{r['time_ratio']:.3f}",
                          "-" if r.get("forget_score") is None else f"{r['forget_score']:.3f}")
    out.print(table)
    out.print(f"results in {out_dir}" + (f"; report {report}" if report else "") + f" ({wall / 60:.1f} min)")


@app.command()
def erase(request: Annotated[int, typer.Argument(help="erasure request id")],
          workspace: WorkspaceOpt = Path(".")) -> None:
    """Erase the held records of a request made with --defer-erase."""
    with _ws(workspace) as ws:
        api.erase(ws, request)
        out.print(f"request {request}: records erased (tombstones kept)")


@app.command()
def requests(workspace: WorkspaceOpt = Path(".")) -> None:
    """List erasure requests."""
    with _ws(workspace) as ws:
        table = Table("request", "status", "method", "records", "models", "reason", "created")
        for r in ws.ledger.requests():
            lineage = zip(r.affected, r.results.get("children", []), strict=False)
            table.add_row(str(r.id), r.status, r.method, str(len(r.records)),
                          ", ".join(f"{a}->{c}" for a, c in lineage), r.reason, r.created_at)
        out.print(table)


@app.command()
def demo(out_dir: Annotated[Path, typer.Option("--out", help="folder for the workspace and certificate")] = Path(
             "demo-output"),
         method: Annotated[str, typer.Option(help="unlearning method, or auto")] = "grad_diff",
         scenario: Annotated[str, typer.Option(help="bundled scenario")] = "digits-backdoor") -> None:
    """The main job on bundled data: ingest, train, forget the poisoned contributor, verify."""
    from .demo import run_demo

    cert = run_demo(out_dir, scenario=scenario, method=method)
    _print_certificate(cert, str(out_dir / "certificate.json"))


def _print_certificate(cert: dict[str, Any], path: str) -> None:
    ids = cert["models"]
    table = Table(title=f"request {cert['request']}: {cert['method']} on {cert['records']['forgotten']} records",
                  show_lines=False)
    table.add_column("figure")
    table.add_column(f"original {ids['parent']['id']}", justify="right")
    table.add_column(f"unlearned {ids['child']['id']}", justify="right")
    table.add_column(f"retrained {ids['reference']['id']}", justify="right")
    for row in figure_rows(cert):
        table.add_row(*row)
    out.print(table)
    if "auto" in cert:
        tried = Table(title=f"--method auto: each method within {cert['auto']['budget_seconds_each']:.2f}s",
                      show_lines=False)
        for col in ("method", "Avg Gap", "effect", "TA", "seconds", "verification"):
            tried.add_column(col, justify="left" if col in ("method", "verification") else "right")
        for t in sorted(cert["auto"]["candidates"], key=lambda t: t.get("avg_gap", float("inf"))):
            if "skipped" in t:
                tried.add_row(t["method"], "-", "-", "-", "-", f"skipped: {t['skipped']}")
            else:
                tried.add_row(t["method"], f"{t['avg_gap']:.2f}", "-" if t["effect"] is None else f"{t['effect']:.2f}",
                              f"{t['ta']:.2f}", f"{t['seconds']:.2f}", "passed" if t["passed"] else "failed")
        out.print(tried)
        out.print(f"auto chose {cert['auto']['chosen']}; all candidates took {cert['auto']['total_seconds']:.2f}s")
    verdict = "[green]PASSED[/]" if cert["passed"] else "[red]FAILED[/]"
    failed = [k for k, v in cert["checks"].items() if not v["passed"]]
    out.print(f"time: method {cert['seconds']['method']:.2f}s vs retrain {cert['seconds']['retrain']:.2f}s "
              f"(ratio {cert['time_ratio']}); verification {verdict}"
              + (f" (failed: {', '.join(failed)})" if failed else "") + f"; certificate: {path}")


def main() -> None:
    """Console entry point: user errors are one line on stderr and a non-zero exit, never a traceback."""
    try:
        app()
    except DisgorgeError as exc:
        typer.echo(f"error: {exc}", err=True)
        sys.exit(2)
    except KeyboardInterrupt:
        typer.echo("aborted", err=True)
        sys.exit(130)
    except OSError as exc:
        typer.echo(f"error: {exc.strerror or exc}: {exc.filename or ''}".rstrip(": "), err=True)
        sys.exit(2)


if __name__ == "__main__":  # pragma: no cover
    main()

__all__ = ["app", "main"]
