"""The server's one decoding worker: a bounded queue of jobs, decoded off the event loop.

At batch size 1 a job is one prompt's event stream (:func:`dlm_cli.decode.run`), decoded alone; with
``--max-batch N`` up to N jobs are rows of one running batch (:func:`dlm_cli.decode.batch.new_engine`: a dLLM's or an AR model's)
that a job joins at the next step and leaves when it ends. Either way the worker thread drives each
job's events through a :class:`~dlm_cli.view.canvas.Canvas` and the plain view's
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
from typing import Any, Callable

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
    address space for a moment, which must not overlap a decode) and returns the prompt's ids and
    the run's settings, checked; a DlmError it raises is the request's 400.
    """

    build: Callable[[], tuple[list[int], Any]]
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


class _Stream:
    """One job's consumer of its events: the canvas, the plain view's final text through the stop strings,
    the step events; :meth:`result` is the answer once the events end (or a stop string ended them)."""

    def __init__(self, job: Job, model: Any) -> None:
        self.job, self.tokenizer = job, model.tokenizer
        self.canvas = Canvas(self.tokenizer, model.eos_ids)
        self.stop = StopText(job.stops)
        self.plain = PlainStream(self.canvas, _Sink(job, self.stop))
        self.seen: set[int] = set()
        self.begun = time.perf_counter()

    def feed(self, event: Event) -> bool:
        """Send what ``event`` makes final; True when a stop string ended the answer."""
        job = self.job
        self.canvas.apply(event)
        if isinstance(event, Start):
            job.put(Started())
        if job.steps:
            job.put(StepEvent(event_payload(event, self.canvas, self.seen)))
        self.plain.update()
        return self.stop.hit

    def cancelled(self) -> Cancelled:
        return Cancelled(self.canvas.step + 1, self.canvas.nfe)

    def result(self) -> Result:
        job, canvas, stop = self.job, self.canvas, self.stop
        done = canvas.done
        if stop.hit or done is None:  # a stop string ended it
            kept = canvas.final_tokens()
            return Result(stop.text, "stop", job.prompt_tokens, len(kept), canvas.nfe, canvas.step + 1,
                          time.perf_counter() - self.begun, None, job.seed)
        text = self.tokenizer.decode(done.tokens, skip_special_tokens=True)
        # The rest of the text, as `dlm generate` writes it after its stream; should token editing
        # have rewritten text already sent, the stream keeps what it sent.
        written = self.plain.written
        rest = stop.feed(text[len(written):]) if text.startswith(written) else ""
        rest += stop.flush()
        if rest:
            job.put(Piece(rest))
        final, hit = cut(text, job.stops)
        reason = "stop" if hit or done.finish_reason in ("eos", "repetition") else "length"
        return Result(final, reason, job.prompt_tokens, len(done.tokens), done.nfe, done.steps, done.seconds,
                      done.ttft_seconds, job.seed, done.stats())


class Engine:
    """The served model (and draft), the queue, and the worker thread that decodes.

    ``max_batch`` 1: one job at a time. Above 1 (a dLLM whose default profile the batched decoder runs,
    :mod:`dlm_cli.decode.batch`), up to ``max_batch`` jobs decode together: a job joins the running batch
    at its next step and leaves when it ends (first done, first out); a job whose settings the batch
    cannot take waits until the batch is empty and then decodes alone. ``note`` says why a
    ``max_batch`` above 1 fell back to 1.
    """

    def __init__(self, session: Any, *, queue_size: int, model_spec: str | None = None, max_batch: int = 1) -> None:
        self.session = session  # the run session (:mod:`dlm_cli.session`): every request's settings and checks
        self.model, self.draft, self.profile = session.model, session.draft, session.profile
        self.model_spec = model_spec
        self.queue_size = queue_size
        self.max_batch, self.note = max_batch, None
        self.cache = "none"
        if max_batch > 1:
            from ..decode.batch import check_batchable
            from ..errors import UsageError

            cfg = (session.settings or session.settings_for()).frozen()
            try:
                check_batchable(self.model, cfg, f"--max-batch {max_batch}")
                self.cache = getattr(cfg, "cache", "none")
            except UsageError as exc:
                self.max_batch = 1
                how = " (dlm serve reads keys from a profile: -p FILE.toml)" if "--set" in str(exc) else ""
                self.note = f"{exc}{how}; serving profile {self.profile} at batch size 1"
        self.jobs: queue.Queue[Job | None] = queue.Queue(maxsize=queue_size)
        self.running: set[Job] = set()
        self.counts = {"served": 0, "cancelled": 0, "rejected": 0, "failed": 0}
        self.last: dict[str, Any] | None = None  # how the last job ended
        self._lock = threading.Lock()
        work = self._work if self.max_batch == 1 else self._work_batched
        self.thread = threading.Thread(target=work, name="dlm-decode", daemon=True)
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
            return {"model": self.model.info.name, "profile": self.profile, "batch_size": self.max_batch,
                    "queue_size": self.queue_size, "waiting": self.jobs.qsize(), "busy": bool(self.running),
                    "running": len(self.running), **self.counts, "last": self.last}

    def close(self) -> None:
        """Stop the running jobs and every waiting one, then the worker."""
        with self._lock:
            running = list(self.running)
        for job in running:
            job.cancel()
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

    def _end(self, outcome: str, job: Job | None = None, **info: Any) -> None:
        with self._lock:
            self.counts[outcome] += 1
            self.last = {"outcome": outcome, **info}
            self.running.discard(job)  # type: ignore[arg-type]

    def _fail(self, job: Job, exc: Exception) -> None:
        if isinstance(exc, DlmError):
            self._end("failed", job, message=str(exc))
            job.put(Failed(400 if exc.exit_code == USAGE else 500, str(exc)))
            return
        # The worker outlives one broken decode; the client gets a 500.
        traceback.print_exception(exc, file=sys.stderr)
        self._end("failed", job, message=f"{type(exc).__name__}: {exc}")
        job.put(Failed(500, f"decoding failed: {type(exc).__name__}: {exc}"))

    def _served(self, job: Job, stream: _Stream) -> None:
        result = stream.result()
        self._end("served", job, steps=result.steps, nfe=result.nfe, finish_reason=result.finish_reason)
        job.put(Finished(result))

    def _cancelled(self, job: Job, how: Cancelled) -> None:
        self._end("cancelled", job, steps=how.steps, nfe=how.nfe)
        job.put(how)

    def _build(self, job: Job) -> tuple[list[int], Any]:
        ids, settings = job.build()
        job.prompt_tokens = len(ids)
        return ids, settings

    # -- batch size 1 -----------------------------------------------------------------------
    def _work(self) -> None:
        while True:
            job = self.jobs.get()
            if job is None:
                return
            with self._lock:
                self.running.add(job)
            try:
                if job.cancelled.is_set():  # the client left while it waited
                    self._cancelled(job, Cancelled(0, 0))
                else:
                    self._decode(job, *self._build(job))
            except Exception as exc:
                self._fail(job, exc)

    def _decode(self, job: Job, ids: list[int], settings: Any) -> None:
        """One job alone, from its first event to its answer."""
        from ..decode import run

        events = run(self.model, ids, settings, draft=self.draft)
        job.seed = settings.seed
        stream = _Stream(job, self.model)
        try:
            for event in events:
                if job.cancelled.is_set():
                    self._cancelled(job, stream.cancelled())
                    return
                if stream.feed(event):
                    break
        finally:
            close = getattr(events, "close", None)
            if close is not None:
                close()
        self._served(job, stream)

    # -- batched ----------------------------------------------------------------------------
    def _work_batched(self) -> None:
        """Jobs join the running batch at its next step (up to ``max_batch``), in the order they came."""
        from ..decode.batch import new_engine
        from ..decode.events import Done

        batch = new_engine(self.model, self.cache, draft=self.draft)
        streams: dict[Job, _Stream] = {}
        taken: list[tuple[Job, Any]] = []  # off the queue, not started: (job, its ids and settings once built)
        while True:
            wait = not streams and not taken
            while len(streams) + len(taken) < self.max_batch:
                try:
                    job = self.jobs.get() if wait else self.jobs.get_nowait()
                except queue.Empty:
                    break
                wait = False
                if job is None:
                    for j in [*streams, *(j for j, _ in taken)]:
                        self._cancelled(j, streams[j].cancelled() if j in streams else Cancelled(0, 0))
                    return
                with self._lock:
                    self.running.add(job)
                taken.append((job, None))
            while taken:  # start the taken jobs in order; one the batch cannot take waits for it to empty
                job, spec = taken[0]
                if job.cancelled.is_set():
                    taken.pop(0)
                    self._cancelled(job, Cancelled(0, 0))
                    continue
                try:
                    if spec is None:
                        spec = self._build(job)
                        taken[0] = (job, spec)
                    ids, settings = spec
                    if batch.refusal(settings.frozen()) is None:
                        batch.add(job, ids, settings)
                        job.seed = settings.seed
                        streams[job] = _Stream(job, self.model)
                    elif streams:
                        break
                    else:
                        self._decode(job, ids, settings)
                except Exception as exc:
                    self._fail(job, exc)
                taken.pop(0)
            for job in [j for j in streams if j.cancelled.is_set()]:  # a client left: only its row stops
                batch.drop(job)
                self._cancelled(job, streams.pop(job).cancelled())
            if not len(batch):
                continue
            try:
                events = batch.step()
            except Exception as exc:  # the whole batch failed: every row gets the error
                for job in streams:
                    self._fail(job, exc)
                streams.clear()
                batch = new_engine(self.model, self.cache, draft=self.draft)
                continue
            for job, event in events:
                stream = streams.get(job)
                if stream is None:
                    continue
                stopped = stream.feed(event)
                if stopped or isinstance(event, Done):
                    if stopped:
                        batch.drop(job)
                    del streams[job]
                    self._served(job, stream)
