"""The dLLM decode loop: blocks outer, steps inner; a commit rule decides each step.

A generator of :mod:`events`; it knows nothing of terminals. The canvas is the prompt followed by
``max_new_tokens`` mask slots. Blocks of ``block_length`` are decoded left to right; inside a
block, each step runs one forward (one NFE), draws a candidate and a confidence per masked
position, and commits the positions the rule selects.

Caches (:mod:`.cache`, Fast-dLLM): ``prefix`` runs one full forward at each block start, keeps the
keys and values of everything before the block, and then runs only the block and what follows it;
``dual`` also keeps the suffix and runs only the block. For block-diffusion models (block-causal
attention) the cache is exact: each block-start forward runs the just-finished block and the new
one, and later steps run only the block.

Rules may also edit committed tokens of the block (LLaDA2.1), ask for more steps once the block has
no masks (editing post-steps), end a block early at a boundary they see in a look-ahead (AdaBlock),
or finish the whole canvas at once (Prophet). EoTP (``eotp``) composes with all of them: once an
end-of-text token is committed, every slot after it is final and never decoded.
"""

from __future__ import annotations

from typing import Any, Iterator

import torch

from ..models.base import Denoiser
from .cache import Forward
from .events import Clock, Done, Event, Start, Step
from .guided import GuidedCommits
from .rules.base import CommitRule, StepState
from .sampling import propose


def schedule(masked: int, steps: int) -> list[int]:
    """LLaDA's even spread: how many positions to commit at each of ``steps`` steps (remainder first)."""
    steps = max(1, steps)
    base, extra = divmod(masked, steps)
    return [base + (1 if i < extra else 0) for i in range(steps)]


def block_stop(model: Denoiser, bs: int, be: int) -> int:
    """``be``, cut at the end of the model block holding ``bs`` (models with a block grid).

    A block-diffusion model conditions a block only on final earlier blocks, so a decode block never
    straddles a model block; a prompt that ends inside a model block shares it with the first slots.
    """
    grid = model.block_end(bs)
    return be if grid is None else min(be, grid)


def new_canvas(model: Denoiser, prompt_ids: list[int], gen_length: int) -> torch.Tensor:
    """The ``[1, P + gen_length]`` canvas: the prompt followed by mask slots."""
    x = torch.full((1, len(prompt_ids) + gen_length), model.mask_id, dtype=torch.long, device=model.device)
    x[0, : len(prompt_ids)] = torch.tensor(prompt_ids, dtype=torch.long, device=model.device)
    return x


def decode_blocks(model: Denoiser, start: int, length: int, block_length: int) -> list[tuple[int, int]]:
    """The decode blocks ``[bs, be)`` covering ``[start, length)``: ``block_length`` each, cut by :func:`block_stop`."""
    blocks, a = [], start
    while a < length:
        blocks.append((a, block_stop(model, a, min(a + block_length, length))))
        a = blocks[-1][1]
    return blocks


def decode(
    model: Denoiser,
    prompt_ids: list[int],
    settings: Any,
    rule: CommitRule,
    generator: torch.Generator | None = None,
) -> Iterator[Event]:
    """Decode ``prompt_ids`` with ``rule``; yields Start, one Step per forward, then Done."""
    s = settings
    dev = model.device
    P, G = len(prompt_ids), s.max_new_tokens
    L = P + G
    mask_id = model.mask_id
    x = new_canvas(model, prompt_ids, G)
    B = min(s.block_length, G)
    model.begin(P, generator)  # before the blocks: a model's grid may start at the prompt end
    rule.begin(model, P, L)
    total_steps = getattr(s, "steps", None) or G
    eos = torch.tensor(model.eos_ids, dtype=torch.long, device=dev)
    fill_token = model.eos_ids[0]
    forward = Forward(model, s, L)
    guided = GuidedCommits(s, prompt_ids) if getattr(s, "lookup", False) else None
    wide = torch.float64 if dev.type != "mps" else torch.float32
    neg_inf = torch.tensor(-torch.inf, dtype=wide, device=dev)
    sample = dict(temperature=s.temperature, top_k=s.top_k, top_p=s.top_p, generator=generator)

    yield Start("diffusion", P, G, B)
    clock = Clock()
    ttft: float | None = None
    step = 0
    edits = 0
    end = L  # EoTP: slots at or after `end` are final
    b, bs = 0, P
    try:
        while bs < end and not rule.finish:
            be = block_stop(model, bs, min(bs + B, L))
            pending = None
            if rule.lookahead is not None and bool((x[0, bs:be] == mask_id).any()):
                limit = block_stop(model, bs, min(be + rule.lookahead, L))
                pending = forward(x, bs, be, True, rows_end=limit)[0]
                probs = torch.softmax(pending.to(wide), -1).max(-1)
                be = rule.block_end(bs, be, limit, probs.indices, probs.values)
                pending = pending[: be - bs]
            remaining = int((x[0, bs:be] == mask_id).sum())
            if remaining == 0:
                bs, b = be, b + 1
                continue
            quotas = schedule(remaining, total_steps * (be - bs) // G) if rule.uses_schedule else []
            rule.start_block(b, be - bs)
            rel = torch.arange(bs, be, device=dev)
            i = 0
            while remaining > 0 or rule.post_step():
                logits = pending if pending is not None else forward(x, bs, be, first=i == 0)[0]
                pending = None
                cur = x[0, bs:be].clone()
                cand = cur == mask_id
                logits = rule.adjust_logits(logits, cand)
                x0, prob = propose(logits, **sample)
                conf = torch.where(cand, prob, neg_inf)
                quota = quotas[i] if i < len(quotas) else remaining
                editable = ~cand & (rel < (end - 1 if end < L else L))  # an EoTP end token and its tail are final
                progress = 1.0 - int((x[0, P:end] == mask_id).sum()) / G
                state = StepState(logits, x0, conf, cand, quota, i, len(quotas), b, generator,
                                  probability=prob, tokens=cur, editable=editable, progress=progress)
                sel = rule.select(state) & cand if remaining > 0 else torch.zeros_like(cand)
                if guided is not None and remaining > 0 and not rule.finish:
                    first = int(cand.nonzero()[0])
                    extra = guided.select(x[0, P: bs + first].tolist(), first, x0, cand, cur) & ~sel
                    guided.committed += int(extra.sum())
                    sel = sel | extra
                if rule.finish:
                    sel = cand
                ed = rule.edit(state)
                ed = torch.zeros_like(cand) if ed is None else ed & editable & (x0 != cur)
                cut = None
                if s.eotp:
                    # EoTP: the first end token committed (or edited in) makes every slot after it final,
                    # including slots this very step would have committed in parallel.
                    hit = (sel | ed) & torch.isin(x0, eos)
                    if bool(hit.any()):
                        cut = bs + int(hit.nonzero()[0])
                        sel, ed = sel & (rel <= cut), ed & (rel <= cut)
                x[0, bs:be] = torch.where(sel | ed, x0, cur)
                idx = sel.nonzero().squeeze(-1)
                tokens = x0[idx].tolist()
                positions = [p + bs - P for p in idx.tolist()]
                eidx = ed.nonzero().squeeze(-1)
                edited, edited_tokens = [p + bs - P for p in eidx.tolist()], x0[eidx].tolist()
                edits += len(edited)
                filled: list[int] = []
                if cut is not None and cut + 1 < end:
                    j = cut
                    tail = x[0, j + 1 : end] == mask_id
                    filled = [p + j + 1 - P for p in tail.nonzero().squeeze(-1).tolist()]
                    x[0, j + 1 : end] = torch.where(tail, torch.full_like(x[0, j + 1 : end], fill_token),
                                                    x[0, j + 1 : end])
                    end = j + 1
                remaining = int((x[0, bs:be] == mask_id).sum())
                event = Step(step, forward.nfe, positions, tokens, conf[idx].tolist(), block=b,
                             filled=filled, filled_token=fill_token if filled else None,
                             edited=edited, edited_tokens=edited_tokens)
                busy = clock.pause()
                if ttft is None and positions:
                    ttft = busy
                yield event
                clock.resume()
                step += 1
                i += 1
                if rule.finish:
                    break
            if rule.finish and model.block_end(bs) is not None:
                # Block-causal models condition a block only on final earlier ones: Prophet's early
                # commit ends this block, and the next one is decoded (and tested) afresh.
                rule.finish = False
            bs, b = be, b + 1
        if rule.finish and bs < end and bool((x[0, bs:end] == mask_id).any()):
            # Prophet: one more forward over the whole canvas fills every remaining mask with its argmax.
            forward.nfe += 1
            out = model.logits(x, 0, L, rows=(bs, end))[0]
            cand = x[0, bs:end] == mask_id
            best = out.argmax(-1)
            x[0, bs:end] = torch.where(cand, best, x[0, bs:end])
            idx = cand.nonzero().squeeze(-1)
            p = torch.softmax(out[idx].to(wide), -1).max(-1).values
            event = Step(step, forward.nfe, [q + bs - P for q in idx.tolist()], best[idx].tolist(), p.tolist(),
                         block=b)
            clock.pause()
            yield event
            clock.resume()
            step += 1
    finally:
        forward.close()

    out = x[0, P:]
    hits = torch.isin(out, eos).nonzero()
    cut = int(hits[0]) if len(hits) else G
    yield Done(
        tokens=out[:cut].tolist(),
        nfe=forward.nfe,
        steps=step,
        seconds=clock.pause(),
        ttft_seconds=ttft,
        finish_reason="eos" if len(hits) else "length",
        stats={"blocks": b, "cache": s.cache, "refreshes": forward.refreshes, "edits": edits,
               **({"lookup_commits": guided.committed, "lookup_drafts": guided.drafts} if guided else {})},
    )
