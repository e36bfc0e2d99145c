"""Hidden Transfer's decode loop (Wu et al. 2024, arXiv 2404.12022): the target drafts its own next tokens.

Each step is one target forward (:meth:`~dlm_cli.models.causal.CausalLM.forward_transfer`) over the
committed tokens the cache lacks, then the candidate draft (a run, or a token tree with
``tree_width > 1``), with the drafter's ``k`` pseudo slots attached to *every* candidate row: the
root (the last committed token) and each draft node, the slots of a node seeing its ancestors only.
The real rows verify the draft exactly as :mod:`.ar` does (greedy: the longest prefix equal to the
target's argmax, then its own token; sampling: exact with one-hot drafts, trees by
:mod:`..tree`), the accepted branch stays in the cache, and the next draft comes from the pseudo
slots of the last accepted row ``r`` (at position ``p``): its real row gives the token at ``p + 1``
(the correction or bonus), its slot ``j`` sits at ``p + 1 + j`` and proposes the token at ``p + 2 + j``,
which is draft token ``j`` of the next step. A chain step's verdict and next draft reach the host in
one transfer; a tree step's walk needs its verdict first (two).
"""

from __future__ import annotations

import time
from typing import Any, Iterator, TYPE_CHECKING

import torch

from ...models.causal import rollback
from .. import tree as trees
from ..events import Clock, Done, Draft, Event, Start, Step
from .ar import Output, tally, verdict, verify_event

if TYPE_CHECKING:
    from ..keys import RunSettings
    from ..tree import Tree


class TransferSource:
    """The drafter's maps bound to the target, and the run's draft shape (``draft_length`` <= the slots)."""

    name = "hidden-transfer"

    def __init__(self, drafter: Any, target: Any, settings: RunSettings, stop: tuple[int, ...]) -> None:
        self.net = drafter.net.to(target.device, target.net.dtype)
        k = self.net.slots
        self.length = min(getattr(settings, "draft_length", None) or k, k)
        self.tree_width = getattr(settings, "tree_width", 1) or 1
        self.tree_depth = min(getattr(settings, "tree_depth", None) or self.length, k)
        self.stop = frozenset(stop)
        self.lengths: list[int] = []
        self.nfe = 0  # no draft forward: the target drafts in its verify forward

    def cut(self, tokens: list[int]) -> list[int]:
        return tokens[: next((i + 1 for i, t in enumerate(tokens) if t in self.stop), len(tokens))]

    def tree(self, logits: torch.Tensor) -> Tree:
        """The argmax path of the slots' ``logits`` ``[depth, V]`` and the ``tree_width - 1`` most probable
        one-token deviations from it (the top-k of one slot, the argmax elsewhere), ranked by the path's
        probability up to the deviation."""
        from ..learned import deviation_paths

        paths = [self.cut(x) for x in deviation_paths(logits, self.tree_width)]
        depth = logits.shape[0]
        self.lengths.append(depth)
        return trees.trie(paths)

    def stats(self) -> dict[str, Any]:
        return {"mean_draft_length": sum(self.lengths) / len(self.lengths) if self.lengths else 0.0}


def run(target: Any, prompt_ids: list[int], settings: RunSettings, source: TransferSource,
        generator: torch.Generator, clock: Clock) -> Iterator[Event]:
    """Generate with ``target`` drafting through ``source``'s pseudo slots, and yield events (as :mod:`.ar`)."""
    device = target.device
    o = Output(target, prompt_ids, settings)
    seq = o.seq
    cache = target.new_cache()
    cached = nfe = steps = drafted = accepted = 0
    drafted_at: list[int] = []
    accepted_at: list[int] = []
    draft_s = verify_s = 0.0
    ttft = None
    tree_mode = source.tree_width > 1
    slots: list[int] = []  # the chain drafted by the last accepted row's slots
    tree: Tree | None = None

    yield Start(kind="autoregressive", prompt_tokens=len(seq), length=o.limit)
    while not o.stopped:
        pending = seq[cached:]
        m = len(pending)
        position = len(o.out)
        room = o.room() - 1
        t1 = time.perf_counter()
        is_tree = tree is not None
        if is_tree:
            k = len(tree)
            yield Draft(step=steps, position=position, tokens=tree.paths[0], source=source.name)
            t1 = time.perf_counter()
            mask, pos = trees.attention(tree, cached, m, target.net.dtype, device)
            feed = torch.tensor(pending + tree.tokens, dtype=torch.long, device=device)
            anchors = torch.arange(m - 1, m + k)
            logits, pseudo = target.forward_transfer(feed, cache, source.net, anchors, keep=k + 1, mask=mask,
                                                     positions=pos)
            path, token = trees.verify(logits, tree, settings, generator)
            trees.keep_branch(cache, len(seq), path)
            n = len(path)
            draft_list = tree.branch(path)
            depth = max(tree.depths)
            row = path[-1] + 1 if path else 0
        else:
            draft_list = source.cut(slots[: max(room, 0)]) if not tree_mode else []
            k = len(draft_list)
            if k:
                source.lengths.append(k)
                yield Draft(step=steps, position=position, tokens=draft_list, source=source.name)
                t1 = time.perf_counter()
            feed = torch.tensor(pending + draft_list, dtype=torch.long, device=device)
            anchors = torch.arange(m - 1, m + k)
            logits, pseudo = target.forward_transfer(feed, cache, source.net, anchors, keep=k + 1)
            v = verdict(logits, feed[m:], None, settings, generator)
            row_conf = logits[0].double()
            conf = (row_conf[v[1]] - torch.logsumexp(row_conf, -1)).exp()
            t2 = time.perf_counter()
            nxt = pseudo.new_zeros(0, dtype=torch.long)
            if not tree_mode:  # the next draft, on the device: the slots of the last accepted row
                nxt = target.early_logits(pseudo.index_select(0, v[:1])[0, : source.length]).argmax(-1)
            draft_s += time.perf_counter() - t2
            pack = torch.cat([v.double(), conf[None], nxt.double()]).tolist()
            n, token, conf = int(pack[0]), int(pack[1]), pack[2]
            slots = [int(x) for x in pack[3:]]
            rollback(cache, len(seq) + n)
            depth = k
            row = n
        nfe += 1
        cached = len(seq) + n
        tally(drafted_at, accepted_at, depth, n)
        drafted += k
        accepted += n
        new = o.commit([*draft_list[:n], token])
        if ttft is None:
            ttft = clock.elapsed()
        tree = None
        if tree_mode and not o.stopped and min(source.tree_depth, o.room() - 1) > 0:
            t2 = time.perf_counter()
            tree = source.tree(target.early_logits(pseudo[row, : min(source.tree_depth, o.room() - 1)]))
            draft_s += time.perf_counter() - t2
        verify_s += time.perf_counter() - t1
        if k:
            yield verify_event(steps, nfe, position, new, n, len(draft_list) if is_tree else k, draft_list,
                               nodes=k if is_tree else None)
        elif new:
            yield Step(step=steps, nfe=nfe, positions=[position], tokens=new, confidences=[conf])
        steps += 1
    verify_s -= draft_s
    yield Done(tokens=o.out, nfe=nfe, steps=steps, seconds=clock.elapsed(), ttft_seconds=ttft,
               finish_reason=o.finish, draft_nfe=0, verifies=steps, drafted=drafted, accepted=accepted,
               draft_seconds=draft_s, verify_seconds=verify_s, draft_source=source.name, extra=source.stats(),
               acceptance_per_position=[a / d for a, d in zip(accepted_at, drafted_at)])
