"""The server's one decoding worker: a bounded queue of jobs, decoded one at a time off the event loop.

Batch size 1. A job is one prompt's event stream (:func:`dlm_cli.decode.run`); the worker thread
drives it through a :class:`~dlm_cli.view.canvas.Canvas` and the plain view's
:class:`~dlm_cli.view.PlainStream`, so a client gets the final text exactly as ``--view plain``
writes it, and hands every piece (and, for ``dlm_steps``, every event) to the request's asyncio
queue. A job whose client left is stopped at its next event; a full queue refuses new jobs.
"""

from __future__ import annotations

import asyncio
import queue
import sys
import threading
import time
import traceback
from dataclasses import asdict, dataclass, field
from typing import Any, Callable, Iterator

from ..decode.events import Done, Draft, Event, Start, Step, Verify
from ..errors import USAGE, DlmError
from ..view import PlainStream
from ..view.canvas import Canvas


class QueueFull(Exception):
    """Every slot of the queue holds a waiting request."""


@dataclass
class Piece:
    """Text that became final (and is before any stop string)."""

    text: str


@dataclass
class Started:
    """The decoder yielded its first event: the request will be answered."""


@dataclass
class StepEvent:
    """One decoder event as JSON (``dlm_steps``), token pieces included."""

    payload: dict[str, Any]


@dataclass
class Result:
    text: str
    finish_reason: str  # OpenAI's words: "stop" (an end token or a stop string) or "length"
    prompt_tokens: int
    completion_tokens: int
    nfe: int
    steps: int
    seconds: float
    ttft_seconds: float | None
    seed: int | None
    stats: dict[str, Any] = field(default_factory=dict)


@dataclass
class Finished:
    result: Result


@dataclass
class Failed:
    status: int
    message: str


@dataclass
class Cancelled:
    """The client left; decoding stopped at ``steps`` steps, ``nfe`` forwards."""

    steps: int
    nfe: int


def cut(text: str, stops: tuple[str, ...]) -> tuple[str, bool]:
    """``text`` before its first stop string, and whether there was one."""
    at = [i for i in (text.find(s) for s in stops if s) if i >= 0]
    return (text[: min(at)], True) if at else (text, False)


class StopText:
    """Final text cut before the first stop string; a tail that could begin one is held back until it cannot."""

    def __init__(self, stops: tuple[str, ...]) -> None:
        self.stops = tuple(s for s in stops if s)
        self.text = ""
        self.sent = 0
        self.hit = False

    def feed(self, new: str) -> str:
        """Add final text; returns what may be sent now."""
        if self.hit:
            return ""
        self.text, self.hit = cut(self.text + new, self.stops)
        if self.hit:
            return self.flush()
        hold = max((k for s in self.stops for k in range(1, len(s)) if self.text.endswith(s[:k])), default=0)
        out = self.text[self.sent : len(self.text) - hold]
        self.sent += len(out)
        return out

    def flush(self) -> str:
        out = self.text[self.sent :]
        self.sent = len(self.text)
        return out


class _Sink:
    """The file PlainStream writes to: final text goes through the stop strings to the job."""

    def __init__(self, job: "Job", stop: StopText) -> None:
        self.job, self.stop = job, stop

    def write(self, text: str) -> None:
        out = self.stop.feed(text)
        if out:
            self.job.put(Piece(out))

    def flush(self) -> None:
        pass


@dataclass(eq=False)
class Job:
    """One request: how to start its decode, what to send, and where to send it.

    ``build`` runs on the worker thread (the chat template's bounded render caps the process's
    address space for a moment, which must not overlap a decode) and returns the events (not
    started), the prompt's length in tokens and the run's seed; a DlmError it raises is the
    request's 400.
    """

    build: Callable[[], tuple[Iterator[Event], int, int | None]]
    loop: asyncio.AbstractEventLoop
    stops: tuple[str, ...] = ()
    steps: bool = False  # also send every event
    out: asyncio.Queue = field(default_factory=asyncio.Queue)
    cancelled: threading.Event = field(default_factory=threading.Event)
    prompt_tokens: int = 0
    seed: int | None = None

    def put(self, item: Any) -> None:
        self.loop.call_soon_threadsafe(self.out.put_nowait, item)

    def cancel(self) -> None:
        self.cancelled.set()


def event_payload(event: Event, canvas: Canvas, seen: set[int]) -> dict[str, Any]:
    """``event`` as JSON, with the text of each token id this stream has not shown yet (``pieces``)."""
    data: dict[str, Any] = {"event": type(event).__name__, **asdict(event)}
    ids: list[int] = []
    if isinstance(event, Step):
        ids = [*event.tokens, *event.edited_tokens, *([event.filled_token] if event.filled_token is not None else [])]
    elif isinstance(event, Draft):
        ids = list(event.tokens)
    elif isinstance(event, Verify):
        ids = [*event.accepted_tokens, *(t for t in (event.correction, event.bonus) if t is not None)]
    elif isinstance(event, Done):
        data["stats"] = event.stats()
        del data["extra"]
    new = {t for t in ids if t not in seen}
    seen.update(new)
    data["pieces"] = {str(t): canvas.piece(t) for t in sorted(new)}
    if isinstance(event, Start):
        data["eos_ids"] = sorted(canvas.eos_ids)
    return data


class Engine:
    """The served model (and draft), the queue, and the worker thread that decodes."""

    def __init__(self, session: Any, *, queue_size: int, model_spec: str | None = None) -> None:
        self.session = session  # the run session (:mod:`dlm_cli.session`): every request's settings and checks
        self.model, self.draft, self.profile = session.model, session.draft, session.profile
        self.model_spec = model_spec
        self.queue_size = queue_size
        self.jobs: queue.Queue[Job | None] = queue.Queue(maxsize=queue_size)
        self.current: Job | None = None
        self.counts = {"served": 0, "cancelled": 0, "rejected": 0, "failed": 0}
        self.last: dict[str, Any] | None = None  # how the last job ended
        self._lock = threading.Lock()
        self.thread = threading.Thread(target=self._work, name="dlm-decode", daemon=True)
        self.thread.start()

    def submit(self, job: Job) -> None:
        try:
            self.jobs.put_nowait(job)
        except queue.Full:
            with self._lock:
                self.counts["rejected"] += 1
            raise QueueFull from None

    def status(self) -> dict[str, Any]:
        with self._lock:
            return {"model": self.model.info.name, "profile": self.profile, "batch_size": 1,
                    "queue_size": self.queue_size, "waiting": self.jobs.qsize(), "busy": self.current is not None,
                    **self.counts, "last": self.last}

    def close(self) -> None:
        """Stop the running job and every waiting one, then the worker."""
        current = self.current
        if current is not None:
            current.cancel()
        while True:
            try:
                job = self.jobs.get_nowait()
            except queue.Empty:
                break
            if job is not None:
                job.cancel()
                job.put(Cancelled(0, 0))
        try:
            self.jobs.put_nowait(None)
        except queue.Full:
            pass

    def _end(self, outcome: str, **info: Any) -> None:
        with self._lock:
            self.counts[outcome] += 1
            self.last = {"outcome": outcome, **info}

    def _work(self) -> None:
        while True:
            job = self.jobs.get()
            if job is None:
                return
            with self._lock:
                self.current = job
            try:
                if job.cancelled.is_set():  # the client left while it waited
                    self._end("cancelled", steps=0, nfe=0)
                    job.put(Cancelled(0, 0))
                else:
                    self._decode(job)
            except DlmError as exc:
                self._end("failed", message=str(exc))
                job.put(Failed(400 if exc.exit_code == USAGE else 500, str(exc)))
            except Exception as exc:  # the worker outlives one broken decode; the client gets a 500
                traceback.print_exc(file=sys.stderr)
                self._end("failed", message=f"{type(exc).__name__}: {exc}")
                job.put(Failed(500, f"decoding failed: {type(exc).__name__}: {exc}"))
            finally:
                with self._lock:
                    self.current = None

    def _decode(self, job: Job) -> None:
        tokenizer = self.model.tokenizer
        canvas = Canvas(tokenizer, self.model.eos_ids)
        stop = StopText(job.stops)
        plain = PlainStream(canvas, _Sink(job, stop))
        seen: set[int] = set()
        events, job.prompt_tokens, job.seed = job.build()
        begun = time.perf_counter()
        try:
            for event in events:
                if job.cancelled.is_set():
                    self._end("cancelled", steps=canvas.step + 1, nfe=canvas.nfe)
                    job.put(Cancelled(canvas.step + 1, canvas.nfe))
                    return
                canvas.apply(event)
                if isinstance(event, Start):
                    job.put(Started())
                if job.steps:
                    job.put(StepEvent(event_payload(event, canvas, seen)))
                plain.update()
                if stop.hit:
                    break
        finally:
            close = getattr(events, "close", None)
            if close is not None:
                close()
        done = canvas.done
        if stop.hit or done is None:  # a stop string ended it
            kept = canvas.final_tokens()
            result = Result(stop.text, "stop", job.prompt_tokens, len(kept), canvas.nfe, canvas.step + 1,
                            time.perf_counter() - begun, None, job.seed)
        else:
            text = tokenizer.decode(done.tokens, skip_special_tokens=True)
            # The rest of the text, as `dlm generate` writes it after its stream; should token editing
            # have rewritten text already sent, the stream keeps what it sent.
            rest = stop.feed(text[len(plain.written):]) if text.startswith(plain.written) else ""
            rest += stop.flush()
            if rest:
                job.put(Piece(rest))
            final, hit = cut(text, job.stops)
            reason = "stop" if hit or done.finish_reason in ("eos", "repetition") else "length"
            result = Result(final, reason, job.prompt_tokens, len(done.tokens), done.nfe, done.steps, done.seconds,
                            done.ttft_seconds, job.seed, done.stats())
        self._end("served", steps=result.steps, nfe=result.nfe, finish_reason=result.finish_reason)
        job.put(Finished(result))
