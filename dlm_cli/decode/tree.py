"""Token trees: several draft continuations verified in one target forward (SpecInfer; Medusa's tree attention).

A :class:`Tree` is a trie of draft paths hanging off the *root*, the last committed token. The
target sees, in one forward, the committed tokens its cache lacks (the last of them is the root)
and every node, each node attending to the cached prefix, those tokens, its ancestors and itself
(:func:`attention`), at position ``len(seq) - 1 + depth``. Its logits at the root and at each node
are the target's next-token distributions after each prefix in the tree.

Verification (:func:`verify`) walks from the root:

- greedy: follow the child whose token is the target's argmax; the output is the target's own
  greedy output (Medusa's longest accepted path, here unique because siblings differ);
- sampling, deterministic drafts (lookup, ADED, the greedy top-k tree of a draft model): draw
  ``x ~ p`` at each node and follow the child whose token is ``x``, else ``x`` is the correction.
  This is SpecInfer's multi-draft verifier with one-hot draft distributions: ``accept c1 with
  p(c1)``, otherwise ``p <- norm(p without c1)`` and try ``c2``, ..., which commits each token with
  probability exactly ``p``;
- sampling, i.i.d. drafts with probabilities (a draft model's sampled paths): SpecInfer's
  verifier (METHODS-MORE §8) in its multi-step form: at a node whose children were drawn i.i.d.
  from ``q`` (one attempt per path through the node, repeats included), try them in path order,
  accept ``x`` with ``min(1, p(x)/q(x))``, otherwise ``p <- norm((p - q)+)``; when every attempt is
  rejected, sample the correction from the last ``p``. Exact for i.i.d. drafts (SpecInfer, Miao et
  al. 2023, Thm. 4.2).

After the verdict :func:`keep_branch` moves the accepted branch's keys and values to the
contiguous positions after the committed prefix and crops the rest, so the cache is exactly the
cache of the committed prefix (their rotary positions were already the final ones).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import torch

from ..models.causal import rollback
from .sampling import probabilities, sample


@dataclass
class Tree:
    """Draft nodes in topological order: ``tokens[i]`` whose parent is node ``parents[i]`` (-1: the root).

    ``attempts[r]`` lists, for row ``r`` (0: the root, ``i + 1``: node ``i``), the child nodes to try
    in order; ``q`` (``[N + 1, V]`` or None) is the draft distribution each row's children were
    drawn from, for i.i.d. drafts. ``paths`` are the source's paths, best first.
    """

    tokens: list[int]
    parents: list[int]
    attempts: list[list[int]]
    paths: list[list[int]]
    q: torch.Tensor | None = None
    depths: list[int] = field(default_factory=list)

    def __post_init__(self) -> None:
        if not self.depths:
            self.depths = _depths(self.parents)

    def __len__(self) -> int:
        return len(self.tokens)

    def children(self, row: int) -> list[int]:
        seen: list[int] = []
        for c in self.attempts[row]:
            if c not in seen:
                seen.append(c)
        return seen

    def branch(self, path: list[int]) -> list[int]:
        """The tokens of the first source path that goes through the accepted ``path`` (nodes)."""
        want = [self.tokens[i] for i in path]
        return next((p for p in self.paths if p[: len(want)] == want), want)


def _depths(parents: list[int]) -> list[int]:
    out: list[int] = []
    for p in parents:
        out.append(1 if p < 0 else out[p] + 1)
    return out


def trie(paths: list[list[int]], q: list[list[torch.Tensor]] | None = None, iid: bool = False) -> Tree:
    """Merge ``paths`` (token lists, best first) into a :class:`Tree`.

    ``q[b][d]`` is the draft distribution ``paths[b][d]`` was drawn from; with ``iid`` every path
    through a node is one attempt at its children (repeats kept, SpecInfer's multiset), otherwise
    each child is tried once, in the order the paths list them.
    """
    index: dict[tuple[int, ...], int] = {}
    tokens: list[int] = []
    parents: list[int] = []
    attempts: list[list[int]] = [[]]
    rows: dict[int, torch.Tensor] = {}
    for b, path in enumerate(paths):
        row, prefix = 0, ()
        for d, t in enumerate(path):
            prefix += (t,)
            node = index.get(prefix)
            if node is None:
                node = index[prefix] = len(tokens)
                tokens.append(t)
                parents.append(row - 1)
                attempts.append([])
            if iid or node not in attempts[row]:
                attempts[row].append(node)
            if q is not None and row not in rows:
                rows[row] = q[b][d]
            row = node + 1
    qt = None
    if q is not None and rows:
        some = next(iter(rows.values()))
        qt = torch.zeros(len(tokens) + 1, some.shape[-1], dtype=some.dtype, device=some.device)
        have = sorted(rows)
        qt[have] = torch.stack([rows[r] for r in have])
    return Tree(tokens, parents, attempts, [list(p) for p in paths if p], qt)


def attention(tree: Tree, cached: int, pending: int, dtype: torch.dtype,
              device: torch.device) -> tuple[torch.Tensor, torch.Tensor]:
    """The 4-D additive mask ``[1, 1, pending + N, cached + pending + N]`` and the position ids ``[1, pending + N]``.

    The ``pending`` committed tokens the cache lacks attend causally; every node attends to the
    cached prefix, all pending tokens, its ancestors and itself.
    """
    n = len(tree)
    m = pending
    see = torch.zeros(m + n, cached + m + n, dtype=torch.bool)
    see[:, :cached] = True
    see[:m, cached: cached + m] = torch.ones(m, m, dtype=torch.bool).tril()
    see[m:, cached: cached + m] = True
    for i, p in enumerate(tree.parents):
        row = see[m + i]
        row[cached + m + i] = True
        while p >= 0:
            row[cached + m + p] = True
            p = tree.parents[p]
    mask = torch.zeros(see.shape, dtype=dtype).masked_fill_(~see, torch.finfo(dtype).min)
    start = cached + m - 1  # the root's position
    pos = list(range(cached, cached + m)) + [start + d for d in tree.depths]
    return mask[None, None].to(device), torch.tensor([pos], dtype=torch.long, device=device)


def verify(logits: torch.Tensor, tree: Tree, settings: object,
           generator: torch.Generator | None) -> tuple[list[int], int]:
    """The accepted nodes (a root-to-node path) and the token that follows them, from the ``N + 1`` rows of logits.

    One host transfer: the per-row verdicts travel to the host at once, then the walk is a few list reads.
    """
    if settings.temperature <= 0:
        pred = logits.argmax(-1).tolist()
        return _walk_tokens(tree, pred)
    p = probabilities(logits, settings)
    if tree.q is None:
        return _walk_tokens(tree, sample(p, generator).tolist())
    return _walk_iid(tree, p, tree.q.to(p.device, p.dtype), generator)


def _walk_tokens(tree: Tree, pred: list[int]) -> tuple[list[int], int]:
    row, path = 0, []
    while True:
        nxt = next((c for c in tree.attempts[row] if tree.tokens[c] == pred[row]), None)
        if nxt is None:
            return path, pred[row]
        path.append(nxt)
        row = nxt + 1


def _walk_iid(tree: Tree, p: torch.Tensor, q: torch.Tensor,
              generator: torch.Generator | None) -> tuple[list[int], int]:
    rows, width = p.shape
    most = max(len(a) for a in tree.attempts)
    tok = torch.zeros(rows, max(most, 1), dtype=torch.long)
    valid = torch.zeros(rows, max(most, 1), dtype=torch.bool)
    for r, att in enumerate(tree.attempts):
        for j, c in enumerate(att):
            tok[r, j] = tree.tokens[c]
            valid[r, j] = True
    tok, valid = tok.to(p.device), valid.to(p.device)
    u = torch.rand(rows, max(most, 1), dtype=p.dtype, device=p.device, generator=generator)
    ar = torch.arange(rows, device=p.device)
    acc = []
    cur = p
    for j in range(most):
        x = tok[:, j]
        acc.append(valid[:, j] & (u[:, j] * q[ar, x] <= cur[ar, x]))
        res = (cur - q).clamp_min(0)
        total = res.sum(-1, keepdim=True)
        cur = torch.where(valid[:, j, None] & (total > 0), res / total.clamp_min(1e-300), cur)
    final = sample(cur, generator)
    packed = torch.cat([torch.stack(acc, 1).long() if acc else tok[:, :0], final[:, None]], 1).tolist()
    row, path = 0, []
    while True:
        verdicts = packed[row]
        j = next((j for j in range(len(tree.attempts[row])) if verdicts[j]), None)
        if j is None:
            return path, verdicts[-1]
        nxt = tree.attempts[row][j]
        path.append(nxt)
        row = nxt + 1


@torch.inference_mode()
def keep_branch(cache: object, start: int, path: list[int]) -> None:
    """Keep the nodes ``path`` (cached from position ``start`` on, in tree order) at ``start, start + 1, ...``; drop the rest.

    Works on any cache whose ``layers`` hold ``keys``/``values`` as ``[batch, heads, positions, dim]``
    (transformers' dynamic and static layers) and that can ``crop``.
    """
    n = len(path)
    if n and path != list(range(n)):
        layers = getattr(cache, "layers", None)
        if not layers:
            raise TypeError(f"{type(cache).__name__} has no per-layer keys/values to keep a tree branch from")
        idx = None
        for layer in layers:
            for t in (layer.keys, layer.values):
                if idx is None or idx.device != t.device:
                    idx = torch.tensor([start + i for i in path], dtype=torch.long, device=t.device)
                t[:, :, start: start + n] = t.index_select(2, idx)
    rollback(cache, start + n)


def draft_tree(src: Any, seq: list[int], room: int) -> Tree | None:
    """``tree_width`` branches of ``tree_depth`` tokens, drafted level by level in one draft forward per level.

    Greedy: the draft's top ``tree_width`` first tokens, each continued greedily (a deterministic
    tree). Sampling: ``tree_width`` i.i.d. paths sampled from the draft, as SpecInfer's verifier
    needs. The draft's own forwards use a tree mask too (each branch sees the prefix and its own
    tokens), and its cache is cropped back to the committed prefix afterwards.
    """
    s = src.settings
    depth = min(s.tree_depth or s.draft_length, room)
    if depth <= 0:
        return None
    m = src.model
    sampling = s.temperature > 0
    logits = m.forward(torch.tensor(seq[src.cached:], dtype=torch.long, device=m.device), src.cache, keep=1)
    src.nfe += 1
    base = src.cached = len(seq)
    qs: list[torch.Tensor] = []
    if sampling:
        q = probabilities(logits, s)[0].expand(s.tree_width, -1)
        level = sample(q, src.generator)
        qs.append(q)
    else:
        level = torch.topk(logits[0], min(s.tree_width, logits.shape[-1])).indices
    levels = [level]
    w = level.shape[0]
    lanes = torch.arange(w)
    dtype = m.net.dtype
    for d in range(1, depth):
        see = torch.zeros(w, base + d * w, dtype=torch.bool)
        see[:, :base] = True
        for e in range(d):
            see[lanes, base + e * w + lanes] = True
        mask = torch.zeros(see.shape, dtype=dtype).masked_fill_(~see, torch.finfo(dtype).min)[None, None]
        pos = torch.full((1, w), base + d - 1, dtype=torch.long)
        logits = m.forward(levels[-1], src.cache, keep=w, mask=mask.to(m.device), positions=pos.to(m.device))
        src.nfe += 1
        if sampling:
            q = probabilities(logits, s)
            levels.append(sample(q, src.generator))
            qs.append(q)
        else:
            levels.append(logits.argmax(-1))
    rollback(src.cache, base)
    paths = torch.stack(levels, 1).tolist()
    paths = [p[: next((i + 1 for i, t in enumerate(p) if t in src.stop), len(p))] for p in paths]
    src.lengths.append(depth)
    if not sampling:
        return trie(paths)
    fitted = [src.fit(q) for q in qs]
    return trie(paths, [[fitted[d][b] for d in range(len(p))] for b, p in enumerate(paths)], iid=True)
