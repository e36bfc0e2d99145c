"""PPD's training objective (arXiv 2405.18628, ``DistillationTrainer.compute_loss``), and its hardware-aware tree.

**Objective.** Per sequence (a prompt and the target's own greedy answer), ``anchors`` cut points
``c`` are drawn with ``c + 1`` inside the answer. Each cut gets the ``k = block - 1`` prompt
embeddings at positions ``c + 1 .. c + k`` (PPD's continuing position ids); prompt ``i`` sees the real
tokens ``<= c`` and the prompts ``<= i`` of its own cut, never another cut's (every cut in one forward
under one mask, as DFlash's blocks). Prompt ``i``'s logits are pulled toward the target's own
distribution at real position ``c + i``, the distribution of token ``c + 1 + i`` after the true
prefix: ``L = Σ w_i KL(softmax(target) || softmax(prompt_i)) / Σ w_i`` with ``w_i = exp(-(i - 1) /
gamma)`` (PPD's ``0.8^(i-1)`` is ``gamma = 1 / ln 1.25 ≈ 4.48``; PPD divides by ``k`` instead of
``Σ w_i``, a constant factor). The target's distribution is the real rows of the same forward,
detached: a real row sees no prompt, so it is exactly the plain no-grad forward's, and no second
forward or feature cache is needed (``feature_layers`` is ``[]``). Gradients reach only the prompts,
through the frozen target.

**Hardware-aware tree** (PPD's ``sparse_tree_builder`` and ``tree_latency``, :func:`finish`): after
training, per-prompt top-``K`` hit rates on held-out rows (every tenth sequence, left out of
training) score rank paths by their products; the target's forward latency against input length is
measured on this machine; the tree size with the most expected accepted tokens per second is kept in
the drafter's config (``tree``, ``hit_rates``, ``latency``).
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from typing import Any, Callable

import torch

from .drafter import DrafterRecipe, Objective

HELD_OUT_EVERY = 10  # every tenth training sequence measures the hit rates instead
RANKS = 10  # PPD's top-10 candidates per prompt


def make_net(target: Any, recipe: DrafterRecipe, data: list[dict[str, Any]] = ()) -> torch.nn.Module:
    from ..models.drafter import build, target_config

    if not recipe.spec:
        recipe.spec = {"prompts": recipe.block - 1, "hidden_size": int(target_config(target).hidden_size)}
    net = build("ppd", recipe.spec)
    net.init_from(target.net.get_input_embeddings().weight, torch.Generator().manual_seed(recipe.seed))
    return net.float()


def slot_mask(T: int, cuts: torch.Tensor, k: int, dtype: torch.dtype) -> torch.Tensor:
    """The additive mask ``[1, 1, T + A k, T + A k]`` of ``T`` real tokens (causal) and ``k`` prompt slots per cut:
    slot ``i`` of cut ``c`` sees the real tokens ``<= c`` and the slots ``<= i`` of its own cut."""
    A = cuts.numel()
    n = T + A * k
    see = torch.zeros(n, n, dtype=torch.bool)
    see[:T, :T] = torch.ones(T, T, dtype=torch.bool).tril()
    see[T:, :T] = torch.arange(T)[None] <= cuts.repeat_interleave(k)[:, None]
    grp = torch.arange(A).repeat_interleave(k)
    idx = torch.arange(k).repeat(A)
    see[T:, T:] = (grp[:, None] == grp[None]) & (idx[None] <= idx[:, None])
    return torch.zeros(n, n, dtype=dtype).masked_fill_(~see, torch.finfo(dtype).min)[None, None]


def slot_logits(net: Any, target: Any, ids: torch.Tensor, cuts: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """One target forward over ``ids`` and ``k`` prompt slots per cut: the target's logits at the rows the slots
    are scored against (detached), the slots' logits, both ``[m, V]`` for the ``m`` slots whose target
    row exists, and ``valid`` ``[A, k]`` (which slots those are)."""
    dev = target.device
    T, k, A = ids.shape[0], net.k, cuts.numel()
    rows = cuts[:, None] + torch.arange(1, k + 1)[None]  # slot i of cut c: position c + i, scored at real row c + i
    valid = rows <= T - 2  # row c + i guesses token c + i + 1, which must be in the sequence
    mask = slot_mask(T, cuts, k, target.net.dtype).to(dev)
    positions = torch.cat([torch.arange(T), rows.reshape(-1)])[None].to(dev)
    keep = torch.cat([rows[valid], T + torch.nonzero(valid.reshape(-1)).flatten()]).to(dev)
    logits = target.forward_embeds(ids.to(dev), net.prompts.repeat(A, 1), None, mask, positions, keep)
    m = int(valid.sum())
    return logits[:m].detach().float(), logits[m:].float(), valid


def kl_rows(teacher: torch.Tensor, student: torch.Tensor) -> torch.Tensor:
    """``KL(softmax(teacher) || softmax(student))`` per row."""
    p = torch.log_softmax(teacher, -1)
    return (p.exp() * (p - torch.log_softmax(student, -1))).sum(-1)


def pick_cuts(T: int, start: int, anchors: int, gen: torch.Generator) -> torch.Tensor:
    """``anchors`` cut points ``c`` (sorted), ``max(start - 1, 0) <= c <= T - 3``: prompt 1 guesses an answer token."""
    cand = torch.arange(max(start - 1, 0), T - 2)
    return cand[torch.randperm(cand.numel(), generator=gen)[:anchors]].sort().values


def ppd_loss(net: Any, target: Any, aux: Any, feats: torch.Tensor, ids: torch.Tensor, start: int,
             recipe: DrafterRecipe, gen: torch.Generator) -> tuple[torch.Tensor, float, int]:
    """The weighted KL of one sequence, the greedy tokens per forward its prompts would give (1 + the run of
    prompt argmaxes equal to the target's greedy tokens, averaged over cuts), and the slots scored."""
    cuts = pick_cuts(ids.shape[0], start, recipe.anchors, gen)
    if cuts.numel() == 0:
        return net.prompts.sum() * 0.0, 1.0, 0
    teacher, student, valid = slot_logits(net, target, ids, cuts)
    depth = torch.arange(net.k).expand_as(valid)[valid].to(student.device)
    w = torch.exp(-depth.float() / recipe.gamma)
    loss = (w * kl_rows(teacher, student)).sum() / w.sum().clamp_min(1e-9)
    with torch.no_grad():
        hit = torch.zeros(valid.shape, dtype=torch.bool)
        hit[valid] = (student.argmax(-1) == teacher.argmax(-1)).cpu()
        accept = 1.0 + float(hit.long().cumprod(1).sum(1).float().mean())
    return loss, accept, int(valid.sum())


def split(rows: list[dict[str, Any]]) -> tuple[list[dict[str, Any]], list[dict[str, Any]]]:
    """Training rows and held-out rows (every tenth, when there are at least ten)."""
    if len(rows) < HELD_OUT_EVERY:
        return rows, []
    held = [r for i, r in enumerate(rows) if i % HELD_OUT_EVERY == HELD_OUT_EVERY - 1]
    return [r for i, r in enumerate(rows) if i % HELD_OUT_EVERY != HELD_OUT_EVERY - 1], held


@torch.no_grad()
def hit_rates(net: Any, target: Any, rows: list[dict[str, Any]], ranks: int = RANKS, cuts: int = 16,
              seed: int = 0) -> list[list[float]]:
    """``[k][ranks]``: how often prompt ``i``'s rank-``r`` token is the target's greedy token, over ``cuts`` cuts of each row."""
    k = net.k
    hits = torch.zeros(k, ranks)
    seen = torch.zeros(k)
    gen = torch.Generator().manual_seed(seed)
    for r in rows:
        ids = torch.tensor(r["prompt_ids"] + r["answer_ids"], dtype=torch.long)
        at = pick_cuts(ids.shape[0], len(r["prompt_ids"]), cuts, gen)
        if at.numel() == 0:
            continue
        teacher, student, valid = slot_logits(net, target, ids, at)
        depth = torch.arange(k).expand_as(valid)[valid]
        top = student.topk(min(ranks, student.shape[-1]), -1).indices.cpu()
        eq = (top == teacher.argmax(-1).cpu()[:, None]).float()
        hits[:, : eq.shape[1]].index_add_(0, depth, eq)
        seen.index_add_(0, depth, torch.ones(depth.numel()))
    return (hits / seen.clamp_min(1)[:, None]).tolist()


@torch.inference_mode()
def latency_curve(target: Any, k: int, lengths: list[int], context: int = 128, reps: int = 3) -> list[list[float]]:
    """``[[input length, seconds], ...]``: the target's median forward time over ``length`` new rows (one token and
    ``length - 1`` embedding rows under a full mask) after a cached ``context``, measured here."""
    from transformers import DynamicCache

    from ..models.causal import rollback

    dev = target.device
    emb = target.net.get_input_embeddings().weight
    cache = DynamicCache(config=target.net.config)
    ids = torch.arange(context, device=dev) % emb.shape[0]
    target.forward(ids, cache, keep=1)
    out = []
    for n in lengths:
        mask = torch.zeros(1, 1, n, context + n, dtype=target.net.dtype, device=dev)
        pos = torch.arange(context, context + n, device=dev)[None]
        extra = emb[:n - 1].detach()
        times = []
        for _ in range(reps + 1):
            t0 = time.perf_counter()
            target.forward_embeds(ids[-1:], extra, cache, mask, pos, torch.arange(n, device=dev))
            if dev.type == "cuda":
                torch.cuda.synchronize(dev)
            times.append(time.perf_counter() - t0)
            rollback(cache, context)
        out.append([n, sorted(times[1:])[len(times[1:]) // 2]])
    return out


def finish(net: Any, target: Any, held: list[dict[str, Any]], train_rows: list[dict[str, Any]],
           max_nodes: int = 64) -> str:
    """The hardware-aware step: hit rates (held-out rows, else the training rows), the latency curve, the tree
    with the most expected tokens per second, all written into ``net.spec``; a one-line summary."""
    from ..models.ppd import best_tree, input_length

    rows = held or train_rows[:HELD_OUT_EVERY * 4]
    rates = hit_rates(net, target, rows)
    top = input_length(max_nodes, net.k)
    lengths = sorted({n for n in (1, 2, 4, 8, 12, 16, 24, 32, 48, 64, 96, 128, 192, 256, 320, 384) if n < top} | {top})
    curve = latency_curve(target, net.k, lengths)
    for i in range(len(curve) - 2, -1, -1):  # more rows never cost less: a dip further on is noise from the machine
        curve[i][1] = min(curve[i][1], curve[i + 1][1])
    tree, expected, rate = best_tree(rates, curve, net.k, max_nodes)
    net.spec.update(tree=tree, hit_rates=[[round(x, 5) for x in r] for r in rates],
                    latency=[[n, round(s, 6)] for n, s in curve])
    from ..models.ppd import seconds_at

    plain = 1.0 / seconds_at(curve, 1)
    verdict = "" if rate > plain else f"; plain ar ({plain:.1f} tokens/s) is faster on this machine"
    return (f"tree of {len(tree)} nodes: {expected:.2f} expected tokens per forward, {rate:.1f} tokens/s expected "
            f"here (hit rates on {len(rows)} {'held-out' if held else 'training'} sequences){verdict}")


@dataclass(frozen=True)
class PromptObjective(Objective):
    """PPD's objective, with the held-out split and the hardware-aware step that ``dlm drafter train`` runs."""

    split: Callable[..., Any] | None = None
    finish: Callable[..., str] | None = None


OBJECTIVE = PromptObjective(make_net=make_net, feature_layers=lambda r: [], setup=lambda net, target: None,
                            loss=ppd_loss, split=split, finish=finish)
