"""Token-to-token editing (LLaDA2.1, 2026): commit masks by threshold and rewrite committed tokens.

At each step, masked positions of the block are committed by the threshold rule (``threshold``,
mask-to-token). Already committed, non-prompt positions of the block whose current prediction
differs from their token with probability above ``edit_threshold`` are rewritten (token-to-token).
Once the block has no masks, post-steps run while the previous step edited, at most
``edit_post_steps`` per block. "S" (speedy) settings use a low ``threshold`` and rely on edits;
"Q" (quality) settings are conservative. Edits stay inside the current block, so every cache
remains valid; slots EoTP declared final are never edited.
"""

from __future__ import annotations

import torch

from .base import Edits, StepState
from .threshold import Threshold


def edit_select(x0: torch.Tensor, probability: torch.Tensor, tokens: torch.Tensor, editable: torch.Tensor,
                tau_edit: float) -> torch.Tensor:
    """Committed rows whose prediction differs from their token with probability above ``τ_edit``."""
    return editable & (x0 != tokens) & (probability > tau_edit)


class Edit(Threshold, Edits):
    name = "edit"

    def __init__(self, settings) -> None:
        super().__init__(settings)
        self.block, self.posts = -1, 0

    def edit(self, state: StepState) -> torch.Tensor:
        return edit_select(state.x0, state.probability, state.tokens, state.editable, self.settings.edit_threshold)

    def post_step(self, block: int, edited: bool) -> bool:
        if block != self.block:
            self.block, self.posts = block, 0
        if edited and self.posts < self.settings.edit_post_steps:
            self.posts += 1
            return True
        return False
