"""Entropy-bounded commit (the EB-sampler of Ben-Hamu et al., 2025; SDAR's entropy-bounded decoding).

Rank the masked positions of the block by entropy, lowest first, and commit the largest prefix of
that order whose summed entropy stays within ``entropy_budget`` (nats); at least one position.
A budget near 0 decodes one token per step; a large one commits the whole block at once.
"""

from __future__ import annotations

import torch

from ..declared.entropy import ENTROPY_BUDGET
from .base import candidate_entropy, selection_rule


def entropy_bounded_select(logits: torch.Tensor, candidates: torch.Tensor, budget: float) -> torch.Tensor:
    """The largest set of lowest-entropy candidates with ``Σ H ≤ budget``, at least one."""
    h = candidate_entropy(logits, candidates)
    ranked, order = torch.sort(h)
    # Non-candidates rank last with H = inf (their prefix sums never pass a finite budget, and the
    # final & drops them for an infinite one). Counted on the device: no host sync.
    count = (torch.cumsum(ranked, 0) <= budget).sum().clamp_min(1)
    out = torch.zeros_like(candidates)
    out[order] = torch.arange(1, h.shape[0] + 1, device=h.device) <= count
    return out & candidates


EntropyBounded = selection_rule("eb", ENTROPY_BUDGET, entropy_bounded_select)
