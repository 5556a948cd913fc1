"""Crash-safety, concurrency and erasure probe of the ``disgorge`` command line, repeated and counted.

Run from the repository root::

    .venv/bin/python benchmarks/reliability.py --out benchmarks/results --report BENCHMARKS.md [--kills 20] [--seed 0]

It drives the real CLI (``disgorge`` next to this Python, each command a subprocess) on throwaway workspaces:

1. a template workspace: the ``digits-backdoor`` scenario ingested and its default recipe trained, once;
2. kills: for ``forget``, ``train`` and ``ingest``, ``--kills`` times each, a copy of the template, the command
   SIGKILLed after a random delay (uniform between 0 and the command's uninterrupted duration, measured once), then
   the ledger read-only (SQLite integrity, all-or-nothing state of what the command touched) and ``disgorge doctor
   --json``; then the command retried, and ``disgorge doctor --json`` again, which must be fully ok;
3. concurrency: 8 ``disgorge forget`` of 8 sources started at once, then ``train`` and ``forget`` started together:
   every command must succeed and no active model may hold an erased record;
4. erased bytes: a source of the template forgotten, then every file of the workspace scanned for the raw bytes of
   its records; the same for one person of the ``people-mini`` language-model scenario and the strings of their
   name that no retained record uses.

It writes ``OUT/reliability.json`` and a ``## Reliability`` section of the report (between the markers
``<!-- reliability:start -->`` and ``<!-- reliability:end -->``, replaced on each run, appended the first time).
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import platform
import random
import re
import shlex
import shutil
import signal
import sqlite3
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator, Sequence
from contextlib import ExitStack, contextmanager
from dataclasses import asdict, dataclass, field
from importlib.metadata import PackageNotFoundError, version
from pathlib import Path
from typing import IO, Any

import numpy as np
from pyroaring import BitMap

log = logging.getLogger("reliability")

SCENARIO = "digits-backdoor"
LM_SCENARIO = "people-mini"
"""The smallest language-model scenario (40 people x 4 facts, a word-level GPT-2)."""
OPERATIONS = ("forget", "train", "ingest")
FAST_FORGET = ("--method", "finetune", "-o", "max_steps=3", "--no-verify")
"""Forget options that keep a forget short: three fine-tune steps and no verification."""
SCAN_FORGET = ("--verify", "heldout", "--accept-failed")
"""Forget options of the erased-bytes scan: the default method with reference-free verification (which writes
certificates), committed whatever the verdict so that the records are erased."""
INGEST_ROWS = 200
CONCURRENT = 8
EXPECTED_PENDING = ("checkpoint is pending", "weights are still on disk")
"""Erasure problems a killed command may leave for the next writing command to finish."""
COMMITTED = ("erased", "present", "committed")
"""The ledger states in which a command's work is committed (forget, ingest, train)."""
NO_RECORDS_LEFT = "no records left to forget"
"""What ``disgorge forget`` says when the source was already erased (a kill after the commit)."""
START, END = "<!-- reliability:start -->", "<!-- reliability:end -->"
LEDGER = Path(".disgorge") / "ledger.sqlite"
TARGETS = ("inconsistent", "orphans", "failed_retries", "train_forget_violations", "concurrent_violations",
           "erased_bytes_found", "erased_lm_strings_found")
"""Figures whose target is 0."""


# -- running the command line ------------------------------------------------------------------------------------

@dataclass
class Outcome:
    """How one CLI command ended."""

    code: int | None
    stdout: str
    stderr: str
    seconds: float
    killed: bool = False

    @property
    def error(self) -> str:
        """The last line of stderr (the CLI prints user errors as one ``error: ...`` line)."""
        lines = [line for line in self.stderr.strip().splitlines() if line.strip()]
        return lines[-1] if lines else ""


@dataclass
class Running:
    """A started command: its process, the temporary files its output goes to, and when it started."""

    proc: subprocess.Popen[bytes]
    out: IO[bytes]
    err: IO[bytes]
    started: float


class Cli:
    """Runs ``disgorge`` commands as subprocesses, each in its own process group so that a kill takes all of it."""

    def __init__(self, executable: Sequence[str], timeout: float) -> None:
        self.executable = list(executable)
        self.timeout = timeout

    @contextmanager
    def start(self, args: Sequence[str]) -> Iterator[Running]:
        """Start a command; its output goes to temporary files (a pipe nobody reads could block it). On exit the
        command is killed if it still runs."""
        log.debug("$ disgorge %s", shlex.join(args))
        with tempfile.TemporaryFile() as out, tempfile.TemporaryFile() as err:
            started = time.perf_counter()
            proc = subprocess.Popen([*self.executable, *args], stdout=out, stderr=err, stdin=subprocess.DEVNULL,
                                    start_new_session=True)
            try:
                yield Running(proc, out, err, started)
            finally:
                if proc.poll() is None:
                    os.killpg(proc.pid, signal.SIGKILL)
                    proc.wait()

    def finish(self, running: Running, *, kill_after: float | None = None) -> Outcome:
        """Wait for a started command (SIGKILL its process group after ``kill_after`` seconds if given, or after
        the timeout) and collect its output."""
        proc, killed = running.proc, False
        limit = self.timeout if kill_after is None else kill_after
        try:
            proc.wait(timeout=max(0.0, limit - (time.perf_counter() - running.started)))
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait()
            killed = kill_after is not None
            if not killed:
                log.error("a disgorge command ran past %.0fs and was killed: %s", self.timeout,
                          shlex.join(map(str, proc.args)))
        seconds = time.perf_counter() - running.started
        texts = []
        for fh in (running.out, running.err):
            fh.seek(0)
            texts.append(fh.read().decode("utf-8", "replace"))
        return Outcome(None if killed else proc.returncode, texts[0], texts[1], seconds, killed)

    def run(self, args: Sequence[str], *, kill_after: float | None = None) -> Outcome:
        """Run a command to its end, or until ``kill_after`` seconds."""
        with self.start(args) as running:
            return self.finish(running, kill_after=kill_after)

    def together(self, commands: list[list[str]]) -> list[Outcome]:
        """Start every command at once, then wait for all of them."""
        with ExitStack() as stack:
            running = [stack.enter_context(self.start(args)) for args in commands]
            return [self.finish(r) for r in running]

    def must(self, args: Sequence[str]) -> Outcome:
        """Run a command that has to succeed (setting up a workspace)."""
        outcome = self.run(args)
        if outcome.code != 0:
            raise RuntimeError(f"disgorge {shlex.join(args)} failed ({outcome.code}): {outcome.error}")
        return outcome

    def doctor(self, ws: Path) -> dict[str, Any]:
        """``disgorge doctor --json`` (no repair) as data; a doctor that cannot answer is one problem."""
        outcome = self.run(["doctor", "--json", "-w", str(ws)])
        try:
            report = json.loads(outcome.stdout)
        except ValueError:
            return {"ok": False, "checks": {"doctor": {"ok": False, "problems": [
                f"doctor exited {outcome.code} without a JSON report: {outcome.error}"]}}}
        if (outcome.code == 0) != bool(report.get("ok")):
            report["checks"]["doctor"] = {"ok": False, "problems": [
                f"doctor exited {outcome.code} but reported ok={report.get('ok')}"]}
        return report


def disgorge_executable() -> list[str]:
    """The ``disgorge`` console script next to this Python, else the CLI module run by this Python."""
    script = Path(sys.executable).with_name("disgorge")
    return [str(script)] if script.exists() else [sys.executable, "-m", "disgorge.cli"]


# -- reading the ledger ------------------------------------------------------------------------------------------

@contextmanager
def ledger(ws: Path) -> Iterator[sqlite3.Connection]:
    """The workspace's ledger opened read-only, closed on exit (an open reader would block disgorge's checkpoint)."""
    con = sqlite3.connect(f"file:{ws / LEDGER}?mode=ro", uri=True, timeout=30.0)
    try:
        yield con
    finally:
        con.close()


def integrity(con: sqlite3.Connection) -> list[str]:
    """SQLite's ``integrity_check``: no problems when the file is sound."""
    return [row[0] for row in con.execute("PRAGMA integrity_check") if row[0] != "ok"]


def source_states(con: sqlite3.Connection, source: str, split: str | None = "train") -> dict[str, int]:
    """How many records of ``source`` (of ``split``, or all) are in each state."""
    query = ("SELECT r.state, count(*) FROM records r JOIN sources s ON s.id = r.source_id WHERE s.name = ?"
             + (" AND r.split = ?" if split else "") + " GROUP BY r.state")
    return dict(con.execute(query, (source, split) if split else (source,)).fetchall())


def active_with_erased(con: sqlite3.Connection) -> list[str]:
    """Active models whose lineage holds an erased record (none, if erasure is complete)."""
    erased = BitMap(row[0] for row in con.execute("SELECT id FROM records WHERE state = 'erased'"))
    return [model for model, blob in con.execute("SELECT id, records FROM models WHERE status = 'active'")
            if BitMap.deserialize(blob) & erased]


def train_sources(con: sqlite3.Connection) -> list[str]:
    """Sources with active training records, by name."""
    rows = con.execute("SELECT DISTINCT s.name FROM sources s JOIN records r ON r.source_id = s.id "
                       "WHERE r.split = 'train' AND r.state = 'active' ORDER BY s.name")
    return [row[0] for row in rows]


def payloads(con: sqlite3.Connection, *, sources: Sequence[str] | None = None, exclude: Sequence[str] = (),
             split: str | None = None) -> list[tuple[int, str, bytes, dict[str, Any]]]:
    """(id, source, payload, attributes) of the live records of ``sources`` (all when None) and ``split`` (any when
    None), minus those of ``exclude``."""
    rows = con.execute("SELECT r.id, s.name, r.payload, r.attributes, r.split FROM records r JOIN sources s "
                       "ON s.id = r.source_id WHERE r.state != 'erased' AND r.payload IS NOT NULL ORDER BY r.id")
    return [(rid, name, bytes(blob), json.loads(attrs)) for rid, name, blob, attrs, part in rows
            if (sources is None or name in sources) and name not in exclude and split in (None, part)]


# -- doctor reports ----------------------------------------------------------------------------------------------

@dataclass
class Findings:
    """A doctor report sorted into what a kill may leave (pending work, orphans) and what it must never leave."""

    unexpected: list[str] = field(default_factory=list)
    pending: list[str] = field(default_factory=list)
    orphans: list[str] = field(default_factory=list)


def sort_findings(report: dict[str, Any], *, after_retry: bool) -> Findings:
    """Right after a kill, orphan folders and the two pending erasure steps are expected; after the retry (a writing
    command, which finishes both) nothing is, and orphans are counted on their own."""
    found = Findings()
    for name, check in report.get("checks", {}).items():
        for problem in check.get("problems", []):
            text = f"{name}: {problem}"
            if name == "orphans":
                found.orphans.append(text)
            elif name == "erasure" and not after_retry and any(p in problem for p in EXPECTED_PENDING):
                found.pending.append(text)
            else:
                found.unexpected.append(text)
    return found


def all_problems(report: dict[str, Any]) -> list[str]:
    """Every problem of a doctor report, as ``check: problem``."""
    return [f"{name}: {p}" for name, check in report.get("checks", {}).items() for p in check.get("problems", [])]


# -- the probe ---------------------------------------------------------------------------------------------------

@dataclass
class Trial:
    """One kill of one command, and what the workspace looked like after it and after the retry."""

    operation: str
    index: int
    delay: float
    killed: bool
    exit_code: int | None
    target: str = ""
    state_after_kill: str = ""
    pending_after_kill: list[str] = field(default_factory=list)
    orphans_after_kill: list[str] = field(default_factory=list)
    problems_after_kill: list[str] = field(default_factory=list)
    retry_code: int | None = None
    retry_error: str = ""
    retry_ok: bool = False
    problems_after_retry: list[str] = field(default_factory=list)
    orphans_after_retry: list[str] = field(default_factory=list)
    seconds: float = 0.0

    @property
    def inconsistent(self) -> bool:
        """Whether the kill or the retry left anything but the expected pending work and orphans."""
        return bool(self.problems_after_kill or self.problems_after_retry)


class Probe:
    """The reliability probe: one template workspace, then kills, concurrency and the erased-bytes scans."""

    def __init__(self, cli: Cli, work: Path, seed: int) -> None:
        self.cli = cli
        self.work = work
        self.rng = random.Random(seed)
        self.np_rng = np.random.default_rng(seed)
        self.template = work / "template"
        self.recipe = work / "recipe.toml"
        self.sources: list[str] = []
        self.x_shape: tuple[int, ...] = ()
        self.copies = 0
        self.trained = 0
        self.timings: dict[str, float] = {}

    # -- workspaces --------------------------------------------------------------------------------------------
    def build_template(self) -> None:
        """Init, ingest the scenario, train its default recipe; log how long each step took."""
        for step, args in (("init", ["init", str(self.template)]),
                           ("ingest", ["ingest", "--scenario", SCENARIO, "-w", str(self.template)]),
                           ("recipe", ["recipe", SCENARIO]),
                           ("train", ["train", str(self.recipe), "-w", str(self.template)])):
            outcome = self.cli.must(args)
            if step == "recipe":
                self.recipe.write_text(outcome.stdout, encoding="utf-8")
            self.timings[f"template_{step}"] = round(outcome.seconds, 2)
            log.info("template: %s took %.1fs", step, outcome.seconds)
        with ledger(self.template) as con:
            self.sources = train_sources(con)
            (self.trained,) = con.execute("SELECT count(*) FROM models WHERE kind = 'trained'").fetchone()
            (blob,) = con.execute("SELECT payload FROM records WHERE payload IS NOT NULL LIMIT 1").fetchone()
        from disgorge.ledger.payload import decode

        self.x_shape = tuple(decode(bytes(blob))["x"].shape)
        log.info("template: %d training sources, records of shape %s", len(self.sources), self.x_shape)

    def copy(self, what: str) -> Path:
        """A fresh copy of the template."""
        self.copies += 1
        folder = self.work / f"{what}-{self.copies:03d}"
        shutil.copytree(self.template, folder / "ws")
        return folder

    def ingest_file(self, folder: Path) -> Path:
        """An NPZ of INGEST_ROWS fresh random records of the template's shape, labels 0..9."""
        path = folder / "fresh.npz"
        x = self.np_rng.random((INGEST_ROWS, *self.x_shape), dtype=np.float32)
        y = self.np_rng.integers(0, 10, INGEST_ROWS, dtype=np.int64)
        np.savez(path, x=x, y=y)
        return path

    def command(self, operation: str, folder: Path) -> tuple[list[str], str]:
        """The CLI arguments of one operation on the workspace in ``folder``, and what it touches (a source)."""
        ws = str(folder / "ws")
        if operation == "forget":
            source = self.rng.choice(self.sources)
            return ["forget", "--source", source, *FAST_FORGET, "-w", ws], source
        if operation == "train":
            return ["train", str(self.recipe), "-w", ws], ""
        source = f"fresh-{folder.name}"
        return ["ingest", str(self.ingest_file(folder)), "--source", source, "--license", "CC0-1.0", "-w", ws], source

    # -- kills -------------------------------------------------------------------------------------------------
    def measure(self, operation: str) -> float:
        """The uninterrupted duration of one operation on a template copy."""
        folder = self.copy(f"measure-{operation}")
        args, _ = self.command(operation, folder)
        outcome = self.cli.must(args)
        shutil.rmtree(folder)
        log.info("%s runs %.1fs uninterrupted", operation, outcome.seconds)
        return outcome.seconds

    def kill_trial(self, operation: str, index: int, duration: float) -> Trial:
        """Kill one command at a random moment, check the workspace, retry, check again."""
        started = time.perf_counter()
        folder = self.copy(operation)
        ws = folder / "ws"
        args, target = self.command(operation, folder)
        delay = self.rng.uniform(0.0, duration)
        outcome = self.cli.run(args, kill_after=delay)
        trial = Trial(operation, index, round(delay, 2), outcome.killed, outcome.code, target)
        if not outcome.killed:
            log.info("%s #%d finished (exit %s) before its kill at %.1fs", operation, index, outcome.code, delay)

        trial.state_after_kill, problems = self.ledger_state(operation, ws, target)
        found = sort_findings(self.cli.doctor(ws), after_retry=False)
        trial.problems_after_kill = problems + found.unexpected
        trial.pending_after_kill, trial.orphans_after_kill = found.pending, found.orphans

        erased_before = operation == "forget" and self.ledger_state(operation, ws, target)[0] == "erased"
        retry = self.cli.run(args)
        trial.retry_code, trial.retry_error = retry.code, retry.error if retry.code else ""
        trial.retry_ok = retry.code == 0 or (erased_before and NO_RECORDS_LEFT in retry.stderr)

        state_after_retry, problems = self.ledger_state(operation, ws, target)
        if trial.retry_ok and state_after_retry not in COMMITTED:
            problems.append(f"after a successful retry the ledger shows {target or 'the model'} {state_after_retry}")
        found = sort_findings(self.cli.doctor(ws), after_retry=True)
        trial.problems_after_retry = problems + found.unexpected
        trial.orphans_after_retry = found.orphans
        trial.seconds = round(time.perf_counter() - started, 2)
        log.info("%s #%d: killed at %.1fs of %.1fs (%s); after the kill: %s; retry %s; after the retry: %s",
                 operation, index, delay, duration, trial.state_after_kill or "-",
                 _summary(trial.problems_after_kill, trial.pending_after_kill, trial.orphans_after_kill),
                 "ok" if trial.retry_ok else f"FAILED ({retry.code}: {retry.error})",
                 _summary(trial.problems_after_retry, [], trial.orphans_after_retry))
        if not trial.inconsistent and trial.retry_ok and not trial.orphans_after_retry:
            shutil.rmtree(folder)
        else:
            log.warning("kept %s for inspection", folder)
        return trial

    def ledger_state(self, operation: str, ws: Path, target: str) -> tuple[str, list[str]]:
        """What the ledger says of the command's target right now (read-only): its state, and problems: a damaged
        file, a source partly erased, an ingest partly committed."""
        try:
            with ledger(ws) as con:
                problems = [f"ledger: {p}" for p in integrity(con)]
                if operation == "forget":
                    states = source_states(con, target)
                    state = "+".join(sorted(states))
                    if len(states) != 1 or state not in ("active", "erased"):
                        problems.append(f"ledger: source {target}'s training records are {states} (mixed)")
                elif operation == "ingest":
                    count = sum(source_states(con, target, split=None).values())
                    state = "absent" if count == 0 else "present" if count == INGEST_ROWS else f"{count} records"
                    if count not in (0, INGEST_ROWS):
                        problems.append(f"ledger: source {target} holds {count} of {INGEST_ROWS} records")
                else:
                    (count,) = con.execute("SELECT count(*) FROM models WHERE kind = 'trained'").fetchone()
                    state = "committed" if count > self.trained else "not committed"
        except sqlite3.Error as exc:
            return "unreadable", [f"ledger: cannot be read read-only ({exc})"]
        return state, problems

    # -- concurrency ---------------------------------------------------------------------------------------------
    def concurrency(self) -> dict[str, Any]:
        """8 forgets of 8 sources at once: every one must succeed, the doctor must be satisfied and no active model
        may hold an erased record."""
        folder = self.copy("concurrent")
        ws = str(folder / "ws")
        chosen = self.rng.sample(self.sources, CONCURRENT)
        outcomes = self.cli.together([["forget", "--source", s, *FAST_FORGET, "-w", ws] for s in chosen])
        report = self.cli.doctor(folder / "ws")
        with ledger(folder / "ws") as con:
            violations = active_with_erased(con)
            erased = [s for s in chosen if set(source_states(con, s)) == {"erased"}]
        result: dict[str, Any] = {
            "concurrent_ok": sum(o.code == 0 for o in outcomes), "concurrent_total": CONCURRENT,
            "concurrent_sources": chosen, "concurrent_sources_erased": len(erased),
            "concurrent_errors": [o.error for o in outcomes if o.code != 0],
            "concurrent_seconds": round(max(o.seconds for o in outcomes), 2),
            "concurrent_doctor_ok": bool(report.get("ok")),
            "concurrent_doctor_problems": all_problems(report),
            "concurrent_violations": len(violations), "concurrent_violating_models": violations}
        log.info("%d concurrent forgets: %d exited 0 in %.1fs, %d sources erased, doctor %s, %d active model(s) "
                 "holding erased records", CONCURRENT, result["concurrent_ok"], result["concurrent_seconds"],
                 len(erased), "ok" if report.get("ok") else "NOT ok", len(violations))
        self.cleanup(folder, result["concurrent_ok"] == CONCURRENT and report.get("ok") and not violations)
        return result

    def train_and_forget(self) -> dict[str, Any]:
        """Train and forget started together: both must succeed, and no active model may hold an erased record
        whichever took the lock first."""
        folder = self.copy("train-forget")
        ws = str(folder / "ws")
        source = self.rng.choice(self.sources)
        train, forget = self.cli.together([["train", str(self.recipe), "-w", ws],
                                           ["forget", "--source", source, *FAST_FORGET, "-w", ws]])
        report = self.cli.doctor(folder / "ws")
        with ledger(folder / "ws") as con:
            violations = active_with_erased(con)
        both = train.code == 0 and forget.code == 0
        result = {
            "train_forget_ok": both, "train_forget_exit_codes": {"train": train.code, "forget": forget.code},
            "train_forget_errors": [o.error for o in (train, forget) if o.code != 0],
            "train_forget_doctor_ok": bool(report.get("ok")), "train_forget_doctor_problems": all_problems(report),
            "train_forget_violations": len(violations), "train_forget_violating_models": violations}
        log.info("train + forget together: train exit %s, forget exit %s, doctor %s, %d active model(s) holding "
                 "erased records", train.code, forget.code, "ok" if report.get("ok") else "NOT ok", len(violations))
        self.cleanup(folder, both and report.get("ok") and not violations)
        return result

    # -- erased bytes ----------------------------------------------------------------------------------------------
    def scan_classifier(self) -> dict[str, Any]:
        """Forget one source of a template copy and look for its records' bytes (the payload, the image as float32
        and as float64) in every file of the workspace; the same scan before forgetting must find them."""
        from disgorge.ledger.payload import decode

        folder = self.copy("scan")
        ws = folder / "ws"
        source = self.rng.choice(self.sources)
        with ledger(ws) as con:
            forgotten = payloads(con, sources=[source], split="train")
            retained = {decode(blob)["x"].astype(np.float32).tobytes()
                        for rid, _, blob, _ in payloads(con, exclude=[source])}
        needles: dict[str, list[tuple[str, bytes]]] = {}
        shared = 0
        for rid, _, blob, _ in forgotten:
            x = decode(blob)["x"]
            if x.astype(np.float32).tobytes() in retained:  # the same image stays in another record
                shared += 1
                continue
            needles[f"record {rid}"] = [("payload", blob), ("float32", x.astype(np.float32).tobytes()),
                                        ("float64", x.astype(np.float64).tobytes())]
        control = scan(ws, needles)
        outcome = self.cli.run(["forget", "--source", source, *SCAN_FORGET, "-w", str(ws), "--json"])
        hits = scan(ws, needles) if outcome.code == 0 else []
        result = {"source": source, "records": len(forgotten), "shared_with_retained": shared,
                  "forget_exit_code": outcome.code, "forget_error": outcome.error if outcome.code else "",
                  "forget_seconds": round(outcome.seconds, 2), "control_hits_before": len(control),
                  "control_files": sorted({h["file"] for h in control}), "files_scanned": len(_files(ws)),
                  "hits": hits}
        log.info("erased bytes: forgot %s (%d records, exit %s); before: found in %d (record, file) pairs; after: %d",
                 source, len(forgotten), outcome.code, len(control), len(hits))
        self.cleanup(folder, outcome.code == 0 and not hits)
        return result

    def scan_language_model(self) -> dict[str, Any]:
        """Build a people-mini workspace, forget one person, and look for the strings of their name that no other
        retained record uses in every file of the workspace."""
        started = time.perf_counter()
        folder = self.work / "lm"
        ws, recipe = folder / "ws", folder / "recipe.toml"
        self.cli.must(["init", str(ws)])
        self.cli.must(["ingest", "--scenario", LM_SCENARIO, "-w", str(ws)])
        recipe.write_text(self.cli.must(["recipe", LM_SCENARIO]).stdout, encoding="utf-8")
        train = self.cli.must(["train", str(recipe), "-w", str(ws)])
        log.info("%s: trained in %.1fs (tokenizer %s)", LM_SCENARIO, train.seconds, _tokenizer(recipe))
        with ledger(ws) as con:
            source = self.rng.choice(train_sources(con))
            records = payloads(con)
        needles = name_needles(records, source)
        control = scan(ws, needles)
        outcome = self.cli.run(["forget", "--source", source, "--method", "finetune", "-o", "max_steps=3",
                                *SCAN_FORGET, "-w", str(ws), "--json"])
        hits = scan(ws, needles) if outcome.code == 0 else []
        seconds = time.perf_counter() - started
        result = {"scenario": LM_SCENARIO, "tokenizer": _tokenizer(recipe), "source": source,
                  "needles": sorted(needles), "forget_exit_code": outcome.code,
                  "forget_error": outcome.error if outcome.code else "", "train_seconds": round(train.seconds, 2),
                  "forget_seconds": round(outcome.seconds, 2), "control_hits_before": len(control),
                  "control_files": sorted({h["file"] for h in control}), "files_scanned": len(_files(ws)),
                  "hits": hits, "seconds": round(seconds, 2)}
        log.info("erased strings: forgot %s (needles %s, exit %s); before: found in %d (needle, file) pairs; after: "
                 "%d; %.1f min in all", source, ", ".join(sorted(needles)), outcome.code, len(control), len(hits),
                 seconds / 60)
        if seconds > 180:
            log.warning("the language-model scan took %.1f min (over 3)", seconds / 60)
        self.cleanup(folder, outcome.code == 0 and not hits)
        return result

    def cleanup(self, folder: Path, ok: Any) -> None:
        """Remove a finished workspace copy, unless something went wrong there."""
        if ok:
            shutil.rmtree(folder, ignore_errors=True)
        else:
            log.warning("kept %s for inspection", folder)


def _tokenizer(recipe: Path) -> str:
    match = re.search(r'^tokenizer\s*=\s*"([^"]*)"', recipe.read_text(encoding="utf-8"), re.MULTILINE)
    return match.group(1) if match else "?"


def _summary(problems: list[str], pending: list[str], orphans: list[str]) -> str:
    parts = [f"{len(problems)} PROBLEM(S): {'; '.join(problems)}"] if problems else []
    parts += [f"{len(pending)} pending"] if pending else []
    parts += [f"{len(orphans)} orphan(s)"] if orphans else []
    return ", ".join(parts) or "clean"


def name_needles(records: list[tuple[int, str, bytes, dict[str, Any]]],
                 source: str) -> dict[str, list[tuple[str, bytes]]]:
    """The person's full name and each part of it that no text or attribute of another live record contains, as
    UTF-8 and as JSON writes it (``\\u`` escapes), keyed by the string."""
    from disgorge.ledger.payload import decode

    def texts(blob: bytes, attributes: dict[str, Any]) -> list[str]:
        fields = [np.asarray(v, dtype=np.uint8).tobytes().decode("utf-8", "replace") for v in decode(blob).values()]
        return fields + [str(v) for v in attributes.values()]

    names = {str(a["person"]) for _, s, _, a in records if s == source and "person" in a}
    others = "\n".join(t for _, s, blob, a in records if s != source for t in texts(blob, a))
    strings = {part for name in names for part in (name, *name.split()) if len(part) >= 3 and part not in others}
    return {s: sorted({("utf-8", s.encode()), ("json", json.dumps(s)[1:-1].encode())}) for s in strings}


def _files(root: Path) -> list[Path]:
    return sorted(p for p in root.rglob("*") if p.is_file() and not p.is_symlink())


def scan(root: Path, needles: dict[str, list[tuple[str, bytes]]]) -> list[dict[str, str]]:
    """Every (needle, file) pair where one of the needle's forms occurs in the file's bytes, with that form."""
    hits = []
    for path in _files(root):
        data = path.read_bytes()
        for key, forms in needles.items():
            form = next((name for name, needle in forms if needle in data), None)
            if form is not None:
                hits.append({"needle": key, "file": str(path.relative_to(root)), "form": form})
    return hits


# -- results -----------------------------------------------------------------------------------------------------

def machine() -> dict[str, Any]:
    """What the probe ran on."""
    from disgorge.evidence.certificate import processor

    return {"platform": platform.platform(), "cpu": processor(), "cpu_count": os.cpu_count(),
            "python": platform.python_version(), "load_average_at_start": _load()}


def _load() -> list[float] | None:
    try:
        return [round(v, 2) for v in os.getloadavg()]
    except OSError:
        return None


def disgorge_version() -> str:
    """The installed disgorge's version."""
    try:
        return version("disgorge")
    except PackageNotFoundError:
        return "unknown"


def totals(trials: list[Trial]) -> dict[str, Any]:
    """The kill figures, in all and per operation."""

    def count(group: list[Trial]) -> dict[str, int]:
        return {"trials": len(group), "kills": sum(t.killed for t in group),
                "inconsistent": sum(t.inconsistent for t in group),
                "orphans": sum(len(t.orphans_after_retry) for t in group),
                "failed_retries": sum(not t.retry_ok for t in group),
                "committed_before_kill": sum(t.killed and t.state_after_kill in COMMITTED for t in group),
                "orphans_after_kill": sum(len(t.orphans_after_kill) for t in group),
                "pending_after_kill": sum(bool(t.pending_after_kill) for t in group)}

    return {**count(trials), "per_operation": {op: count([t for t in trials if t.operation == op])
                                               for op in OPERATIONS if any(t.operation == op for t in trials)}}


ROWS = (
    ("kills", "commands SIGKILLed at a random moment (forget, train, ingest alike), of `trials` started"),
    ("inconsistent", "kills after which the ledger (SQLite integrity, a source all active or all erased, an ingest "
                     "all or nothing) or `disgorge doctor` showed more than the pending work a kill may leave, or "
                     "after which the retry left any problem"),
    ("orphans", "model folders no ledger row names still there after the retry"),
    ("failed_retries", "retries that failed (a forget retried after its commit must say the source has no records "
                       "left)"),
    ("concurrent_ok", "of `concurrent_total` forgets of different sources started at once, those that exited 0"),
    ("concurrent_violations", "active models holding an erased record after those concurrent forgets"),
    ("train_forget_violations", "active models holding an erased record after a train and a forget started "
                                "together (both must exit 0)"),
    ("erased_bytes_found", "(record, file) pairs where an erased record's bytes (payload, image as float32 or "
                           "float64) or an erased person's name string was found in any workspace file, after "
                           "forgetting"),
    ("erased_lm_strings_found", "of those, (name string, file) pairs of the forgotten person (language model)"),
)


def near_duplicate_rates(seed: int) -> dict[str, Any]:
    """The near-duplicate tombstones on live data: tombstone a random half of a data set's records, then the share
    of the other half a re-ingest would refuse (false refusals) and the share of the erased half, each with one
    value changed by 1/16 of its range (digits) or one word changed (texts), that is still refused (catches)."""
    from sklearn.datasets import load_digits

    from disgorge.ledger import fingerprint as fp
    from disgorge.scenarios import get_scenario

    rng = np.random.default_rng(seed)
    key = rng.bytes(32)

    def rates(items: list[dict[str, np.ndarray]], edit: Any) -> dict[str, Any]:
        order = rng.permutation(len(items))
        erased, live = order[: len(items) // 2], order[len(items) // 2:]
        bands: dict[str, set[int]] = {}
        for i in erased:
            for band in fp.fingerprint(items[i], key):
                bands.setdefault(band, set()).add(int(i))

        def refused(fields: dict[str, np.ndarray]) -> bool:
            hits: dict[int, int] = {}
            for band in fp.fingerprint(fields, key):
                for rid in bands.get(band, ()):
                    hits[rid] = hits.get(rid, 0) + 1
            return bool(hits) and max(hits.values()) >= fp.MIN_MATCH

        false = sum(refused(items[i]) for i in live)
        caught = sum(refused(edit(items[i])) for i in erased)
        return {"records": len(items), "false_refusal_rate": round(false / len(live), 5),
                "edited_erased_refused": round(caught / len(erased), 5)}

    digits = load_digits()
    images = [{"x": img.astype(np.float32), "y": np.array([t])}
              for img, t in zip(digits.images, digits.target, strict=True)]

    def pixel(fields: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        x = fields["x"].copy()
        x.flat[int(rng.integers(x.size))] += 1.0  # 1/16 of the 0..16 range
        return {"x": x, "y": fields["y"]}

    texts = [r.fields for s in get_scenario(LM_SCENARIO).sources() for r in s.records if r.split == "train"]
    field = next(k for k in ("text", "answer", "prompt") if k in texts[0])

    def word(fields: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        words = bytes(fields[field]).decode().split()
        words[int(rng.integers(len(words)))] = "changed"
        return {**fields, field: np.frombuffer(" ".join(words).encode(), dtype=np.uint8)}

    return {"min_match": fp.MIN_MATCH, "bands": fp.BANDS, "digits": rates(images, pixel),
            LM_SCENARIO: rates(texts, word)}


def section(results: dict[str, Any], json_path: Path) -> str:
    """The ``## Reliability`` section of the report, between its markers."""
    lm, scan_result = results.get("lm_scan") or {}, results["scan"]
    lines = [
        START, "## Reliability", "",
        f"Produced by `{results['command']}` ({results['seconds'] / 60:.1f} min, disgorge {results['version']}, "
        f"{results['machine']['cpu']}, {results['machine']['cpu_count']} cores). Each kill copies a workspace with "
        f"`{SCENARIO}` ingested and trained, SIGKILLs `disgorge forget` (one source, finetune, 3 steps), `disgorge "
        f"train` (the default recipe) or `disgorge ingest` ({INGEST_ROWS} fresh records from an NPZ) after a "
        "delay drawn uniformly up to the command's uninterrupted duration, checks the ledger read-only and "
        "`disgorge doctor --json`, retries the command and runs `disgorge doctor --json` again. The erased-bytes "
        f"scan forgets one source{f' (and, on `{LM_SCENARIO}`, one person)' if lm else ''} and searches every file "
        "of the workspace, ledger and WAL included, for what was forgotten. Target: 0 for every figure but the "
        f"successes. Raw results: `{json_path}`.", "",
        "| figure | value | what it counts |", "|---|---:|---|"]
    for key, meaning in ROWS:
        value = results.get(key)
        shown = f"{value} / {results['concurrent_total']}" if key == "concurrent_ok" else \
            f"{value} / {results['trials']}" if key == "kills" else "not run" if value is None else str(value)
        lines.append(f"| {key} | {shown} | {meaning} |")
    per = results["per_operation"]
    lines += ["", "Per operation (committed: the kill came after the command's commit; orphans and pending erasure "
              "right after the kill are expected, and the retry must clear them):", "",
              "| operation | uninterrupted (s) | trials | kills | committed | inconsistent | orphans | failed "
              "retries | orphans after the kill | pending erasure after the kill |",
              "|---|" + "---:|" * 9]
    lines += [f"| {op} | {results['durations'][op]:.1f} | {c['trials']} | {c['kills']} | "
              f"{c['committed_before_kill']} | {c['inconsistent']} | {c['orphans']} | {c['failed_retries']} | "
              f"{c['orphans_after_kill']} | {c['pending_after_kill']} |" for op, c in per.items()]
    scanned = (f"Erased-bytes scan: `disgorge forget --source {scan_result['source']} {' '.join(SCAN_FORGET)}` "
               f"({scan_result['records']} records); before it the scan found their bytes in "
               f"{scan_result['control_hits_before']} (record, file) pairs "
               f"({', '.join(scan_result['control_files']) or 'no file'}), after it in {len(scan_result['hits'])} "
               f"(of {scan_result['files_scanned']} files).")
    if lm:
        scanned += (f" Language model: `{lm['scenario']}` ({lm['tokenizer']} tokenizer, default recipe), "
                    f"`--source {lm['source']}` forgotten with finetune (3 steps) and the same verification; the "
                    f"strings {', '.join(lm['needles'])} were found in {lm['control_hits_before']} (string, file) "
                    f"pairs before ({', '.join(lm['control_files']) or 'no file'}) and {len(lm['hits'])} after; that "
                    f"part took {lm['seconds'] / 60:.1f} min (training {lm['train_seconds']:.0f} s).")
    lines += ["", scanned]
    near = results.get("near_duplicates")
    if near:
        lines += ["", f"Near-duplicate tombstones ({near['bands']} keyed bands, refused at {near['min_match']} "
                  "shared with one erased record): a random half of each data set tombstoned, the other half "
                  "checked as a re-ingest would be.", "",
                  "| data | records | live records refused (false refusals) | erased records, edited, refused |",
                  "|---|---:|---:|---:|"]
        edits = {"digits": "one pixel +1/16 of the range", LM_SCENARIO: "one word changed"}
        lines += [f"| {name} | {r['records']} | {100 * r['false_refusal_rate']:.2f}% | "
                  f"{100 * r['edited_erased_refused']:.1f}% ({edits[name]}) |"
                  for name, r in near.items() if isinstance(r, dict)]
    lines += ["", END]
    return "\n".join(lines)


def write_report(path: Path, text: str) -> None:
    """Replace this script's section of the report, or append it; the rest of the file is left as it is."""
    from disgorge.report.benchmarks import write_section

    write_section(path, text, START, END)


# -- main ----------------------------------------------------------------------------------------------------------

def parse_args(argv: Sequence[str] | None = None) -> argparse.Namespace:
    """The command line."""
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--out", type=Path, default=Path("benchmarks/results"), help="folder for reliability.json")
    parser.add_argument("--report", type=Path, default=None, help="markdown report to write the section into")
    parser.add_argument("--kills", type=int, default=20, help="kills per operation (default 20)")
    parser.add_argument("--seed", type=int, default=0, help="seed of the delays, sources and records drawn")
    parser.add_argument("--operations", default=",".join(OPERATIONS),
                        help="comma-separated operations to kill (default: forget,train,ingest)")
    parser.add_argument("--no-lm", action="store_true", help="skip the language-model scan")
    parser.add_argument("--work", type=Path, default=None,
                        help="folder for the workspaces (default: a temporary folder, removed afterwards)")
    parser.add_argument("--timeout", type=float, default=1800.0, help="seconds after which a command is killed")
    parser.add_argument("--strict", action="store_true", help="exit 1 when a figure misses its target")
    parser.add_argument("--near-duplicates-only", action="store_true",
                        help="only measure the near-duplicate tombstones and add them to an existing reliability.json")
    parser.add_argument("-v", "--verbose", action="store_true", help="log every command")
    args = parser.parse_args(argv)
    args.operations = [op.strip() for op in args.operations.split(",") if op.strip()]
    unknown = sorted(set(args.operations) - set(OPERATIONS))
    if unknown:
        parser.error(f"--operations takes {', '.join(OPERATIONS)}, got {', '.join(unknown)}")
    if args.kills < 0:
        parser.error("--kills must be 0 or more")
    return args


def main(argv: Sequence[str] | None = None) -> int:
    """Run the probe, write the results and the report section; with ``--strict``, exit 1 when a target was
    missed."""
    args = parse_args(argv)
    logging.basicConfig(level=logging.DEBUG if args.verbose else logging.INFO,
                        format="%(asctime)s %(levelname)s %(message)s", datefmt="%H:%M:%S")
    if args.near_duplicates_only:
        path = args.out / "reliability.json"
        results = json.loads(path.read_text(encoding="utf-8"))
        results["near_duplicates"] = near_duplicate_rates(args.seed)
        path.write_text(json.dumps(results, indent=1) + "\n", encoding="utf-8")
        if args.report is not None:
            write_report(args.report, section(results, path))
        log.info("near-duplicate tombstones: %s", results["near_duplicates"])
        return 0
    command = "python benchmarks/reliability.py " + shlex.join(sys.argv[1:] if argv is None else argv)
    started = time.perf_counter()
    results: dict[str, Any] = {"command": command, "version": disgorge_version(), "machine": machine(),
                               "seed": args.seed, "kills_per_operation": args.kills}
    work = args.work or Path(tempfile.mkdtemp(prefix="disgorge-reliability-"))
    work.mkdir(parents=True, exist_ok=True)
    probe = Probe(Cli(disgorge_executable(), args.timeout), work, args.seed)
    log.info("workspaces in %s", work)
    try:
        probe.build_template()
        durations = {op: probe.measure(op) for op in args.operations}
        trials = [probe.kill_trial(op, i, durations[op]) for op in args.operations for i in range(args.kills)]
        results.update(totals(trials))
        results["durations"] = {op: round(s, 2) for op, s in durations.items()}
        results.update(probe.concurrency())
        results.update(probe.train_and_forget())
        results["near_duplicates"] = near_duplicate_rates(args.seed)
        scan_result = probe.scan_classifier()
        lm_result = None if args.no_lm else probe.scan_language_model()
    finally:
        if args.work is None:
            shutil.rmtree(probe.template, ignore_errors=True)
            probe.recipe.unlink(missing_ok=True)
            if any(work.iterdir()):
                log.info("left %s (workspaces kept for inspection)", work)
            else:
                work.rmdir()
    results.update({
        "erased_lm_strings_found": len(lm_result["hits"]) if lm_result else None,
        "erased_bytes_found": len(scan_result["hits"]) + (len(lm_result["hits"]) if lm_result else 0),
        "scan": scan_result, "lm_scan": lm_result, "timings": probe.timings,
        "trials_detail": [{**asdict(t), "inconsistent": t.inconsistent} for t in trials],
        "seconds": round(time.perf_counter() - started, 1)})
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / "reliability.json").write_text(json.dumps(results, indent=1) + "\n", encoding="utf-8")
    if args.report is not None:
        write_report(args.report, section(results, args.out / "reliability.json"))
    missed = [key for key in TARGETS if results.get(key)]
    missed += ["concurrent_ok"] if results["concurrent_ok"] != results["concurrent_total"] else []
    missed += [key for key in ("train_forget_ok", "concurrent_doctor_ok", "train_forget_doctor_ok")
               if not results[key]]
    log.info("reliability: %d kills of %d trials, %d inconsistent, %d orphans, %d failed retries; concurrent %d/%d "
             "(%d violations); train+forget violations %d; erased bytes found %d (LM strings %s); %.1f min; %s",
             results["kills"], results["trials"], results["inconsistent"], results["orphans"],
             results["failed_retries"], results["concurrent_ok"], results["concurrent_total"],
             results["concurrent_violations"], results["train_forget_violations"], results["erased_bytes_found"],
             results["erased_lm_strings_found"], results["seconds"] / 60,
             "all targets met" if not missed else "MISSED: " + ", ".join(missed))
    log.info("results in %s%s", args.out / "reliability.json", f"; report {args.report}" if args.report else "")
    return 1 if missed and args.strict else 0


if __name__ == "__main__":
    sys.exit(main())
