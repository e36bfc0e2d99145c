"""Fast-dLLM's confidence-aware parallel decoding (Wu et al., 2025): threshold and factor rules."""

from __future__ import annotations


import torch

from .base import CommitRule, StepState, rank_scores, top1


def threshold_select(confidence: torch.Tensor, candidates: torch.Tensor, tau: float) -> torch.Tensor:
    """Commit every candidate with ``c ≥ τ``, and always at least the most confident one."""
    return (candidates & (confidence >= tau)) | top1(confidence)


class Threshold(CommitRule):
    """Commit every masked position with ``c_i ≥ τ``, and at least the single most confident one.

    With ``rank = "margin"`` the score compared with ``τ`` is ``p_top1 − p_top2`` instead of ``c_i``.
    """

    name = "threshold"

    def select(self, state: StepState) -> torch.Tensor:
        score = rank_scores(state, self.settings.rank)
        return threshold_select(score, state.candidates, self.settings.threshold)


class Factor(CommitRule):
    """Sort ``c`` descending; commit the top ``n`` for the largest ``n`` with ``(n + 1)(1 - c_(n)) < f``, at least 1."""

    name = "factor"

    def select(self, state: StepState) -> torch.Tensor:
        conf = state.confidence
        ranked, order = torch.sort(conf, descending=True)
        n = torch.arange(1, conf.shape[0] + 1, device=conf.device, dtype=conf.dtype)
        # The left side grows with n (c_(n) falls), so the largest n that passes is the count that pass;
        # non-candidates rank last with c = -inf and never pass. Counted on the device: no host sync.
        count = ((n + 1) * (1 - ranked) < self.settings.factor).sum().clamp_min(1)
        out = torch.zeros_like(state.candidates)
        out[order] = n <= count
        return out
