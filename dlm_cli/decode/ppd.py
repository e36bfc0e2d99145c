"""PPD's part of a run (``-p ppd --draft DIR``): the drafter's prompt embeddings bound to the target, and the tree shape.

The loop is :mod:`.loops.ppd`. The tree is a set of rank paths (``[0]``, ``[0, 0]``, ``[1]``, ...):
the drafter's tuned tree (``dlm drafter train --method ppd`` picks its size from hit rates and the
latency measured on the training machine), or, with ``tree_nodes`` set, that many paths ranked by
the drafter's hit rates (a fixed prior without them); ``tree_width`` caps the rank per prompt.
"""

from __future__ import annotations

from typing import Any, TYPE_CHECKING

import torch

from ..errors import UsageError
from .tree import Tree, trie

if TYPE_CHECKING:
    from .keys import RunSettings

DEFAULT_NODES = 12  # without a tuned tree: about the optimum PPD's latency model gives a 2-core CPU


class PromptSlots:
    """The ``k`` prompt embeddings in the target's dtype, the rank paths of the tree, the run's counters."""

    name = "ppd"

    def __init__(self, drafter: Any, target: Any, settings: RunSettings, stop: tuple[int, ...]) -> None:
        from ..models.ppd import prior_rates, rank_paths

        dtype = target.net.get_input_embeddings().weight.dtype
        self.prompts = drafter.net.prompts.detach().to(target.device, dtype)
        self.k = int(self.prompts.shape[0])
        spec = drafter.spec
        width = int(getattr(settings, "tree_width", 10) or 10)
        nodes = getattr(settings, "tree_nodes", None)
        rates = spec.get("hit_rates") or prior_rates(self.k, width)
        rates = [list(r)[:width] for r in rates][: self.k]
        if nodes is None and spec.get("tree") is not None:
            ranks = [list(p) for p in spec["tree"] if len(p) <= self.k and max(p) < width]
        else:
            ranks = [p for p, _ in rank_paths(rates, DEFAULT_NODES if nodes is None else int(nodes))]
        # Only the maximal paths go to the trie (the set is prefix-closed), the all-first-ranks chain first.
        leaves = {tuple(p) for p in ranks}
        self.ranks = sorted(p for p in leaves if not any(q[: len(p)] == p and len(q) > len(p) for q in leaves))
        self.width = 1 + max((r for p in ranks for r in p), default=0)
        self.stop = frozenset(stop)
        self.nfe = 0
        self.nodes: list[int] = []

    def tree(self, guesses: list[list[list[int]]] | None, room: int) -> Tree | None:
        """The candidate tree from the accepted node's prompt guesses (``[k][width]`` tokens), at most ``room`` deep."""
        if guesses is None or room <= 0 or not self.ranks:
            return None
        paths = []
        for p in self.ranks:
            toks = [guesses[d][r] for d, r in enumerate(p[:room])]
            cut = next((i + 1 for i, t in enumerate(toks) if t in self.stop), len(toks))
            paths.append(toks[:cut])
        tree = trie(paths)
        self.nodes.append(len(tree))
        return tree

    def stats(self) -> dict[str, Any]:
        return {"mean_tree_nodes": sum(self.nodes) / len(self.nodes) if self.nodes else 0.0,
                "prompts": self.k, "tree_paths": len(self.ranks)}


def bind(model: Any, settings: RunSettings, draft: Any) -> PromptSlots:
    """PPD's part: ``draft`` must be a ppd drafter trained for ``model`` (the fingerprint check of every learned drafter)."""
    from ..models.drafter import bound_drafter

    bound_drafter("ppd", model, draft, "decodes with trained prompt tokens")
    if not callable(getattr(model, "forward_embeds", None)):
        raise UsageError(f"{model.info.name} cannot take input embeddings; ppd needs a causal LM that transformers builds")
    return PromptSlots(draft, model, settings, tuple(model.eos_ids))


@torch.no_grad()
def slot_attention(tree: Tree | None, cached: int, pending: int, k: int, dtype: torch.dtype,
                   device: torch.device) -> tuple[torch.Tensor, torch.Tensor]:
    """The 4-D additive mask and the position ids of one PPD forward: ``pending`` tokens (causal), the tree's ``N``
    nodes (each sees the prefix, its ancestors and itself, at the root's position + its depth), then ``k``
    prompt slots on the root (the last pending token) and on each node, in that order: slot ``j`` of node
    ``x`` sees what ``x`` sees, ``x`` and the slots ``<= j`` of ``x``, at ``x``'s position + ``j``."""
    parents = tree.parents if tree is not None else []
    depths = tree.depths if tree is not None else []
    N, m = len(parents), pending
    anc = torch.zeros(N + 1, N + 1, dtype=torch.bool)  # row x (0: the root, i + 1: node i) sees nodes ...
    anc[0, 0] = True
    for i, p in enumerate(parents):
        anc[i + 1] = anc[p + 1]
        anc[i + 1, i + 1] = True
    R = m + N + k * (N + 1)
    see = torch.zeros(R, cached + R, dtype=torch.bool)
    see[:, :cached] = True
    see[:m, cached: cached + m] = torch.ones(m, m, dtype=torch.bool).tril()
    see[m:, cached: cached + m] = True
    base = cached + m
    see[m: m + N, base: base + N] = anc[1:, 1:]
    owner = torch.arange(N + 1).repeat_interleave(k)
    slot = torch.arange(k).repeat(N + 1)
    see[m + N:, base: base + N] = anc[owner][:, 1:]
    see[m + N:, base + N:] = (owner[:, None] == owner[None]) & (slot[None] <= slot[:, None])
    root = cached + m - 1
    depth = torch.tensor([0] + list(depths), dtype=torch.long)
    pos = torch.cat([torch.arange(cached, cached + m), root + depth[1:], root + depth[owner] + slot + 1])
    mask = torch.zeros(see.shape, dtype=dtype).masked_fill_(~see, torch.finfo(dtype).min)
    return mask[None, None].to(device), pos[None].to(device)
