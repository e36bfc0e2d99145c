"""The plain dataclasses that flow from a decoder to its consumers (views, bench, trace files).

Positions are relative to the start of the generation (0 is the first generated slot).
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from typing import Any


class Clock:
    """Decode time only: paused while a consumer handles an event, so a slow view never inflates stats."""

    def __init__(self) -> None:
        self.busy = 0.0
        self._since = time.perf_counter()

    def pause(self) -> float:
        """Stop counting (call just before ``yield``); returns the busy seconds so far."""
        self.busy += time.perf_counter() - self._since
        self._since = time.perf_counter()
        return self.busy

    def resume(self) -> None:
        """Start counting again (call just after ``yield``)."""
        self._since = time.perf_counter()


@dataclass(slots=True)
class Start:
    """Decoding begins: ``length`` generation slots, all masked (dLLM) or empty (AR)."""

    kind: str  # "diffusion" or "autoregressive"
    prompt_tokens: int
    length: int
    block_length: int | None = None


@dataclass(slots=True)
class Step:
    """One denoiser step (dLLM) or one accepted token run (AR): what got committed, and the NFE so far.

    ``filled`` are slots EoTP declared final after an end-of-text token without decoding them.
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
    accepted: list[int]
    drafted: int
    rejected: list[int] = field(default_factory=list)  # the draft tokens after the first rejected one
    correction: int | None = None
    bonus: int | None = None


@dataclass(slots=True)
class Done:
    """Decoding ended. ``tokens`` are the generated tokens, cut before the first end-of-text token."""

    tokens: list[int]
    nfe: int
    steps: int
    seconds: float
    ttft_seconds: float | None
    finish_reason: str  # "eos", "length" or "interrupted"
    stats: dict[str, Any] = field(default_factory=dict)

    @property
    def generated_tokens(self) -> int:
        return len(self.tokens)

    @property
    def tokens_per_nfe(self) -> float:
        return len(self.tokens) / self.nfe if self.nfe else 0.0

    @property
    def tokens_per_second(self) -> float:
        return len(self.tokens) / self.seconds if self.seconds > 0 else 0.0


Event = Start | Step | Draft | Verify | Done
