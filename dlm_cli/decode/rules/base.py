"""What a commit rule sees at each step, and the interface it implements."""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Callable

import torch

from ..sampling import widen

if TYPE_CHECKING:
    from ..keys import RunSettings
    from ...models.protocols import DLLM


@dataclass
class StepState:
    """One step inside the current block. Tensors cover the block's rows only.

    ``confidence`` is ``p(x0)`` at candidate rows and ``-inf`` elsewhere; ``probability`` is
    ``p(x0)`` at every row (editing rules look at committed rows too). ``quota`` is the number the
    LLaDA schedule would commit at this step (semi-autoregressive even spread). ``tokens`` is the
    block's current canvas; ``editable`` marks committed rows a rule may rewrite (not EoTP-final).
    ``progress`` is the fraction of generation slots already final before this step; ``masked``
    the number of candidate rows, when the driver knows it on the host.
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
    masked: int | None = None


class CommitRule:
    """Decides which masked positions of the current block to commit at a step: :meth:`select`.

    A rule that needs more says so by also deriving from one of the capabilities below; the block
    driver (:mod:`..loops.blocks`) calls only what a rule has.
    """

    name = "rule"

    def __init__(self, settings: RunSettings) -> None:
        self.settings = settings

    def select(self, state: StepState) -> torch.Tensor:
        raise NotImplementedError


def selection_rule(name: str, key: Any,
                   select: Callable[[torch.Tensor, torch.Tensor, Any], torch.Tensor]) -> type[CommitRule]:
    """The rule of a strategy that is ``select(logits, candidates, value of key)``: one declared key, no state.

    The block driver runs it like any rule; the returned class is the strategy's factory (its ``impl``)."""

    def pick(self: CommitRule, state: StepState) -> torch.Tensor:
        return select(state.logits, state.candidates, getattr(self.settings, key.name))

    return type("".join(p.capitalize() for p in name.split("-")), (CommitRule,), {"name": name, "select": pick})


class Scheduled:
    """The number committed per step comes from a schedule (LLaDA's ``steps``), given to ``select`` as ``quota``."""

    def quotas(self, masked: int, width: int, slots: int) -> list[int]:
        raise NotImplementedError


class AdjustsLogits:
    """Rewrites the logits of the block before candidates are drawn (CreditDecoding)."""

    def adjust_logits(self, logits: torch.Tensor, candidates: torch.Tensor, block: int) -> torch.Tensor:
        raise NotImplementedError


class Edits:
    """Token-to-token editing of committed rows (LLaDA2.1), with extra steps once a block has no masks."""

    def edit(self, state: StepState) -> torch.Tensor:
        """Committed rows to rewrite with ``x0`` this step."""
        raise NotImplementedError

    def post_step(self, block: int, edited: bool) -> bool:
        """Whether to run another step on block ``block``, whose masks are all committed; ``edited``
        says whether the last step's :meth:`edit` chose any row (read from that step's host transfer)."""
        raise NotImplementedError


class AdaptiveBlocks:
    """Chooses where each block ends from a look-ahead of ``lookahead`` rows past the default end (AdaBlock)."""

    lookahead = 0

    def block_end(self, model: DLLM, bs: int, be: int, limit: int, x0: torch.Tensor, probability: torch.Tensor) -> int:
        """The end of the block starting at ``bs``; ``x0`` and ``probability`` cover rows ``[bs, limit)``."""
        raise NotImplementedError


class NeedsModel:
    """Loads something of the model's before decoding (Learn2PD's filter): :meth:`bind` runs once per run.

    It returns warnings for the user (the run's ``Start.notes``): the decoder itself prints nothing.
    """

    def bind(self, model: DLLM) -> list[str]:
        raise NotImplementedError


class Settles:
    """Can tell that the answer is settled (Prophet): every remaining mask is then committed at once."""

    def settled(self, state: StepState, selected: torch.Tensor, left: int | None = None) -> torch.Tensor | None:
        """A device bool, true when settled, or None when it cannot be (``left``: the masks ``selected`` leaves, when the caller knows).

        A device value, so the verdict reaches the host in the step's one transfer.
        """
        raise NotImplementedError


def top1(confidence: torch.Tensor) -> torch.Tensor:
    """A boolean mask with only the most confident row set (the first on ties, as ``argmax``)."""
    # Compared on the device: indexing with the 0-dim argmax would read it on the host.
    return torch.arange(confidence.shape[0], device=confidence.device) == torch.argmax(confidence)


def topk_mask(confidence: torch.Tensor, k: int) -> torch.Tensor:
    """A boolean mask of the ``k`` most confident rows."""
    if k == 1:
        return top1(confidence)  # the same tie-break as top1 and FreeDave's verification
    out = torch.zeros(confidence.shape, dtype=torch.bool, device=confidence.device)
    if k > 1:
        out[torch.topk(confidence, k).indices] = True
    return out


def rank_scores(state: StepState, rank: str) -> torch.Tensor:
    """The score each candidate row is ranked by (higher commits first); ``-inf`` at non-candidates.

    ``confidence`` is ``p(x0)`` (LLaDA, Dream's ``maskgit_plus``); ``margin`` is ``p_top1 − p_top2``
    (Dream's ``topk_margin``); ``entropy`` is the negative entropy of the row (Dream's ``entropy``).
    """
    if rank == "confidence":
        return state.confidence
    probs = torch.softmax(widen(state.logits), -1)
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


def candidate_entropy(logits: torch.Tensor, candidates: torch.Tensor) -> torch.Tensor:
    """Entropy (nats, computed in float64 where the device has it) of each candidate row; ``inf`` elsewhere."""
    wide = widen(logits)
    h = entropy(torch.softmax(wide, -1))
    return torch.where(candidates, h, torch.full_like(h, torch.inf))
