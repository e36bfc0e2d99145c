"""The console that rich tables print to: a terminal's width, or unbounded into a file or a pipe.

A file has no width. Rich assumes 80 columns there and crops or folds cells to fit (`ba… sp…`, a
note one character per line); a table written to a file, a log or another program is laid out at
its natural width instead, every cell whole.
"""

from __future__ import annotations

from rich.console import Console

UNBOUNDED = 100_000  # columns: wider than any row, so a table takes its natural width


def table_console(*, stderr: bool = False) -> Console:
    """A console for tables on stdout (or stderr): wrapped to a terminal, never cropped elsewhere."""
    console = Console(stderr=stderr, highlight=False, soft_wrap=False)
    if console.is_terminal:
        return console
    return Console(stderr=stderr, highlight=False, soft_wrap=False, width=UNBOUNDED)


def count(n: int, noun: str) -> str:
    """``1 prompt``, ``3 prompts``: the counts in table titles."""
    return f"{n} {noun}" if n == 1 else f"{n} {noun}s"
