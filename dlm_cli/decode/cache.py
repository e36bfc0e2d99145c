"""Cache policies for the dLLM loop: which forward a step runs, and when a cache is recomputed.

Fast-dLLM's caches (``cache = "prefix" | "dual"``) run one full forward at each block start and
then only the block (dual) or the block and what follows it (prefix). Both are approximate for
bidirectional models: the cached keys and values go stale as the block fills in. Two refresh
policies bound the staleness:

- ``refresh = N``: recompute the whole cache every ``N`` steps of a block (``1`` is a full forward
  at every step, which gives exactly the no-cache output).
- ``elastic_threshold = γ`` (Elastic-Cache, Nguyen-Tri et al., 2025): after each step, look at the
  attention that the block's queries pay, at layer ``ℓ = elastic_layer``, to the most-attended
  token of the previous step; when the cosine similarity of that attention between consecutive
  steps falls below ``γ``, the next step refreshes the cache from layer ``ℓ`` upward: the window
  runs the layers below ``ℓ`` on the cache as usual, and every position of the canvas runs the
  layers from ``ℓ`` up (from their stored input at ``ℓ``, with the window's fresh rows spliced in),
  rewriting those layers' keys and values. The layers below ``ℓ`` keep their cached keys and values.

For block-diffusion models (block-causal attention) the cache is exact, so no refresh is needed
and these keys have no effect.
"""

from __future__ import annotations

from typing import Any, TYPE_CHECKING

import torch

from ..models.base import Denoiser

if TYPE_CHECKING:
    from .keys import RunSettings


class AttentionProbe:
    """Reads, at one layer, the attention of the block's queries over every key (no change to the model).

    A forward hook on the layer's attention module recomputes the block rows' queries (with the
    same projection, norm and rotary embedding) against the keys the cache holds after the update.
    """

    def __init__(self, model: Denoiser, layer: int) -> None:
        layers = model.decoder_layers()
        self.index = layer % len(layers)
        self.attn = layers[self.index].self_attn
        self.rows: tuple[int, int] | None = None  # the block's absolute positions
        self.cache: Any = None
        self.current: torch.Tensor | None = None  # [heads * queries, keys] attention probabilities
        self.handle = self.attn.register_forward_hook(self._hook, with_kwargs=True)

    def close(self) -> None:
        self.handle.remove()

    def _hook(self, module: Any, args: tuple, kwargs: dict, output: Any) -> None:
        if self.rows is None or self.cache is None:
            return
        from transformers.models.llama.modeling_llama import apply_rotary_pos_emb

        h = kwargs["hidden_states"] if "hidden_states" in kwargs else args[0]
        start = self.cache.cursor.start  # the window's first position (families may widen it)
        r0, r1 = self.rows[0] - start, self.rows[1] - start
        h = h[:, r0:r1]
        cos, sin = kwargs["position_embeddings"]
        cos, sin = cos[:, r0:r1], sin[:, r0:r1]
        m = module
        q = m.q_proj(h).view(*h.shape[:-1], -1, m.head_dim)
        if getattr(m, "q_norm", None) is not None:
            q = m.q_norm(q)
        q = q.transpose(1, 2)
        q, _ = apply_rotary_pos_emb(q, q, cos, sin)
        keys = self.cache.layers[self.index].keys
        keys = keys.repeat_interleave(q.shape[1] // keys.shape[1], dim=1)
        att = torch.softmax((q.float() @ keys.float().transpose(-1, -2)) * m.scaling, dim=-1)
        self.current = att[0].reshape(-1, att.shape[-1])


class ElasticLayers:
    """Elastic-Cache's layer-wise refresh: the stored input of layer ``layer`` for the whole canvas."""

    def __init__(self, layer: int) -> None:
        self.layer = layer
        self.hidden: torch.Tensor | None = None
        self.mode: str | None = None  # "store" (full forward), "partial" (refresh from the layer up) or None


class Forward:
    """Runs the forward a step needs under the chosen cache policy, and counts NFE and refreshes."""

    def __init__(self, model: Denoiser, settings: RunSettings, length: int) -> None:
        self.model = model
        self.mode = settings.cache
        self.length = length
        # Block-causal models' caches are exact and keep the whole canvas: preallocated once (static). The
        # canvas is padded to whole model blocks (Denoiser.logits), so the size is rounded up to one.
        size = -(-length // model.block_size) * model.block_size if model.block_size else 0
        if not model.block_size and self.mode == "dual" and model.speed.block_widths:
            size = length  # a compiled dual cache (.models.speed.prepare): one buffer, fixed-shape windows
        self.cache = None if self.mode == "none" else model.new_cache(size)
        self.exact_upto = 0  # block-causal: cache holds exact keys/values for [0, exact_upto)
        self.nfe = 0
        self.refreshes = 0  # full forwards inside a block (not counting block starts)
        from ..capabilities import LAYER_REFRESH

        approximate = self.cache is not None and not model.block_size
        self.every = settings.refresh if approximate else 0
        # The attention probe and the layer-wise refresh need dlm's own transformer stack.
        elastic = approximate and LAYER_REFRESH in model.capabilities
        self.elastic_threshold = settings.elastic_threshold if elastic else 0.0
        self.probe = AttentionProbe(model, settings.elastic_layer) if self.elastic_threshold > 0 else None
        self.layers = ElasticLayers(self.probe.index) if self.probe is not None else None
        self.age = 0  # forwards since the last full one
        self.stale = False  # the elastic test asked for a recompute at the next step
        self.drift: torch.Tensor | None = None  # that test's verdict, still on the device (see resolve)
        self.previous: torch.Tensor | None = None

    def close(self) -> None:
        if self.probe is not None:
            self.probe.close()

    def __call__(self, x: torch.Tensor, bs: int, be: int, first: bool, rows_end: int | None = None) -> torch.Tensor:
        """Logits ``[1, rows, V]`` for rows ``[bs, rows_end or be)``; ``first`` marks a block's first step."""
        self.nfe += 1
        m, cache = self.model, self.cache
        rows = (bs, rows_end or be)
        if cache is None:
            # Block-causal attention: nothing after the block can influence it.
            return m.logits(x, 0, rows[1] if m.block_size else self.length, rows=rows)
        if m.block_size:
            if first:
                out = m.logits(x, self.exact_upto, rows[1], cache=cache, rows=rows)
                cache.truncate(bs)
                self.exact_upto = bs
                return out
            return m.logits(x, bs, be, cache=cache, rows=rows)
        if self.drift is not None:  # a caller that did not bring the verdict over with its step's transfer
            self.resolve(bool(self.drift))
        full = first or bool(self.every and self.age >= self.every)
        partial = self.stale and not full
        if (full and not first) or partial:
            self.refreshes += 1
        if self.probe is not None:
            self.probe.cache = cache
            self.probe.rows = (bs, be)
            self.layers.mode = "store" if full else "partial" if partial else None
        extra = {"elastic": self.layers} if self.probe is not None else {}  # only dlm's own stacks take it
        if full:
            cache.clear()
            out = m.logits(x, 0, self.length, cache=cache, rows=rows, **extra)
            if self.mode == "prefix":
                cache.truncate(bs)
            self.age = 1
        else:
            end = be if self.mode == "dual" else self.length
            out = m.logits(x, bs, end, cache=cache, rows=rows, **extra)
            self.age += 1
        self.stale = False
        if self.probe is not None:
            self._drift(first)
        return out

    def resolve(self, stale: bool) -> None:
        """The host's copy of :attr:`drift` (the block driver reads it in its step's one transfer)."""
        self.stale, self.drift = stale, None

    def _drift(self, first: bool) -> None:
        """Elastic-Cache's test: has the attention paid to the most-attended token moved? (on the device)"""
        now = self.probe.current
        prev, self.previous = self.previous, now
        if first or prev is None or now is None or prev.shape != now.shape:
            return
        hot = prev.mean(0).argmax().reshape(1)
        a, b = prev.index_select(1, hot)[:, 0], now.index_select(1, hot)[:, 0]
        sim = torch.nn.functional.cosine_similarity(a, b, dim=0)
        self.drift = sim.double() < self.elastic_threshold  # in float64, as the host compared it
