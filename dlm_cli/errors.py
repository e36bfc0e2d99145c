"""The one error type a user can cause. The CLI turns it into one stderr line and an exit code."""

from __future__ import annotations

import os
import sys

USAGE = 2
RUNTIME = 1


class DlmError(Exception):
    """A problem the user can fix. ``str(err)`` is one line saying what was wrong and how to fix it."""

    def __init__(self, message: str, *, exit_code: int = RUNTIME) -> None:
        super().__init__(message)
        self.exit_code = exit_code


class UsageError(DlmError):
    """Bad flags, profile keys or values: exit code 2."""

    def __init__(self, message: str) -> None:
        super().__init__(message, exit_code=USAGE)


def silence_stdout() -> None:
    """After a closed pipe, point stdout at /dev/null so Python's exit-time flush stays quiet."""
    try:
        devnull = os.open(os.devnull, os.O_WRONLY)
        os.dup2(devnull, sys.stdout.fileno())
    except (OSError, ValueError):
        pass
