"""What every command shares: the consoles and the one-line error format."""

from __future__ import annotations

from rich.console import Console
from rich.text import Text

console = Console()
err_console = Console(stderr=True)


def fail(message: str, code: int = 2) -> None:
    """Print `error: <message>` as one red line on stderr and exit with `code` (the root group's handler)."""
    err_console.print(Text(f"error: {message}", style="red"), soft_wrap=True, highlight=False)
    raise SystemExit(code)


def print_copyable(text: str, stderr: bool = False) -> None:
    """A line users copy (a timm call, a path): never wrapped, no markup, no highlighting."""
    (err_console if stderr else console).print(text, markup=False, highlight=False, soft_wrap=True, emoji=False)
