"""The dLLM key/value cache: a transformers ``Cache`` whose layers write a window in place.

Fast-dLLM's prefix and dual caches both reduce to one operation: the current forward covers the
window ``[start, start + n)`` of the canvas, its keys and values are written over that window of
the stored ones, and attention reads the whole stored range. With the cache holding only the
prefix ``[0, start)`` this is the prefix cache (the window runs to the end of the canvas); with the
cache holding the whole canvas it is the dual cache (the window is just the current block).

Window-Diffusion needs the same operation over sets of positions that need not be contiguous:
with ``cursor.write`` set (a 1-D index of canvas positions, one per row of the forward), the rows'
keys and values are written at those positions (into a canvas of ``cursor.size`` positions, made
on the first write), and attention reads only the positions in ``cursor.read`` (all when None).

A cache made with ``size`` (the canvas length, known when a run starts) is static: each layer's
first write allocates its keys and values for ``size`` positions once, and every later write,
truncation or regrowth works in that buffer. ``keys``/``values`` stay views of its first
positions, so attention reads exactly the range a growing cache would hold (the same values, in
the same order), while a block committed after a truncation is written in place instead of being
concatenated onto a copy of the whole cache.
"""

from __future__ import annotations

import torch
from transformers.cache_utils import Cache, DynamicLayer


class _Cursor:
    __slots__ = ("start", "write", "read", "size", "static", "whole")

    def __init__(self, static: int = 0) -> None:
        self.start = 0
        self.write: torch.Tensor | None = None  # positions the forward's rows are written at
        self.read: torch.Tensor | None = None  # positions attention reads (with ``write``)
        self.size = 0  # the canvas length a first indexed write allocates
        self.static = static  # positions each layer preallocates (0: grow by concatenation)
        self.whole = False  # fixed shapes: write at ``write``, read every one of ``size`` positions


class WindowLayer(DynamicLayer):
    """One layer's keys and values; ``update`` writes at the shared cursor instead of appending."""

    def __init__(self, cursor: _Cursor) -> None:
        super().__init__()
        self._cursor = cursor
        self._buffers: tuple[torch.Tensor, torch.Tensor] | None = None  # a static cache's storage

    def update(
        self, key_states: torch.Tensor, value_states: torch.Tensor, *args, **kwargs
    ) -> tuple[torch.Tensor, torch.Tensor]:
        if self._cursor.write is not None:
            return self._scatter(key_states, value_states)
        start = self._cursor.start
        end = start + key_states.shape[-2]
        if self._cursor.static:
            return self._write(key_states, value_states, start, end)
        if not self.is_initialized or self.keys.numel() == 0:
            if start != 0:
                raise ValueError("the first forward into an empty dLLM cache must start at position 0")
            self.lazy_initialization(key_states, value_states)
            self.keys, self.values = key_states, value_states
        elif start > self.keys.shape[-2]:
            # Appending past the stored range would leave a hole of missing positions.
            raise ValueError(f"window starts at {start} but the cache holds only {self.keys.shape[-2]} positions")
        elif end > self.keys.shape[-2]:
            self.keys = torch.cat([self.keys[..., :start, :], key_states], dim=-2)
            self.values = torch.cat([self.values[..., :start, :], value_states], dim=-2)
        else:
            self.keys[..., start:end, :] = key_states
            self.values[..., start:end, :] = value_states
        return self.keys, self.values

    def _write(self, key_states: torch.Tensor, value_states: torch.Tensor, start: int,
               end: int) -> tuple[torch.Tensor, torch.Tensor]:
        """The static path: write ``[start, end)`` into the preallocated buffers; keys/values view the filled part."""
        held = self.keys.shape[-2] if self.is_initialized and self.keys.numel() else 0
        if start > held:
            raise ValueError(f"window starts at {start} but the cache holds only {held} positions")
        bufs = self._buffers
        if bufs is None or bufs[0].shape[:-2] != key_states.shape[:-2] or end > bufs[0].shape[-2]:
            if held == 0:
                if start != 0:
                    raise ValueError("the first forward into an empty dLLM cache must start at position 0")
                self.lazy_initialization(key_states, value_states)
            # Once per layer and run; again only if a forward reaches past the size the run declared.
            size = max(self._cursor.static, end)
            bufs = (key_states.new_empty((*key_states.shape[:-2], size, key_states.shape[-1])),
                    value_states.new_empty((*value_states.shape[:-2], size, value_states.shape[-1])))
            if held:
                bufs[0][..., :held, :] = self.keys
                bufs[1][..., :held, :] = self.values
            self._buffers = bufs
        bufs[0][..., start:end, :] = key_states
        bufs[1][..., start:end, :] = value_states
        n = max(held, end)
        self.keys, self.values = bufs[0][..., :n, :], bufs[1][..., :n, :]
        return self.keys, self.values

    def _scatter(self, key_states: torch.Tensor, value_states: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        c = self._cursor
        if not self.is_initialized or self.keys.numel() == 0:
            self.lazy_initialization(key_states, value_states)
            shape = (*key_states.shape[:-2], c.size, key_states.shape[-1])
            self.keys = key_states.new_zeros(shape)
            self.values = value_states.new_zeros((*shape[:-1], value_states.shape[-1]))
        dev = self.keys.device  # a device map may place this layer elsewhere than the indices
        self.keys.index_copy_(-2, c.write.to(dev), key_states)
        self.values.index_copy_(-2, c.write.to(dev), value_states)
        if c.read is None:
            return self.keys, self.values
        read = c.read.to(dev)
        return self.keys.index_select(-2, read), self.values.index_select(-2, read)


class DenoiserCache(Cache):
    """Per-layer keys and values of a dLLM canvas, written window by window (see module doc)."""

    def __init__(self, size: int = 0) -> None:
        self.cursor = _Cursor(size)
        cursor = self.cursor
        super().__init__(layer_class_to_replicate=lambda: WindowLayer(cursor))

    @property
    def length(self) -> int:
        return self.get_seq_length()

    def truncate(self, length: int) -> None:
        """Keep positions ``[0, length)``: what the prefix cache keeps after a block's full forward.

        A whole-buffer cache (``cursor.whole``: a compiled block step, every forward writes at
        ``cursor.write`` and reads all ``size`` positions) has nothing to drop: the block-causal mask,
        not a length, hides what a block may not see."""
        if self.cursor.whole:
            return
        extra = self.length - length
        if extra > 0:
            self.crop(-extra)

    def clear(self) -> None:
        if self.cursor.whole:  # every position is rewritten by the next full forward; the mask hides the rest
            return
        if self.cursor.static:  # keep the buffers: the next forward rewrites them from position 0
            for layer in self.layers:
                layer.keys, layer.values = layer.keys[..., :0, :], layer.values[..., :0, :]
        else:
            self.layers = []
