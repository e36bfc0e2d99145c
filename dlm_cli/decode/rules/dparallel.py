"""dParallel's entropy-threshold decoding (Chen et al., arXiv 2509.26488; ``get_transfer_index_entropy``).

In the current block, commit the lowest-entropy masked position, plus every masked position whose
entropy (nats, computed in float64) is at most ``entropy_threshold``. With a threshold of 0 it
decodes one token per step in lowest-entropy order. The paper uses 0.5 (LLaDA; 0.45 for MBPP and
Dream's math) on models distilled with certainty forcing (``dlm distill --method dparallel``).
"""

from __future__ import annotations

import torch

from ..declared.dparallel import ENTROPY_THRESHOLD
from .base import candidate_entropy, selection_rule


def entropy_threshold_select(logits: torch.Tensor, candidates: torch.Tensor, bound: float) -> torch.Tensor:
    """Candidates with ``H ≤ bound``, and always the lowest-entropy candidate."""
    h = candidate_entropy(logits, candidates)
    lowest = torch.arange(h.shape[0], device=h.device) == torch.argmin(h)  # on the device: no host sync
    return candidates & ((h <= bound) | lowest)


EntropyThreshold = selection_rule("entropy-threshold", ENTROPY_THRESHOLD, entropy_threshold_select)
