"""Draft sources of learned drafters (``dlm drafter train``): DFlash's block drafter over the target's features.

The AR loop hands such a source, through ``observe``, the target's hidden states at every newly
committed position: they come from the verify forward it runs anyway (``features`` names the
layers), so drafting costs one drafter forward and no target forward. The drafts are the
drafter's argmax tokens, proposed without probabilities: the loop's verifier then commits exactly
the target's greedy token (greedy) or an exact sample of the target (sampling, one-hot ``q``), as
DFlash's ``dflash_generate`` does.
"""

from __future__ import annotations

from typing import Any, TYPE_CHECKING

import torch

from .drafts import EMPTY, NoDraft

if TYPE_CHECKING:
    from .keys import RunSettings
    from .tree import Tree


def deviation_paths(logits: torch.Tensor, width: int, ids: Any = None, tail: bool = True) -> list[list[int]]:
    """The argmax path of per-depth ``logits`` ``[depth, V]`` and the ``width - 1`` most probable one-token
    deviations from it (the top-k at one depth, the argmax elsewhere), ranked by the argmax path's probability
    up to the deviation times the deviation's own; one host transfer. ``ids`` maps row indices to token ids;
    without ``tail`` a deviation's branch ends at the deviation (later depths were conditioned on the argmax)."""
    probs = torch.softmax(logits.float(), -1)
    top = probs.topk(min(width, probs.shape[-1]), -1)
    vals, tok = top.values.tolist(), (top.indices if ids is None else ids(top.indices)).tolist()
    main = [row[0] for row in tok]
    prefix, p = [], 1.0
    for j in range(len(tok)):
        prefix.append(p)
        p *= vals[j][0]
    alts = sorted(((prefix[j] * vals[j][r], j, r) for j in range(len(tok)) for r in range(1, len(tok[j]))),
                  reverse=True)[: width - 1]
    return [main] + [main[:j] + [tok[j][r]] + (main[j + 1:] if tail else []) for _, j, r in alts]


def lookup_source(settings: RunSettings) -> Any:
    """Prompt lookup (its own defaults: n-grams 3 down to 1, 15 tokens, realigned) for ``with_lookup`` trees, else None."""
    if not getattr(settings, "with_lookup", False):
        return None
    from types import SimpleNamespace

    from .drafts import LookupDraft

    return LookupDraft(SimpleNamespace(ngram_min=1, ngram_max=3, draft_length=15, realign=True, tree_width=1,
                                       tree_depth=None))


def add_lookup(lookup: Any, seq: list[int], room: int, paths: list[list[int]], width: int) -> list[list[int]]:
    """``paths`` (the drafter's, best first) with prompt lookup's draft as the second branch, within ``width``."""
    if lookup is None:
        return paths
    found = lookup.propose(seq, room)[0].tolist()
    if not found or found in paths:
        return paths
    return (paths[:1] + [found] + paths[1:])[:max(width, 2)]


class DFlashDraft(NoDraft):
    """DFlash (Chen et al. 2026): one drafter forward over ``[last token, MASK x (k)]`` drafts ``k`` tokens.

    The drafter's context is the fused target features of every committed position but the last
    (the anchor), held as each drafter layer's keys and values and extended by ``observe``; the
    block sees all of them and itself (non-causal). ``draft_length`` is capped at the drafter's
    block size minus one. A tree (``tree_width > 1``) holds the argmax path and the
    ``tree_width - 1`` most probable one-token deviations from it (the top-k at one position,
    the argmax elsewhere), ranked by the drafter's probability of the path up to the deviation.
    """

    name = "dflash"

    def __init__(self, drafter: Any, target: Any, settings: RunSettings, width: int, stop: tuple[int, ...]) -> None:
        super().__init__()
        self.net = drafter.net
        spec = drafter.spec
        self.features = tuple(int(i) for i in spec["target_layers"])
        self.block = int(spec["block_size"])
        self.length = min(settings.draft_length or self.block - 1, self.block - 1)
        self.tree_width = getattr(settings, "tree_width", 1)
        self.tree_depth = getattr(settings, "tree_depth", None)
        from ..models.drafter import draft_head

        self.embed = target.net.get_input_embeddings()
        self.head, self.vocab = draft_head(self.net, target.net.get_output_embeddings(), width)
        self.head = self.head.detach().to(self.net.fc.weight.dtype)
        self.width = width
        self.stop = frozenset(stop)
        self.kvs: list[tuple[torch.Tensor, torch.Tensor]] = []
        self.ctx = 0
        self.lengths: list[int] = []
        self.lookup = lookup_source(settings)

    def begin(self, seq: list[int], generator: torch.Generator | None) -> None:
        self.kvs, self.ctx = [], 0
        if self.lookup is not None:
            self.lookup.begin(seq, generator)

    @torch.inference_mode()
    def observe(self, feats: torch.Tensor) -> None:
        """The target's features at the next ``len(feats)`` committed positions."""
        m = feats.shape[0]
        if not m:
            return
        dtype = self.net.fc.weight.dtype
        pos = torch.arange(self.ctx, self.ctx + m, device=feats.device)
        new = self.net.context(feats.to(dtype), pos)
        self.kvs = new if not self.kvs else [(torch.cat([k0, k1], 1), torch.cat([v0, v1], 1))
                                             for (k0, v0), (k1, v1) in zip(self.kvs, new)]
        self.ctx += m

    @torch.inference_mode()
    def logits(self, seq: list[int], count: int) -> torch.Tensor:
        """The drafter's logits ``[count, V']`` over its draft vocabulary for the ``count`` tokens after ``seq``."""
        anchor = len(seq) - 1
        dev = self.net.fc.weight.device
        first = self.embed(torch.tensor([seq[-1]], device=dev)).to(self.net.fc.weight.dtype)
        x = torch.cat([first, self.net.mask_embedding[None].expand(count, -1)])
        h = self.net.block(x, torch.arange(anchor, anchor + count + 1, device=dev), self.kvs)
        self.nfe += 1
        return h[1:] @ self.head.T

    def ids(self, idx: torch.Tensor) -> torch.Tensor:
        """Target token ids of draft-vocabulary indices."""
        return idx if self.vocab is None else self.vocab[idx]

    def ready(self, seq: list[int]) -> bool:
        # The context must be exactly the committed positions before the anchor (it is, after every verify).
        return self.ctx > 0 and self.ctx == len(seq) - 1

    def cut(self, tokens: list[int]) -> list[int]:
        return tokens[: next((i + 1 for i, t in enumerate(tokens) if t in self.stop), len(tokens))]

    def propose(self, seq: list[int], room: int) -> tuple[torch.Tensor, torch.Tensor | None]:
        count = min(self.length, room)
        if count <= 0 or not self.ready(seq):
            return EMPTY, None
        draft = self.cut(self.ids(self.logits(seq, count).argmax(-1)).tolist())
        self.lengths.append(len(draft))
        return torch.tensor(draft, dtype=torch.long), None

    def propose_tree(self, seq: list[int], room: int) -> Tree | None:
        from .tree import trie

        depth = min(self.tree_depth or self.length, self.block - 1, room)
        if depth <= 0 or not self.ready(seq):
            return None
        paths = [self.cut(x) for x in deviation_paths(self.logits(seq, depth), self.tree_width, self.ids)]
        self.lengths.append(depth)
        return trie(add_lookup(self.lookup, seq, room, paths, self.tree_width))

    def stats(self) -> dict[str, Any]:
        return {"mean_draft_length": sum(self.lengths) / len(self.lengths) if self.lengths else 0.0}


class CloverDraft(NoDraft):
    """Clover (Clover-2's architecture): regressive heads over the target's last hidden state.

    ``observe`` hears the target's last-layer states of the newly committed positions; ``propose``
    first runs the newly fused positions (each state gated with the token after it, known for every
    committed position but the last) through the augmenting block, whose keys and values it keeps,
    then drafts regressively: head 0 from the block's state at the last position, each later head
    from the token the one before proposed (argmax), all on the device, one host transfer. A tree
    (``tree_width > 1``) holds the argmax chain and the ``tree_width - 1`` most probable one-token
    alternatives to it at any depth (each branch ends at its alternative: the heads after it were
    conditioned on the chain's token).
    """

    name = "clover"

    def __init__(self, drafter: Any, target: Any, settings: RunSettings, width: int, stop: tuple[int, ...]) -> None:
        super().__init__()
        from ..models.drafter import draft_head

        self.net = drafter.net
        self.features = tuple(int(i) for i in drafter.spec["target_layers"])
        self.k = int(drafter.spec["heads"])
        self.length = min(settings.draft_length or self.k, self.k)
        self.tree_width = getattr(settings, "tree_width", 1)
        self.tree_depth = getattr(settings, "tree_depth", None)
        self.embed = target.net.get_input_embeddings()
        head, self.vocab = draft_head(self.net, target.net.get_output_embeddings(), width)
        self.dtype = self.net.w0.weight.dtype
        self.head = head.detach().to(self.dtype)
        self.stop = frozenset(stop)
        self.lengths: list[int] = []
        self.lookup = lookup_source(settings)
        self.begin([], None)

    def begin(self, seq: list[int], generator: torch.Generator | None) -> None:
        if self.lookup is not None:
            self.lookup.begin(seq, generator)
        self.feats: list[torch.Tensor] = []  # observed target states not fused yet
        self.ctx = 0  # committed positions whose target state was observed
        self.fused = 0  # positions run through the augmenting block
        self.past: list[Any] | None = None
        self.state: torch.Tensor | None = None

    @torch.inference_mode()
    def observe(self, feats: torch.Tensor) -> None:
        if feats.shape[0]:
            self.feats.append(feats.to(self.dtype))
            self.ctx += feats.shape[0]

    def ready(self, seq: list[int]) -> bool:
        return self.ctx > 0 and self.ctx == len(seq) - 1

    @torch.inference_mode()
    def _advance(self, seq: list[int]) -> torch.Tensor:
        """The block's state at the last committed position, after fusing every position not fused yet."""
        if self.fused < self.ctx:
            rows = torch.cat(self.feats) if len(self.feats) > 1 else self.feats[0]  # positions fused .. ctx - 1
            dev = rows.device
            nxt = self.embed(torch.tensor(seq[self.fused + 1: self.ctx + 1], device=dev)).to(self.dtype)
            s, self.past = self.net.block(self.net.fuse(rows, nxt), torch.arange(self.fused, self.ctx, device=dev),
                                          self.past)
            self.state, self.fused, self.feats = s[-1], self.ctx, []
        assert self.state is not None
        return self.state

    @torch.inference_mode()
    def _heads(self, seq: list[int], count: int) -> tuple[torch.Tensor, torch.Tensor]:
        """The chain's ``count`` argmax indices (draft vocabulary) and each head's logits ``[count, V']``."""
        s = self._advance(seq)
        o = self.net.first(s)
        rows, picks = [], []
        for i in range(count):
            if i:
                s, o = self.net.next(s, self.embed(self.ids(picks[-1])).to(self.dtype))
            logits = o @ self.head.T
            rows.append(logits)
            picks.append(logits.argmax(-1))
        self.nfe += 1
        return torch.stack(picks), torch.stack(rows)

    def ids(self, idx: torch.Tensor) -> torch.Tensor:
        return idx if self.vocab is None else self.vocab[idx]

    def cut(self, tokens: list[int]) -> list[int]:
        return tokens[: next((i + 1 for i, t in enumerate(tokens) if t in self.stop), len(tokens))]

    def propose(self, seq: list[int], room: int) -> tuple[torch.Tensor, torch.Tensor | None]:
        count = min(self.length, room)
        if count <= 0 or not self.ready(seq):
            return EMPTY, None
        picks, _ = self._heads(seq, count)
        draft = self.cut(self.ids(picks).tolist())
        self.lengths.append(len(draft))
        return torch.tensor(draft, dtype=torch.long), None

    def propose_tree(self, seq: list[int], room: int) -> Tree | None:
        from .tree import trie

        depth = min(self.tree_depth or self.length, self.k, room)
        if depth <= 0 or not self.ready(seq):
            return None
        _, logits = self._heads(seq, depth)
        paths = [self.cut(x) for x in deviation_paths(logits, self.tree_width, self.ids, tail=False)]
        self.lengths.append(depth)
        return trie(add_lookup(self.lookup, seq, room, paths, self.tree_width))

    def stats(self) -> dict[str, Any]:
        return {"mean_draft_length": sum(self.lengths) / len(self.lengths) if self.lengths else 0.0}


SOURCES = {"dflash": DFlashDraft, "clover": CloverDraft}
