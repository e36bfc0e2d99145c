"""The one narrow interface the decoders see, whatever the model family.

A :class:`Denoiser` wraps a dLLM: ``logits(x, start, end, cache, rows)`` gives, for each absolute
position ``i`` in ``rows``, the logits that predict the token at ``i``, whatever the family's own
convention (LLaDA predicts in place; Dream and Fast-dLLM v2 predict the next position). A
:class:`CausalLM` wraps an AR model for speculative decoding.

Block-diffusion models (SDAR, Fast-dLLM v2) attend causally between fixed blocks of
``block_size`` positions counted from position 0, and bidirectionally inside one. Their
``logits`` keeps that computation exact whatever window the decoder asks for: the rows' last
model block is always run whole (padded with masks past the canvas end, as the model was
trained on whole blocks), and with a cache the window is widened back to the start of the model
block holding ``start``, because keys and values of a block are only final once every position of
the block is.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import torch

from .. import capabilities as C
from .info import ModelInfo, SpeedState  # noqa: F401  (re-exported: where the families import them)
from .kv import DenoiserCache

MASK_STEP = 1024  # positions the precomputed block-causal mask grows by
MASK_MAX = 8192  # the longest canvas whose mask is precomputed (64 MiB of booleans)


class OutputLayer:
    """``device`` and ``vocab_size`` of a wrapper's ``net``, read off its output layer.

    That is ``lm_head`` (dlm's networks, most transformers models, and the tests' wrappers of them),
    else the layer transformers reports (remote code). With a device map it is where logits appear.
    """

    def _head(self) -> Any:
        net = self.net  # type: ignore[attr-defined]
        head = getattr(net, "lm_head", None)
        return head if head is not None else net.get_output_embeddings()

    @property
    def device(self) -> torch.device:
        return self._head().weight.device

    @property
    def vocab_size(self) -> int:
        head = self._head()
        return int(getattr(head, "rows", None) or head.weight.shape[0])  # an int4-padded head: its real rows


@dataclass(eq=False)
class Denoiser(OutputLayer):
    """A masked-diffusion LM behind the decoder's narrow interface.

    ``shift``: the family's logits at position ``i - 1`` predict token ``i`` (Dream, Fast-dLLM v2).
    ``block_size``: attention is causal between blocks of this size and bidirectional inside one
    (block diffusion: SDAR, Fast-dLLM v2); None means fully bidirectional (LLaDA, Dream).
    """

    net: Any
    tokenizer: Any
    info: ModelInfo
    mask_id: int
    eos_ids: tuple[int, ...]
    max_length: int
    shift: bool = False
    block_size: int | None = None
    token_count: int | None = None  # real vocabulary size when the embedding is padded beyond it
    profile: str | None = None  # the decoding the weights were trained for (a dlm distill delta), the default
    kind: str = field(default="diffusion", init=False)
    compilable: bool = field(default=True, init=False)  # compile = "on" compiles the network (see .speed)
    speed: SpeedState = field(default_factory=SpeedState, init=False, repr=False)

    @property
    def capabilities(self) -> frozenset[str]:
        """What this model offers the strategies (:mod:`dlm_cli.capabilities`), from how it attends."""
        caps = {C.CANVAS_BATCH}
        if self.block_size is not None:
            caps |= {C.BLOCK_CACHE, C.AR_AT_BLOCK_1}
        else:
            caps.add(C.BIDIRECTIONAL)
        if getattr(self.net, "prunable", False):
            caps.add(C.PRUNED_FORWARD)
        if getattr(self.net, "ragged_batch", False):
            caps.add(C.RAGGED_BATCH)
        if getattr(self.net, "layer_refresh", False):
            caps.add(C.LAYER_REFRESH)
        return frozenset(caps)

    def _forward(self, *args: Any, **kwargs: Any) -> Any:
        """The network's forward, compiled when the run's ``compile`` is on (:func:`.speed.compiled_net`)."""
        if self.speed.compile_on:
            from .speed import compiled_net

            return compiled_net(self)(*args, **kwargs)
        return self.net(*args, **kwargs)

    def decoder_layers(self) -> Any:
        """The network's decoder layers, in order (Elastic-Cache's attention probe hooks one of them)."""
        return self.net.model.layers

    def new_cache(self, size: int = 0) -> DenoiserCache:
        """A cache for a canvas of ``size`` positions, preallocated once (static), or growing when 0.

        With ``compile = "on"`` a static size is rounded up as the compiled steps' warm-up rounded it
        (:func:`~dlm_cli.models.speed.whole_size`): every run of a length bucket shares their graphs."""
        if size and self.speed.block_widths:
            from .speed import whole_size

            size = whole_size(size, self.block_size or 1)
            if self.block_size is None:  # a compiled dual cache: every forward writes at its positions
                cache = DenoiserCache(size)
                cache.cursor.whole, cache.cursor.size = True, size
                return cache
        return DenoiserCache(size)

    def begin(self, prompt_tokens: int, generator: torch.Generator | None = None) -> None:
        """Called by the decode loop once per run, before its first forward (stateful families reset here)."""

    def block_end(self, pos: int) -> int | None:
        """End of the model block holding position ``pos``; None when attention has no block grid.

        The decode loop never lets one of its blocks straddle this boundary: a block-diffusion model
        can only condition a block on earlier blocks once they are final.
        """
        if self.block_size is None:
            return None
        return (pos // self.block_size + 1) * self.block_size

    def _mask(self, q0: int, q1: int, kv_len: int, device: torch.device, size: int | None = None) -> torch.Tensor | None:
        """The block-causal mask of queries ``[q0, q1)`` over keys ``[0, kv_len)``: a slice of one mask made per
        grid and device (grown by :data:`MASK_STEP` positions when a canvas outgrows it), never rebuilt per step."""
        size = size or self.block_size
        if size is None:
            return None
        n = max(q1, kv_len)
        if n > MASK_MAX:  # a long context: a per-step mask is smaller than a whole canvas's
            return torch.arange(kv_len, device=device)[None, :] // size <= torch.arange(q0, q1, device=device)[:, None] // size
        masks = self.speed.masks
        full = masks.get((size, device))
        if full is None or full.shape[0] < n:
            n = -(-n // MASK_STEP) * MASK_STEP
            blocks = torch.arange(n, device=device) // size
            full = masks[(size, device)] = blocks[None, :] <= blocks[:, None]
        return full[q0:q1, :kv_len]

    @torch.inference_mode()
    def logits(
        self,
        x: torch.Tensor,
        start: int = 0,
        end: int | None = None,
        *,
        cache: DenoiserCache | None = None,
        rows: tuple[int, int] | None = None,
        elastic: Any = None,
        grid: int | None = None,
    ) -> torch.Tensor:
        """Logits ``[B, r1 - r0, V]`` predicting the tokens at absolute positions ``rows = (r0, r1)``.

        The forward runs the window ``x[:, start:end]``. Without a cache the window must start at 0.
        With a cache, the window's keys and values are written over the cache at ``start`` and the
        window attends to everything the cache holds. ``rows`` defaults to the whole window.
        Block-diffusion models widen the window as the module doc says, so that everything before
        ``start`` must be final (committed) when a cache is used. ``elastic`` is passed to the
        network (Elastic-Cache's layer-wise refresh, :class:`~dlm_cli.models.stack.DenoiserStack`).
        ``grid`` replaces a block-diffusion model's block size for this forward (``grid = 1`` runs it
        as an AR model: S2D2's verifier).
        """
        end = x.shape[1] if end is None else end
        r0, r1 = rows if rows is not None else (start, end)
        if cache is None and start != 0:
            raise ValueError("a forward without a cache must start at position 0")
        q0 = start
        size = grid or self.block_size
        if size is not None:
            b = size
            end = max(end, -(-r1 // b) * b)
            q0 = start // b * b
        if self.shift:
            # Row i comes from the output at i - 1 (written over the cache too: an exact recompute
            # for a final position, a fresher value for a cached one); position 0 has no predictor.
            q0 = max(min(q0, r0 - 1), 0)
        ids = x[:, q0:end]
        if end > x.shape[1]:
            pad = torch.full((x.shape[0], end - x.shape[1]), self.mask_id, dtype=x.dtype, device=x.device)
            ids = torch.cat([ids, pad], dim=1)
        if (cache is not None and grid is None and elastic is None and self.speed.block_widths
                and cache.cursor.static):
            return self._whole_logits(x, ids, q0, end, r0, r1, cache, size)
        kv_len = end if cache is None else max(end, cache.length)
        extra = {} if elastic is None else {"elastic": elastic}
        mask = self._mask(q0, end, kv_len, x.device, size)
        if self.shift:
            lo, hi = max(r0 - 1, 0) - q0, r1 - 1 - q0
            out = self._forward(ids, start=q0, cache=cache, mask=mask, rows=(lo, hi), **extra)
            if r0 == 0:
                out = torch.cat([out[:, :1], out], dim=1)
        else:
            out = self._forward(ids, start=q0, cache=cache, mask=mask, rows=(r0 - q0, r1 - q0), **extra)
        # Padded embedding rows are not tokens; never propose them.
        return out if self.token_count is None else out[..., : self.token_count]

    def _whole_logits(self, x: torch.Tensor, ids: torch.Tensor, q0: int, end: int, r0: int, r1: int,
                      cache: DenoiserCache, size: int | None) -> torch.Tensor:
        """A forward with fixed shapes (``compile = "on"``): the window's keys and values are written at its
        positions (a tensor) and attention reads the whole static cache under a mask (a tensor), so a window of
        a given width is one graph whatever its place in the canvas. The mask is the block-causal mask's rows
        for a block-diffusion model; for a bidirectional one (the dual cache: LLaDA, Dream) it hides only the
        buffer's positions past the canvas, which is what lets canvases of nearby lengths share the graph.
        The same values as the growing path, not the same rounding: the sums run over the whole buffer."""
        from .speed import whole_step

        cur = cache.cursor
        total = cur.static
        if not cur.whole:
            cur.whole, cur.size = True, total
        index = self._positions(total, x.device)
        positions = index[q0:end]
        mask = self._mask(q0, end, total, x.device, size) if size else self._valid(x.shape[1], total, x.device)
        lo, hi = (max(r0 - 1, 0) - q0, r1 - 1 - q0) if self.shift else (r0 - q0, r1 - q0)
        cur.write = positions
        try:
            out = whole_step(self, ids, positions, cache, mask, index[lo:hi])
        finally:
            cur.write = None
        if self.shift and r0 == 0:
            out = torch.cat([out[:, :1], out], dim=1)
        return out if self.token_count is None else out[..., : self.token_count]

    def _valid(self, n: int, total: int, device: torch.device) -> torch.Tensor:
        """``[1, total]``: True for the buffer's first ``n`` positions (the canvas), made once per run's length."""
        key = ("valid", device)
        held = self.speed.masks.get(key)
        if held is None or held[0] != (n, total):
            held = self.speed.masks[key] = ((n, total), (self._positions(total, device)[:total] < n)[None])
        return held[1]

    def _positions(self, n: int, device: torch.device) -> torch.Tensor:
        """``arange(n)`` made once per device (a step slices its window's positions out of it)."""
        cached = self.speed.positions
        pos = cached.get(device)
        if pos is None or pos.shape[0] < n:
            pos = cached[device] = torch.arange(-(-n // MASK_STEP) * MASK_STEP, device=device)
        return pos

    @torch.inference_mode()
    def logits_at(self, x: torch.Tensor, targets: torch.Tensor, computed: torch.Tensor, keys: torch.Tensor,
                  cache: DenoiserCache) -> torch.Tensor:
        """Logits ``[1, len(targets), V]`` predicting the tokens at ``targets`` from a forward over ``computed`` only.

        Window-Diffusion's pruned forward (fully bidirectional families on dlm's stack): ``computed``
        (sorted canvas positions, each run at its own rotary position) are the queries; their keys
        and values are written into ``cache`` at those positions, and attention reads the cache at
        ``keys`` (sorted, a superset of ``computed``); every other position is pruned. ``computed``
        must hold each target's predictor (the target itself, or ``target - 1`` for ``shift``
        families; position 0 predicts itself).
        """
        if self.block_size is not None:
            raise ValueError("a pruned forward needs full attention; block-diffusion models have a block grid")
        pred = (targets - 1).clamp_min(0) if self.shift else targets
        idx = torch.searchsorted(computed, pred)  # the predictors' rows (the caller put them in ``computed``)
        cur = cache.cursor
        cur.write, cur.read, cur.size = computed, keys, x.shape[1]
        try:
            out = self._forward(x[:, computed], cache=cache, positions=computed, rows=idx)
        finally:
            cur.write = cur.read = None
        return out if self.token_count is None else out[..., : self.token_count]
