"""dlm's dLLM networks: transformers' own decoder layers in a ``PreTrainedModel``, run without a causal mask.

Every dLLM family we load natively (LLaDA, Dream, SDAR, Fast-dLLM v2, dlm's block-diffusion
adapters) is a Llama-, Qwen2- or Qwen3-shaped stack whose only difference from the AR model is the
attention pattern. So there is one network class per layer kind (:data:`NETWORKS`), configured by
transformers' own config class of that kind, and loaded with ``from_pretrained``: meta-device
init, dtype, weight tying, the shape report and ``device_map`` are transformers' and accelerate's.
Its forward runs a window of the canvas with an optional mask and a
:class:`~dlm_cli.models.kv.DenoiserCache`; the family conventions (mask token, logit shift, block
grid) belong to :class:`~dlm_cli.models.base.Denoiser`.
"""

from __future__ import annotations

from typing import Any, ClassVar

import torch
from torch import nn
from transformers import LlamaConfig, PreTrainedModel, Qwen2Config, Qwen3Config
from transformers.models.llama.modeling_llama import LlamaDecoderLayer, LlamaRMSNorm, LlamaRotaryEmbedding
from transformers.models.qwen2.modeling_qwen2 import Qwen2DecoderLayer, Qwen2RMSNorm, Qwen2RotaryEmbedding
from transformers.models.qwen3.modeling_qwen3 import Qwen3DecoderLayer, Qwen3RMSNorm, Qwen3RotaryEmbedding

from .compat import cache_kwarg


class DenoiserStack(PreTrainedModel):
    """``model.embed_tokens``, ``model.layers``, ``model.norm`` and ``lm_head``: the Llama/Qwen names.

    A subclass names its layer kind: ``config_class`` and ``parts`` (decoder layer, norm, rotary
    embedding), all transformers' own.
    """

    parts: ClassVar[tuple[type[nn.Module], type[nn.Module], type[nn.Module]]]
    # A forward over a subset of positions (Window-Diffusion's pruning) is supported and tested.
    prunable: ClassVar[bool] = True
    # A batch of ragged canvases: ``positions`` [B, n], ``mask`` [B, q, kv], ``rows`` [B, r] and a per-row
    # cache (:mod:`dlm_cli.decode.batch`), tested on every family built on this stack.
    ragged_batch: ClassVar[bool] = True
    layer_refresh: ClassVar[bool] = True  # ``elastic``: Elastic-Cache's layer-wise refresh (forward's doc)
    base_model_prefix = "model"
    _supports_sdpa = True
    _tied_weights_keys = {"lm_head.weight": "model.embed_tokens.weight"}
    # Rotary frequencies some remote-code checkpoints saved beside the weights: recomputed, not loaded.
    _keys_to_ignore_on_load_unexpected = [r"rotary_emb\.inv_freq"]

    def __init__(self, config: Any) -> None:
        super().__init__(config)
        layer_cls, norm_cls, rotary_cls = self.parts
        self.model = nn.Module()
        self.model.embed_tokens = nn.Embedding(config.vocab_size, config.hidden_size)
        self.model.layers = nn.ModuleList(layer_cls(config, i) for i in range(config.num_hidden_layers))
        self.model.norm = norm_cls(config.hidden_size, eps=config.rms_norm_eps)
        self.model.rotary_emb = rotary_cls(config=config)
        self.lm_head = nn.Linear(config.hidden_size, config.vocab_size, bias=False)
        for layer in self.model.layers:
            layer.self_attn.is_causal = False
        # Read once here, not per forward: a compiled step would trace the signature lookup.
        self.cache_name = cache_kwarg(type(self.model.layers[0]).forward)
        self.post_init()

    def _init_weights(self, module: nn.Module) -> None:
        # Weights keep PyTorch's construction-time init: a checkpoint fills every one of them (a missing
        # weight is refused), and dlm's trainers initialise their own. Only the rotary frequencies, a
        # buffer that is never saved, are computed here when from_pretrained builds on the meta device.
        if isinstance(module, self.parts[2]):
            super()._init_weights(module)

    def get_input_embeddings(self) -> nn.Module:
        return self.model.embed_tokens

    def set_input_embeddings(self, value: nn.Module) -> None:
        self.model.embed_tokens = value

    def get_output_embeddings(self) -> nn.Module:
        return self.lm_head

    def set_output_embeddings(self, value: nn.Module) -> None:
        self.lm_head = value

    def forward(
        self,
        ids: torch.Tensor,
        *,
        start: int = 0,
        cache: Any = None,
        mask: torch.Tensor | None = None,
        rows: tuple[int, int] | torch.Tensor | None = None,
        elastic: Any = None,
        positions: torch.Tensor | None = None,
    ) -> torch.Tensor:
        """Logits of the window ``ids`` placed at positions ``start..``; only rows ``rows`` (relative) if given.

        ``positions`` (a 1-D index, one canvas position per row of ``ids``) places the rows at those
        positions instead (the rotary embedding is taken there), for a forward over positions that
        need not be contiguous (Window-Diffusion); ``rows`` may then be an index of rows to keep.
        A batch (:mod:`dlm_cli.decode.batch`) gives ``positions`` ``[B, n]`` (each row's own, left
        padding counted out), ``mask`` ``[B, q, kv]`` and ``rows`` ``[B, r]`` (each row's rows to keep).

        ``mask`` is a boolean ``[q, kv]`` attention mask (True = may attend) or None for full attention.

        ``elastic`` (Elastic-Cache's layer-wise refresh, bidirectional attention only) has ``layer``,
        ``hidden`` and ``mode``. With ``mode = "store"`` (a forward over the whole canvas), the input
        of layer ``layer`` is stored in ``hidden``. With ``"partial"``, the window runs the layers
        below ``layer`` on the cache as usual, is spliced into the stored input of the whole canvas,
        and every position runs the layers from ``layer`` up, rewriting their cached keys and values;
        ``rows`` then still index the window.
        """
        hidden = self.model.embed_tokens(ids)
        if positions is None:
            positions = torch.arange(start, start + ids.shape[1], device=ids.device)
        if positions.dim() == 1:
            positions = positions.unsqueeze(0)
        rope = self.model.rotary_emb(hidden, positions)
        if cache is not None:
            cache.cursor.start = start
        attn_mask = None if mask is None else mask[None, None] if mask.dim() == 2 else mask[:, None]
        kw = {self.cache_name: cache}
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
        if isinstance(rows, torch.Tensor) and rows.dim() == 2:  # a batch: each row's own positions
            hidden = hidden.gather(1, rows[..., None].expand(-1, -1, hidden.shape[-1]))
        elif isinstance(rows, torch.Tensor):
            hidden = hidden[:, rows]
        elif rows is not None:
            hidden = hidden[:, rows[0] : rows[1]]
        return self.lm_head(self.model.norm(hidden))


class LlamaDenoiser(DenoiserStack):
    """Llama layers: LLaDA, dlm's adapters over Llama checkpoints (SmolLM2)."""

    config_class = LlamaConfig
    parts = (LlamaDecoderLayer, LlamaRMSNorm, LlamaRotaryEmbedding)
    _no_split_modules = ["LlamaDecoderLayer"]


class Qwen2Denoiser(DenoiserStack):
    """Qwen2 layers (q/k/v biases): Dream, DiffuCoder, Fast-dLLM v2."""

    config_class = Qwen2Config
    parts = (Qwen2DecoderLayer, Qwen2RMSNorm, Qwen2RotaryEmbedding)
    _no_split_modules = ["Qwen2DecoderLayer"]


class Qwen3Denoiser(DenoiserStack):
    """Qwen3 layers (q/k RMS norms): SDAR."""

    config_class = Qwen3Config
    parts = (Qwen3DecoderLayer, Qwen3RMSNorm, Qwen3RotaryEmbedding)
    _no_split_modules = ["Qwen3DecoderLayer"]


# layer kind (a checkpoint's model_type) -> its network: the one table of layer kinds.
NETWORKS: dict[str, type[DenoiserStack]] = {"llama": LlamaDenoiser, "qwen2": Qwen2Denoiser, "qwen3": Qwen3Denoiser}
