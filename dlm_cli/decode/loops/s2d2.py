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
is a batch of ``k`` canvases, one per span position (still one NFE).

With ``cache = "prefix"`` (or ``"dual"``: the same for block-causal attention) both forwards keep
exact caches: the diffusion forward the block cache of every block-diffusion strategy (the keys
and values of finished blocks under block-causal attention), and the verifier, for next-token
aligned families, its own causal cache of the committed prefix (keys and values under causal
attention, which differ from the block-causal ones). After a verify, the verifier's cache is cut
back to the accepted prefix; positions committed by threshold steps are added at the next verify.
Outputs are identical with and without the caches.
"""

from __future__ import annotations

from typing import Any, Iterator, TYPE_CHECKING

import torch

from ..canvas import BlockCanvas
from ..events import Clock, Event
from ..cache import Forward
from ..rules.threshold import threshold_select
from ..sampling import make_sampler, warp, without

if TYPE_CHECKING:
    from ..keys import RunSettings
    from ...models.protocols import DLLM


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
    residual = torch.where(residual.sum() > 0, residual, p[j])  # no mass left: the verifier's own distribution
    # A draw from residual / Σ residual by exponential noise and argmax (no multinomial, no normalising).
    noise = torch.empty_like(residual).exponential_(1.0, generator=generator)
    return j, int(torch.argmax(residual / noise))


def run(model: DLLM, prompt_ids: list[int], settings: RunSettings, part: Any, generator: torch.Generator | None,
        clock: Clock) -> Iterator[Event]:
    s = settings
    model.begin(len(prompt_ids), generator)
    c = BlockCanvas(model, prompt_ids, s, clock)
    mask_id = c.mask_id
    drafter = Forward(model, s, c.length)  # the block cache (or none), and the diffusion NFE
    verifier = model.new_cache() if s.cache != "none" and model.shift else None
    verified = 0  # the verifier cache holds causal keys and values for [0, verified)
    sampler = make_sampler(s, generator, mask_id)
    greedy = s.temperature == 0
    neg_inf = torch.tensor(-torch.inf, dtype=c.wide, device=c.device)
    drafted = accepted = verifies = 0

    def dist(logits: torch.Tensor) -> torch.Tensor:
        """The distribution drafts and corrections come from: never the mask token."""
        logits = without(logits.double(), mask_id) if mask_id < logits.shape[-1] else logits.double()
        return torch.softmax(warp(logits, s.temperature, s.top_k, s.top_p) if not greedy else logits, -1)

    yield c.start()
    blocks = c.blocks()
    for b, (bs, be) in enumerate(blocks):
        if bs >= c.end:
            break
        first_step = True
        while c.masked(bs, be):
            x = c.x
            logits = drafter(x, bs, be, first=first_step)[0]
            first_step = False
            cand = x[0, bs:be] == mask_id
            x0, prob = sampler(logits)
            conf = torch.where(cand, prob, neg_inf)
            first = c.first_mask(bs, be) - bs
            k = int(torch.cumprod(cand[first:].long(), 0).sum())  # the leftmost masked span
            if expected_accepted(prob[first : first + k]) >= s.s2d2_min_gain:
                a0 = bs + first
                span = x0[first : first + k]
                draft = x.clone()
                draft[0, a0 : a0 + k] = span
                if verifier is not None:
                    ar = model.logits(draft, verified, a0 + k, cache=verifier, rows=(a0, a0 + k), grid=1)[0]
                elif model.shift:
                    ar = model.logits(draft, 0, a0 + k, rows=(a0, a0 + k), grid=1)[0]
                else:  # in place: the predicted position must hold a mask; earlier ones the draft
                    batch = draft.repeat(k, 1)
                    for j in range(k):
                        batch[j, a0 + j :] = mask_id
                    out = model.logits(batch, 0, a0 + k, rows=(a0, a0 + k), grid=1)
                    ar = out[torch.arange(k), torch.arange(k)]
                verifies += 1
                n, fix = speculative_accept(span, dist(logits[first : first + k]), dist(ar), generator, greedy)
                if verifier is not None:  # inputs up to the last accepted draft token are final
                    verified = a0 + n
                    verifier.truncate(verified)
                drafted += k
                accepted += n
                sel = torch.zeros_like(cand)
                sel[first : first + n + (fix is not None)] = True
                if fix is not None:
                    x0 = x0.clone()
                    x0[first + n] = fix
            else:
                sel = threshold_select(conf, cand, s.threshold)
            yield c.commit(bs, sel, x0, conf, nfe=drafter.nfe + verifies, block=b)
    drafter.close()
    yield c.done(drafter.nfe + verifies, blocks=len(blocks), cache=s.cache, drafted=drafted, accepted=accepted,
                 verifies=verifies)
