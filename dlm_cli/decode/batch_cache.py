"""The batch's KV cache: each row's window written at its own positions (block-diffusion models: exact;
LLaDA and Dream: Fast-dLLM's prefix and dual caches, as approximate as alone, :func:`_bidirectional_logits`).

A block-diffusion model's prefix cache is exact (:mod:`.cache`): a block's keys and values are final
once every position of its model block is. One run writes the window ``[q0, end)`` and attends the
cache's first ``end`` positions (:class:`~.cache.Forward`). In a batch the rows stand at different
places, so the windows are per row: each row's window (the same positions as alone: from the start
of the model block holding its first unfinished position, widened back one slot for the AR shift,
to the end of its block's model block) is written at the row's own positions of a ``[B, heads, S, d]``
buffer, and attention reads the whole buffer under each row's block-causal mask. Nothing needs
truncating: the mask, not a length, hides what a block may not see, and a block's stale keys are
rewritten by its first window before any query may read them. A row's window narrower than the
widest is padded with the positions after it (later model blocks: invisible now, rewritten when
reached) or, past the canvas, with a trash slot ``S``.
"""

from __future__ import annotations

from typing import Any, TYPE_CHECKING

import torch
from transformers.cache_utils import Cache, DynamicLayer

if TYPE_CHECKING:
    from ..models.protocols import DLLM


class _Cursor:
    __slots__ = ("start", "write", "size")

    def __init__(self, size: int) -> None:
        self.start = 0
        self.write: torch.Tensor | None = None  # [B, w] positions the window's rows are written at
        self.size = size  # positions per row, the trash slot included


class _RowsLayer(DynamicLayer):
    def __init__(self, cursor: _Cursor) -> None:
        super().__init__()
        self._cursor = cursor

    def update(self, key_states: torch.Tensor, value_states: torch.Tensor, *args: Any,
               **kwargs: Any) -> tuple[torch.Tensor, torch.Tensor]:
        c = self._cursor
        if not self.is_initialized or self.keys.numel() == 0:
            self.lazy_initialization(key_states, value_states)
            B, H, _, d = key_states.shape
            self.keys = key_states.new_zeros((B, H, c.size, d))
            self.values = value_states.new_zeros((B, H, c.size, value_states.shape[-1]))
        at = c.write.to(self.keys.device)[:, None, :, None]
        self.keys.scatter_(2, at.expand(-1, key_states.shape[1], -1, key_states.shape[-1]), key_states)
        self.values.scatter_(2, at.expand(-1, value_states.shape[1], -1, value_states.shape[-1]), value_states)
        return self.keys, self.values


class RowsCache(Cache):
    """Per-row keys and values of a batch of block-diffusion canvases (see the module doc)."""

    def __init__(self, size: int) -> None:
        self.cursor = _Cursor(size + 1)  # rows come by :meth:`add`
        cursor = self.cursor
        super().__init__(layer_class_to_replicate=lambda: _RowsLayer(cursor))

    def add(self, rows: int, size: int) -> None:
        """``rows`` new rows at the end (rows that join: nothing cached yet), each of at least ``size`` positions."""
        old = self.cursor.size
        self.cursor.size = max(old, size + 1)
        for layer in self.layers:
            if layer.is_initialized and layer.keys.numel():
                layer.keys, layer.values = (_grown(t, rows, self.cursor.size, old) for t in (layer.keys, layer.values))

    def keep(self, places: list[int]) -> None:
        """Only the rows at ``places`` (a compacted batch)."""
        for layer in self.layers:
            if layer.is_initialized and layer.keys.numel():
                at = torch.tensor(places, dtype=torch.long, device=layer.keys.device)
                layer.keys, layer.values = layer.keys.index_select(0, at), layer.values.index_select(0, at)


def _grown(t: torch.Tensor, rows: int, size: int, old: int) -> torch.Tensor:
    """``t`` ``[B, H, old, d]`` with ``rows`` zero rows after it and ``size`` positions (its trash slot dropped)."""
    out = t.new_zeros((t.shape[0] + rows, t.shape[1], size, t.shape[3]))
    out[: t.shape[0], :, : old - 1] = t[:, :, : old - 1]
    return out


@torch.inference_mode()
def cached_logits(model: DLLM, X: torch.Tensor, W: int, cache: RowsCache, active: list[Any],
                  cols: torch.Tensor) -> torch.Tensor:
    """Logits ``[B, n, V]`` at columns ``cols`` from each row's cached window (as :class:`~.cache.Forward`
    runs it alone: from its exact prefix on a block's first step, from the block's model block after)."""
    if not model.block_size:
        return _bidirectional_logits(model, X, W, cache, active, cols)
    b, dev = model.block_size, X.device
    trash = cache.cursor.size - 1
    q0, ends = [], []
    for r in active:
        s = r.exact if r.i == 0 else r.bs
        start = s // b * b
        if model.shift:
            start = max(min(start, r.bs - 1), 0)
        q0.append(start)
        ends.append(-(-r.be // b) * b)
        if r.i == 0:
            r.exact = r.bs
    w = max(e - s for s, e in zip(q0, ends))
    starts = torch.tensor(q0, dtype=torch.long, device=dev)
    lengths = torch.tensor([r.c.length for r in active], dtype=torch.long, device=dev)
    offs = torch.tensor([r.off for r in active], dtype=torch.long, device=dev)
    qpos = starts[:, None] + torch.arange(w, device=dev)[None, :]
    inside = qpos < lengths[:, None]
    kpos = torch.arange(trash + 1, device=dev)
    allow = (kpos[None, None, :] // b <= qpos[:, :, None] // b) & (kpos < trash)[None, None, :]
    return _window_logits(model, X, W, cache, qpos, inside, torch.where(qpos < trash, qpos, trash), allow, offs,
                          starts, cols)


def _bidirectional_logits(model: DLLM, X: torch.Tensor, W: int, cache: RowsCache, active: list[Any],
                          cols: torch.Tensor) -> torch.Tensor:
    """A fully bidirectional model's (LLaDA, Dream) prefix or dual cache, each row as
    :class:`~.cache.Forward` runs it alone: a block's first step forwards the row's whole canvas and
    writes every key and value; a later step forwards its block (dual) or its block and everything after
    it (prefix), written over the cache, and attends every position of the row's canvas (the others as
    the block's first step left them: Fast-dLLM's approximation, the same as alone). A row's window
    narrower than the widest is padded with queries written to the trash slot, which no row attends."""
    dev = X.device
    trash = cache.cursor.size - 1
    q0, ends = [], []
    for r in active:
        length = r.c.length
        start, end = (0, length) if r.i == 0 else (r.bs, r.be if r.cfg.cache == "dual" else length)
        if model.shift:  # row i comes from the output at i - 1
            start = max(min(start, r.bs - 1), 0)
        q0.append(start)
        ends.append(end)
    w = max(e - s for s, e in zip(q0, ends))
    starts = torch.tensor(q0, dtype=torch.long, device=dev)
    widths = torch.tensor([e - s for s, e in zip(q0, ends)], dtype=torch.long, device=dev)
    lengths = torch.tensor([r.c.length for r in active], dtype=torch.long, device=dev)
    offs = torch.tensor([r.off for r in active], dtype=torch.long, device=dev)
    j = torch.arange(w, device=dev)[None, :]
    qpos = starts[:, None] + j
    inside = j < widths[:, None]
    kpos = torch.arange(trash + 1, device=dev)
    allow = (kpos[None, :] < lengths[:, None])[:, None, :].expand(len(active), w, trash + 1)
    return _window_logits(model, X, W, cache, qpos, inside, torch.where(inside, qpos, trash), allow, offs, starts,
                          cols)


def _window_logits(model: DLLM, X: torch.Tensor, W: int, cache: RowsCache, qpos: torch.Tensor, inside: torch.Tensor,
                   write: torch.Tensor, allow: torch.Tensor, offs: torch.Tensor, starts: torch.Tensor,
                   cols: torch.Tensor) -> torch.Tensor:
    """The forward of every row's window: queries at positions ``qpos`` (their tokens read from the batch
    canvas where ``inside``, masks elsewhere), keys and values written at ``write``, attention under
    ``allow``; the logits predicting columns ``cols``."""
    ids = torch.where(inside, X.gather(1, torch.where(inside, qpos + offs[:, None], W)), model.mask_id)
    cache.cursor.write = write
    try:
        pred = (cols - offs[:, None] - starts[:, None] - (1 if model.shift else 0)).clamp(0, qpos.shape[1] - 1)
        out = model.net(ids, positions=qpos, mask=allow, rows=pred, cache=cache)
    finally:
        cache.cursor.write = None
    return out if model.token_count is None else out[..., : model.token_count]
