"""LocalLeap (Kong et al., 2025): anchors and their local neighbourhoods.

A masked position whose confidence is at least ``anchor_threshold`` is an anchor. Commit every
anchor, and every masked position within ``leap_radius`` positions of an anchor whose confidence
is at least ``leap_threshold``; always at least the single most confident position.
"""

from __future__ import annotations

import torch

from ..keys import Key, Strategy, register_strategy
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


register_strategy(
    Strategy(
        name="localleap",
        kind="diffusion",
        summary="LocalLeap: commit anchors (c ≥ anchor_threshold) and their neighbours within leap_radius "
                "with c ≥ leap_threshold",
        keys=(
            Key("anchor_threshold", float, 0.9, "a masked position with confidence ≥ this is an anchor",
                min=0.0, max=1.0),
            Key("leap_threshold", float, 0.75, "neighbours of an anchor are committed when their confidence "
                "is ≥ this", min=0.0, max=1.0),
            Key("leap_radius", int, 4, "neighbourhood radius, in positions, around each anchor", min=0),
        ),
        factory=LocalLeap,
    )
)
