"""Consumers of the event stream that show a generation: live canvas, plain streaming text, none.

:func:`show` drives the events through the chosen view and returns the canvas, also after Ctrl-C
or a closed pipe (``Shown.interrupted``), so the caller can keep what was already committed.
"""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass
from typing import IO, Any, Iterable

from ..decode.events import Event
from .canvas import Canvas


@dataclass
class Shown:
    canvas: Canvas
    interrupted: bool = False
    streamed: str = ""  # text already written to stdout by the plain view


class PlainStream:
    """Writes text to ``out`` as soon as it is final (committed, left of every mask)."""

    def __init__(self, canvas: Canvas, out: IO[str]) -> None:
        self.canvas, self.out = canvas, out
        self.written = ""

    def update(self) -> None:
        text = self.canvas.final_text()
        # A trailing replacement char may be half of a multi-byte character: wait for the rest.
        text = text.rstrip("\ufffd")
        if len(text) > len(self.written) and text.startswith(self.written):
            self.out.write(text[len(self.written):])
            self.out.flush()
            self.written = text


def show(
    events: Iterable[Event],
    canvas: Canvas,
    *,
    view: str,
    out: IO[str],
    err_console: Any = None,
    color_by: str = "confidence",
    transient: bool = True,
    pace: float = 0.0,
    trace: IO[str] | None = None,
) -> Shown:
    """Consume ``events`` into ``canvas`` with the ``view`` ("live", "plain" or "none")."""
    shown = Shown(canvas)
    plain = PlainStream(canvas, out) if view == "plain" else None
    live = None
    if view == "live":
        from .live import LiveView

        live = LiveView(canvas, err_console, color_by=color_by, transient=transient, pace=pace)
        live.__enter__()
    try:
        for event in events:
            canvas.apply(event)
            if trace is not None:
                trace.write(json.dumps({"event": type(event).__name__, **asdict(event)}) + "\n")
                trace.flush()
            if live is not None:
                live.update()
            elif plain is not None:
                plain.update()
    except KeyboardInterrupt:
        shown.interrupted = True
    finally:
        if live is not None:
            live.__exit__(None, None, None)
        if plain is not None:
            shown.streamed = plain.written
    return shown
