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


def say(kind: str, message: str) -> None:
    """One informational line on stderr: ``dlm: note: ...`` or ``dlm: warning: ...``; bare ``dlm: ...``
    lines are errors."""
    try:
        sys.stderr.write(f"dlm: {kind}: {message}\n")
        sys.stderr.flush()
    except (OSError, ValueError):
        pass


def note(message: str) -> None:
    say("note", message)


def warning(message: str) -> None:
    say("warning", message)


def silence_stdout() -> None:
    """After a closed pipe, point stdout at /dev/null so Python's exit-time flush stays quiet."""
    try:
        devnull = os.open(os.devnull, os.O_WRONLY)
        os.dup2(devnull, sys.stdout.fileno())
    except (OSError, ValueError):
        pass


INTERRUPTED = 130
TERMINATED = 143  # 128 + SIGTERM, what a shell reports for a process ended by `kill` or `timeout`


class Interrupted(BaseException):
    """Ctrl-C (SIGINT, exit 130) or SIGTERM (exit 143: timeout, systemd, CI), raised by dlm's own handlers.

    Not a KeyboardInterrupt: typer turns that into a silent exit 130, and dlm wants one line saying
    what it kept. A BaseException, so that no ``except Exception`` swallows it.
    """

    def __init__(self, code: int = INTERRUPTED) -> None:
        super().__init__(code)
        self.code = code


INTERRUPTS = (KeyboardInterrupt, Interrupted)


def interrupt_code(exc: BaseException | None) -> int:
    return exc.code if isinstance(exc, Interrupted) else INTERRUPTED


def interrupt_word(exc: BaseException | None) -> str:
    return "terminated (SIGTERM)" if interrupt_code(exc) == TERMINATED else "interrupted"


def handle_interrupts() -> dict:
    """From now on SIGINT and SIGTERM raise :class:`Interrupted` in the main thread; returns the old handlers."""
    import signal

    def handler(signum: int, frame: object) -> None:
        raise Interrupted(TERMINATED if signum == signal.SIGTERM else INTERRUPTED)

    old = {}
    for sig in (signal.SIGINT, signal.SIGTERM):
        try:
            if signal.getsignal(sig) is not signal.SIG_IGN:  # a shell's background job keeps ignoring Ctrl-C
                old[sig] = signal.signal(sig, handler)
        except (ValueError, OSError):  # not the main thread
            pass
    return old


def restore_interrupts(old: dict) -> None:
    import signal

    for sig, handler in old.items():
        try:
            signal.signal(sig, handler)
        except (ValueError, OSError, TypeError):
            pass
