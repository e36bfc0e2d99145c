"""LocalLeap (Kong et al., 2025): anchors and their local neighbourhoods.

A masked position whose confidence is at least ``anchor_threshold`` is an anchor. Commit every
anchor, and every masked position within ``leap_radius`` positions of an anchor whose confidence
is at least ``leap_threshold``; always at least the single most confident position.
"""

from __future__ import annotations

import torch

from .base import CommitRule, StepState, top1


def localleap_select(confidence: torch.Tensor, candidates: torch.Tensor, anchor: float, leap: float,
                     radius: int) -> torch.Tensor:
    anchors = candidates & (confidence >= anchor)
    near = torch.nn.functional.max_pool1d(anchors.float()[None, None], 2 * radius + 1, stride=1,
                                          padding=radius)[0, 0] > 0
    return anchors | (candidates & near & (confidence >= leap)) | top1(confidence)


class LocalLeap(CommitRule):
    name = "localleap"

    def select(self, state: StepState) -> torch.Tensor:
        s = self.settings
        return localleap_select(state.confidence, state.candidates, s.anchor_threshold, s.leap_threshold,
                                s.leap_radius)
