"""The one exception type users see.

Anything the user can fix (bad recipe, missing checkpoint, shape mismatch, bad
dataset row) is raised as `UserError` with a one-line message that names the
problem and the fix. The CLI prints it without a traceback and exits with code 2.
"""

from __future__ import annotations


class UserError(Exception):
    """A problem with the user's input; the message says what and how to fix it."""

    exit_code = 2


class RecipeValueError(ValueError):
    """Raised by a recipe section's `check()`: (key within the section, what is wrong); the loader adds the file."""

    def __init__(self, key: str, message: str):
        super().__init__(key, message)
        self.key, self.message = key, message


def require(condition: bool, key: str, message: str) -> None:
    """For the `check()` of a recipe section: an impossible value is named by its key."""
    if not condition:
        raise RecipeValueError(key, message)


KIND_WORDS = {int: "an integer", float: "a number", bool: "true or false", str: "text"}


def kind_words(kind: type) -> str:
    """What a value of `kind` is called in a message: 'expected an integer' (not 'expected a int')."""
    return KIND_WORDS.get(kind, f"a {getattr(kind, '__name__', kind)}")


def plural(n: int, word: str) -> str:
    """'1 seed', '3 seeds'."""
    return f"{n} {word}{'' if n == 1 else 's'}"


def first_line(err: BaseException, limit: int = 150) -> str:
    """An exception as one short line for a UserError message (its first non-empty line, or its type's name)."""
    lines = [line.strip() for line in str(err).splitlines() if line.strip()]
    return (lines[0] if lines else type(err).__name__)[:limit]
