"""The one exception type users see.

Anything the user can fix (bad recipe, missing checkpoint, shape mismatch, bad
dataset row) is raised as `UserError` with a one-line message that names the
problem and the fix. The CLI prints it without a traceback and exits with code 2.
"""

from __future__ import annotations


class UserError(Exception):
    """A problem with the user's input; the message says what and how to fix it."""

    exit_code = 2
