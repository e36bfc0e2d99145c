"""ETE, Explore-Then-Exploit (Fu et al., 2025, arXiv 2511.21103): dlm's reading of the abstract.

Only the abstract is public: confidence-only commits carry almost no information per round, so
ETE (i) decodes across blocks and (ii) deliberately commits a few high-uncertainty tokens, whose
values reshape the rest into cascades of confident commits. The paper's rule, thresholds and
counts are not known; this is dlm's reading, labelled as such:

- exploit: commit every masked position of the window with ``c ≥ threshold`` (at least the top-1);
- explore: when that commits fewer than ``explore_below`` positions, also commit the
  ``explore`` masked positions of highest entropy (their argmax, or a sample when sampling).

Cross-block decoding is the profile's: its block is the whole canvas (``block_length = 256``), cut
only where a block-diffusion model's own grid requires it.
"""

from __future__ import annotations

import torch

from ..sampling import widen
from .base import CommitRule, StepState, entropy
from .threshold import threshold_select


def ete_select(state: StepState, tau: float, below: int, explore: int) -> torch.Tensor:
    """Threshold commits, plus the ``explore`` highest-entropy masks when fewer than ``below`` pass (no host sync)."""
    sel = threshold_select(state.confidence, state.candidates, tau)
    if explore == 0:
        return sel
    wide = widen(state.logits)
    open_ = state.candidates & ~sel
    h = torch.where(open_, entropy(torch.softmax(wide, -1)), torch.full((open_.shape[0],), -torch.inf,
                                                                      dtype=wide.dtype, device=wide.device))
    picked = torch.zeros_like(sel)
    picked[torch.topk(h, min(explore, h.shape[0])).indices] = True  # -inf rows (not open) are dropped below
    return sel | (picked & open_ & (sel.sum() < below))


class ExploreThenExploit(CommitRule):
    name = "ete"

    def select(self, state: StepState) -> torch.Tensor:
        s = self.settings
        return ete_select(state, s.threshold, s.explore_below, s.explore)
