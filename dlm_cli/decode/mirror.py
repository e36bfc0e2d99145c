"""Mirror speculative decoding's schedule on one device (arXiv 2510.13161; ``-p mirror --draft MODEL``).

Mirror-SD runs the draft and the target on two devices at once. While the target verifies a window
of ``γ`` draft tokens, it exits early at layer ``ℓ_e``: the output layer applied to that layer's
states gives, for every depth of the window, the top-``κ`` candidates for the token the target will
put there. The draft device meanwhile drafts, for every depth ``j`` and candidate ``v``, the next
window after (the draft's first ``j`` tokens, ``v``). When the target's correction ``c`` at depth ``τ``
(or its bonus token after a full accept) is among depth ``τ``'s candidates, that branch is the next
window at once; otherwise the draft drafts it after the verify, as plain speculative decoding does.

On one device the two pipelines run one after the other, so this is the schedule, not its speed. What
is exact here: the token stream (a reused branch is the draft's greedy continuation after the same
tokens, which is what the next draft would be anyway, so the output is speculative decoding's with a
fixed window, and greedy output is the target's), the tokens per target forward, and the branch reuse
and fallback counts (``c`` among the early exit's top ``κ`` at depth ``τ``, read from the verify
forward's own hidden states: no extra target forward; counted for every verdict a next window follows). What is projected: the two-device time,
``Σ`` over steps of ``f·T_v + max((1 − f)·T_v, T_d)`` after a reused branch and ``T_v + T_d`` after a
fallback, where ``T_v`` is the step's measured verify time, ``T_d`` the next window's measured draft
time and ``f = ℓ_e / depth`` the share of the target's layers before the exit (layers taken as equal
in cost; no transfer time). ``--json`` reports both; neither is a measured speedup.
"""

from __future__ import annotations

import time
from typing import Any, TYPE_CHECKING

import torch

from ..errors import UsageError
from .drafts import EMPTY, ModelDraft

if TYPE_CHECKING:
    from .keys import RunSettings


class MirrorDraft(ModelDraft):
    """Speculative decoding's draft with a fixed window, and the early exit's reuse test per verify."""

    name = "mirror"

    def __init__(self, draft: Any, target: Any, settings: RunSettings, width: int, stop: tuple[int, ...] = ()) -> None:
        super().__init__(draft, settings, width, stop)
        self.target = target
        depth = target.depth
        self.exit = settings.mirror_exit_layer or max(1, depth // 2)
        if self.exit > depth:
            raise UsageError(f"mirror_exit_layer = {self.exit} is deeper than {target.info.name}'s {depth} layers; "
                             f"pick 1 to {depth}")
        self.share = self.exit / depth
        self.features = (self.exit - 1,)  # the AR loop hands observe() this layer's outputs (0-based index)
        self.top: torch.Tensor | None = None
        self.hits = self.misses = 0
        self.projected = self.serial = 0.0
        self.t_proposed: float | None = None
        self.t_verify = 0.0
        self.reused: bool | None = None  # did the last verdict reuse a branch (None before the first)

    def begin(self, seq: list[int], generator: torch.Generator | None) -> None:
        super().begin(seq, generator)
        self.length = self.settings.draft_length
        self.top, self.reused, self.t_proposed = None, None, None

    def propose(self, seq: list[int], room: int) -> tuple[torch.Tensor, torch.Tensor | None]:
        t0 = time.perf_counter()
        if self.reused is not None:  # the last verdict's test counts now that its next window is wanted
            self.hits += self.reused
            self.misses += not self.reused
        count = min(self.length, room)
        if count <= 0:
            out: tuple[torch.Tensor, torch.Tensor | None] = (EMPTY, None)
        else:
            self.lengths.append(count)
            out = self.run(seq[self.cached:], count, self.stop, confidence=0.0)
        t_draft = time.perf_counter() - t0
        self.serial += t_draft
        if self.reused is None:  # the first window: nothing to overlap it with
            self.projected += t_draft
        elif self.reused:
            tv = self.t_verify
            self.projected += self.share * tv + max((1 - self.share) * tv, t_draft)
        else:
            self.projected += self.t_verify + t_draft
        self.t_proposed = time.perf_counter()
        return out

    def observe(self, feats: torch.Tensor) -> None:
        """The exit layer's outputs at the committed positions of the verify forward: the last one predicts the
        token after them (the correction, or the bonus), whose early-exit candidates are kept."""
        if self.t_proposed is not None:
            self.t_verify = time.perf_counter() - self.t_proposed
            self.serial += self.t_verify
        logits = self.target.early_logits(feats[-1:])[0]
        self.top = logits.topk(min(self.settings.mirror_topk, logits.shape[-1])).indices

    def keep(self, seq: list[int], n: int, k: int) -> int:
        self.cached = min(self.cached, len(seq) - 1)  # a fixed window: no adaptive length
        return self.cached

    def accepted(self, seq: list[int], n: int, k: int) -> None:
        super().accepted(seq, n, k)
        if self.top is None:
            return
        # The committed correction or bonus among the candidates; counted at the next window (a last verdict,
        # which ends the answer, wants none).
        self.reused = bool((self.top == seq[-1]).any())
        self.top = None

    def stats(self) -> dict[str, Any]:
        tests = self.hits + self.misses
        out = super().stats()
        out.update(mirror_exit_layer=self.exit, mirror_topk=self.settings.mirror_topk, branch_reuses=self.hits,
                   fallbacks=self.misses, branch_reuse_rate=self.hits / tests if tests else 0.0,
                   serial_seconds=self.serial, projected_two_device_seconds=self.projected)
        return out
