"""CreditDecoding (Wang et al., 2025): trace credits fused into the logits, then the threshold rule.

A credit tensor ``C`` over (block position, vocabulary) remembers what the model kept predicting
at each still-masked position. At each step: decay ``C ← β·C``; add ``p_top1^γ`` to each masked
position's top-1 token; fuse ``logits' = logits + α·log(1 + C)``; apply the threshold rule to the
fused logits (candidates and confidences come from them). ``C`` is reset at each new block.
"""

from __future__ import annotations

import torch

from .base import AdjustsLogits
from .threshold import Threshold


def credit_update(credit: torch.Tensor, logits: torch.Tensor, candidates: torch.Tensor, beta: float,
                  gamma: float) -> torch.Tensor:
    """``β·C`` plus ``p_top1^γ`` at each candidate row's top-1 token (in place; returns ``credit``)."""
    credit.mul_(beta)
    top = torch.softmax(logits.float(), -1).max(-1)
    # Every row adds at its top-1 token, non-candidates 0 (x + 0 is x): no nonzero, no host sync.
    gain = torch.where(candidates, top.values.pow(gamma), 0.0).to(credit.dtype)
    credit.scatter_add_(1, top.indices.unsqueeze(-1), gain.unsqueeze(-1))
    return credit


def fuse(logits: torch.Tensor, credit: torch.Tensor, alpha: float) -> torch.Tensor:
    """``logits + α·log(1 + C)``."""
    return logits + alpha * torch.log1p(credit).to(logits.dtype)


class Credit(Threshold, AdjustsLogits):
    name = "credit"

    def __init__(self, settings) -> None:
        super().__init__(settings)
        self.credit: torch.Tensor | None = None  # the current block's credits
        self.block = -1

    def adjust_logits(self, logits: torch.Tensor, candidates: torch.Tensor, block: int) -> torch.Tensor:
        s = self.settings
        if block != self.block or self.credit is None or self.credit.shape != logits.shape:
            self.credit = torch.zeros(logits.shape, dtype=torch.float32, device=logits.device)
            self.block = block
        credit_update(self.credit, logits, candidates, s.credit_decay, s.credit_gamma)
        return fuse(logits, self.credit, s.credit_alpha)
