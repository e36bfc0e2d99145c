"""Masked training rows for the distillation methods, in one packed layout for every family.

A row is one sequence (``ids``, ``positions``, a boolean ``[N, N]`` attention mask) run by the
model's network in one forward, with ``src`` (the rows whose logits predict each target), the
targets ``tgt`` and, for dParallel, which of the two complementary views masked each target.

Two layouts, chosen by the model's attention (the :class:`~dlm_cli.models.base.Denoiser`'s
``block_size``), never by its family:

- **Block diffusion** (a block grid of ``b`` positions: SDAR, Fast-dLLM v2, dlm's adapters):
  ``[x_0 ; x_v ; ...]``, the clean sequence (block-causal), then one noisy copy of its answer blocks
  per view at the clean copy's positions; a noisy block attends to itself and to the clean blocks
  before it, exactly what the decoder gives it (BD3-LM's concatenation, as ``smollm2-dlm`` was
  adapted). Every answer block is an active block in each copy: in expectation the same as drawing
  one active block per sample, as dParallel's trainer does, with ``b``-times more targets per
  forward (the clean prefix, the costly part, is shared).
- **Full attention** (LLaDA, Dream): dParallel's own layout: one active block of ``block`` positions
  drawn uniformly over the answer's blocks, earlier blocks clean, later ones all masks and not
  scored; the two views are two sequences packed side by side with a block-diagonal mask.

With the AR shift (Dream, Fast-dLLM v2, dlm's adapters) the logits at ``i − 1`` predict ``i``; a
block's first slot is then predicted from the clean row before it, as the decoder does.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch


@dataclass
class Row:
    ids: torch.Tensor  # [N] the student's input
    positions: torch.Tensor  # [N]
    mask: torch.Tensor  # [N, N] bool, True = may attend
    src: torch.Tensor  # [K] the rows whose logits predict the targets
    tgt: torch.Tensor  # [K] the target tokens
    view: torch.Tensor  # [K] dParallel: which view masked the target; CD4LM: zeros
    teacher_ids: torch.Tensor | None = None  # CD4LM: the teacher's input (fewer masks), same layout


@dataclass(frozen=True)
class Layout:
    """What a row builder needs to know of the model: its conventions, not its family."""

    mask_id: int
    end_id: int
    shift: bool
    grid: int | None  # the block-diffusion grid; None = full attention
    block: int = 32  # full attention: the decode block (dParallel's active block)


def _clean(prompt: list[int], answer: list[int], lay: Layout, multiple: int) -> tuple[torch.Tensor, int]:
    """``prompt + answer`` padded with end tokens to a whole number of ``multiple``-slot blocks of answer."""
    p, a = len(prompt), len(answer)
    if lay.grid is not None:
        total = -(-(p + a) // lay.grid) * lay.grid
    else:
        total = p + max(1, -(-a // multiple)) * multiple
    return torch.tensor(prompt + answer + [lay.end_id] * (total - p - a)), p


def _block_mask(pos: torch.Tensor, stream: torch.Tensor, grid: int) -> torch.Tensor:
    b = pos // grid
    sq, sk, bq, bk = stream[:, None], stream[None, :], b[:, None], b[None, :]
    return (((sq == 0) & (sk == 0) & (bk <= bq)) | ((sq > 0) & (sk == 0) & (bk < bq))
            | ((sq > 0) & (sk == sq) & (bk == bq)))


def _packed_blocks(x0: torch.Tensor, p: int, lay: Layout, masks: list[torch.Tensor]) -> tuple[torch.Tensor, ...]:
    """``[x_0 ; copies]`` for the block layout: ids, positions, mask, and each copy's row offset."""
    grid = lay.grid
    assert grid is not None
    total = len(x0)
    s = p // grid * grid
    span = torch.arange(s, total)
    copies = [torch.where(m, lay.mask_id, x0[s:]) for m in masks]
    ids = torch.cat([x0, *copies])
    pos = torch.cat([torch.arange(total)] + [span] * len(copies))
    stream = torch.cat([torch.zeros(total, dtype=torch.long)] +
                       [torch.full((total - s,), k + 1, dtype=torch.long) for k in range(len(copies))])
    return ids, pos, _block_mask(pos, stream, grid), s


def _sources(i: torch.Tensor, copy: int, s: int, total: int, lay: Layout) -> torch.Tensor:
    """Rows predicting the answer slots ``i`` in noisy copy ``copy`` (1-based) of the block layout."""
    base = total + (copy - 1) * (total - s)
    if not lay.shift:
        return base + (i - s)
    assert lay.grid is not None
    first = i % lay.grid == 0
    return torch.where(first, i - 1, base + (i - 1 - s))


def dparallel_row(prompt: list[int], answer: list[int], lay: Layout, gen: torch.Generator,
                  rate: float = 0.5) -> Row:
    """A dParallel row: each active-block slot masked with probability ``rate`` in view ``m``, the rest in ``m̄``."""
    x0, p = _clean(prompt, answer, lay, lay.block)
    total = len(x0)
    if lay.grid is not None:
        s = p // lay.grid * lay.grid
        slot = torch.arange(s, total) >= p
        draw = torch.rand(total - s, generator=gen) < rate
        views = [draw & slot, ~draw & slot]
        ids, pos, mask, s = _packed_blocks(x0, p, lay, views)
        src, tgt, view = [], [], []
        for v, m in enumerate(views):
            i = torch.arange(s, total)[m]
            src.append(_sources(i, v + 1, s, total, lay))
            tgt.append(x0[i])
            view.append(torch.full_like(i, v))
        return Row(ids, pos, mask, torch.cat(src), torch.cat(tgt), torch.cat(view))
    blocks = (total - p) // lay.block
    n = int(torch.randint(blocks, (1,), generator=gen))
    a, b = p + n * lay.block, p + (n + 1) * lay.block
    draw = torch.rand(b - a, generator=gen) < rate
    seqs, src, tgt, view = [], [], [], []
    for v, m in enumerate((draw, ~draw)):
        seq = x0.clone()
        seq[a:b] = torch.where(m, lay.mask_id, x0[a:b])
        seq[b:] = lay.mask_id  # later blocks: masks, not scored
        seqs.append(seq)
        i = torch.arange(a, b)[m]
        src.append(v * total + (i - 1 if lay.shift else i))
        tgt.append(x0[i])
        view.append(torch.full_like(i, v))
    ids = torch.cat(seqs)
    pos = torch.arange(total).repeat(2)
    side = torch.arange(2 * total) // total
    return Row(ids, pos, side[:, None] == side[None, :], torch.cat(src), torch.cat(tgt), torch.cat(view))


def nested_counts(n: int, gen: torch.Generator) -> tuple[int, int]:
    """CD4LM's nested mask sizes for ``n`` slots: ``(|S|, |T|)`` with ``T ⊆ S`` (``_get_mask_ratios``).

    ``r_s ~ U(0.4, 0.9)`` (at most 0.5 below 20 slots), ``r_t = clip(r_s · U(0.3, 0.7), 0.1, 0.6)``;
    ``|S| = ⌊r_s·n⌋`` but at least ``max(2, ⌈0.1 n⌉)``, ``|T| = ⌊r_t·n⌋``; at most 10 slots: 2 and 1.
    Never more than ``n`` (and ``|T| < |S|`` whenever ``|S| > 1``, so the teacher always sees more).
    """
    if n <= 0:
        return 0, 0
    u = torch.rand(2, generator=gen).tolist()
    if n <= 10:
        s, t = 2, 1
    else:
        r_s = 0.4 + 0.5 * u[0]
        if n < 20:
            r_s = min(r_s, 0.5)
        r_t = min(max(r_s * (0.3 + 0.4 * u[1]), 0.1), 0.6)
        s = max(int(r_s * n), 2, math.ceil(0.1 * n))
        t = int(r_t * n)
    s = min(s, n)
    t = min(t, max(s - 1, 0)) if s > 1 else 0
    return s, t


def block_counts(n: int, gen: torch.Generator) -> tuple[int, int]:
    """Nested sizes drawn per block of the block layout: ``r_s ~ U(0.4, 0.9)``, ``r_t`` as above, ``|S| ≥ 1``."""
    if n <= 0:
        return 0, 0
    u = torch.rand(2, generator=gen).tolist()
    r_s = 0.4 + 0.5 * u[0]
    r_t = min(max(r_s * (0.3 + 0.4 * u[1]), 0.1), 0.6)
    s = min(n, max(1, int(r_s * n)))
    return s, min(int(r_t * n), s - 1)


def cd4lm_row(prompt: list[int], answer: list[int], lay: Layout, gen: torch.Generator) -> Row:
    """A CD4LM row: the student masks ``S``, the teacher the first ``|T|`` of ``S`` in a random order."""
    x0, p = _clean(prompt, answer, lay, lay.grid or 1)
    total = len(x0)
    if lay.grid is not None:
        s0 = p // lay.grid * lay.grid
        stud = torch.zeros(total - s0, dtype=torch.bool)
        teach = torch.zeros_like(stud)
        for b0 in range(s0, total, lay.grid):
            slots = torch.arange(max(b0, p), b0 + lay.grid) - s0
            k_s, k_t = block_counts(len(slots), gen)
            order = slots[torch.randperm(len(slots), generator=gen)]
            stud[order[:k_s]] = True
            teach[order[:k_t]] = True
        ids, pos, mask, s0 = _packed_blocks(x0, p, lay, [stud])
        teacher_ids = torch.cat([x0, torch.where(teach, lay.mask_id, x0[s0:])])
        i = torch.arange(s0, total)[stud]
        zeros = torch.zeros_like(i)
        return Row(ids, pos, mask, _sources(i, 1, s0, total, lay), x0[i], zeros, teacher_ids)
    slots = torch.arange(p, total)
    k_s, k_t = nested_counts(len(slots), gen)
    order = slots[torch.randperm(len(slots), generator=gen)]
    stud, teach = x0.clone(), x0.clone()
    stud[order[:k_s]] = lay.mask_id
    teach[order[:k_t]] = lay.mask_id
    i = order[:k_s].sort().values
    src = i - 1 if lay.shift else i
    full = torch.ones(total, total, dtype=torch.bool)
    return Row(stud, torch.arange(total), full, src, x0[i], torch.zeros_like(i), teach)
