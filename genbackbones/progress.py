"""Progress inside one long piece of work (an evaluation cell, an extractor's training), on any stderr.

On a terminal it is a rich bar that disappears when the piece ends (the line that
reports the piece's result takes its place). Anywhere else (a log file, CI, `nohup`)
a bar would be one redrawn line or nothing at all, so a plain line is printed at most
every PROGRESS_SECONDS (default 10 s, the environment variable GENBACKBONES_PROGRESS_SECONDS
changes it; 0 prints every update), never wrapped:

    [2/12] imagenet (resnet18.a1_in1k) · 16 labels · seed 0: 120/400 steps (30%)

Why the training loop's own progress (engine/loop.py) is not reused: that one is a
whole run's bar with its metrics; these are short pieces inside a command that prints
its own result line per piece.
"""

from __future__ import annotations

import contextlib
import os
import time
from collections.abc import Callable, Iterator

from rich.console import Console
from rich.text import Text

PROGRESS_SECONDS_ENV = "GENBACKBONES_PROGRESS_SECONDS"
DEFAULT_SECONDS = 10.0


def _interval() -> float:
    try:
        return max(0.0, float(os.environ.get(PROGRESS_SECONDS_ENV, DEFAULT_SECONDS)))
    except ValueError:
        return DEFAULT_SECONDS


@contextlib.contextmanager
def piece_progress(console: Console, description: str) -> Iterator[Callable[[int, int, str], None]]:
    """Yields `update(done, total, unit)`; a bar on a terminal, else a plain line at most every interval."""
    if console.is_terminal:
        from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeRemainingColumn

        columns = [TextColumn("{task.description}", markup=False), BarColumn(), MofNCompleteColumn(),
                   TextColumn("{task.fields[unit]}", markup=False), TimeRemainingColumn()]
        with Progress(*columns, console=console, transient=True) as bar:
            task = bar.add_task(description, total=None, unit="")

            def update(done: int, total: int, unit: str) -> None:
                bar.update(task, completed=done, total=total, unit=unit)

            yield update
        return
    interval, last = _interval(), time.monotonic()

    def update(done: int, total: int, unit: str) -> None:
        nonlocal last
        now = time.monotonic()
        if now - last >= interval:
            last = now
            percent = f" ({100 * done // total}%)" if total else ""
            console.print(Text(f"{description}: {done}/{total} {unit}{percent}"), highlight=False, soft_wrap=True)

    yield update
