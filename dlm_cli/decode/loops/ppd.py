"""PPD's decode loop (Chen et al. 2024, arXiv 2405.18628, ``PromptDecoder``): drafting inside the verify forward.

Each step is one target forward over the committed tokens the cache lacks (the last is the root),
the candidate tree, and ``k`` trained prompt slots attached to the root and to **every** tree node
(:func:`~dlm_cli.decode.ppd.slot_attention`): a node's slots see the committed prefix, the node's
ancestors, the node and the node's earlier slots, at the positions after the node. The tree is
verified as :mod:`.ar` verifies one (:func:`~dlm_cli.decode.tree.verify`'s walk): greedy, the longest
path equal to the target's argmax, then the target's token; sampling, a draw from the target at each
node, followed while it equals a child (the candidates are deterministic, one-hot proposals), which
commits exactly the target's samples. Only the accepted branch stays in the cache
(:func:`~dlm_cli.decode.tree.keep_branch`; every slot is dropped). The slots attached to the last
accepted node guessed the tokens after the committed one: their top ranks, placed on the drafter's
rank-path tree, are the next step's candidates. The first step has none (the prompt and ``k`` slots
on its last token). No draft forward exists; the real rows never see a slot or a sibling, so the
output is the target's own (greedy: ``ar``'s). One host transfer per step: the verdict rows and the
slots' top ranks together.
"""

from __future__ import annotations

import time
from typing import Any, Iterator, TYPE_CHECKING

import torch

from .. import tree as trees
from ..events import Clock, Done, Draft, Event, Start, Step
from ..ppd import slot_attention
from ..sampling import probabilities, sample
from .ar import Output, tally, verify_event

if TYPE_CHECKING:
    from ..keys import RunSettings


def run(target: Any, prompt_ids: list[int], settings: RunSettings, source: Any, generator: torch.Generator,
        clock: Clock) -> Iterator[Event]:
    """Generate with ``target`` and ``source``'s prompt slots (:class:`~dlm_cli.decode.ppd.PromptSlots`); yield events."""
    device = target.device
    dtype = target.net.dtype
    o = Output(target, prompt_ids, settings)
    seq = o.seq
    k, width = source.k, source.width
    cache = target.new_cache()
    cached = 0
    nfe = steps = drafted = accepted = 0
    drafted_at: list[int] = []
    accepted_at: list[int] = []
    draft_s = verify_s = 0.0
    ttft = None
    guesses: list[list[list[int]]] | None = None

    yield Start(kind="autoregressive", prompt_tokens=len(seq), length=o.limit)
    while not o.stopped:
        t0 = time.perf_counter()
        tree = source.tree(guesses, o.room() - 1)
        t1 = time.perf_counter()
        draft_s += t1 - t0
        pending = seq[cached:]
        m, N = len(pending), len(tree) if tree is not None else 0
        position = len(o.out)
        if N:
            yield Draft(step=steps, position=position, tokens=tree.paths[0], source=source.name)
            t1 = time.perf_counter()
        mask, pos = slot_attention(tree, cached, m, k, dtype, device)
        feed = torch.tensor(pending + (tree.tokens if N else []), dtype=torch.long, device=device)
        keep = torch.arange(m - 1, m + N + k * (N + 1), device=device)  # the root, the nodes, every slot
        with torch.inference_mode():
            logits = target.forward_embeds(feed, source.prompts.repeat(N + 1, 1), cache, mask, pos, keep)
            rows, slots = logits[: N + 1], logits[N + 1:]
            if settings.temperature <= 0:
                pred = rows.argmax(-1)
            else:
                pred = sample(probabilities(rows, settings), generator)
            first = rows[0].double()
            conf = (first[pred[0]] - torch.logsumexp(first, -1)).exp()  # for a plain step's colours
            top = slots.topk(min(width, slots.shape[-1]), -1).indices
            packed = torch.cat([pred.double(), conf[None], top.double().reshape(-1)]).tolist()
        pred_l = [int(x) for x in packed[: N + 1]]
        conf = packed[N + 1]
        top_l = [int(x) for x in packed[N + 2:]]
        if N:
            path, token = trees._walk_tokens(tree, pred_l)
        else:
            path, token = [], pred_l[0]
        row = path[-1] + 1 if path else 0  # the accepted node's slots guess the next candidates
        w = len(top_l) // ((N + 1) * k)
        guesses = [top_l[(row * k + j) * w: (row * k + j + 1) * w] for j in range(k)]
        trees.keep_branch(cache, len(seq), path)
        n = len(path)
        draft_list = tree.branch(path) if N else []
        depth = max(tree.depths) if N else 0
        nfe += 1
        verify_s += time.perf_counter() - t1
        cached = len(seq) + n
        tally(drafted_at, accepted_at, depth, n)
        drafted += N
        accepted += n
        new = o.commit([*draft_list[:n], token])
        if ttft is None:
            ttft = clock.elapsed()
        if N:
            yield verify_event(steps, nfe, position, new, n, len(draft_list), draft_list, nodes=N)
        elif new:
            yield Step(step=steps, nfe=nfe, positions=[position], tokens=new, confidences=[conf])
        steps += 1
    yield Done(tokens=o.out, nfe=nfe, steps=steps, seconds=clock.elapsed(), ttft_seconds=ttft,
               finish_reason=o.finish, draft_nfe=source.nfe, verifies=steps, drafted=drafted, accepted=accepted,
               draft_seconds=draft_s, verify_seconds=verify_s, draft_source=source.name, extra=source.stats(),
               acceptance_per_position=[a / d for a, d in zip(accepted_at, drafted_at)])
