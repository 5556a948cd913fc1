"""The ``disgorge`` command line: thin commands over the public API, printed with rich or as JSON (``--json``).

Commands that only read the ledger (``--help``, ``--version``, ``sources``, ``models``, ``requests``, ``status``,
``records``, ``methods``) import neither torch nor scikit-learn: the modules that compute are imported inside the
commands that need them.
"""

from __future__ import annotations

import json
import logging
import sys
from collections.abc import Callable, Iterable
from pathlib import Path
from typing import Annotated, Any

import typer
from rich.console import Console
from rich.logging import RichHandler
from rich.table import Table
from rich.text import Text

from . import __version__
from .errors import DisgorgeError, InvalidRequest
from .workspace import Workspace

app = typer.Typer(help="Trace, audit, unlearn and verify what a trained model learned from which data.",
                  no_args_is_help=True, pretty_exceptions_enable=False, rich_markup_mode=None)
certificate_app = typer.Typer(help="Check certificates.", no_args_is_help=True, rich_markup_mode=None)
app.add_typer(certificate_app, name="certificate")
out = Console(soft_wrap=True, highlight=False)
log = logging.getLogger("disgorge")

WorkspaceOpt = Annotated[Path, typer.Option("--workspace", "-w", envvar="DISGORGE_WORKSPACE",
                                            help="workspace folder (default: current folder)")]
JsonOpt = Annotated[bool, typer.Option("--json", help="print the result as JSON instead of a table")]
VERBOSITY = {"-v": logging.INFO, "--verbose": logging.INFO, "-q": logging.ERROR, "--quiet": logging.ERROR}


def _ws(path: Path) -> Workspace:
    return Workspace.open(path)


def _emit(data: Any, as_json: bool, show: Callable[[], None]) -> None:
    """Print ``data`` as JSON, or call ``show`` to print it for a person."""
    if as_json:
        sys.stdout.write(json.dumps(data, indent=1, default=str, ensure_ascii=False) + "\n")
    else:
        show()


def _table(*columns: str, rows: Iterable[Iterable[Any]], title: str | None = None) -> Table:
    """A table whose cells are plain text: names from users are never read as rich markup."""
    table = Table(*columns, title=title)
    for row in rows:
        table.add_row(*(Text("-" if v is None else str(v)) for v in row))
    return table


def _version(value: bool) -> None:
    if value:
        out.print(f"disgorge {__version__}")
        raise typer.Exit()


@app.callback()
def _root(
    version: Annotated[bool, typer.Option("--version", callback=_version, is_eager=True,
                                          help="print the version and exit")] = False,
    verbose: Annotated[bool, typer.Option("--verbose", "-v", help="log each step (accepted anywhere)")] = False,
    quiet: Annotated[bool, typer.Option("--quiet", "-q", help="only errors (accepted anywhere)")] = False,
) -> None:
    level = logging.INFO if verbose else logging.ERROR if quiet else logging.WARNING
    _logging(level)


def _logging(level: int) -> None:
    logging.basicConfig(level=level, format="%(message)s",
                        handlers=[RichHandler(console=Console(stderr=True), show_path=False)], force=True)


@app.command()
def init(path: Annotated[Path, typer.Argument(help="folder to create the workspace in")] = Path("."),
         as_json: JsonOpt = False) -> None:
    """Create a workspace (ledger, keys, models/, reports/)."""
    with Workspace.init(path) as ws:
        data = {"workspace": str(ws.root), "schema": ws.ledger.schema_version}
        _emit(data, as_json, lambda: out.print(f"created workspace {ws.root} (ledger schema v{data['schema']})"))


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
    holdout: Annotated[float, typer.Option(help="keep this fraction of the file (stratified by label) as held-out "
                                                "records of the same source, in split test")] = 0.0,
    holdout_seed: Annotated[int, typer.Option(help="seed of the --holdout draw")] = 0,
    workspace: WorkspaceOpt = Path("."),
    as_json: JsonOpt = False,
) -> None:
    """Add records with their provenance: a bundled scenario or a user file."""
    from . import api

    with _ws(workspace) as ws:
        if scenario is not None:
            if file is not None:
                raise InvalidRequest("give either a FILE or --scenario, not both")
            if holdout:
                raise InvalidRequest("--holdout applies to a FILE; a scenario brings its own held-out records")
            results = api.ingest_scenario(ws, scenario)
        elif file is None:
            raise InvalidRequest("give a FILE to ingest or --scenario NAME (see `disgorge scenarios`)")
        else:
            if not source or not license:
                raise InvalidRequest("a file needs --source NAME and --license SPDX-ID for its provenance")
            results = [api.ingest_file(ws, file, source=source, license=license, origin=origin, label=label,
                                       attributes=attribute or (), split=split, holdout=holdout,
                                       holdout_seed=holdout_seed)]
        held = [len(ws.ledger.record_ids(sources=[r.source], split="test", states=()) & r.added) for r in results]
        data = {"sources": [{"source": r.source, "added": len(r.added), "duplicates": r.duplicates,
                             "held_out": h, "ids": _ranges(r.added)} for r, h in zip(results, held, strict=True)],
                "added": sum(len(r.added) for r in results), "duplicates": sum(r.duplicates for r in results),
                "held_out": sum(held)}
        _emit(data, as_json, lambda: out.print(
            f"ingested {data['added']} records from {len(results)} source(s); skipped {data['duplicates']} exact "
            "duplicate(s)" + (f"; kept {data['held_out']} as held-out (split test)" if holdout else "")))


@app.command()
def sources(workspace: WorkspaceOpt = Path("."), as_json: JsonOpt = False) -> None:
    """List sources with their licences and record counts."""
    with _ws(workspace) as ws:
        counts = ws.ledger.source_counts()
        data = [{"source": s.name, "license": s.license, "origin": s.origin, "consent": s.consent,
                 **{k: counts.get(s.name, {}).get(k, 0) for k in ("active", "held", "erased")}}
                for s in ws.ledger.sources()]
        _emit(data, as_json, lambda: out.print(_table(
            "source", "licence", "origin", "active", "held", "erased",
            rows=[(d["source"], d["license"], d["origin"], d["active"], d["held"], d["erased"]) for d in data])))


@app.command()
def records(source: Annotated[list[str] | None, typer.Option(help="only this source (repeatable)")] = None,
            split: Annotated[str | None, typer.Option(help="only this split: train or test")] = None,
            state: Annotated[list[str] | None, typer.Option(help="only this state: active, held or erased "
                                                                 "(repeatable)")] = None,
            workspace: WorkspaceOpt = Path("."), as_json: JsonOpt = False) -> None:
    """List record ids (for `forget --records`), grouped by source, split and state."""
    with _ws(workspace) as ws:
        rows = ws.ledger.record_index(sources=source, split=split, states=state)
        if as_json:
            _emit([{"id": i, "source": s, "split": sp, "state": st} for i, s, sp, st in rows], True, lambda: None)
            return
        groups: dict[tuple[str, str, str], list[int]] = {}
        for i, s, sp, st in rows:
            groups.setdefault((s, sp, st), []).append(i)
        out.print(_table("source", "split", "state", "records", "ids",
                         rows=[(*k, len(ids), _ranges(ids)) for k, ids in groups.items()]))


def _ranges(ids: Iterable[int]) -> str:
    """Ids as ranges, the form `forget --records` reads: ``1-4,9,12-13``."""
    parts: list[str] = []
    run: list[int] = []
    for i in sorted(int(x) for x in ids):
        if run and i == run[-1] + 1:
            run.append(i)
            continue
        if run:
            parts.append(f"{run[0]}-{run[-1]}" if len(run) > 1 else str(run[0]))
        run = [i]
    if run:
        parts.append(f"{run[0]}-{run[-1]}" if len(run) > 1 else str(run[0]))
    return ",".join(parts)


@app.command()
def status(workspace: WorkspaceOpt = Path("."), as_json: JsonOpt = False) -> None:
    """Summarise the workspace: sources, records, models, requests, pending erasures, disk use."""
    with _ws(workspace) as ws:
        data = ws.status()

    def show() -> None:
        out.print(f"workspace {data['workspace']} (ledger schema v{data['schema']}"
                  + (f", scenario {data['scenario']}" if data["scenario"] else "") + f"): {data['sources']} source(s)")
        out.print(_table("records", "total", "train", "test",
                         rows=[(k, v["total"], v.get("train", 0), v.get("test", 0))
                               for k, v in data["records"].items()]))
        out.print(_table("models", "total", "active", "superseded",
                         rows=[(k, v["total"], v.get("active", 0), v.get("superseded", 0))
                               for k, v in data["models"].items()]))
        req = data["requests"]
        pending = ", ".join(map(str, data["pending_erasures"])) or "none"
        out.print(f"requests: {req['total']} ({req['erased']} erased, {req['held']} held); pending erasures: "
                  f"{pending}; tombstones: {data['tombstones']}; disk: {data['disk_bytes'] / 2**20:.1f} MiB")

    _emit(data, as_json, show)


@app.command()
def scenarios(as_json: JsonOpt = False) -> None:
    """List the bundled scenarios."""
    from .scenarios import SCENARIOS, get_scenario

    data = [{"scenario": name, "description": get_scenario(name).description,
             "probes": [p.name for p in get_scenario(name).probes()]} for name in SCENARIOS]
    _emit(data, as_json, lambda: out.print(_table(
        "scenario", "what it shows", "effect probes",
        rows=[(d["scenario"], d["description"], ", ".join(d["probes"]) or "-") for d in data])))


@app.command()
def recipe(scenario: Annotated[str | None, typer.Argument(help="a bundled scenario")] = None,
           template: Annotated[str | None, typer.Option(help="a commented recipe for your own data: "
                                                              "classification or causal_lm")] = None) -> None:
    """Print a recipe as TOML: a scenario's default, or a commented template (save it, edit it, train it)."""
    from .spec import RECIPE_TEMPLATES

    if (scenario is None) == (template is None):
        raise InvalidRequest("give a SCENARIO or --template classification|causal_lm")
    if template is not None:
        if template not in RECIPE_TEMPLATES:
            raise InvalidRequest(f"--template takes {' or '.join(RECIPE_TEMPLATES)}, got {template!r}")
        sys.stdout.write(RECIPE_TEMPLATES[template])
        return
    from .scenarios import get_scenario

    sys.stdout.write(get_scenario(scenario).recipe().to_toml())


@app.command()
def train(recipe_file: Annotated[Path, typer.Argument(metavar="RECIPE", help="recipe TOML file")],
          workspace: WorkspaceOpt = Path("."), as_json: JsonOpt = False) -> None:
    """Train a model from a recipe; writes an immutable model folder and prints its accuracy."""
    from . import api

    with _ws(workspace) as ws:
        row = api.train(ws, recipe_file)
        acc = row.info["accuracy"]
        data = {"model": row.id, "records": len(row.records), "seconds": round(row.seconds, 2),
                "sha256": row.weights_sha256, "accuracy": acc}
        test = "-" if acc["test"] is None else f"{acc['test']:.2f}%"
        _emit(data, as_json, lambda: out.print(
            f"trained {row.id} on {len(row.records)} records in {row.seconds:.1f}s; {acc['figure']}: train "
            f"{acc['train']:.2f}%, test {test}; weights sha256 {row.weights_sha256}"))


@app.command()
def models(workspace: WorkspaceOpt = Path("."),
           all_: Annotated[bool, typer.Option("--all", help="include superseded models and references")] = False,
           as_json: JsonOpt = False) -> None:
    """List models with their lineage."""
    with _ws(workspace) as ws:
        kinds = ("trained", "unlearned", "reference") if all_ else ("trained", "unlearned")
        rows = ws.ledger.models(kinds=kinds, status=None if all_ else "active")
        data = [{"model": m.id, "kind": m.kind, "status": m.status, "parent": m.parent, "method": m.method,
                 "request": m.request_id, "records": len(m.records), "seconds": round(m.seconds, 2),
                 "sha256": m.weights_sha256} for m in rows]
        _emit(data, as_json, lambda: out.print(_table(
            "model", "kind", "status", "parent", "method", "request", "records", "seconds", "sha256",
            rows=[(d["model"], d["kind"], d["status"], d["parent"], d["method"], d["request"], d["records"],
                   f"{d['seconds']:.1f}", d["sha256"][:12]) for d in data])))


@app.command()
def methods(name: Annotated[str | None, typer.Argument(help="a method: show its options")] = None,
            as_json: JsonOpt = False) -> None:
    """List the unlearning methods, or one method's options with their types, defaults, ranges and help."""
    from . import catalogue

    if name is None:
        data: Any = catalogue.load()
        _emit(data, as_json, lambda: out.print(_table(
            "method", "family", "needs", "what it does", "paper",
            rows=[(n, m["family"], ", ".join(m["needs"]) or "-", m["summary"], m["paper"]) for n, m in data.items()])))
        return
    data = {"method": name, **catalogue.describe(name)}

    def show() -> None:
        out.print(Text(f"{name} ({data['family']}): {data['doc']}"))
        out.print(Text(f"needs: {', '.join(data['needs']) or 'nothing'}; paper: {data['paper']}"))
        out.print(_table("option", "type", "default", "range", "help",
                         rows=[(o["name"], o["type"], o["default"], _range(o), o["help"]) for o in data["options"]]))
        out.print(Text(f"set with: disgorge forget --method {name} -o KEY=VALUE"))

    _emit(data, as_json, show)


def _range(option: dict[str, Any]) -> str:
    if option["choices"]:
        return " | ".join(map(str, option["choices"]))
    low, high = option["low"], option["high"]
    if option["positive"]:
        return "> 0"
    if low is not None and high is not None:
        return f"{low} .. {high}"
    return f">= {low}" if low is not None else f"<= {high}" if high is not None else "-"


def _parse_ids(text: str | None) -> list[int]:
    if not text:
        return []
    ids: list[int] = []
    for part in text.split(","):
        part = part.strip()
        lo, sep, hi = part.partition("-")
        try:
            first, last = (int(lo), int(hi)) if sep else (int(part), int(part))
        except ValueError:
            raise InvalidRequest(f"--records takes ids like 3,7,10-20; {part!r} is not one") from None
        if last < first:
            raise InvalidRequest(f"--records: range {part!r} runs backwards; write it as {last}-{first}")
        ids += range(first, last + 1)
    return ids


@app.command()
def forget(
    source: Annotated[list[str] | None, typer.Option(help="forget every record of this source")] = None,
    records: Annotated[str | None, typer.Option(help="record ids to forget, e.g. 3,7,10-20 (see `disgorge "
                                                     "records`)")] = None,
    random: Annotated[float | None, typer.Option(help="forget this share of training records, drawn at random")
                      ] = None,
    seed: Annotated[int, typer.Option(help="seed for --random")] = 0,
    model: Annotated[str | None, typer.Option(help="only this model (default: every model that saw them)")] = None,
    method: Annotated[str, typer.Option(help="unlearning method (see `disgorge methods`), or auto")] = "grad_diff",
    option: Annotated[list[str] | None, typer.Option("--option", "-o", help="method option KEY=VALUE (see "
                                                                             "`disgorge methods NAME`)")] = None,
    max_seconds: Annotated[float | None, typer.Option(help="time budget of the method, in seconds")] = None,
    max_steps: Annotated[int | None, typer.Option(help="step budget of the method")] = None,
    lora: Annotated[int | None, typer.Option(help="fine-tune methods: train only LoRA adapters of this rank (peft), "
                                                  "merged into the weights afterwards")] = None,
    budget: Annotated[float, typer.Option(help="--method auto: each candidate's share of the training time")] = 0.5,
    accept_failed: Annotated[bool, typer.Option(help="commit and erase even if verification fails")] = False,
    reason: Annotated[str, typer.Option(help="why the records are erased (kept in the ledger)")] = "",
    verify: Annotated[str, typer.Option(help="evidence level: auto (exact only when training took at most "
                                              "--exact-budget seconds), exact (retrain a reference), heldout "
                                              "(reference-free, trains nothing) or none")] = "auto",
    no_verify: Annotated[bool, typer.Option("--no-verify", help="skip verification (same as --verify none)")
                         ] = False,
    exact_budget: Annotated[float, typer.Option(help="--verify auto: retrain a reference only for models trained "
                                                     "in at most this many seconds")] = 60.0,
    purpose: Annotated[str | None, typer.Option(help="why the records go: privacy, copyright, poison or bias; picks "
                                                     "the decisive figures (default: the scenario's, else privacy)")
                       ] = None,
    defer_erase: Annotated[bool, typer.Option(help="hold the payloads (for `disgorge verify`) until "
                                                     "`disgorge erase REQUEST`")] = False,
    workspace: WorkspaceOpt = Path("."),
    as_json: JsonOpt = False,
) -> None:
    """Remove records' effect from every model that saw them, verify, and erase the records."""
    from . import api
    from .methods.registry import parse_options

    with _ws(workspace) as ws:
        options = parse_options(option or [])
        options.update({k: v for k, v in (("max_seconds", max_seconds), ("max_steps", max_steps),
                                          ("lora_rank", lora)) if v is not None})
        result = api.forget(ws, sources=source or (), records=_parse_ids(records), random_fraction=random, seed=seed,
                            model=model, method=method, options=options, reason=reason,
                            verify="none" if no_verify else verify, exact_budget=exact_budget, purpose=purpose,
                            erase=not defer_erase, accept_failed=accept_failed, budget_fraction=budget)
        data = {"request": result.request_id, "records": result.records, "method": method,
                "children": [{"parent": c.parent, "model": c.id} for c in result.children],
                "erased": result.erased, "certificates": result.certificates, "paths": result.paths}

        def show() -> None:
            out.print(f"request {result.request_id}: {result.records} records; "
                      f"{len(result.children)} model(s) unlearned with {method}: "
                      + ", ".join(f"{c.parent} -> {c.id}" for c in result.children))
            for cert in result.certificates:
                _print_certificate(cert, result.paths[cert["models"]["child"]["id"]]["json"])
            out.print("records erased (tombstones kept)" if result.erased else
                      f"records held; erase them with `disgorge erase {result.request_id}`")

        _emit(data, as_json, show)


@app.command()
def verify(model: Annotated[str, typer.Argument(help="an unlearned model id")],
           level: Annotated[str, typer.Option(help="evidence level: auto, exact (retrain a reference) or heldout "
                                                   "(reference-free)")] = "auto",
           exact_budget: Annotated[float, typer.Option(help="--level auto: retrain a reference only for models "
                                                            "trained in at most this many seconds")] = 60.0,
           purpose: Annotated[str | None, typer.Option(help="privacy, copyright, poison or bias (default: the "
                                                            "request's)")] = None,
           strong: Annotated[bool, typer.Option(help="also the per-example test against many retrained models")
                             ] = False,
           strong_models: Annotated[int, typer.Option(help="--strong: models per side")] = 8,
           executor: Annotated[str, typer.Option(help="--strong: local or ray")] = "local",
           workers: Annotated[int | None, typer.Option(help="--strong: parallel workers")] = None,
           workspace: WorkspaceOpt = Path("."), as_json: JsonOpt = False) -> None:
    """Check that an unlearned model forgot: against held-out data or a model retrained without the records."""
    from . import api

    with _ws(workspace) as ws:
        if strong:
            cert = api.verify_strong(ws, model, models=strong_models, executor=executor, workers=workers)
        else:
            cert = api.verify(ws, model, level=level, purpose=purpose, exact_budget=exact_budget)
        path = ws.report_dir(cert["request"]) / model / "certificate.json"

    def show() -> None:
        _print_certificate(cert, str(path))
        if "strong" in cert:
            s = cert["strong"]
            out.print(f"strong test ({s['models']} models per side, {s['examples']} forget examples): forgetting "
                      f"score F {s['forget_score']:.3f}, final score {s['final_score']:.3f}, U-LiRA AUC "
                      f"{s['ulira_auc']:.1f}% (50 = indistinguishable from retraining)")

    _emit(cert, as_json, show)
    if (cert.get("verdict") or ("passed" if cert["passed"] else "failed")) == "failed":
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
    as_json: JsonOpt = False,
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

    def show() -> None:
        out.print(_table("scenario", "method", "Avg Gap", "time / retrain", "F", rows=[
            (r["scenario"], r["method"], f"{r['avg_gap']:.2f}",
             "-" if r["time_ratio"] is None else f"{r['time_ratio']:.3f}",
             "-" if r.get("forget_score") is None else f"{r['forget_score']:.3f}")
            for r in rows if "refused" not in r]))
        out.print(f"results in {out_dir}" + (f"; report {report}" if report else "") + f" ({wall / 60:.1f} min)")

    _emit(rows, as_json, show)


@app.command()
def erase(request: Annotated[int, typer.Argument(help="erasure request id")],
          workspace: WorkspaceOpt = Path("."), as_json: JsonOpt = False) -> None:
    """Erase the held records of a request made with --defer-erase."""
    from . import api

    with _ws(workspace) as ws:
        api.erase(ws, request)
        _emit({"request": request, "erased": True}, as_json,
              lambda: out.print(f"request {request}: records erased (tombstones kept)"))


@app.command()
def requests(workspace: WorkspaceOpt = Path("."), as_json: JsonOpt = False) -> None:
    """List erasure requests."""
    with _ws(workspace) as ws:
        data = [{"request": r.id, "status": r.status, "method": r.method, "records": len(r.records),
                 "models": [{"parent": a, "child": c} for a, c in
                            zip(r.affected, r.results.get("children", []), strict=False)],
                 "reason": r.reason, "selector": r.selector, "created": r.created_at, "completed": r.completed_at}
                for r in ws.ledger.requests()]
        _emit(data, as_json, lambda: out.print(_table(
            "request", "status", "method", "records", "models", "reason", "created",
            rows=[(d["request"], d["status"], d["method"], d["records"],
                   ", ".join(f"{m['parent']}->{m['child']}" for m in d["models"]), d["reason"], d["created"])
                  for d in data])))


@app.command()
def report(target: Annotated[str, typer.Argument(help="an erasure request id (3 or r3) or an unlearned model id")],
           out_file: Annotated[Path | None, typer.Option("--out", help="HTML file to write (default: "
                                                                        "reports/r<request>/report.html)")] = None,
           workspace: WorkspaceOpt = Path("."), as_json: JsonOpt = False) -> None:
    """Write one self-contained HTML report of an erasure request for people who never run Python."""
    from .report.html import write_report_html

    with _ws(workspace) as ws:
        path = write_report_html(ws, target, out_file)
    _emit({"report": str(path)}, as_json, lambda: out.print(f"report: {path}"))


@certificate_app.command("check")
def certificate_check(file: Annotated[Path, typer.Argument(help="a certificate.json")],
                      workspace: Annotated[Path | None, typer.Option(
                          "--workspace", "-w", envvar="DISGORGE_WORKSPACE",
                          help="also check the models and the ledger of this workspace")] = None,
                      as_json: JsonOpt = False) -> None:
    """Verify a certificate's signature and, inside a workspace, its models' hashes; say what was checked."""
    from .evidence.check import check_certificate  # no torch: a third party checks a certificate quickly

    if workspace is None:
        result = check_certificate(file)
    else:
        with _ws(workspace) as ws:
            result = check_certificate(file, ws)

    def show() -> None:
        out.print(_table("check", "result", "what was checked", rows=[
            (c["name"], "pass" if c["passed"] else "FAIL", c.get("detail", "")) for c in result["checks"]]))
        out.print(Text(result.get("scope", "")))
        out.print(f"certificate {file}: " + ("[green]VALID[/]" if result["valid"] else "[red]NOT VALID[/]"))

    _emit(result, as_json, show)
    if not result["valid"]:
        raise typer.Exit(1)


@app.command()
def demo(out_dir: Annotated[Path, typer.Option("--out", help="folder for the workspace and certificate")] = Path(
             "demo-output"),
         method: Annotated[str, typer.Option(help="unlearning method, or auto")] = "grad_diff",
         scenario: Annotated[str, typer.Option(help="bundled scenario")] = "digits-backdoor",
         as_json: JsonOpt = False) -> None:
    """The main job on bundled data: ingest, train, forget the poisoned contributor, verify."""
    from .demo import run_demo

    cert = run_demo(out_dir, scenario=scenario, method=method)
    _emit(cert, as_json, lambda: _print_certificate(cert, str(out_dir / "certificate.json")))


def _print_certificate(cert: dict[str, Any], path: str) -> None:
    from .evidence.certificate import check_rows, columns, figure_rows, robustness_rows, verdict_line

    ids = cert["models"]
    table = Table(title=f"request {cert['request']}: {cert['method']} on {cert['records']['forgotten']} records "
                        f"({cert.get('evidence', 'exact')} evidence)", show_lines=False)
    table.add_column("figure")
    role = {"original": "parent", "unlearned": "child", "reference": "reference"}
    for key, heading in columns(cert):
        table.add_column(f"{heading} {ids[role[key]]['id']}", justify="right")
    for row in figure_rows(cert):
        table.add_row(*(Text(c) for c in row))
    out.print(table)
    checks = Table(title="checks (decisive first: the unlearned figure [95% interval] against its target)",
                   show_lines=False)
    for col in ("check", "measured", "value", "limit", "result"):
        checks.add_column(col, justify="right" if col in ("value", "limit") else "left")
    for row in check_rows(cert):
        checks.add_row(*(Text(c) for c in row))
    out.print(checks)
    rob = robustness_rows(cert)
    if rob:
        attacks = Table(title="robustness: recovered 0 = nothing came back, 1 = back to the original", show_lines=False)
        for col in ("attack", "figure", "original", "unlearned", "after attack", "recovered"):
            attacks.add_column(col, justify="left" if col in ("attack", "figure") else "right")
        for row in rob:
            attacks.add_row(*(Text(c) for c in row))
        out.print(attacks)
        out.print(Text(_robustness_line(cert["robustness"])))
    if "auto" in cert:
        tried = Table(title=f"--method auto: each method within {cert['auto']['budget_seconds_each']:.2f}s",
                      show_lines=False)
        for col in ("method", "score", "effect", "TA", "seconds", "verification"):
            tried.add_column(col, justify="left" if col in ("method", "verification") else "right")
        for t in sorted(cert["auto"]["candidates"], key=lambda t: t.get("score") or float("inf")):
            if "skipped" in t:
                tried.add_row(t["method"], "-", "-", "-", "-", Text(f"skipped: {t['skipped']}"))
            else:
                tried.add_row(t["method"], "-" if t.get("score") is None else f"{t['score']:.2f}",
                              "-" if t["effect"] is None else f"{t['effect']:.2f}", f"{t['ta']:.2f}",
                              f"{t['seconds']:.2f}", t.get("verdict") or ("passed" if t["passed"] else "failed"))
        out.print(tried)
        out.print(f"auto chose {cert['auto']['chosen']}; all candidates took {cert['auto']['total_seconds']:.2f}s")
    if cert.get("proves"):
        out.print(Text(f"proves: {cert['proves']}"))
        out.print(Text(f"does not prove: {cert['does_not_prove']}"))
    verdict = cert.get("verdict") or ("passed" if cert["passed"] else "failed")
    colour = {"passed": "green", "failed": "red"}.get(verdict, "yellow")
    failed = [k for k, v in cert["checks"].items() if not v["passed"]]
    s = cert["seconds"]
    cost = (f"method {s['method']:.2f}s vs retrain {s['retrain']:.2f}s (ratio {cert['time_ratio']})"
            if s.get("retrain") is not None else
            f"method {s['method']:.2f}s + verification {s.get('verification') or 0:.2f}s vs training "
            f"{s.get('training') or 0:.2f}s (ratio {cert.get('verified_time_ratio')})")
    line = Text(f"time: {cost}; verification ")
    line.append(verdict_line(cert), style=colour)
    line.append((f" (failed: {', '.join(failed)})" if failed else "") + f"; certificate: {path}")
    out.print(line)


def _robustness_line(rob: dict[str, Any]) -> str:
    """Each attack's headline recovery, beside the retrained model's (the floor) where it was attacked too."""
    parts = []
    for name, block in (("relearning", rob.get("relearn")), ("quantization", rob.get("quantized"))):
        if not block or block.get("recovered") is None:
            continue
        floors = [b.get("reference", {}).get("recovered") for b in ([block] if name == "relearning" else
                                                                    [block.get("int8") or {}, block.get("int4") or {}])]
        floors = [f for f in floors if f is not None]
        floor = f" (a retrained model: {max(floors):.2f})" if floors else " (no retrained model to compare)"
        parts.append(f"{name} brought back {block['recovered']:.2f}{floor}")
    return "; ".join(parts) or "robustness not measured"


def _split_verbosity(args: list[str]) -> tuple[list[str], int | None]:
    """Take -v/--verbose and -q/--quiet from anywhere on the command line (before a `--`), so they need not come
    before the command; returns the other arguments and the level asked for (the last one wins)."""
    rest: list[str] = []
    level = None
    for i, arg in enumerate(args):
        if arg == "--":
            rest += args[i:]
            break
        if arg in VERBOSITY:
            level = VERBOSITY[arg]
        else:
            rest.append(arg)
    return rest, level


def main(argv: list[str] | None = None) -> None:
    """Console entry point: user errors are one line on stderr and exit code 2, never a traceback."""
    args, level = _split_verbosity(list(sys.argv[1:] if argv is None else argv))
    if level is not None:
        args = [next(k for k, v in VERBOSITY.items() if v == level), *args]
    try:
        app(args=args, prog_name="disgorge")
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
