"""PPD's drafter (Chen et al. 2024, "Hardware-Aware Parallel Prompt Decoding", arXiv 2405.18628): prompt embeddings.

The whole drafter is ``k = prompts`` trained input embeddings ``[k, d]`` at the target's width. In
the target's own forward, ``k`` prompt slots follow a token at the next ``k`` positions; slot ``i``
(1-based) sees the token, everything before it and the slots ``< i`` (and itself), and its logits,
through the target's own layers and head, guess the token ``i + 1`` places after that token (the
token's own row guesses the next one). Nothing else is trained; the target stays frozen.

``spec``: ``{"prompts": k, "hidden_size": d}``, plus, after training, the hardware-aware tree the
decoder uses (:mod:`dlm_cli.train.ppd_tree`): ``"tree"`` (rank paths, best first), ``"hit_rates"``
(``[k][K]``: how often prompt ``i``'s rank-``r`` guess was the target's token on held-out rows) and
``"latency"`` (the target's measured forward seconds against input length on the training machine).
"""

from __future__ import annotations

from typing import Any

import torch
from torch import nn


class PromptNet(nn.Module):
    """``k`` prompt-token embeddings; PPD's only trained numbers (``prompts x hidden_size``)."""

    def __init__(self, spec: dict[str, Any]) -> None:
        super().__init__()
        self.spec = dict(spec)
        self.prompts = nn.Parameter(torch.zeros(int(spec["prompts"]), int(spec["hidden_size"])))

    @property
    def k(self) -> int:
        return int(self.prompts.shape[0])

    @torch.no_grad()
    def init_from(self, embedding: torch.Tensor, generator: torch.Generator) -> None:
        """Start each prompt as a draw from the per-dimension mean and spread of the target's token embeddings:
        a row of the scale the target's first layer expects."""
        e = embedding.detach().float()
        mean, std = e.mean(0), e.std(0)
        noise = torch.randn(self.prompts.shape, generator=generator)
        self.prompts.copy_(mean + std * noise.to(mean.device))


def input_length(nodes: int, k: int) -> int:
    """The rows of one PPD forward: the last token, ``nodes`` candidates, and ``k`` prompt slots on each of them and on the token."""
    return 1 + nodes + k * (nodes + 1)


def prior_rates(k: int, ranks: int) -> list[list[float]]:
    """Hit rates to rank paths by when the drafter carries none: falling with depth and with rank."""
    return [[0.6 ** (i + 1) * 0.5 ** r for r in range(ranks)] for i in range(k)]


def rank_paths(rates: list[list[float]], nodes: int) -> list[tuple[list[int], float]]:
    """The ``nodes`` most probable rank paths (``[r_1, ..., r_d]``: prompt ``i``'s rank-``r_i`` token at depth
    ``i``) and their scores ``Π rates[i][r_i]`` (PPD's ``expected_accuracy``), best first; every path's
    parent comes before it (a path is only reached through its parent)."""
    import heapq

    heap = [(-rates[0][r], (r,)) for r in range(len(rates[0]))] if rates else []
    heapq.heapify(heap)
    out: list[tuple[list[int], float]] = []
    while heap and len(out) < nodes:
        neg, path = heapq.heappop(heap)
        out.append((list(path), -neg))
        d = len(path)
        if d < len(rates):
            for r in range(len(rates[d])):
                heapq.heappush(heap, (neg * rates[d][r], path + (r,)))
    return out


def seconds_at(curve: list[list[float]], n: float) -> float:
    """The forward seconds at input length ``n``, linear between the measured points (and beyond the last two)."""
    pts = sorted((float(a), float(b)) for a, b in curve)
    if len(pts) == 1:
        return pts[0][1]
    for (x0, y0), (x1, y1) in zip(pts, pts[1:]):
        if n <= x1 or (x1, y1) == pts[-1]:
            return max(y0 + (y1 - y0) * (n - x0) / max(x1 - x0, 1e-9), 1e-9)
    return pts[-1][1]


def best_tree(rates: list[list[float]], curve: list[list[float]], k: int,
              max_nodes: int = 64) -> tuple[list[list[int]], float, float]:
    """The tree (rank paths) with the most expected tokens per second: ``(1 + Σ path scores) / seconds(input
    length)`` over every size up to ``max_nodes``; also its expected tokens per forward and per second."""
    ranked = rank_paths(rates, max_nodes)
    best, best_rate, expected = 0, 1.0 / seconds_at(curve, input_length(0, k)), 1.0
    total = 1.0
    for n, (_, score) in enumerate(ranked, 1):
        total += score
        rate = total / seconds_at(curve, input_length(n, k))
        if rate > best_rate:
            best, best_rate, expected = n, rate, total
    return [p for p, _ in ranked[:best]], expected, best_rate
