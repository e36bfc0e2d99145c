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

from typing import Any, Iterator

import torch

from ..keys import Key, Strategy, register_strategy
from .base import CommitRule


class FreeDave(CommitRule):
    name = "freedave"

    def loop(self, model: Any, prompt_ids: list[int], generator: torch.Generator | None) -> Iterator[Any]:
        from ..diffusion import decode_blocks, new_canvas
        from ..events import Clock, Done, Start, Step

        s = self.settings
        dev = model.device
        P, G = len(prompt_ids), s.max_new_tokens
        L = P + G
        mask_id = model.mask_id
        x = new_canvas(model, prompt_ids, G)
        B = min(s.block_length, G)
        model.begin(P, generator)
        blocks = decode_blocks(model, P, L, B)
        K = s.freedave_drafts
        fill_token = model.eos_ids[0]
        yield Start("diffusion", P, G, B)
        clock = Clock()
        ttft = None
        nfe = step = drafted = accepted = 0
        end = L

        def forward(canvas: torch.Tensor, bs: int, be: int) -> torch.Tensor:
            return model.logits(canvas, 0, be if model.block_size else L, rows=(bs, be))

        def confidences(logits: torch.Tensor, cand: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
            probs = torch.softmax(logits.double() if dev.type != "mps" else logits.float(), -1)
            c, x0 = probs.max(-1)
            return x0, torch.where(cand, c, torch.full_like(c, -torch.inf))

        for b, (bs, be) in enumerate(blocks):
            if bs >= end:
                break
            f = None  # logits of the current canvas for the block's rows
            while bool((x[0, bs:be] == mask_id).any()):
                cand = x[0, bs:be] == mask_id
                if f is None:
                    f = forward(x, bs, be)[0]
                    nfe += 1
                x0, conf = confidences(f, cand)
                k_max = min(K, int(cand.sum()))
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
                    xs, confs = confidences(out[:-1], cand & ~committed[:-1])
                    picks = confs.argmax(-1)
                    ok = (picks == order[1:]) & (xs.gather(-1, picks[:, None])[:, 0] == x0[order[1:]])
                    take = 1 + int(torch.cumprod(ok.long(), 0).sum())
                    accepted += take - 1
                    f = out[take - 1]
                idx = order[:take]
                tokens = x0[idx].tolist()
                positions = [int(p) + bs - P for p in idx]
                filled: list[int] = []
                if s.eotp:
                    hits = [n for n, t in enumerate(tokens) if t in model.eos_ids]
                    if hits:
                        # The baseline stops decoding after an end token: keep only what precedes it in order.
                        cut = hits[0] + 1
                        if cut < take:
                            idx, tokens, positions, take, f = idx[:cut], tokens[:cut], positions[:cut], cut, None
                x[0, bs + idx] = x0[idx]
                if s.eotp:
                    hit = [p for p, t in zip(positions, tokens) if t in model.eos_ids]
                    if hit and P + min(hit) + 1 < end:
                        j = P + min(hit)
                        tail = x[0, j + 1 : end] == mask_id
                        filled = [p + j + 1 - P for p in tail.nonzero().squeeze(-1).tolist()]
                        x[0, j + 1 : end] = torch.where(tail, torch.full_like(x[0, j + 1 : end], fill_token),
                                                        x[0, j + 1 : end])
                        end = j + 1
                        f = None
                event = Step(step, nfe, positions, tokens, conf[idx].tolist(), block=b, filled=filled,
                             filled_token=fill_token if filled else None)
                busy = clock.pause()
                if ttft is None:
                    ttft = busy
                yield event
                clock.resume()
                step += 1
        out = x[0, P:]
        hits = torch.isin(out, torch.tensor(model.eos_ids, device=dev)).nonzero()
        cut = int(hits[0]) if len(hits) else G
        yield Done(tokens=out[:cut].tolist(), nfe=nfe, steps=step, seconds=clock.pause(), ttft_seconds=ttft,
                   finish_reason="eos" if len(hits) else "length",
                   stats={"blocks": len(blocks), "cache": "none", "drafted": drafted, "accepted": accepted})


register_strategy(
    Strategy(
        name="freedave",
        kind="diffusion",
        summary="FreeDave: lossless draft-and-verify; exactly the one-token-per-step output with fewer NFEs",
        keys=(Key("freedave_drafts", int, 4, "K: drafts D_1..D_K verified in one batched forward", min=1),),
        factory=FreeDave,
        conflicts=(("cache", "prefix", "FreeDave verifies its drafts in one batched forward without a cache; "
                    "set cache = \"none\""),
                   ("cache", "dual", "FreeDave verifies its drafts in one batched forward without a cache; "
                    "set cache = \"none\"")),
    )
)
