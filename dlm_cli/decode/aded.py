"""ADED (Liu et al., AAAI 2025, arXiv 2407.12021): drafts from a self-updating tri-gram table, no draft model.

The rule, as read from the authors' code (``liuxukun2000/Adaptix``; METHODS-MORE §5):

- **Table.** ``P(c | a, b) = count / Σ count`` over the 3-grams of a corpus, keeping the top 12
  successors of each ``(a, b)``. dlm has no corpus at run time, so the table is built from the
  prompt (as the issue asks), and then adapts: at every step each 3-gram in the last 16 tokens
  of the context gets ``w += 0.04``, capped at 3.0; new keys are inserted. Weights are not
  renormalised.
- **Draft (MCTS)** from the root key (second-last, last committed token): ``aded_iterations``
  iterations to depth ``draft_length``; selection by PUCT
  ``score/visits + (c1 + ln((N + c2 + 1)/c2))·w·√N/(1 + visits)`` (c1 = 32, c2 = 8, ``w`` the
  child's weight); expansion adds the top ``aded_top_k`` successors; the rollout samples
  successors by weight to full depth; the reward is ``1 + Σ w`` along the path, backed up.
- **Tree.** The ``tree_width`` most visited nodes' paths (24 in the paper), each extended greedily
  by one token, merged into a trie of at most ``tree_nodes`` nodes (64), lowest-visit paths
  dropped first; verified in one target forward (:mod:`.tree`). With ``tree_width = 1`` the draft
  is one path: the most visited child at each level, extended greedily by one token.

The draft length adapts on its own: a path is as deep as the search found visits for, at most
``draft_length + 1``; METHODS-MORE §5 states no other length controller, so dlm adds none.
Verification is :mod:`lookup`'s (a proposal without probabilities): greedy output identical to
``ar``; sampling exact (one-hot draft, SpecInfer's rule in :mod:`.tree`). ADED's own top-p
"nucleus posterior" is not exact, and dlm does not use it.
"""

from __future__ import annotations

import math
import random
from typing import Any, TYPE_CHECKING

import torch

from .drafts import EMPTY, NoDraft

if TYPE_CHECKING:
    from .keys import RunSettings

LOAD_TOP = 12  # successors kept per key when the table is built
STEP, CAP, WINDOW = 0.04, 3.0, 16  # the adaptive update
C1, C2 = 32.0, 8.0  # PUCT constants


class Trigrams:
    """``(a, b) -> {c: weight}``: the prompt's 3-gram distribution, then ADED's additive update."""

    def __init__(self) -> None:
        self.table: dict[tuple[int, int], dict[int, float]] = {}

    def build(self, seq: list[int]) -> None:
        counts: dict[tuple[int, int], dict[int, int]] = {}
        for a, b, c in zip(seq, seq[1:], seq[2:]):
            row = counts.setdefault((a, b), {})
            row[c] = row.get(c, 0) + 1
        self.table = {}
        for key, row in counts.items():
            total = sum(row.values())
            top = sorted(row.items(), key=lambda kv: -kv[1])[:LOAD_TOP]
            self.table[key] = {c: n / total for c, n in top}

    def update(self, seq: list[int]) -> None:
        tail = seq[-WINDOW:]
        for a, b, c in zip(tail, tail[1:], tail[2:]):
            row = self.table.setdefault((a, b), {})
            row[c] = min(CAP, row.get(c, 0.0) + STEP)

    def successors(self, key: tuple[int, int], k: int) -> list[tuple[int, float]]:
        row = self.table.get(key)
        if not row:
            return []
        return sorted(row.items(), key=lambda kv: -kv[1])[:k]


class Node:
    __slots__ = ("tokens", "weight", "children", "visits", "score", "expanded")

    def __init__(self, tokens: tuple[int, ...], weight: float) -> None:
        self.tokens, self.weight = tokens, weight
        self.children: list[Node] = []
        self.visits = 0
        self.score = 0.0
        self.expanded = False


def search(table: Trigrams, a: int, b: int, iterations: int, depth: int, top_k: int,
           rng: random.Random) -> Node:
    """ADED's MCTS from the key ``(a, b)``: the root of the searched tree (children hold their token paths)."""
    root = Node((), 0.0)
    for _ in range(iterations):
        node, path, key = root, [root], (a, b)
        while node.expanded and node.children and len(path) - 1 < depth:
            big_n = node.visits
            explore = (C1 + math.log((big_n + C2 + 1) / C2)) * math.sqrt(big_n)
            node = max(node.children, key=lambda c: (c.score / c.visits if c.visits else 0.0)
                       + explore * c.weight / (1 + c.visits))
            path.append(node)
            key = (key[1], node.tokens[-1])
        if len(path) - 1 < depth and not node.expanded:
            node.children = [Node(node.tokens + (t,), w) for t, w in table.successors(key, top_k)]
            node.expanded = True
        reward = 1.0 + sum(n.weight for n in path[1:])
        level = len(path) - 1
        while level < depth:
            row = table.table.get(key)
            if not row:
                break
            toks, weights = list(row), list(row.values())
            t = rng.choices(toks, weights)[0]
            reward += row[t]
            key = (key[1], t)
            level += 1
        for n in path:
            n.visits += 1
            n.score += reward
    return root


class AdedDraft(NoDraft):
    """The ADED draft source: tri-gram table from the prompt, adaptive update, MCTS draft (chain or tree)."""

    name = "aded"

    def __init__(self, settings: RunSettings) -> None:
        super().__init__()
        self.settings = settings
        self.table = Trigrams()
        self.rng = random.Random(0)
        self.lengths: list[int] = []
        self.sizes: list[int] = []

    def begin(self, seq: list[int], generator: torch.Generator | None) -> None:
        self.table.build(seq)
        self.rng = random.Random(generator.initial_seed() if generator is not None else 0)

    def _paths(self, seq: list[int], room: int, width: int) -> list[list[int]]:
        s = self.settings
        depth = min(s.draft_length, room)
        if depth <= 0 or len(seq) < 2:
            return []
        self.table.update(seq)
        root = search(self.table, seq[-2], seq[-1], s.aded_iterations, depth, s.aded_top_k, self.rng)
        if width == 1:
            node, chosen = root, None
            while node.children and any(c.visits for c in node.children):
                node = chosen = max(node.children, key=lambda c: c.visits)
            picked = [chosen] if chosen is not None else []
        else:
            nodes, stack = [], list(root.children)
            while stack:
                n = stack.pop()
                if n.visits:
                    nodes.append(n)
                    stack.extend(n.children)
            picked = sorted(nodes, key=lambda n: -n.visits)[:width]
        paths = []
        for n in picked:
            path = list(n.tokens)
            if len(path) < room:  # ADED extends each sequence greedily by one token
                key = (seq[-1], path[0]) if len(path) == 1 else (path[-2], path[-1])
                best = self.table.successors(key, 1)
                if best:
                    path.append(best[0][0])
            paths.append(path)
        return paths

    def propose(self, seq: list[int], room: int) -> tuple[torch.Tensor, torch.Tensor | None]:
        paths = self._paths(seq, room, 1)
        if not paths:
            return EMPTY, None
        self.lengths.append(len(paths[0]))
        return torch.tensor(paths[0], dtype=torch.long), None

    def propose_tree(self, seq: list[int], room: int) -> Any:
        from .tree import trie

        paths = self._paths(seq, room, self.settings.tree_width)
        if not paths:
            return None
        tree = trie(paths)
        while len(tree) > self.settings.tree_nodes and len(paths) > 1:
            paths = paths[:-1]  # the lowest-visit path goes first
            tree = trie(paths)
        self.lengths.append(max(tree.depths))
        self.sizes.append(len(tree))
        return tree

    def stats(self) -> dict[str, Any]:
        out: dict[str, Any] = {"mean_draft_length": sum(self.lengths) / len(self.lengths) if self.lengths else 0.0,
                               "table_keys": len(self.table.table)}
        if self.sizes:
            out["mean_tree_nodes"] = sum(self.sizes) / len(self.sizes)
        return out
