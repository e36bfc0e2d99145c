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
"""

from __future__ import annotations

import torch
from transformers.cache_utils import Cache, DynamicLayer


class _Cursor:
    __slots__ = ("start", "write", "read", "size")

    def __init__(self) -> None:
        self.start = 0
        self.write: torch.Tensor | None = None  # positions the forward's rows are written at
        self.read: torch.Tensor | None = None  # positions attention reads (with ``write``)
        self.size = 0  # the canvas length a first indexed write allocates


class WindowLayer(DynamicLayer):
    """One layer's keys and values; ``update`` writes at the shared cursor instead of appending."""

    def __init__(self, cursor: _Cursor) -> None:
        super().__init__()
        self._cursor = cursor

    def update(
        self, key_states: torch.Tensor, value_states: torch.Tensor, *args, **kwargs
    ) -> tuple[torch.Tensor, torch.Tensor]:
        if self._cursor.write is not None:
            return self._scatter(key_states, value_states)
        start = self._cursor.start
        end = start + key_states.shape[-2]
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

    def __init__(self) -> None:
        self.cursor = _Cursor()
        cursor = self.cursor
        super().__init__(layer_class_to_replicate=lambda: WindowLayer(cursor))

    @property
    def length(self) -> int:
        return self.get_seq_length()

    def truncate(self, length: int) -> None:
        """Keep positions ``[0, length)``: what the prefix cache keeps after a block's full forward."""
        extra = self.length - length
        if extra > 0:
            self.crop(-extra)

    def clear(self) -> None:
        self.layers = []
