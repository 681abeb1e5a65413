"""What every command shares: one-line user errors with exit code 2, and the consoles."""

from __future__ import annotations

import functools

import typer
from rich.console import Console
from rich.text import Text

from .errors import UserError

console = Console()
err_console = Console(stderr=True)


def fail(message: str, code: int = 2) -> None:
    """Print `error: <message>` as one red line on stderr and exit with `code`."""
    err_console.print(Text(f"error: {message}", style="red"), soft_wrap=True, highlight=False)
    raise typer.Exit(code)


def user_errors(fn):
    """Turn UserError into a one-line message and exit code 2 (no traceback); Ctrl-C into exit 130."""

    @functools.wraps(fn)
    def wrapper(*args, **kwargs):
        try:
            return fn(*args, **kwargs)
        except UserError as err:
            fail(str(err))
        except KeyboardInterrupt:
            err_console.print("[yellow]interrupted[/] — resume a run with `--resume RUN`")
            raise typer.Exit(130) from None

    return wrapper
