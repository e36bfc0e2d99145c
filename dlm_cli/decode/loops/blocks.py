"""The dLLM block driver: blocks outer, steps inner; a commit rule decides each step.

Blocks of ``block_length`` are decoded left to right; inside a block, each step runs one forward
(one NFE), draws a candidate ``x0`` and a confidence per masked position, and commits the
positions the rule selects (:mod:`dlm_cli.decode.rules`). The canvas, EoTP and the step's host
transfer are :class:`~dlm_cli.decode.canvas.BlockCanvas`'s; which forward runs under which cache
is :class:`~dlm_cli.decode.cache.Forward`'s.

A rule may bring more than ``select``; the driver uses what it brings (:mod:`..rules.base`):
a schedule of how many to commit per step (LLaDA), rewritten logits (CreditDecoding), edits of
committed tokens plus extra steps once the block has no masks (LLaDA2.1), a block end it sees in a
look-ahead (AdaBlock), or a verdict that the answer is settled (Prophet): then every remaining mask
of the block is committed, and for models without a block grid one more forward fills the rest of
the canvas. ``lookup = true`` adds input-guided commits (:mod:`..guided`) to any rule.
"""

from __future__ import annotations

from typing import Any, Iterator, TYPE_CHECKING

import torch

from ..cache import Forward
from ..canvas import BlockCanvas
from ..events import Clock, Event
from ..guided import GuidedCommits
from ..rules.base import AdaptiveBlocks, AdjustsLogits, CommitRule, Edits, Scheduled, Settles, StepState
from ..sampling import make_sampler

if TYPE_CHECKING:
    from ..keys import RunSettings
    from ...models.protocols import DLLM


def run(model: DLLM, prompt_ids: list[int], settings: RunSettings, rule: CommitRule, generator: torch.Generator | None,
        clock: Clock) -> Iterator[Event]:
    """Decode ``prompt_ids`` with ``rule``; yields Start, one Step per forward, then Done."""
    s = settings
    model.begin(len(prompt_ids), generator)  # before the blocks: a model's grid may start at the prompt end
    c = BlockCanvas(model, prompt_ids, s, clock)
    P, L, dev = c.prompt, c.length, c.device
    forward = Forward(model, s, L)
    guided = GuidedCommits(s, prompt_ids, dev) if s.lookup else None
    scheduled = rule if isinstance(rule, Scheduled) else None
    adjusts = rule if isinstance(rule, AdjustsLogits) else None
    edits = rule if isinstance(rule, Edits) else None
    adaptive = rule if isinstance(rule, AdaptiveBlocks) else None
    settles = rule if isinstance(rule, Settles) else None
    neg_inf = torch.full((), -torch.inf, dtype=c.wide, device=dev)  # a fill on the device, not a copy to it
    sampler = make_sampler(s, generator, c.mask_id)
    settled = False  # Prophet's verdict, for models without a block grid: fill the whole canvas next

    yield c.start()
    try:
        b, bs = 0, P
        while bs < c.end and not settled:
            be = c.next_block(bs)
            pending = None  # logits already computed for this block's first step (the look-ahead)
            if adaptive is not None and c.masked(bs, be):
                limit = c.block_stop(bs, min(be + adaptive.lookahead, L))
                pending = forward(c.x, bs, be, True, rows_end=limit)[0]
                probs = torch.softmax(pending.to(c.wide), -1).max(-1)
                be = adaptive.block_end(model, bs, be, limit, probs.indices, probs.values)
                pending = pending[: be - bs]
            remaining = c.masked(bs, be)
            if remaining == 0:
                bs, b = be, b + 1
                continue
            quotas = scheduled.quotas(remaining, be - bs, c.slots) if scheduled is not None else []
            rows = torch.arange(bs, be, device=dev)
            i = 0
            edited = False  # whether the last step's edit rule chose any row
            while remaining > 0 or (edits is not None and c.stop_len is None and edits.post_step(b, edited)):
                logits = pending if pending is not None else forward(c.x, bs, be, first=i == 0)[0]
                pending = None
                cur = c.x[0, bs:be].clone()
                cand = cur == c.mask_id
                if adjusts is not None:
                    logits = adjusts.adjust_logits(logits, cand, b)
                x0, prob = sampler(logits)
                conf = torch.where(cand, prob, neg_inf)
                final = c.end - 1 if c.end < L else L  # an EoTP end token and its tail are final
                state = StepState(logits, x0, conf, cand, quotas[i] if i < len(quotas) else remaining, i,
                                  len(quotas), b, generator, probability=prob, tokens=cur, editable=~cand & (rows < final),
                                  progress=c.progress(), masked=remaining)
                # Whatever the host must know after this step travels in the commit's one transfer:
                # Prophet's verdict, whether the edit rule chose a row, the Elastic-Cache drift test.
                verdict = None
                if remaining:
                    sel = rule.select(state) & cand
                    verdict = settles.settled(state, sel) if settles is not None else None
                    if guided is not None:
                        first = c.first_mask(bs, be)
                        sel = guided.add(sel, c.committed(P, first), first - bs, x0, cand, cur, settled=verdict)
                    if verdict is not None:
                        sel = torch.where(verdict, cand, sel)
                else:
                    sel = torch.zeros_like(cand)
                ed = edits.edit(state) & state.editable & (x0 != cur) if edits is not None else None
                flags = tuple(f for f in (verdict, None if ed is None else ed.any(), forward.drift) if f is not None)
                yield c.commit(bs, sel, x0, conf, nfe=forward.nfe, block=b, edited=ed, flags=flags)
                got = iter(c.flags)
                settle = verdict is not None and bool(next(got))
                edited = ed is not None and bool(next(got))
                if forward.drift is not None:
                    forward.resolve(bool(next(got)))
                remaining = c.masked(bs, be)
                i += 1
                if settle:
                    # Block-causal models condition a block only on final earlier ones: a settled block
                    # ends here, and the next one is decoded (and tested) afresh.
                    settled = model.block_end(bs) is None
                    break
            bs, b = be, b + 1
        if settled and bs < c.end and c.masked(bs, c.end):
            yield fill_rest(c, model, forward, bs, b)
    finally:
        forward.close()
    counts: dict[str, Any] = {}
    if guided is not None:
        counts = guided.counts()
    yield c.done(forward.nfe, blocks=b, cache=s.cache, refreshes=forward.refreshes, edits=c.edits, **counts)


def fill_rest(c: BlockCanvas, model: DLLM, forward: Forward, bs: int, b: int) -> Any:
    """Prophet on a model without a block grid: one forward over the canvas fills every mask left with its argmax."""
    forward.nfe += 1
    out = model.logits(c.x, 0, c.length, rows=(bs, c.end))[0]
    cand = c.x[0, bs : c.end] == c.mask_id
    best = out.argmax(-1)
    p = torch.softmax(out.to(c.wide), -1).gather(-1, best.unsqueeze(-1)).squeeze(-1)
    eotp, c.eotp = c.eotp, False  # the settled answer is taken whole, end tokens and all
    try:
        return c.commit(bs, cand, best, p, nfe=forward.nfe, block=b)
    finally:
        c.eotp = eotp
