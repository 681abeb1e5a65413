"""What every command shares: the consoles and the one-line error format."""

from __future__ import annotations

import os

from rich.console import Console
from rich.text import Text

# every command that takes a generator takes these (generators/open.py: one vocabulary)
GENERATOR_SOURCE_HELP = ("bundled, random:<preset>, a generator folder, an NVIDIA .pkl, a rosinality .pt, or "
                         "hf-hub:org/name.")

console = Console()
# rich wraps at 80 columns when stderr is not a terminal (a log, CI, a pipe): a message naming a long path broke
# mid-path, and a command printed to be pasted broke in two; stderr lines are never wrapped
err_console = Console(stderr=True, soft_wrap=True)


def fail(message: str, code: int = 2) -> None:
    """Print `error: <message>` as one red line on stderr and exit with `code` (the root group's handler)."""
    err_console.print(Text(f"error: {message}", style="red"), soft_wrap=True, highlight=False)
    raise SystemExit(code)


def is_main_process() -> bool:
    """Whether this process prints a command's result lines.

    Under torchrun / `accelerate launch` every process runs the whole command; the run itself
    logs from the main process only, and the lines it ends with must appear once, not once per
    process. Both launchers set RANK.
    """
    return os.environ.get("RANK", "0") == "0"


def print_copyable(text: str, stderr: bool = False) -> None:
    """A line users copy (a timm call, a path): never wrapped, no markup, no highlighting."""
    (err_console if stderr else console).print(text, markup=False, highlight=False, soft_wrap=True, emoji=False)
