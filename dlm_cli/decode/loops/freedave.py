"""FreeDave (lossless draft-and-verify for dLLMs, 2025): the baseline's output with fewer NFEs.

The reference is greedy one-token-per-step decoding (the ``quality`` profile: low-confidence
remasking, ``steps = max_new_tokens``, same ``block_length``). From the logits of the current
canvas, rank the block's masked positions ``a_1, a_2, ...`` by confidence and draft ``D_k`` = the
canvas with ``a_1..a_k`` committed, for ``k = 1..freedave_drafts``. One batched forward over every
``D_k`` (one NFE) gives what a normal step would do from each of them. ``D_k`` is on the
baseline's trajectory when, for each ``j < k``, the normal step from ``D_j`` commits exactly
``a_{j+1}`` with the same token; the largest such ``k`` is accepted, and the forward of ``D_k``
is the next step's logits. ``D_1`` is always the baseline's own step, so each NFE commits at least
one token and the output is identical to the baseline's (up to floating-point ties between a
batched and an unbatched forward).
"""

from __future__ import annotations

from typing import Any, Iterator, TYPE_CHECKING

import torch

from ..canvas import BlockCanvas
from ..events import Clock, Event
from ..sampling import propose

if TYPE_CHECKING:
    from ..keys import RunSettings
    from ...models.protocols import DLLM


def confidences(logits: torch.Tensor, candidates: torch.Tensor, mask_id: int) -> tuple[torch.Tensor, torch.Tensor]:
    """The baseline's greedy ``x0`` per row and its probability, ``-inf`` at non-candidate rows."""
    x0, c = propose(logits, exclude=mask_id)
    return x0, torch.where(candidates, c, torch.full_like(c, -torch.inf))


def run(model: DLLM, prompt_ids: list[int], settings: RunSettings, part: Any, generator: torch.Generator | None,
        clock: Clock) -> Iterator[Event]:
    s = settings
    model.begin(len(prompt_ids), generator)
    c = BlockCanvas(model, prompt_ids, s, clock)
    L, dev, K = c.length, c.device, s.draft_length
    nfe = drafted = accepted = 0

    def forward(canvas: torch.Tensor, bs: int, be: int) -> torch.Tensor:
        return model.logits(canvas, 0, be if model.block_size else L, rows=(bs, be))

    yield c.start()
    blocks = c.blocks()
    for b, (bs, be) in enumerate(blocks):
        if bs >= c.end:
            break
        f = None  # logits of the current canvas for the block's rows
        while c.masked(bs, be):
            x = c.x
            cand = x[0, bs:be] == c.mask_id
            if f is None:
                f = forward(x, bs, be)[0]
                nfe += 1
            x0, conf = confidences(f, cand, c.mask_id)
            k_max = min(K, c.masked(bs, be))
            order = torch.topk(conf, k_max).indices
            order[0] = torch.argmax(conf)  # the baseline's own pick, with its tie-break
            if k_max == 1:
                take, f = 1, None
            else:
                drafts = x.repeat(k_max, 1)
                committed = torch.zeros(k_max, be - bs, dtype=torch.bool, device=dev)
                for k in range(k_max):
                    committed[k, order[: k + 1]] = True
                drafts[:, bs:be] = torch.where(committed, x0.expand(k_max, -1), drafts[:, bs:be])
                out = forward(drafts, bs, be)
                nfe += 1
                drafted += k_max - 1
                # The normal step from D_j (j = 1..K-1) must commit a_{j+1} with the same token.
                xs, confs = confidences(out[:-1], cand & ~committed[:-1], c.mask_id)
                picks = confs.argmax(-1)
                ok = (picks == order[1:]) & (xs.gather(-1, picks[:, None])[:, 0] == x0[order[1:]])
                take = 1 + int(torch.cumprod(ok.long(), 0).sum())
                accepted += take - 1
                f = out[take - 1]
            idx = order[:take]
            if c.eotp:
                # The baseline stops decoding after an end token: keep only what precedes it in its order.
                ends = torch.isin(x0[idx], c.eos)
                cut = int(torch.cumprod((~ends).long(), 0).sum()) + 1
                if cut < take:
                    idx, take, f = idx[:cut], cut, None
            sel = torch.zeros_like(cand)
            sel[idx] = True
            end_before = c.end
            yield c.commit(bs, sel, x0, conf, nfe=nfe, block=b, in_order=True)
            if c.end != end_before:
                f = None
    yield c.done(nfe, blocks=len(blocks), cache="none", drafted=drafted, accepted=accepted)
