"""Prophet: early commit once the answer is settled (Li et al., 2025, "Diffusion language models
know the answer before decoding").

Decode as the baseline does (LLaDA schedule); after each step, compute ``g`` = the mean, over the
next ``prophet_window`` still-masked positions of the block, of (top-1 logit − top-2 logit). The
bar ``τ(t)`` is 7.5 while less than a third of the generation is decoded, 5.0 in the second third
and 2.5 in the last. When ``g ≥ τ(t)``, every remaining mask is filled with its argmax at once and
decoding stops (the block's masks from this step's logits, the rest from one more forward).
"""

from __future__ import annotations

import torch

from .base import Settles, StepState
from .baseline import Baseline

BARS = (7.5, 5.0, 2.5)


def bar(progress: float) -> float:
    """Prophet's gap bar ``τ(t)`` for the fraction ``progress`` of the generation already decoded."""
    return BARS[min(int(progress * 3), 2)]


def top2_gap(logits: torch.Tensor, rows: torch.Tensor, window: int, count: int | None = None) -> torch.Tensor | None:
    """Mean top-1 minus top-2 logit over the first ``window`` rows set in ``rows`` (a device scalar); None if none is.

    ``count``, the number of rows set when the caller knows it, keeps the host from reading it.
    """
    if count is None:
        count = int(rows.sum())
    k = min(count, window)
    if k == 0:
        return None
    # The first k set rows, in order, found on the device: set rows keep their index, the others sort last.
    at = torch.arange(rows.shape[0], device=rows.device)
    idx = torch.sort(torch.where(rows, at, rows.shape[0])).values[:k]
    top = torch.topk(logits[idx].float(), 2, dim=-1).values
    return (top[:, 0] - top[:, 1]).mean()


class Prophet(Baseline, Settles):
    name = "prophet"

    def settled(self, state: StepState, selected: torch.Tensor, left: int | None = None) -> torch.Tensor | None:
        """The top-2 gap over the next masks this step leaves is above the bar for the progress so far."""
        if left is None and state.masked is not None:  # the schedule's top-k commits min(quota, masked) of them
            left = state.masked - min(state.quota, state.masked)
        g = top2_gap(state.logits, state.candidates & ~selected, self.settings.prophet_window, left)
        return None if g is None else g >= bar(state.progress)
