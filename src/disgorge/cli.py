"""The ``disgorge`` command line: thin commands over the public API, printed with rich or as JSON (``--json``).

Commands that only read the ledger (``--help``, ``--version``, ``sources``, ``models``, ``requests``, ``status``,
``records``, ``methods``) import neither torch nor scikit-learn: the modules that compute are imported inside the
commands that need them.
"""

from __future__ import annotations

import json
import logging
import math
import re
import sys
from collections.abc import Callable, Iterable
from contextvars import ContextVar
from pathlib import Path
from typing import Annotated, Any, NoReturn

import typer
from rich.console import Console
from rich.logging import RichHandler
from rich.table import Table
from rich.text import Text

from . import __version__
from .errors import DisgorgeError, InvalidRequest, NotFound
from .spec import MAX_SEED, check_device
from .workspace import Workspace

app = typer.Typer(help="Trace, audit, unlearn and verify what a trained model learned from which data.",
                  no_args_is_help=True, pretty_exceptions_enable=False, rich_markup_mode=None)
certificate_app = typer.Typer(help="Check certificates.", no_args_is_help=True, rich_markup_mode=None)
app.add_typer(certificate_app, name="certificate")
probe_app = typer.Typer(help="Declare the behaviours every verification, certificate and bench row measures.",
                        no_args_is_help=True, rich_markup_mode=None)
app.add_typer(probe_app, name="probe")
audit_app = typer.Typer(help="Audit what a model learned: group gaps (bias) and memorised records.",
                        no_args_is_help=True, rich_markup_mode=None)
app.add_typer(audit_app, name="audit")
out = Console(soft_wrap=True, highlight=False)
log = logging.getLogger("disgorge")

WorkspaceOpt = Annotated[Path, typer.Option("--workspace", "-w", envvar="DISGORGE_WORKSPACE",
                                            help="workspace folder (default: current folder)")]
JsonOpt = Annotated[bool, typer.Option("--json", help="print the result as JSON instead of a table")]
VERBOSITY = {"-v": logging.INFO, "--verbose": logging.INFO, "-q": logging.ERROR, "--quiet": logging.ERROR}


_DEVICE: ContextVar[str | None] = ContextVar("device", default=None)
"""This invocation's ``--device`` (set by the root callback on every run; None: each recipe's ``train.device``)."""


def _ws(path: Path) -> Workspace:
    ws = Workspace.open(path)
    ws.device = _DEVICE.get()
    return ws


_CONTROL = re.compile("[\x00-\x1f\x7f-\x9f\u200e\u200f\u2028\u2029\u202a-\u202e\u2066-\u2069]")
"""Characters a terminal acts on instead of showing: C0/C1 controls (escape sequences, newlines) and the bidi
overrides that reorder what is shown."""


def _safe(value: Any) -> str:
    """``value`` as one line of inert text: every control character written as its escape (``\\x1b``, ``\\n``), so
    names from users can neither drive the terminal nor break a line."""
    return _CONTROL.sub(lambda m: m.group().encode("unicode_escape").decode("ascii"), str(value))


def _text(value: Any) -> Text:
    """Inert text to print: never read as rich markup, control characters escaped (see :func:`_safe`)."""
    return Text(_safe(value))


def _emit(data: Any, as_json: bool, show: Callable[[], None]) -> None:
    """Print ``data`` as JSON, or call ``show`` to print it for a person. JSON escapes C0 controls itself; the C1
    controls (which some terminals act on) are escaped too, which JSON allows."""
    if as_json:
        text = json.dumps(data, indent=1, default=str, ensure_ascii=False)
        sys.stdout.write(re.sub("[\x7f-\x9f]", lambda m: f"\\u{ord(m.group()):04x}", text) + "\n")
    else:
        show()


def _table(*columns: str, rows: Iterable[Iterable[Any]], title: str | None = None) -> Table:
    """A table whose cells are plain text: names from users are never read as rich markup, and their control
    characters are escaped."""
    table = Table(*columns, title=None if title is None else _text(title))
    for row in rows:
        table.add_row(*(_text("-" if v is None else v) for v in row))
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
    device: Annotated[str | None, typer.Option(
        "--device", envvar="DISGORGE_DEVICE", help="where models train and run: auto (a GPU if there is one), cpu, "
        "cuda, cuda:N or mps; default: each recipe's train.device (auto). Accepted anywhere")] = None,
) -> None:
    level = logging.INFO if verbose else logging.ERROR if quiet else logging.WARNING
    _logging(level)
    _DEVICE.set(check_device(device, "--device") if device is not None else None)


def _logging(level: int) -> None:
    logging.basicConfig(level=level, format="%(message)s",
                        handlers=[RichHandler(console=Console(stderr=True), show_path=False)], force=True)


@app.command()
def init(path: Annotated[Path, typer.Argument(help="folder to create the workspace in")] = Path("."),
         as_json: JsonOpt = False) -> None:
    """Create a workspace (ledger, keys, models/, reports/)."""
    with Workspace.init(path) as ws:
        data = {"workspace": str(ws.root), "schema": ws.ledger.schema_version}
        _emit(data, as_json, lambda: out.print(_text(f"created workspace {ws.root} (ledger schema v{data['schema']})")))


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

    _check_holdout(holdout, holdout_seed)
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
        out.print(_text(f"workspace {data['workspace']} (ledger schema v{data['schema']}"
                        + (f", scenario {data['scenario']}" if data["scenario"] else "")
                        + f"): {data['sources']} source(s)"))
        out.print(_table("records", "total", "train", "test",
                         rows=[(k, v["total"], v.get("train", 0), v.get("test", 0))
                               for k, v in data["records"].items()]))
        out.print(_table("models", "total", "active", "superseded", "retired", "weights deleted",
                         rows=[(k, v["total"], v.get("active", 0), v.get("superseded", 0), v.get("retired", 0),
                                v.get("weights_deleted", 0)) for k, v in data["models"].items()]))
        req = data["requests"]
        pending = ", ".join(map(str, data["pending_erasures"])) or "none"
        out.print(f"requests: {req['total']} ({req['erased']} erased, {req['held']} held); pending erasures: "
                  f"{pending}; tombstones: {data['tombstones']}; disk: {data['disk_bytes'] / 2**20:.1f} MiB")
        if data["deletion_pending"]:
            out.print("erased bytes await a checkpoint (a reader held the ledger open); the next command that "
                      "writes finishes it, or run `disgorge doctor --repair`")

    _emit(data, as_json, show)


@app.command()
def scenarios(as_json: JsonOpt = False) -> None:
    """List the bundled scenarios."""
    from .scenarios import SCENARIOS, get_scenario

    data = [{"scenario": name, "description": get_scenario(name).description,
             "probes": [p.name for p in get_scenario(name).declare_probes([])]} for name in SCENARIOS]
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


ShardExecutorOpt = Annotated[str, typer.Option("--executor", help="sharded recipes: where shards train (local or "
                                                                   "ray)")]
ShardWorkersOpt = Annotated[int, typer.Option("--workers", help="sharded recipes: shards trained at once (1: one "
                                                                "after another in this process)")]


@app.command()
def train(recipe_file: Annotated[Path, typer.Argument(metavar="RECIPE", help="recipe TOML file")],
          executor: ShardExecutorOpt = "local", workers: ShardWorkersOpt = 1,
          workspace: WorkspaceOpt = Path("."), as_json: JsonOpt = False) -> None:
    """Train a model from a recipe; writes an immutable model folder and prints its accuracy."""
    from . import api

    _check_workers(workers)
    with _ws(workspace) as ws:
        row = api.train(ws, recipe_file, executor=executor, workers=workers)
        acc = row.info["accuracy"]
        data = {"model": row.id, "records": len(row.records), "seconds": round(row.seconds, 2),
                "sha256": row.weights_sha256, "accuracy": acc}
        test = "-" if acc["test"] is None else f"{acc['test']:.2f}%"
        _emit(data, as_json, lambda: out.print(
            f"trained {row.id} on {len(row.records)} records in {row.seconds:.1f}s; {acc['figure']}: train "
            f"{acc['train']:.2f}%, test {test}{_shards_note(row.info)}; weights sha256 {row.weights_sha256}"))


def _shards_note(info: dict[str, Any]) -> str:
    """``; N shards x L slices`` for a sharded model, ``; differential privacy epsilon E`` for a private one (nothing
    otherwise)."""
    sh, dp = info.get("sharding"), info.get("privacy")
    note = f"; {len(sh['members'])} shard(s) x {sh['slices']} slice(s) by {sh['by']}" if sh else ""
    if dp:
        note += f"; differential privacy epsilon {dp['epsilon']:.3g} at delta {dp['delta']:.0e}"
    return note


@app.command()
def models(workspace: WorkspaceOpt = Path("."),
           all_: Annotated[bool, typer.Option("--all", help="include superseded models and references")] = False,
           as_json: JsonOpt = False) -> None:
    """List models with their lineage."""
    with _ws(workspace) as ws:
        kinds = ("trained", "unlearned", "imported", "reference") if all_ else ("trained", "unlearned", "imported")
        rows = ws.ledger.models(kinds=kinds, status=None if all_ else "active")
        data = [{"model": m.id, "kind": m.kind, "status": m.status, "parent": m.parent, "method": m.method,
                 "request": m.request_id, "records": len(m.records), "seconds": round(m.seconds, 2),
                 "sha256": m.weights_sha256, "weights_deleted_at": m.weights_deleted_at} for m in rows]
        _emit(data, as_json, lambda: out.print(_table(
            "model", "kind", "status", "parent", "method", "request", "records", "seconds", "sha256",
            rows=[(d["model"], d["kind"], d["status"] + (", weights deleted" if d["weights_deleted_at"] else ""),
                   d["parent"], d["method"], d["request"], d["records"],
                   f"{d['seconds']:.1f}", d["sha256"][:12]) for d in data])))


@app.command()
def evaluate(model: Annotated[str, typer.Argument(help="a model id (see `disgorge models`)")],
             split: Annotated[list[str] | None, typer.Option(help="train (the model's own live training records) "
                                                                  "or test (held-out); repeatable; default both")
                              ] = None,
             workspace: WorkspaceOpt = Path("."), as_json: JsonOpt = False) -> None:
    """A model's figures on the workspace's splits and probes, in percent, as verification computes them."""
    from . import api

    with _ws(workspace) as ws:
        data = api.evaluate_model(ws, model, splits=split or api.EVALUATE_SPLITS)

    def show() -> None:
        rows = [(name, f"{d['records']:,}", f"{d['accuracy']:.2f}", f"{d['loss']:.4f}") if d else (name, "0", None,
                                                                                                   None)
                for name, d in data.items() if name != "probes"]
        out.print(_table("split", "records", "accuracy %", "mean loss", rows=rows, title=f"model {model}"))
        for name, value in data["probes"].items():
            out.print(Text(f"probe {name}: {'-' if value is None else f'{value:.2f}%'}"))

    _emit(data, as_json, show)


@app.command()
def export(model: Annotated[str, typer.Argument(help="a model id (see `disgorge models`)")],
           out_dir: Annotated[Path, typer.Argument(metavar="DIR", help="folder to write (new, or empty)")],
           workspace: WorkspaceOpt = Path("."), as_json: JsonOpt = False) -> None:
    """Write a model as a folder that loads without disgorge: Hugging Face for language models, safetensors +
    config.json + a plain-torch loader for classifiers; its README.md tells its lineage."""
    from . import api

    with _ws(workspace) as ws:
        done = api.export_model(ws, model, out_dir)
    _emit(vars(done), as_json, lambda: out.print(_text(
        f"exported {done.model} to {done.folder} ({done.format}): {', '.join(done.files)}")))


@app.command("import")
def import_(
    folder: Annotated[Path, typer.Argument(metavar="DIR", help="a Hugging Face causal-LM folder, or a classifier "
                                                               "folder written by `disgorge export`")],
    records: Annotated[list[Path] | None, typer.Option("--records", help="a .csv, .npz or .jsonl file of records it "
                                                                         "was trained on (repeatable, each with a "
                                                                         "--source)")] = None,
    source: Annotated[list[str] | None, typer.Option("--source", help="source name of the --records file in the "
                                                                      "same position")] = None,
    license: Annotated[str, typer.Option("--license", help="licence of the --records sources (SPDX id)")] = "",
    origin: Annotated[str, typer.Option(help="where the records came from (URL, contract, ...)")] = "",
    trained_on: Annotated[list[str] | None, typer.Option("--trained-on", help="a source already ingested that it was "
                                                                              "trained on (repeatable)")] = None,
    base: Annotated[Path | None, typer.Option(help="the Hugging Face folder it was fine-tuned from: verification "
                                                   "can then retrain a reference")] = None,
    recipe: Annotated[Path | None, typer.Option(help="a recipe declaring how it was trained (seed and train "
                                                     "settings; for a language model without --base, a from-scratch "
                                                     "family such as gpt2): verification can then retrain a "
                                                     "reference")] = None,
    holdout: Annotated[float, typer.Option(help="keep this fraction of each --records file as held-out records "
                                                "(split test)")] = 0.0,
    holdout_seed: Annotated[int, typer.Option(help="seed of the --holdout draw")] = 0,
    workspace: WorkspaceOpt = Path("."),
    as_json: JsonOpt = False,
) -> None:
    """Register a model trained elsewhere with the records it was trained on, so that `forget` can unlearn it."""
    from . import api

    _check_holdout(holdout, holdout_seed)
    with _ws(workspace) as ws:
        row = api.import_model(ws, folder, records=records or (), sources=source or (), license=license,
                               origin=origin, trained_on=trained_on or (), base=base, recipe=recipe,
                               holdout=holdout, holdout_seed=holdout_seed)
        note = row.info["imported"]
        data = {"model": row.id, "records": len(row.records), "sources": list(ws.recipe_of(row).data.sources),
                "sha256": row.weights_sha256, "base": note["base"], "reference": note["reference"],
                "reference_note": note["reference_note"]}
    _emit(data, as_json, lambda: out.print(_text(
        f"imported {row.id} from {folder}: {data['records']} training records of {len(data['sources'])} source(s); "
        + ("exact verification: " if note["reference"] else "no exact verification: ") + note["reference_note"])))


@app.command()
def families(as_json: JsonOpt = False) -> None:
    """List the model families a recipe's [model] family can name, by task, with their parameters and defaults."""
    from .models.describe import describe_families

    data = describe_families()

    def show() -> None:
        out.print(_table("task", "family", "parameters (default)", "what it is", rows=[
            (d["task"], d["family"], ", ".join(f"{p['name']} ({p['default']!r})" for p in d["params"]) or "none",
             d["summary"]) for d in data]))
        out.print(Text("set in a recipe: [model] family = \"NAME\" and any parameter; `disgorge recipe --template "
                       "TASK` writes a commented one"))

    _emit(data, as_json, show)


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


MAX_RECORD_ID = 2**32 - 1
"""Record ids live in 32-bit bitmaps: no record has a larger id."""
MAX_SELECTED = 10_000_000
"""Most record ids one ``--records`` may name."""
MAX_SQL_INT = 2**63 - 1
"""Largest integer SQLite stores: no request has a larger id."""
MAX_MODELS = 1000
"""Most models per side of the per-example test, and most bench seeds."""
MAX_LORA_RANK = 4096
"""Largest ``--lora`` rank."""


def _check(ok: bool, message: str) -> None:
    """Refuse an option value with a one-line :class:`InvalidRequest` unless ``ok``."""
    if not ok:
        raise InvalidRequest(message)


def _finite(value: float | None) -> bool:
    """Whether an optional float option is unset or a finite number (not nan, not infinite)."""
    return value is None or math.isfinite(value)


def _check_seed(option: str, seed: int) -> None:
    """Seeds go to torch, numpy and scikit-learn: integers in ``[0, 2**32)``."""
    _check(0 <= seed <= MAX_SEED, f"{option} must be an integer from 0 to {MAX_SEED} (2**32 - 1), got {seed}")


def _check_holdout(holdout: float, seed: int) -> None:
    """``--holdout`` a fraction in [0, 1) and ``--holdout-seed`` a seed (ingest and import take both)."""
    _check(math.isfinite(holdout) and 0 <= holdout < 1,
           f"--holdout must be a fraction in [0, 1) such as 0.1, got {holdout}")
    _check_seed("--holdout-seed", seed)


def _check_workers(workers: int | None) -> None:
    _check(workers is None or 1 <= workers <= 1024, f"--workers must be from 1 to 1024, got {workers}")


def _parse_ids(text: str | None) -> list[int]:
    """``--records`` text (``3,7,10-20``) as ids; refuses malformed parts, ids no record can have (record ids are
    stored in 32-bit bitmaps) and selections of over MAX_SELECTED ids."""
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
        if last > MAX_RECORD_ID:
            raise NotFound(f"record id {last} does not exist in this workspace (record ids are below 2**32); see "
                           "`disgorge records`")
        if len(ids) + last - first + 1 > MAX_SELECTED:
            raise InvalidRequest(f"--records names over {MAX_SELECTED:,} ids; forget whole sources (--source) or a "
                                 "share (--random) instead")
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
    keep_superseded: Annotated[bool, typer.Option(help="keep the weights of the models the erasure supersedes "
                                                         "(by default they are deleted: they hold the records' "
                                                         "effect)")] = False,
    include_test: Annotated[bool, typer.Option("--include-test", help="also forget held-out (split test) records: "
                                                                      "a --source's, and --records ids among them "
                                                                      "(by default they stay, for verification)")
                            ] = False,
    request: Annotated[int | None, typer.Option("--request", help="carry out a draft request (`disgorge attribute "
                                                                  "--to-request`) under its id")] = None,
    executor: ShardExecutorOpt = "local",
    workers: ShardWorkersOpt = 1,
    workspace: WorkspaceOpt = Path("."),
    as_json: JsonOpt = False,
) -> None:
    """Remove records' effect from every model that saw them, verify, and erase the records."""
    from . import api
    from .methods.registry import parse_options

    _check(random is None or (math.isfinite(random) and 0 < random < 1),
           f"--random takes a fraction in (0, 1) such as 0.1, got {random}")
    _check_seed("--seed", seed)
    _check(_finite(max_seconds) and (max_seconds is None or max_seconds >= 0),
           f"--max-seconds must be a finite number of seconds >= 0, got {max_seconds}")
    _check(max_steps is None or max_steps >= 1, f"--max-steps must be at least 1, got {max_steps}")
    _check(lora is None or 0 <= lora <= MAX_LORA_RANK,
           f"--lora takes a rank from 1 to {MAX_LORA_RANK} (0: train every weight), got {lora}")
    _check(math.isfinite(budget) and budget > 0,
           f"--budget must be a finite share of the training time > 0 such as 0.5, got {budget}")
    _check(math.isfinite(exact_budget) and exact_budget >= 0,
           f"--exact-budget must be a finite number of seconds >= 0, got {exact_budget}")
    _check_workers(workers)
    ids = _parse_ids(records)
    with _ws(workspace) as ws:
        options = parse_options(option or [])
        options.update({k: v for k, v in (("max_seconds", max_seconds), ("max_steps", max_steps),
                                          ("lora_rank", lora)) if v is not None})
        result = api.forget(ws, sources=source or (), records=ids, random_fraction=random, seed=seed,
                            model=model, method=method, options=options, reason=reason,
                            verify="none" if no_verify else verify, exact_budget=exact_budget, purpose=purpose,
                            erase=not defer_erase, accept_failed=accept_failed, budget_fraction=budget,
                            keep_superseded=keep_superseded, include_test=include_test,
                            executor=executor, workers=workers, draft=request)
        data = {"request": result.request_id, "records": result.records, "method": method,
                "children": [{"parent": c.parent, "model": c.id} for c in result.children],
                "erased": result.erased, "deletion": vars(result.deletion), "certificates": result.certificates,
                "paths": result.paths}

        def show() -> None:
            out.print(f"request {result.request_id}: {result.records} records; "
                      f"{len(result.children)} model(s) unlearned with {method}: "
                      + ", ".join(f"{c.parent} -> {c.id}" + (" (sisa: sharded)" if c.method == "sisa" != method else "")
                                  for c in result.children))
            for cert in result.certificates:
                _print_certificate(cert, result.paths[cert["models"]["child"]["id"]]["json"])
            out.print(_deletion_line(result.deletion) if result.erased else
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

    _check(math.isfinite(exact_budget) and exact_budget >= 0,
           f"--exact-budget must be a finite number of seconds >= 0, got {exact_budget}")
    _check(3 <= strong_models <= MAX_MODELS,
           f"--strong-models must be from 3 to {MAX_MODELS} models per side, got {strong_models}")
    _check_workers(workers)
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
    force: Annotated[bool, typer.Option("--force", help="replace OUT/work even if disgorge did not make it")
                     ] = False,
    as_json: JsonOpt = False,
) -> None:
    """Every method against retraining on the bundled scenarios; results JSON, summary and a report."""
    import time as _time

    _check(1 <= seeds <= MAX_MODELS, f"--seeds must be from 1 to {MAX_MODELS}, got {seeds}")
    _check(strong_models == 0 or 3 <= strong_models <= MAX_MODELS,
           f"--strong-models must be 0 (skip) or from 3 to {MAX_MODELS} models per side, got {strong_models}")
    _check_workers(workers)
    from .bench import DEFAULT_SCENARIOS, BenchSettings, machine, run_bench
    from .report.benchmarks import write_report

    chosen = [m.strip() for m in methods.split(",") if m.strip()] if methods else None
    command = "disgorge " + " ".join(sys.argv[1:])
    settings = BenchSettings(scenarios=list(scenario or DEFAULT_SCENARIOS), methods=chosen, seeds=seeds,
                             strong_models=strong_models, executor=executor, workers=workers, out=out_dir,
                             command=command, device=_DEVICE.get())
    started = _time.perf_counter()
    rows = run_bench(settings, force=force)
    wall = _time.perf_counter() - started
    if report is not None:
        write_report(out_dir, report, command=command, machine=machine())

    def show() -> None:
        out.print(_table("scenario", "method", "Avg Gap", "time / retrain", "F", rows=[
            (r["scenario"], r["method"], f"{r['avg_gap']:.2f}",
             "-" if r["time_ratio"] is None else f"{r['time_ratio']:.3f}",
             "-" if r.get("forget_score") is None else f"{r['forget_score']:.3f}")
            for r in rows if "refused" not in r]))
        out.print(_text(f"results in {out_dir}" + (f"; report {report}" if report else "")
                        + f" ({wall / 60:.1f} min)"))

    _emit(rows, as_json, show)


@app.command()
def erase(request: Annotated[int, typer.Argument(help="erasure request id")],
          keep_superseded: Annotated[bool, typer.Option(help="keep the weights of superseded models that saw the "
                                                              "records")] = False,
          workspace: WorkspaceOpt = Path("."), as_json: JsonOpt = False) -> None:
    """Erase the held records of a request made with --defer-erase."""
    from . import api

    if not -MAX_SQL_INT <= request <= MAX_SQL_INT:
        raise NotFound(f"no erasure request {request} in this workspace; see `disgorge requests`")
    with _ws(workspace) as ws:
        deletion = api.erase(ws, request, keep_superseded=keep_superseded)
        _emit({"request": request, "erased": True, "deletion": vars(deletion)}, as_json,
              lambda: out.print(f"request {request}: {_deletion_line(deletion)}"))


def _deletion_line(deletion: Any) -> str:
    """What an erasure deleted, in one line for a person."""
    parts = ["records erased (tombstones kept)" if not deletion.pending else
             "records erased logically; physical deletion pending (another process holds the ledger open; the next "
             "disgorge command on this workspace finishes it)"]
    if deletion.purged:
        parts.append(f"weights deleted of {', '.join(deletion.purged)} (they saw the records)")
    if deletion.kept:
        parts.append(f"weights kept of {', '.join(deletion.kept)} (--keep-superseded; `disgorge purge` deletes "
                     "them)")
    return "; ".join(parts)


@app.command()
def purge(workspace: WorkspaceOpt = Path("."), as_json: JsonOpt = False) -> None:
    """Delete the weights of every superseded or retired model and finish pending deletions."""
    from . import api

    with _ws(workspace) as ws:
        deletion = api.purge(ws)
        _emit(vars(deletion), as_json, lambda: out.print(
            f"weights deleted of {', '.join(deletion.purged)}" if deletion.purged else
            "nothing to purge: every model out of service has had its weights deleted"))


@app.command()
def retire(model: Annotated[str, typer.Argument(help="a model id")],
           workspace: WorkspaceOpt = Path("."), as_json: JsonOpt = False) -> None:
    """Take a model out of service for good: never unlearned or used again; its weights are deleted."""
    from . import api

    with _ws(workspace) as ws:
        row = api.retire(ws, model)
        _emit({"model": row.id, "status": row.status, "weights_deleted_at": row.weights_deleted_at}, as_json,
              lambda: out.print(f"model {row.id} retired; its weights are deleted (card, recipe and lineage "
                                "remain)"))


@app.command()
def doctor(repair: Annotated[bool, typer.Option(help="remove orphan model folders, finish pending deletions and "
                                                     "set private permissions (tampering is only reported)")
                             ] = False,
           workspace: WorkspaceOpt = Path("."), as_json: JsonOpt = False) -> None:
    """Check the workspace: ledger integrity, the tamper-evident chain, model files, certificates, erasure,
    orphans and permissions. Exits 1 when a problem remains."""
    from . import doctor as checks

    with _ws(workspace) as ws:
        fixed = checks.repair(ws) if repair else []
        data = {**checks.report(checks.examine(ws)), "fixed": fixed}

    def show() -> None:
        for line in fixed:
            out.print(Text(f"fixed: {line}"))
        out.print(_table("check", "result", "covers", rows=[
            (name, "ok" if c["ok"] else f"{len(c['problems'])} problem(s)", c["covers"])
            for name, c in data["checks"].items()]))
        for name, c in data["checks"].items():
            for problem in c["problems"]:
                out.print(Text(f"{name}: {problem}"))
        out.print("workspace OK" if data["ok"] else "problems found (see above)")

    _emit(data, as_json, show)
    if not data["ok"]:
        raise typer.Exit(1)


@probe_app.command("add")
def probe_add(
    name: Annotated[str, typer.Argument(help="the probe's name (lowercase, e.g. attack_success_rate)")],
    file: Annotated[Path | None, typer.Argument(help="its inputs: a .csv/.npz as ingest reads (with --target), or a "
                                                     ".jsonl of {\"prompt\", \"completion\"} for a language "
                                                     "model")] = None,
    target: Annotated[int | None, typer.Option(help="the label the behaviour sends inputs to: the effect is the "
                                                    "share of FILE's inputs classified as it")] = None,
    baseline: Annotated[Path | None, typer.Option(help="the same inputs without the change (their share sent to "
                                                       "--target is the base rate)")] = None,
    group: Annotated[str | None, typer.Option(help="ATTR=VALUE: accuracy on the held-out records of this group "
                                                   "(label=K: of class K)")] = None,
    label: Annotated[str, typer.Option(help="CSV label column of FILE")] = "label",
    attribute: Annotated[list[str] | None, typer.Option(help="CSV column of FILE that is not a feature (as at "
                                                             "ingest)")] = None,
    base_rate: Annotated[float | None, typer.Option(help="percent a model that never learned the behaviour scores, "
                                                         "if known (e.g. 0 for a class never seen)")] = None,
    description: Annotated[str, typer.Option("--describe", help="what the probe measures, in words")] = "",
    workspace: WorkspaceOpt = Path("."),
    as_json: JsonOpt = False,
) -> None:
    """Declare a probe: from now on every verification, certificate and bench row measures it."""
    from . import api

    _check(base_rate is None or (math.isfinite(base_rate) and 0 <= base_rate <= 100),
           f"--base-rate is a percentage in [0, 100], got {base_rate}")
    with _ws(workspace) as ws:
        spec = api.add_probe(ws, name, file, target=target, baseline=baseline, group=group, label=label,
                             attributes=attribute or (), help=description, base_rate=base_rate)
        data = next(p for p in api.probes(ws) if p["name"] == spec.name)
    _emit(data, as_json, lambda: out.print(_text(f"probe {spec.name} ({spec.kind}): {spec.help}")))


@probe_app.command("remove")
def probe_remove(name: Annotated[str, typer.Argument(help="a probe's name (see `disgorge probes`)")],
                 workspace: WorkspaceOpt = Path("."), as_json: JsonOpt = False) -> None:
    """Forget a declared probe (certificates already written keep its figures)."""
    from . import api

    with _ws(workspace) as ws:
        api.remove_probe(ws, name)
    _emit({"removed": name}, as_json, lambda: out.print(_text(f"probe {name} removed")))


@app.command()
def probes(workspace: WorkspaceOpt = Path("."), as_json: JsonOpt = False) -> None:
    """List the workspace's probes: what each measures, its kind and its base rate."""
    from . import api

    with _ws(workspace) as ws:
        data = api.probes(ws)
    _emit(data, as_json, lambda: out.print(_table(
        "probe", "kind", "measures", "base rate", rows=[
            (d["name"], d["kind"], d["help"], "-" if d["base_rate"] is None else f"{d['base_rate']:g}%")
            for d in data])))


def _attrs(text: str) -> list[str]:
    return [a.strip() for a in text.split(",") if a.strip()]


@audit_app.command("bias")
def audit_bias(model: Annotated[str, typer.Argument(help="a model id (see `disgorge models`)")],
               by: Annotated[str, typer.Option(help="attribute(s) to split by, comma-separated (given at ingest "
                                                    "with --attribute)")],
               compare: Annotated[str | None, typer.Option(help="a second model on the same records (before and "
                                                                "after: the parent and the child of a request)")
                                  ] = None,
               split: Annotated[str, typer.Option(help="test (held-out) or train (the model's own records)")
                                ] = "test",
               positive: Annotated[int | None, typer.Option(help="the class that counts as selected (default 1 for "
                                                                 "two classes)")] = None,
               boot: Annotated[int, typer.Option(help="bootstrap resamples for the intervals (0: none)")] = 200,
               workspace: WorkspaceOpt = Path("."), as_json: JsonOpt = False) -> None:
    """Group figures (fairlearn MetricFrame): per group and intersection, the gap and ratio between groups."""
    from . import api

    _check(0 <= boot <= 10_000, f"--boot takes 0 to 10000 resamples, got {boot}")
    with _ws(workspace) as ws:
        result, row = api.audit_bias(ws, model, _attrs(by), compare=compare, split=split, positive=positive,
                                     n_boot=boot)

    def show() -> None:
        for mid, audit in result["models"].items():
            for frame in audit["frames"]:
                metrics = audit["metrics"]
                rows = [(" & ".join(f"{k}={v}" for k, v in g["group"].items()), g["records"],
                         *(_pct(g["figures"][m], g.get("interval", {}).get(m)) for m in metrics))
                        for g in frame["groups"]]
                rows.append(("difference (max - min)", "", *(_pct(frame["difference"][m],
                                                                   frame.get("difference_interval", {}).get(m))
                                                              for m in metrics)))
                rows.append(("ratio (min / max)", "", *(_num(frame["ratio"][m]) for m in metrics)))
                out.print(_table("group", "records", *metrics, rows=rows,
                                 title=f"model {mid}, {result['split']} split, by {' & '.join(frame['by'])}"))
        out.print(_text(f"stored: {row.path}"))

    _emit({**result, "audit": row.id, "path": row.path}, as_json, show)


def _pct(value: float | None, interval: list[float | None] | None = None) -> str:
    if value is None:
        return "-"
    if interval and None not in interval:
        return f"{value:.1f} [{interval[0]:.1f}, {interval[1]:.1f}]"
    return f"{value:.1f}"


def _num(value: float | None) -> str:
    return "-" if value is None else f"{value:.3f}"


@audit_app.command("memorization")
def audit_memorization(model: Annotated[str, typer.Argument(help="a model id (see `disgorge models`)")],
                       top: Annotated[int, typer.Option(help="how many of the most memorised records to list")] = 20,
                       workspace: WorkspaceOpt = Path("."), as_json: JsonOpt = False) -> None:
    """Per-record membership scores against held-out data, the most memorised records and per-source totals."""
    from . import api

    with _ws(workspace) as ws:
        result, row = api.audit_memorization(ws, model, top=top)

    def show() -> None:
        out.print(_text(f"model {model}: membership AUC {result['membership_auc']:.1f} over {result['records']} "
                        f"training and {result['heldout']} held-out records; calibrated by {result['references']} "
                        f"model(s) trained without them for {result['calibrated_records']} records"))
        out.print(_table("record", "source", "score", "calibrated", "loss", title="most memorised", rows=[
            (r["id"], r["source"], f"{r['score']:.1f}", _num(r["calibrated"]), f"{r['loss']:.4f}")
            for r in result["top"]]))
        out.print(_table("source", "records", "mean score", f"score >= {result['memorized_threshold']:g}",
                         "mean calibrated", title="per source", rows=[
                             (s["source"], s["records"], f"{s['mean_score']:.1f}", s["memorized"],
                              _num(s["mean_calibrated"])) for s in result["sources"]]))
        out.print(_text(f"stored: {row.path}"))

    _emit({**result, "audit": row.id, "path": row.path}, as_json, show)


@app.command()
def attribute(model: Annotated[str, typer.Argument(help="a model id (see `disgorge models`)")],
              probe: Annotated[str | None, typer.Option(help="trace this probe's behaviour (see `disgorge probes`)")
                               ] = None,
              group: Annotated[str | None, typer.Option(help="ATTR=VALUE: trace the model's errors on this held-out "
                                                             "group")] = None,
              record: Annotated[int | None, typer.Option(help="trace the model's output on this record")] = None,
              top: Annotated[int, typer.Option(help="how many of the best-scored records to list")] = 20,
              to_request: Annotated[int, typer.Option(help="draft an erasure request of the N best-scored sources; "
                                                           "`disgorge forget --request ID` carries it out")] = 0,
              workspace: WorkspaceOpt = Path("."), as_json: JsonOpt = False) -> None:
    """Trace a behaviour to the training records and sources that drove it (TracIn), ranked."""
    from . import api

    _check(record is None or 0 <= record <= MAX_SQL_INT, f"no record {record} in this workspace")
    with _ws(workspace) as ws:
        result, row = api.attribute(ws, model, probe=probe, group=group, record=record, top=top,
                                    to_request=to_request)

    def show() -> None:
        out.print(_text(f"model {model}: {result['behaviour']}, traced through {result['checkpoints']} "
                        f"checkpoint(s) in {result['seconds']:.1f}s ({result['method']})"))
        out.print(_table("rank", "source", "score", "records", "share of +", title="sources", rows=[
            (i, s["source"], f"{s['score']:.4g}", s["records"], f"{100 * s['share']:.1f}%")
            for i, s in enumerate(result["sources"][:top], 1)]))
        out.print(_table("rank", "record", "source", "score", title="records", rows=[
            (i, r["id"], r["source"], f"{r['score']:.4g}") for i, r in enumerate(result["records"], 1)]))
        if "draft_request" in result:
            d = result["draft_request"]
            out.print(_text(f"draft request {d['id']}: forget {', '.join(d['sources'])}; carry it out with "
                            f"`disgorge forget --request {d['id']}`"))
        out.print(_text(f"stored: {row.path}"))

    _emit({**result, "audit": row.id, "path": row.path}, as_json, show)


@app.command()
def requests(workspace: WorkspaceOpt = Path("."), as_json: JsonOpt = False) -> None:
    """List erasure requests, and draft requests an attribution proposed (status draft)."""
    with _ws(workspace) as ws:
        data = [{"request": r.id, "status": r.status, "method": r.method, "records": len(r.records),
                 "models": [{"parent": a, "child": c} for a, c in
                            zip(r.affected, r.results.get("children", []), strict=False)],
                 "reason": r.reason, "selector": r.selector, "created": r.created_at, "completed": r.completed_at}
                for r in ws.ledger.requests()]
        done = {d["request"] for d in data}
        data += [{"request": d.id, "status": "draft", "method": "-", "records": 0, "models": [], "reason": d.reason,
                  "selector": d.selector, "created": d.created_at, "completed": None}
                 for d in ws.ledger.drafts() if d.id not in done]  # `forget --request ID` carries them out
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

    number = re.fullmatch(r"\s*[rR]?(\d+)\s*", target)
    if number and (len(number.group(1)) > 19 or int(number.group(1)) > MAX_SQL_INT):
        raise NotFound(f"no erasure request {number.group(1)} in this workspace; see `disgorge requests`")
    with _ws(workspace) as ws:
        path = write_report_html(ws, target, out_file)
    _emit({"report": str(path)}, as_json, lambda: out.print(_text(f"report: {path}")))


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
        line = _text(f"certificate {file}: ")
        line.append("VALID" if result["valid"] else "NOT VALID", style="green" if result["valid"] else "red")
        out.print(line)

    _emit(result, as_json, show)
    if not result["valid"]:
        raise typer.Exit(1)


@app.command()
def demo(out_dir: Annotated[Path, typer.Option("--out", help="folder for the workspace and certificate")] = Path(
             "demo-output"),
         method: Annotated[str, typer.Option(help="unlearning method, or auto")] = "grad_diff",
         scenario: Annotated[str, typer.Option(help="bundled scenario")] = "digits-backdoor",
         force: Annotated[bool, typer.Option("--force", help="replace OUT/workspace even if disgorge did not make "
                                                             "it")] = False,
         as_json: JsonOpt = False) -> None:
    """The main job on bundled data: ingest, train, forget the poisoned contributor, verify."""
    from .demo import run_demo

    cert = run_demo(out_dir, scenario=scenario, method=method, force=force, device=_DEVICE.get())
    _emit(cert, as_json, lambda: _print_certificate(cert, str(out_dir / "certificate.json")))


def _print_certificate(cert: dict[str, Any], path: str) -> None:
    from .evidence.certificate import check_rows, columns, figure_rows, robustness_rows, sharding_lines, verdict_line

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
        a = cert["auto"]
        out.print(f"auto chose {a['chosen']}; the candidates took {a['total_seconds']:.2f}s of unlearning and "
                  f"{a.get('verification_seconds', 0):.2f}s of verification; the whole choice took "
                  f"{a.get('wall_seconds', 0):.2f}s (ratio {a.get('whole_time_ratio')} of training)")
    for line in sharding_lines(cert):
        if line:
            out.print(Text(line))
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


def _split_device(args: list[str]) -> tuple[list[str], list[str]]:
    """Take ``--device VALUE`` (or ``--device=VALUE``) from anywhere before a ``--``, so it may follow the command;
    returns the other arguments and the option to put before the command (the last one wins)."""
    rest: list[str] = []
    device: list[str] = []
    i = 0
    while i < len(args):
        arg = args[i]
        if arg == "--":
            rest += args[i:]
            break
        if arg == "--device" and i + 1 < len(args):
            device, i = ["--device", args[i + 1]], i + 2
            continue
        if arg.startswith("--device="):
            device = ["--device", arg.partition("=")[2]]
        else:
            rest.append(arg)
        i += 1
    return rest, device


def main(argv: list[str] | None = None) -> None:
    """Console entry point: user errors, including malformed options, are one line on stderr (``error: ...``) and
    exit code 2, never a traceback."""
    args, level = _split_verbosity(list(sys.argv[1:] if argv is None else argv))
    args, device = _split_device(args)
    args = device + args
    if level is not None:
        args = [next(k for k, v in VERBOSITY.items() if v == level), *args]
    try:
        code = app(args=args, prog_name="disgorge", standalone_mode=False)
    except DisgorgeError as exc:
        _fail(str(exc), 2)
    except KeyboardInterrupt:
        typer.echo("aborted", err=True)
        sys.exit(130)
    except OSError as exc:
        _fail(f"{exc.strerror or exc}: {exc.filename or ''}".rstrip(": "), 2)
    except Exception as exc:
        # The parser's own errors (click's ClickException and Abort; typer vendors click in recent versions, so they
        # are told by what they offer rather than by class): an unknown option, a value of the wrong type, ...
        if isinstance(exc, typer.Abort) or type(exc).__name__ == "Abort":
            typer.echo("aborted", err=True)
            sys.exit(130)
        code = getattr(exc, "exit_code", None)
        if not callable(getattr(exc, "format_message", None)) or not isinstance(code, int):
            raise
        if type(exc).__name__ == "NoArgsIsHelpError":  # `disgorge` alone: the help, as the parser prints it
            exc.show()  # type: ignore[attr-defined]
            sys.exit(code)
        ctx = getattr(exc, "ctx", None)
        where = f" (see `{ctx.command_path} --help`)" if ctx is not None and code == 2 else ""
        _fail(exc.format_message() + where, code)  # type: ignore[attr-defined]
    if isinstance(code, int) and not isinstance(code, bool) and code:
        sys.exit(code)


def _fail(message: str, code: int) -> NoReturn:
    """Print ``error: MESSAGE`` as one line of inert text on stderr and exit with ``code``."""
    typer.echo(f"error: {_safe(message)}", err=True)
    sys.exit(code)


if __name__ == "__main__":  # pragma: no cover
    main()

__all__ = ["app", "main"]
