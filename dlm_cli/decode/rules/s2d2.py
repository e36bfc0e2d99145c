"""S2D2: self-speculative decoding for block-diffusion models (2025).

A block-diffusion model run with block size 1 (causal attention) is an AR model, so it can verify
its own diffusion drafts. At each step one diffusion forward drafts every masked position of the
block. A cheap policy scores the leftmost masked span ``a_1..a_k`` (the contiguous masked run
starting at the block's first mask): the expected number of accepted tokens ``Σ_j Π_{i≤j} c_i``
from the draft confidences. When it reaches ``s2d2_min_gain``, one AR forward (``grid = 1``)
verifies the span by speculative rejection sampling (greedy: accept while the draft is the AR
argmax) and commits the accepted prefix plus the AR correction at the first rejection; otherwise
the step commits by the threshold rule. With ``s2d2_min_gain = 0`` every step verifies, and the
output is exactly the model's greedy AR decoding.

Families whose logits are next-token aligned (Fast-dLLM v2) verify the span in one causal forward;
in-place families (SDAR) need the position being predicted to hold a mask, so their verify forward
is a batch of ``k`` canvases, one per span position (still one NFE). No cache: ``cache = "none"``.
"""

from __future__ import annotations

from typing import Any, Iterator

import torch

from ...errors import DlmError
from ..keys import Key, Strategy, register_strategy
from ..sampling import propose, warp
from .base import CommitRule
from .threshold import THRESHOLD, threshold_select


def expected_accepted(confidence: torch.Tensor) -> float:
    """``Σ_j Π_{i≤j} c_i``: the expected accepted length when draft ``j`` survives with probability ``c_j``."""
    return float(torch.cumprod(confidence.double(), 0).sum())


def speculative_accept(draft: torch.Tensor, q: torch.Tensor, p: torch.Tensor, generator: torch.Generator | None,
                       greedy: bool) -> tuple[int, int | None]:
    """Accepted draft count and the correction token at the first rejection (None if all were accepted).

    ``q``/``p`` are the draft's and the verifier's distributions ``[k, V]``. Greedy: accept while the
    draft is the verifier's argmax; else accept with probability ``min(1, p/q)`` and resample a
    rejection from ``normalize(max(0, p − q))`` (Leviathan et al., Chen et al.).
    """
    k = len(draft)
    if greedy:
        best = p.argmax(-1)
        bad = (best != draft).nonzero()
        if len(bad) == 0:
            return k, None
        j = int(bad[0])
        return j, int(best[j])
    rows = torch.arange(k, device=draft.device)
    ratio = (p[rows, draft] / q[rows, draft].clamp_min(1e-300)).clamp(max=1.0)
    u = torch.rand(k, dtype=ratio.dtype, device=draft.device, generator=generator)
    bad = (u > ratio).nonzero()
    if len(bad) == 0:
        return k, None
    j = int(bad[0])
    residual = (p[j] - q[j]).clamp_min(0)
    residual = residual / residual.sum() if float(residual.sum()) > 0 else p[j]
    return j, int(torch.multinomial(residual.float(), 1, generator=generator))


class S2D2(CommitRule):
    name = "s2d2"

    def loop(self, model: Any, prompt_ids: list[int], generator: torch.Generator | None) -> Iterator[Any]:
        from ..diffusion import decode_blocks, new_canvas
        from ..events import Clock, Done, Start, Step

        if not model.block_size or model.info.family == "diffusion-gemma":
            raise DlmError(f"strategy 's2d2' verifies with the model run at block size 1, which needs a "
                           f"block-diffusion model (SDAR, Fast-dLLM v2); {model.info.name} is a {model.info.family} "
                           "model; pick another strategy (e.g. -p speedy)")
        s = self.settings
        dev = model.device
        P, G = len(prompt_ids), s.max_new_tokens
        L = P + G
        mask_id = model.mask_id
        x = new_canvas(model, prompt_ids, G)
        B = min(s.block_length, G)
        model.begin(P, generator)
        blocks = decode_blocks(model, P, L, B)
        sample = dict(temperature=s.temperature, top_k=s.top_k, top_p=s.top_p, generator=generator)
        greedy = s.temperature == 0
        fill_token = model.eos_ids[0]
        eos = torch.tensor(model.eos_ids, device=dev)
        yield Start("diffusion", P, G, B)
        clock = Clock()
        ttft = None
        nfe = step = drafted = accepted = verifies = 0
        end = L

        def dist(logits: torch.Tensor) -> torch.Tensor:
            return torch.softmax(warp(logits.double(), s.temperature, s.top_k, s.top_p) if not greedy
                                 else logits.double(), -1)

        for b, (bs, be) in enumerate(blocks):
            if bs >= end:
                break
            while bool((x[0, bs:be] == mask_id).any()):
                logits = model.logits(x, 0, be, rows=(bs, be))[0]
                nfe += 1
                cand = x[0, bs:be] == mask_id
                x0, prob = propose(logits, **sample)
                conf = torch.where(cand, prob, torch.full_like(prob, -torch.inf))
                first = int(cand.nonzero()[0])
                k = int(torch.cumprod(cand[first:].long(), 0).sum())
                filled: list[int] = []
                if expected_accepted(prob[first : first + k]) >= s.s2d2_min_gain:
                    a0 = bs + first
                    span = x0[first : first + k]
                    draft = x.clone()
                    draft[0, a0 : a0 + k] = span
                    if model.shift:
                        ar = model.logits(draft, 0, a0 + k, rows=(a0, a0 + k), grid=1)[0]
                    else:  # in place: the predicted position must hold a mask; earlier ones the draft
                        batch = draft.repeat(k, 1)
                        for j in range(k):
                            batch[j, a0 + j :] = mask_id
                        out = model.logits(batch, 0, a0 + k, rows=(a0, a0 + k), grid=1)
                        ar = out[torch.arange(k), torch.arange(k)]
                    nfe += 1
                    verifies += 1
                    n, fix = speculative_accept(span, dist(logits[first : first + k]), dist(ar), generator, greedy)
                    drafted += k
                    accepted += n
                    tokens = span[:n].tolist() + ([fix] if fix is not None else [])
                    idx = list(range(first, first + len(tokens)))
                    confs = conf[first : first + len(tokens)].tolist()
                else:
                    sel = threshold_select(conf, cand, s.threshold)
                    idx = sel.nonzero().squeeze(-1).tolist()
                    tokens, confs = x0[idx].tolist(), conf[idx].tolist()
                if s.eotp:
                    hits = [n for n, (i, t) in enumerate(zip(idx, tokens)) if t in model.eos_ids]
                    if hits:
                        j = min(hits, key=lambda n: idx[n])
                        keep = [n for n in range(len(idx)) if idx[n] <= idx[j]]
                        idx, tokens, confs = [idx[n] for n in keep], [tokens[n] for n in keep], [confs[n] for n in keep]
                x[0, [bs + i for i in idx]] = torch.tensor(tokens, dtype=torch.long, device=dev)
                if s.eotp:
                    hit = [bs + i for i, t in zip(idx, tokens) if t in model.eos_ids]
                    if hit and min(hit) + 1 < end:
                        j = min(hit)
                        tail = x[0, j + 1 : end] == mask_id
                        filled = [p + j + 1 - P for p in tail.nonzero().squeeze(-1).tolist()]
                        x[0, j + 1 : end] = torch.where(tail, torch.full_like(x[0, j + 1 : end], fill_token),
                                                        x[0, j + 1 : end])
                        end = j + 1
                event = Step(step, nfe, [bs + i - P for i in idx], tokens, confs, block=b, filled=filled,
                             filled_token=fill_token if filled else None)
                busy = clock.pause()
                if ttft is None:
                    ttft = busy
                yield event
                clock.resume()
                step += 1
        out = x[0, P:]
        hits = torch.isin(out, eos).nonzero()
        cut = int(hits[0]) if len(hits) else G
        yield Done(tokens=out[:cut].tolist(), nfe=nfe, steps=step, seconds=clock.pause(), ttft_seconds=ttft,
                   finish_reason="eos" if len(hits) else "length",
                   stats={"blocks": len(blocks), "cache": "none", "drafted": drafted, "accepted": accepted,
                          "verifies": verifies})


register_strategy(
    Strategy(
        name="s2d2",
        kind="diffusion",
        summary="S2D2: block-diffusion drafts verified by the same model run as an AR model (block size 1)",
        keys=(
            THRESHOLD,
            Key("s2d2_min_gain", float, 2.0, "verify the leftmost masked span when its expected accepted length "
                "Σ_j Π_{i≤j} c_i reaches this (0: always, which is exactly greedy AR decoding)", min=0.0),
        ),
        factory=S2D2,
        conflicts=(("cache", "prefix", "S2D2 runs its diffusion and verify forwards without a cache; "
                    "set cache = \"none\""),
                   ("cache", "dual", "S2D2 runs its diffusion and verify forwards without a cache; "
                    "set cache = \"none\"")),
    )
)
