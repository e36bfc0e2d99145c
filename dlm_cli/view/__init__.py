"""Consumers of the event stream that show a generation: live canvas, plain streaming text, none.

:func:`show` drives the events through the chosen view and returns the canvas, also after Ctrl-C
or a closed pipe (``Shown.interrupted``), so the caller can keep what was already committed.
"""

from __future__ import annotations

import json
import signal
import threading
from contextlib import contextmanager
from dataclasses import asdict, dataclass
from typing import IO, Any, Iterable, Iterator

from ..decode.events import Event, Start
from ..errors import INTERRUPTS
from .canvas import Canvas
from .detok import StreamingText


@dataclass
class Shown:
    canvas: Canvas
    interrupted: bool = False
    trace_error: str | None = None  # why --trace stopped early (the OS error)
    cause: BaseException | None = None  # the KeyboardInterrupt (or SIGTERM's Terminated) that stopped it
    streamed: str = ""  # text already written to stdout by the plain view


@contextmanager
def interrupts_held() -> Iterator[None]:
    """Hold SIGINT and SIGTERM for the block; one that arrives meanwhile is delivered after it."""
    held = {signal.SIGINT, signal.SIGTERM}
    if not hasattr(signal, "pthread_sigmask") or threading.current_thread() is not threading.main_thread():
        yield
        return
    old = signal.pthread_sigmask(signal.SIG_BLOCK, held)
    try:
        yield
    finally:
        signal.pthread_sigmask(signal.SIG_SETMASK, old)


class PlainStream:
    """Writes text to ``out`` as soon as it is final (committed, left of every mask)."""

    def __init__(self, canvas: Canvas, out: IO[str]) -> None:
        self.canvas, self.out = canvas, out
        self.written = ""
        self.stream = StreamingText(canvas.tokenizer)

    def update(self) -> None:
        text = self.stream.text(self.canvas.final_tokens())
        # A trailing replacement char may be half of a multi-byte character: wait for the rest.
        text = text.rstrip("\ufffd")
        if len(text) > len(self.written) and text.startswith(self.written):
            with interrupts_held():  # a Ctrl-C here must not separate writing a piece from recording it
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
    stream: bool = False,
) -> Shown:
    """Consume ``events`` into ``canvas`` with the ``view`` ("live", "plain" or "none").

    ``stream`` also writes the final text to ``out`` as it becomes final, whatever the view (stdout
    is a pipe: ``| head -c 20`` gets its bytes, and a closed pipe stops the generation, at once)."""
    shown = Shown(canvas)
    plain = PlainStream(canvas, out) if view == "plain" or stream else None
    live = None
    if view == "live":
        from .live import LiveView

        live = LiveView(canvas, err_console, color_by=color_by, transient=transient, pace=pace)
        live.__enter__()
    try:
        for event in events:
            canvas.apply(event)
            if isinstance(event, Start) and err_console is not None:
                for note in event.notes:
                    err_console.print(f"dlm: warning: {note}", markup=False, highlight=False)
            if trace is not None:
                try:
                    trace.write(json.dumps({"event": type(event).__name__, **asdict(event)}) + "\n")
                    trace.flush()
                except OSError as exc:  # a full disk: stop tracing, keep generating
                    shown.trace_error = str(exc.strerror or exc)
                    trace = None
            if live is not None:
                live.update()
            if plain is not None:
                plain.update()
    except INTERRUPTS as exc:
        shown.interrupted, shown.cause = True, exc
    finally:
        if live is not None:
            live.__exit__(None, None, None)
        if plain is not None:
            shown.streamed = plain.written
    return shown
