"""The dLLM decode loop: blocks outer, steps inner; a commit rule decides each step.

A generator of :mod:`events`; it knows nothing of terminals. The canvas is the prompt followed by
``max_new_tokens`` mask slots. Blocks of ``block_length`` are decoded left to right; inside a
block, each step runs one forward (one NFE), draws a candidate and a confidence per masked
position, and commits the positions the rule selects.

Caches (Fast-dLLM): ``prefix`` runs one full forward at each block start, keeps the keys and
values of everything before the block, and then runs only the block and what follows it;
``dual`` also keeps the suffix and runs only the block. For block-diffusion models (block-causal
attention) the cache is exact: each block-start forward runs the just-finished block and the new
one, and later steps run only the block.
"""

from __future__ import annotations

from typing import Any, Iterator

import torch

from ..models.base import Denoiser
from .events import Clock, Done, Event, Start, Step
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


def decode_blocks(model: Denoiser, start: int, length: int, block_length: int) -> list[tuple[int, int]]:
    """The decode blocks ``[bs, be)`` covering ``[start, length)``: ``block_length`` each, cut by :func:`block_stop`."""
    blocks, a = [], start
    while a < length:
        blocks.append((a, block_stop(model, a, min(a + block_length, length))))
        a = blocks[-1][1]
    return blocks


class _Forward:
    """Runs the forward a step needs under the chosen cache policy, and counts NFE."""

    def __init__(self, model: Denoiser, mode: str, length: int) -> None:
        self.model = model
        self.mode = mode
        self.length = length
        self.cache = None if mode == "none" else model.new_cache()
        self.exact_upto = 0  # block-causal: cache holds exact keys/values for [0, exact_upto)
        self.nfe = 0

    def __call__(self, x: torch.Tensor, bs: int, be: int, first: bool) -> torch.Tensor:
        self.nfe += 1
        m, cache = self.model, self.cache
        if cache is None:
            # Block-causal attention: nothing after the block can influence it.
            return m.logits(x, 0, be if m.block_size else self.length, rows=(bs, be))
        if m.block_size:
            if first:
                out = m.logits(x, self.exact_upto, be, cache=cache, rows=(bs, be))
                cache.truncate(bs)
                self.exact_upto = bs
                return out
            return m.logits(x, bs, be, cache=cache, rows=(bs, be))
        if first:
            cache.clear()
            out = m.logits(x, 0, self.length, cache=cache, rows=(bs, be))
            if self.mode == "prefix":
                cache.truncate(bs)
            return out
        end = be if self.mode == "dual" else self.length
        return m.logits(x, bs, end, cache=cache, rows=(bs, be))


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
    x = torch.full((1, L), mask_id, dtype=torch.long, device=dev)
    x[0, :P] = torch.tensor(prompt_ids, dtype=torch.long, device=dev)
    B = min(s.block_length, G)
    model.begin(P, generator)  # before the blocks: a model's grid may start at the prompt end
    blocks = decode_blocks(model, P, L, B)
    total_steps = getattr(s, "steps", None) or G
    eos = torch.tensor(model.eos_ids, dtype=torch.long, device=dev)
    fill_token = model.eos_ids[0]
    forward = _Forward(model, s.cache, L)
    neg_inf = torch.tensor(-torch.inf, dtype=torch.float64 if dev.type != "mps" else torch.float32, device=dev)

    yield Start("diffusion", P, G, B)
    clock = Clock()
    ttft: float | None = None
    step = 0
    end = L  # EoTP: slots at or after `end` are final
    for b, (bs, be) in enumerate(blocks):
        if bs >= end:
            break
        remaining = int((x[0, bs:be] == mask_id).sum())
        if remaining == 0:
            continue
        quotas = schedule(remaining, total_steps * (be - bs) // G) if rule.uses_schedule else []
        rule.start_block(b, be - bs)
        i = 0
        while remaining > 0:
            logits = forward(x, bs, be, first=i == 0)[0]
            cand = x[0, bs:be] == mask_id
            logits = rule.adjust_logits(logits, cand)
            x0, conf = propose(logits, temperature=s.temperature, top_k=s.top_k, top_p=s.top_p, generator=generator)
            conf = torch.where(cand, conf, neg_inf)
            quota = quotas[i] if i < len(quotas) else remaining
            state = StepState(logits, x0, conf, cand, quota, i, len(quotas), b, generator)
            sel = rule.select(state) & cand
            x[0, bs:be] = torch.where(sel, x0, x[0, bs:be])
            idx = sel.nonzero().squeeze(-1)
            tokens = x0[idx].tolist()
            positions = [p + bs - P for p in idx.tolist()]
            remaining -= len(positions)
            filled: list[int] = []
            if s.eotp and positions:
                hits = [p for p, t in zip(positions, tokens) if t in model.eos_ids]
                if hits and P + hits[0] + 1 < end:
                    j = P + hits[0]
                    tail = x[0, j + 1 : end] == mask_id
                    filled = [p + j + 1 - P for p in tail.nonzero().squeeze(-1).tolist()]
                    x[0, j + 1 : end] = torch.where(tail, torch.full_like(x[0, j + 1 : end], fill_token), x[0, j + 1 : end])
                    end = j + 1
                    remaining = int((x[0, bs:be] == mask_id).sum())
            event = Step(step, forward.nfe, positions, tokens, conf[idx].tolist(), block=b,
                         filled=filled, filled_token=fill_token if filled else None)
            busy = clock.pause()
            if ttft is None and positions:
                ttft = busy
            yield event
            clock.resume()
            step += 1
            i += 1

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
        stats={"blocks": len(blocks), "cache": s.cache},
    )
