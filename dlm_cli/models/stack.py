"""A transformer stack built from transformers' own decoder layers, run without a causal mask.

Every dLLM family we load natively (LLaDA, Dream, SDAR, Fast-dLLM v2) is a Llama- or Qwen-shaped
stack whose only difference from the AR model is the attention pattern. So the family adapters
choose a transformers config and decoder-layer class, and this module runs them over a window of
the canvas with an optional mask and a :class:`~dlm_cli.models.kv.DenoiserCache`.
"""

from __future__ import annotations

from typing import Any

import torch
from torch import nn

from .compat import cache_kwarg


class DenoiserStack(nn.Module):
    """``model.embed_tokens``, ``model.layers``, ``model.norm`` and ``lm_head``: the Qwen2/Llama names."""

    def __init__(
        self,
        config: Any,
        layer_cls: type[nn.Module],
        norm_cls: type[nn.Module],
        rotary_cls: type[nn.Module],
        *,
        tie_word_embeddings: bool = False,
    ) -> None:
        super().__init__()
        config._attn_implementation = getattr(config, "_attn_implementation", None) or "sdpa"
        self.config = config
        self.model = nn.Module()
        self.model.embed_tokens = nn.Embedding(config.vocab_size, config.hidden_size)
        self.model.layers = nn.ModuleList(layer_cls(config, i) for i in range(config.num_hidden_layers))
        self.model.norm = norm_cls(config.hidden_size, eps=config.rms_norm_eps)
        self.model.rotary_emb = rotary_cls(config=config)
        self.lm_head = nn.Linear(config.hidden_size, config.vocab_size, bias=False)
        if tie_word_embeddings:
            self.lm_head.weight = self.model.embed_tokens.weight
        for layer in self.model.layers:
            layer.self_attn.is_causal = False

    def forward(
        self,
        ids: torch.Tensor,
        *,
        start: int = 0,
        cache: Any = None,
        mask: torch.Tensor | None = None,
        rows: tuple[int, int] | None = None,
        elastic: Any = None,
    ) -> torch.Tensor:
        """Logits of the window ``ids`` placed at positions ``start..``; only rows ``rows`` (relative) if given.

        ``mask`` is a boolean ``[q, kv]`` attention mask (True = may attend) or None for full attention.

        ``elastic`` (Elastic-Cache's layer-wise refresh, bidirectional attention only) has ``layer``,
        ``hidden`` and ``mode``. With ``mode = "store"`` (a forward over the whole canvas), the input
        of layer ``layer`` is stored in ``hidden``. With ``"partial"``, the window runs the layers
        below ``layer`` on the cache as usual, is spliced into the stored input of the whole canvas,
        and every position runs the layers from ``layer`` up, rewriting their cached keys and values;
        ``rows`` then still index the window.
        """
        hidden = self.model.embed_tokens(ids)
        positions = torch.arange(start, start + ids.shape[1], device=ids.device).unsqueeze(0)
        rope = self.model.rotary_emb(hidden, positions)
        if cache is not None:
            cache.cursor.start = start
        attn_mask = None if mask is None else mask[None, None]
        kw = {cache_kwarg(type(self.model.layers[0]).forward): cache}
        for i, layer in enumerate(self.model.layers):
            if elastic is not None and elastic.mode and i == elastic.layer:
                if elastic.mode == "partial":
                    full = elastic.hidden.clone()
                    full[:, start : start + hidden.shape[1]] = hidden
                    rows = (start + (rows[0] if rows else 0), start + (rows[1] if rows else hidden.shape[1]))
                    hidden, start = full, 0
                    positions = torch.arange(0, hidden.shape[1], device=ids.device).unsqueeze(0)
                    rope = self.model.rotary_emb(hidden, positions)
                    cache.cursor.start = 0
                elastic.hidden = hidden
            hidden = layer(
                hidden,
                attention_mask=attn_mask,
                position_embeddings=rope,
                position_ids=positions,
                is_causal=False,
                **kw,
            )
        if rows is not None:
            hidden = hidden[:, rows[0] : rows[1]]
        return self.lm_head(self.model.norm(hidden))
