"""CD4LM's confidence-adaptive decoding, CAD (Liang et al., arXiv 2601.02236; ``generate_block``).

Each step, over the block's masked positions: while less than ``cad_eos_progress`` of the answer is
final, end-of-text candidates are held back (confidence −∞) unless they are the only candidates;
commit the top ``k = clamp(#{c ≥ threshold}, 1, cad_max_commits)``; once the block has run
``cad_max_steps`` steps (0: as many as the block has slots), commit everything left. So CAD is the
threshold rule with a cap on commits per step, an early-EOS guard and a step cap per block. The
paper's evaluation uses threshold 0.95, ``K_max`` 32 and ``ρ`` 0.3 (profile ``cad``).
"""

from __future__ import annotations

from typing import TYPE_CHECKING

import torch

from .base import CommitRule, NeedsModel, StepState

if TYPE_CHECKING:
    from ..keys import RunSettings
    from ...models.protocols import DLLM


class ConfidenceAdaptive(CommitRule, NeedsModel):
    name = "cad"

    def __init__(self, settings: RunSettings) -> None:
        super().__init__(settings)
        self.eos: torch.Tensor | None = None

    def bind(self, model: DLLM) -> list[str]:
        self.eos = torch.tensor(sorted(set(model.eos_ids)), dtype=torch.long)
        return []

    def select(self, state: StepState) -> torch.Tensor:
        s = self.settings
        cand = state.candidates
        cap = s.cad_max_steps or cand.shape[0]
        if state.step + 1 >= cap:
            return cand.clone()
        conf = state.confidence
        if self.eos is not None and state.progress < s.cad_eos_progress:
            is_eos = torch.isin(state.x0, self.eos.to(state.x0.device)) & cand
            others = cand & ~is_eos
            # Hold the EOS candidates back unless nothing else is left (decided on the device).
            conf = torch.where(is_eos & others.any(), torch.full_like(conf, -torch.inf), conf)
        count = (conf >= s.threshold).sum().clamp(1, s.cad_max_commits)
        ranked = torch.argsort(conf, descending=True, stable=True)
        out = torch.zeros_like(cand)
        out[ranked] = torch.arange(cand.shape[0], device=cand.device) < count
        return out & cand
