"""The plain dataclasses that flow from a decoder to its consumers (views, bench, trace files).

Positions are relative to the start of the generation (0 is the first generated slot).
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from typing import Any, Iterator


class Clock:
    """Decode time only: paused while a consumer handles an event, so a slow view never inflates stats.

    :func:`timed` runs it around a loop: it counts while the loop computes and stops at each yield.
    With ``cpu`` it also counts the CPU time of the decoding thread over the same spans: far less
    CPU time than wall time means other processes had the cores (the stats line says so).
    """

    def __init__(self, cpu: bool = False) -> None:
        self.busy = 0.0
        self.cpu: float | None = 0.0 if cpu else None
        self._since: float | None = None
        self._cpu_since = 0.0

    def pause(self) -> float:
        """Stop counting; returns the busy seconds so far."""
        if self._since is not None:
            self.busy += time.perf_counter() - self._since
            self._since = None
            if self.cpu is not None:
                self.cpu += time.thread_time() - self._cpu_since
        return self.busy

    def resume(self) -> None:
        self._since = time.perf_counter()
        if self.cpu is not None:
            self._cpu_since = time.thread_time()

    def elapsed(self) -> float:
        """The busy seconds so far, without stopping."""
        return self.busy + (time.perf_counter() - self._since if self._since is not None else 0.0)


def timed(events: Iterator["Event"], clock: Clock) -> Iterator["Event"]:
    """``events`` with ``clock`` counting only while the loop computes the next event."""
    it = iter(events)
    while True:
        clock.resume()
        try:
            ev = next(it)
        except StopIteration:
            return
        finally:
            clock.pause()
        if isinstance(ev, Done) and clock.cpu is not None:
            ev.cpu_seconds = clock.cpu
        yield ev


@dataclass(slots=True)
class Start:
    """Decoding begins: ``length`` generation slots, all masked (dLLM) or empty (AR)."""

    kind: str  # "diffusion" or "autoregressive"
    prompt_tokens: int
    length: int
    block_length: int | None = None
    notes: list[str] = field(default_factory=list)  # warnings about the run found before it (the view prints them)


@dataclass(slots=True)
class Step:
    """One denoiser step (dLLM) or one accepted token run (AR): what got committed, and the NFE so far.

    ``filled`` are slots declared final after the end of the text without decoding them: after an
    end-of-text token (EoTP), or after the repetition stop's cut (committed slots included).
    ``edited`` are already-committed slots rewritten by token-to-token editing, with their new tokens.
    """

    step: int
    nfe: int
    positions: list[int]
    tokens: list[int]
    confidences: list[float]
    block: int = 0
    filled: list[int] = field(default_factory=list)
    filled_token: int | None = None
    edited: list[int] = field(default_factory=list)
    edited_tokens: list[int] = field(default_factory=list)


@dataclass(slots=True)
class Draft:
    """A speculative draft about to be verified (shown as a faint preview)."""

    step: int
    position: int
    tokens: list[int]
    source: str = "draft"


@dataclass(slots=True)
class Verify:
    """The target's verdict on the last draft: accepted tokens, then a correction or a bonus token."""

    step: int
    nfe: int
    position: int
    accepted_tokens: list[int]
    drafted: int
    rejected: list[int] = field(default_factory=list)  # the draft tokens after the first rejected one
    correction: int | None = None
    bonus: int | None = None


@dataclass(slots=True)
class Done:
    """Decoding ended. ``tokens`` are the generated tokens, cut before the first end-of-text token.

    The fields after ``finish_reason`` are the loop's own counts; a loop leaves those it has no
    notion of at None, and :meth:`stats` (the ``stats`` object of ``--json``) lists the rest.
    """

    tokens: list[int]
    nfe: int
    steps: int
    seconds: float
    ttft_seconds: float | None
    finish_reason: str  # "eos", "length", "repetition" (the stop_repeats stop) or "interrupted"
    blocks: int | None = None  # dLLM blocks (canvases, for DiffusionGemma) decoded
    cache: str | None = None  # the dLLM cache policy that ran
    refreshes: int | None = None  # full cache recomputes inside a block
    edits: int | None = None  # committed slots rewritten (token-to-token editing)
    drafted: int | None = None  # draft tokens proposed for verification
    accepted: int | None = None  # of those, accepted
    verifies: int | None = None  # verify forwards (S2D2) or verify steps (AR loop)
    draft_nfe: int | None = None  # forwards of a draft model
    draft_source: str | None = None  # AR loop: "model", "text", "lookup"
    draft_seconds: float | None = None
    verify_seconds: float | None = None
    acceptance_per_position: list[float] | None = None
    lookup_commits: int | None = None  # dLLM lookup: slots committed because they matched the draft
    lookup_drafts: int | None = None
    encoder_forwards: int | None = None  # DiffusionGemma: encoder passes
    canvas_length: int | None = None
    max_denoising_steps: int | None = None
    compile_seconds: float | None = None  # torch.compile warm-up before the run (not in ``seconds``)
    cpu_seconds: float | None = None  # CPU runs: the decoding thread's CPU time within ``seconds``
    extra: dict[str, Any] = field(default_factory=dict)  # a draft source's own counts

    @property
    def tokens_per_nfe(self) -> float:
        return len(self.tokens) / self.nfe if self.nfe else 0.0

    @property
    def tokens_per_second(self) -> float:
        return len(self.tokens) / self.seconds if self.seconds > 0 else 0.0

    @property
    def acceptance_rate(self) -> float | None:
        """accepted / drafted, when something was drafted."""
        return self.accepted / self.drafted if self.drafted else None

    @property
    def mean_accepted_length(self) -> float | None:
        """AR loop: tokens per verify step, ``1 + accepted / verifies``."""
        return 1 + self.accepted / self.verifies if self.verifies and self.accepted is not None else None

    def stats(self) -> dict[str, Any]:
        """The loop's counts that apply (not None), with the derived rates."""
        out = {name: getattr(self, name) for name in STAT_FIELDS if getattr(self, name) is not None}
        if self.draft_source is not None:
            out["acceptance_rate"] = self.acceptance_rate or 0.0
            out["mean_accepted_length"] = self.mean_accepted_length or 0.0
        out.update(self.extra)
        return out


STAT_FIELDS = ("blocks", "cache", "refreshes", "edits", "drafted", "accepted", "verifies", "draft_nfe",
               "draft_source", "draft_seconds", "verify_seconds", "acceptance_per_position", "lookup_commits",
               "lookup_drafts", "encoder_forwards", "canvas_length", "max_denoising_steps", "compile_seconds",
               "cpu_seconds")


Event = Start | Step | Draft | Verify | Done
