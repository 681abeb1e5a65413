"""What a long command prints when Ctrl-C stops it: what was kept, and the exact command that continues it.

Every command that can continue after an interruption (`pretrain` / `train-generator`
from their last checkpoint, `evaluate` from its finished cells, `synthesize` from its
finished pairs) ends with the same line, so a user learns one form:

    interrupted: <what was kept>; continue it with `<command>`

The command is printed ready to paste: every argument is quoted for a POSIX shell
(`shlex.quote`), so a path with spaces still names one argument.
"""

from __future__ import annotations

import shlex
from collections.abc import Sequence

from rich.console import Console
from rich.text import Text


def command_line(args: Sequence[str]) -> str:
    """`genbackbones ARGS` as a shell line (ARGS: what follows the program name, e.g. sys.argv[1:])."""
    return shlex.join(["genbackbones", *[str(a) for a in args]])


def interrupted_message(kept: str, command: str) -> str:
    return f"interrupted: {kept}; continue it with `{command}`"


def print_interrupted(console: Console, kept: str, command: str) -> None:
    """The one interruption line on `console` (no markup is read from the paths in it; never wrapped)."""
    text = Text(interrupted_message(kept, command))
    text.stylize("yellow", 0, len("interrupted"))
    console.print(text, highlight=False, soft_wrap=True)
