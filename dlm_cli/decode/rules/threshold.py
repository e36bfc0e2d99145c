"""Fast-dLLM's confidence-aware parallel decoding (Wu et al., 2025): threshold and factor rules."""

from __future__ import annotations

import torch

from ..keys import Key, Strategy, register_strategy
from .base import CommitRule, StepState, top1

THRESHOLD = Key("threshold", float, 0.9, "commit every masked position of the block whose confidence is ≥ this",
                min=0.0, max=1.0)


def threshold_select(confidence: torch.Tensor, candidates: torch.Tensor, tau: float) -> torch.Tensor:
    """Commit every candidate with ``c ≥ τ``, and always at least the most confident one."""
    return (candidates & (confidence >= tau)) | top1(confidence)


class Threshold(CommitRule):
    """Commit every masked position with ``c_i ≥ τ``, and at least the single most confident one."""

    name = "threshold"

    def select(self, state: StepState) -> torch.Tensor:
        return threshold_select(state.confidence, state.candidates, self.settings.threshold)


class Factor(CommitRule):
    """Sort ``c`` descending; commit the top ``n`` for the largest ``n`` with ``(n + 1)(1 - c_(n)) < f``, at least 1."""

    name = "factor"

    def select(self, state: StepState) -> torch.Tensor:
        conf = state.confidence
        m = int(state.candidates.sum())
        ranked, order = torch.sort(conf, descending=True)
        n = torch.arange(1, m + 1, device=conf.device, dtype=conf.dtype)
        # The left side grows with n (c_(n) falls), so the largest n that passes is the count that pass.
        count = max(int(((n + 1) * (1 - ranked[:m]) < self.settings.factor).sum()), 1)
        out = torch.zeros_like(state.candidates)
        out[order[:count]] = True
        return out


register_strategy(
    Strategy(
        name="threshold",
        kind="diffusion",
        summary="Fast-dLLM threshold: commit every masked position with confidence ≥ threshold (at least one)",
        keys=(THRESHOLD,),
        factory=Threshold,
    )
)
register_strategy(
    Strategy(
        name="factor",
        kind="diffusion",
        summary="Fast-dLLM factor: commit the top n while (n + 1)(1 − c_(n)) < factor",
        keys=(Key("factor", float, 1.0, "the factor f of the rule (n + 1)(1 − c_(n)) < f", min=0.0, min_open=True),),
        factory=Factor,
    )
)
