"""Progress bars for long work (rich), shown only on an interactive terminal unless forced."""

from __future__ import annotations

import os
import sys
from collections.abc import Iterator
from contextlib import contextmanager

from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

_console = Console(stderr=True)


def enabled() -> bool:
    """Bars are drawn when stderr is a terminal; DISGORGE_PROGRESS=0/1 forces it off/on."""
    flag = os.environ.get("DISGORGE_PROGRESS")
    if flag is not None:
        return flag not in ("0", "", "false", "no")
    return sys.stderr.isatty()


class _Bar:
    def __init__(self, progress: Progress | None, task: int | None) -> None:
        self._p, self._t = progress, task

    def advance(self, n: int = 1, **fields: object) -> None:
        if self._p is not None:
            self._p.update(self._t, advance=n, **fields)


@contextmanager
def bar(description: str, total: int | None) -> Iterator[_Bar]:
    """A transient progress bar; a no-op when bars are disabled."""
    if not enabled():
        yield _Bar(None, None)
        return
    with Progress(TextColumn("[bold]{task.description}"), BarColumn(), MofNCompleteColumn(),
                  TextColumn("{task.fields[info]}"), TimeElapsedColumn(), console=_console,
                  transient=True) as progress:
        yield _Bar(progress, progress.add_task(description, total=total, info=""))


@contextmanager
def hugging_face_bars() -> Iterator[None]:
    """Hugging Face's own progress bars (reading and writing weights) shown only where disgorge shows its bars, so
    that a command's output stays its own lines (every model a verification builds would print one otherwise)."""
    if enabled():
        yield
        return
    from transformers.utils import logging as hf_logging

    shown = hf_logging.is_progress_bar_enabled()
    hf_logging.disable_progress_bar()
    try:
        yield
    finally:
        if shown:
            hf_logging.enable_progress_bar()
