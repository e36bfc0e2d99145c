"""What a commit rule sees at each step, and the interface it implements."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import torch


@dataclass
class StepState:
    """One step inside the current block. Tensors cover the block's rows only.

    ``confidence`` is ``p(x0)`` at candidate rows and ``-inf`` elsewhere; ``probability`` is
    ``p(x0)`` at every row (editing rules look at committed rows too). ``quota`` is the number the
    LLaDA schedule would commit at this step (semi-autoregressive even spread). ``tokens`` is the
    block's current canvas; ``editable`` marks committed rows a rule may rewrite (not EoTP-final).
    ``progress`` is the fraction of generation slots already final before this step.
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
    probability: torch.Tensor | None = None
    tokens: torch.Tensor | None = None
    editable: torch.Tensor | None = None
    progress: float = 0.0


class CommitRule:
    """Decides which masked positions of the current block to commit at a step.

    Subclasses set ``name`` and implement :meth:`select`; they may override :meth:`start_block`
    (reset per-block state) and :meth:`adjust_logits` (rewrite logits before candidates are drawn).
    ``uses_schedule`` marks rules whose step count comes from ``steps`` (the LLaDA schedule) rather
    than from the logits.

    Optional hooks the loop honours: :meth:`begin` (once per run, sees the model), :meth:`edit`
    (token-to-token editing of committed rows), :meth:`post_step` (keep stepping a block with no
    masks left), ``finish`` (set by :meth:`select` to fill every remaining mask with its argmax and
    stop, as Prophet does) and :meth:`block_end` (adaptive block length, given a look-ahead).
    """

    name = "rule"
    uses_schedule = False
    lookahead: int | None = None  # adaptive blocks: rows past the default block end to look at

    def __init__(self, settings: Any) -> None:
        self.settings = settings
        self.finish = False

    def begin(self, model: Any, prompt_tokens: int, length: int) -> None:
        """Called once per run, before the first block."""
        self.finish = False

    def start_block(self, block: int, length: int) -> None:
        """Called when decoding of a block begins."""

    def adjust_logits(self, logits: torch.Tensor, candidates: torch.Tensor) -> torch.Tensor:
        return logits

    def select(self, state: StepState) -> torch.Tensor:
        raise NotImplementedError

    def edit(self, state: StepState) -> torch.Tensor | None:
        """Committed rows to rewrite with ``x0`` this step; None when the rule never edits."""
        return None

    def post_step(self) -> bool:
        """Whether to run another step on a block whose masks are all committed."""
        return False

    def block_end(self, bs: int, be: int, limit: int, x0: torch.Tensor, probability: torch.Tensor) -> int:
        """The end of the block starting at ``bs``: ``be`` by default; rows up to ``limit`` are given."""
        return be


def top1(confidence: torch.Tensor) -> torch.Tensor:
    """A boolean mask with only the most confident row set."""
    out = torch.zeros(confidence.shape, dtype=torch.bool, device=confidence.device)
    out[torch.argmax(confidence)] = True
    return out


def topk_mask(confidence: torch.Tensor, k: int) -> torch.Tensor:
    """A boolean mask of the ``k`` most confident rows."""
    out = torch.zeros(confidence.shape, dtype=torch.bool, device=confidence.device)
    if k == 1:
        out[torch.argmax(confidence)] = True  # the same tie-break as top1 and FreeDave's verification
    elif k > 1:
        out[torch.topk(confidence, k).indices] = True
    return out


RANKS = ("confidence", "margin", "entropy")


def rank_scores(state: StepState, rank: str) -> torch.Tensor:
    """The score each candidate row is ranked by (higher commits first); ``-inf`` at non-candidates.

    ``confidence`` is ``p(x0)`` (LLaDA, Dream's ``maskgit_plus``); ``margin`` is ``p_top1 − p_top2``
    (Dream's ``topk_margin``); ``entropy`` is the negative entropy of the row (Dream's ``entropy``).
    """
    if rank == "confidence":
        return state.confidence
    probs = torch.softmax(state.logits.double() if state.logits.device.type != "mps" else state.logits.float(), -1)
    if rank == "margin":
        top = torch.topk(probs, 2, dim=-1).values
        score = top[:, 0] - top[:, 1]
    elif rank == "entropy":
        score = -entropy(probs)
    else:  # pragma: no cover - keys validate the choice
        raise ValueError(rank)
    return torch.where(state.candidates, score, torch.full_like(score, -torch.inf))


def entropy(probs: torch.Tensor) -> torch.Tensor:
    """Shannon entropy (nats) of each row of ``probs``."""
    return -(probs * torch.log(probs.clamp_min(1e-300))).sum(-1)
