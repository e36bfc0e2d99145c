"""Baseline: LLaDA's low-confidence remasking with semi-autoregressive blocks (Nie et al., 2025).

Each block gets ``steps * block_length / max_new_tokens`` steps; the number committed per step is
spread evenly over them (the first steps take the remainder). At each step the top-k most
confident masked positions of the block are committed. ``remasking = "random"`` ranks by uniform
noise instead; ``rank`` ranks by margin or negative entropy (Dream's ``topk_margin`` and
``entropy``). With ``steps = max_new_tokens`` this is one token per step: the quality reference.
"""

from __future__ import annotations

import torch

from .base import CommitRule, Scheduled, StepState, rank_scores, topk_mask


def schedule(masked: int, steps: int) -> list[int]:
    """LLaDA's even spread: how many positions to commit at each of ``steps`` steps (remainder first)."""
    steps = max(1, steps)
    base, extra = divmod(masked, steps)
    return [base + (1 if i < extra else 0) for i in range(steps)]


class Baseline(CommitRule, Scheduled):
    name = "baseline"

    def quotas(self, masked: int, width: int, slots: int) -> list[int]:
        """The block's share of ``steps`` (default: one per slot), spread evenly over its masks."""
        return schedule(masked, (self.settings.steps or slots) * width // slots)

    def select(self, state: StepState) -> torch.Tensor:
        conf = rank_scores(state, self.settings.rank)
        if self.settings.remasking == "random":
            noise = torch.rand(conf.shape, device=conf.device, generator=state.generator, dtype=conf.dtype)
            conf = torch.where(state.candidates, noise, torch.full_like(conf, -torch.inf))
        return topk_mask(conf, state.quota)
