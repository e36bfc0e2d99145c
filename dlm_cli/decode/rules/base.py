"""What a commit rule sees at each step, and the interface it implements."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import torch


@dataclass
class StepState:
    """One step inside the current block. Tensors cover the block's rows only.

    ``confidence`` is ``p(x0)`` at candidate rows and ``-inf`` elsewhere. ``quota`` is the number the
    LLaDA schedule would commit at this step (semi-autoregressive even spread).
    """

    logits: torch.Tensor
    x0: torch.Tensor
    confidence: torch.Tensor
    candidates: torch.Tensor
    quota: int
    step: int
    steps: int
    block: int
    generator: torch.Generator | None = None


class CommitRule:
    """Decides which masked positions of the current block to commit at a step.

    Subclasses set ``name`` and implement :meth:`select`; they may override :meth:`start_block`
    (reset per-block state) and :meth:`adjust_logits` (rewrite logits before candidates are drawn).
    ``uses_schedule`` marks rules whose step count comes from ``steps`` (the LLaDA schedule) rather
    than from the logits.
    """

    name = "rule"
    uses_schedule = False

    def __init__(self, settings: Any) -> None:
        self.settings = settings

    def start_block(self, block: int, length: int) -> None:
        """Called when decoding of a block begins."""

    def adjust_logits(self, logits: torch.Tensor, candidates: torch.Tensor) -> torch.Tensor:
        return logits

    def select(self, state: StepState) -> torch.Tensor:
        raise NotImplementedError


def top1(confidence: torch.Tensor) -> torch.Tensor:
    """A boolean mask with only the most confident row set."""
    out = torch.zeros(confidence.shape, dtype=torch.bool, device=confidence.device)
    out[torch.argmax(confidence)] = True
    return out


def topk_mask(confidence: torch.Tensor, k: int) -> torch.Tensor:
    """A boolean mask of the ``k`` most confident rows."""
    out = torch.zeros(confidence.shape, dtype=torch.bool, device=confidence.device)
    if k > 0:
        out[torch.topk(confidence, k).indices] = True
    return out
