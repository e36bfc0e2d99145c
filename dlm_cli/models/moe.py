"""Mixture-of-experts dLLM families over transformers' own MoE layers: LLaDA2.x and LLaDA-MoE.

- **LLaDA2.x** (``model_type: "llada2_moe"``, ``LLaDA2MoeModelLM``; inclusionAI/LLaDA2.0-mini,
  -flash, LLaDA2.1-mini, -flash): a BailingMoE-V2 transformer trained for block diffusion. Its
  layers are GLM-4-MoE's in transformers (:class:`Glm4MoeDecoderLayer`): grouped-query attention
  with per-head q/k RMS norms and partial rotary embeddings, the first ``first_k_dense_replace``
  layers dense, the others a shared expert plus routed experts chosen by sigmoid scores with an
  expert bias, limited to the ``topk_group`` best of ``n_group`` groups, renormalised and scaled by
  ``routed_scaling_factor``. Only the attention's input projection differs: one fused
  ``query_key_value`` matrix (queries, then keys, then values), kept fused here as published.
  Attention is causal between blocks of 32 positions counted from position 0 and bidirectional
  inside one (its sampler's block mask), so the prefix KV cache is exact; logits predict in place.
  The mask token is ``<|mask|>`` (156895), which config.json does not name.
- **LLaDA-MoE** (``LLaDAMoEModelLM``; inclusionAI/LLaDA-MoE-7B-A1B-Base/-Instruct, published with
  ``model_type: "llada"`` or ``"lladamoe"``): an OLMoE-like transformer with full bidirectional
  attention like LLaDA. Its layers and weight names are Qwen3-MoE's in transformers
  (:class:`Qwen3MoeDecoderLayer`): per-head q/k norms, softmax routing over the top
  ``num_experts_per_tok`` experts without renormalisation; layers whose ``moe_layer_freq`` entry
  is 0 are dense (``dense_intermediate_size``).

Published checkpoints store each expert's ``gate_proj``/``up_proj``/``down_proj`` separately;
transformers' MoE layers hold them fused (``experts.gate_up_proj``, ``experts.down_proj``), and the
conversion transformers itself uses for Qwen2-MoE-style checkpoints fuses them while loading (it
is registered for these two networks below). Every other published name maps by renaming.
No modeling code is copied from either project.
"""

from __future__ import annotations

from typing import Any, Callable

import torch
from torch import nn
from transformers import Glm4MoeConfig, Qwen3MoeConfig
from transformers.models.glm4_moe import modeling_glm4_moe as glm
from transformers.models.qwen3_moe import modeling_qwen3_moe as qwen3moe

from .detect import is_llada_moe_config, is_llada2_config  # noqa: F401  (re-exported)
from ..errors import DlmError
from .native import NativeSpec
from .stack import DenoiserStack

LLADA2_MASK_ID = 156895  # <|mask|> in the LLaDA2 / LLaDA-MoE tokenizer
LLADA2_BLOCK = 32  # the block length LLaDA2.x is trained and sampled with
LLADA_MOE_MASK_ID = 156895


# --- LLaDA2.x ----------------------------------------------------------------------------------------------

class LLaDA2Attention(glm.Glm4MoeAttention):
    """GLM-4-MoE attention with LLaDA2's fused ``query_key_value`` projection (and an optional output bias)."""

    def __init__(self, config: Glm4MoeConfig, layer_idx: int) -> None:
        super().__init__(config, layer_idx)
        del self.q_proj, self.k_proj, self.v_proj
        heads, kv = config.num_attention_heads, config.num_key_value_heads
        self.split = [heads, kv, kv]
        self.query_key_value = nn.Linear(config.hidden_size, sum(self.split) * self.head_dim,
                                         bias=config.attention_bias)
        self.o_proj = nn.Linear(heads * self.head_dim, config.hidden_size, bias=getattr(config, "dense_bias", False))

    def forward(self, hidden_states: torch.Tensor, position_embeddings: tuple[torch.Tensor, torch.Tensor],
                attention_mask: torch.Tensor | None, cache: Any = None, **kwargs: Any) -> tuple[torch.Tensor, Any]:
        shape = hidden_states.shape[:-1]
        qkv = self.query_key_value(hidden_states).view(*shape, -1, self.head_dim)
        q, k, v = qkv.split(self.split, dim=-2)
        if self.use_qk_norm:
            q, k = self.q_norm(q), self.k_norm(k)
        q, k, v = q.transpose(1, 2), k.transpose(1, 2), v.transpose(1, 2)
        cos, sin = position_embeddings
        q, k = glm.apply_rotary_pos_emb(q, k, cos, sin)
        if cache is not None:
            k, v = cache.update(k, v, self.layer_idx, kwargs=kwargs)
        attend: Callable[..., Any] = glm.ALL_ATTENTION_FUNCTIONS.get_interface(
            self.config._attn_implementation, glm.eager_attention_forward)
        out, weights = attend(self, q, k, v, attention_mask, dropout=0.0, scaling=self.scaling, **kwargs)
        return self.o_proj(out.reshape(*shape, -1).contiguous()), weights


class LLaDA2DecoderLayer(glm.Glm4MoeDecoderLayer):
    def __init__(self, config: Glm4MoeConfig, layer_idx: int) -> None:
        super().__init__(config, layer_idx)
        self.self_attn = LLaDA2Attention(config, layer_idx)


class LLaDA2Denoiser(DenoiserStack):
    """LLaDA2.x: GLM-4-MoE layers with the fused attention projection (module doc)."""

    prunable = False  # Window-Diffusion's pruned forward is not tested over expert routing

    config_class = Glm4MoeConfig
    parts = (LLaDA2DecoderLayer, glm.Glm4MoeRMSNorm, glm.Glm4MoeRotaryEmbedding)
    _no_split_modules = ["LLaDA2DecoderLayer"]
    # The router runs in float32, as LLaDA2's own gate does.
    _keep_in_fp32_modules_strict = ["e_score_correction_bias", "gate.weight"]


# Published LLaDA2 name -> ours (``from_pretrained``'s key mapping; the experts are fused by the conversion).
LLADA2_KEYS = {
    r"^model\.word_embeddings\.": "model.embed_tokens.",
    r"\.attention\.query_key_value\.": ".self_attn.query_key_value.",
    r"\.attention\.dense\.": ".self_attn.o_proj.",
    r"\.attention\.query_layernorm\.": ".self_attn.q_norm.",
    r"\.attention\.key_layernorm\.": ".self_attn.k_norm.",
    r"\.mlp\.gate\.expert_bias$": ".mlp.gate.e_score_correction_bias",
}


def _refuse(family: str, options: list[str]) -> None:
    if options:
        raise DlmError(f"this {family} checkpoint uses options dlm does not implement natively: "
                       + ", ".join(options) + "; rerun with --trust-remote-code to use the repository's own code")


def _make(cls: type, kwargs: dict[str, Any], family: str) -> Any:
    from huggingface_hub.errors import StrictDataclassError

    try:
        return cls(**kwargs)
    except (ValueError, TypeError, StrictDataclassError) as exc:
        raise DlmError(f"{family} config.json is not valid ({' '.join(str(exc).split())}); "
                       "re-download the model") from None


def _need(cfg: dict[str, Any], keys: tuple[str, ...], family: str) -> None:
    missing = [k for k in keys if cfg.get(k) is None]
    if missing:
        raise DlmError(f"{family} config.json lacks {', '.join(missing)}; is the checkpoint complete?")


def _ints(cfg: dict[str, Any], family: str, **keys: tuple[int, int | None]) -> dict[str, int]:
    """``key=(default, minimum)`` -> the config's integer values, each checked (one line when not an integer in range)."""
    out = {}
    for key, (default, low) in keys.items():
        value = cfg.get(key)
        value = default if value is None else value
        if isinstance(value, bool) or not isinstance(value, int) or (low is not None and value < low):
            raise DlmError(f"{family} config.json: {key} = {value!r} must be an integer of at least {low}; "
                           "the config is broken, re-download the model")
        out[key] = value
    return out


def _routing(family: str, experts: int, top_k: int, groups: int = 1, top_groups: int = 1) -> None:
    if groups > experts or experts % groups or top_groups > groups or top_k > top_groups * (experts // groups):
        raise DlmError(f"{family} config.json routes to {top_k} of {experts} experts in {top_groups} of {groups} "
                       "groups, which is impossible; the config is broken, re-download the model")


def expert_check(experts: int, moe_layers: list[int]) -> Callable[[dict[str, Any], str], None]:
    """Every routed expert of every MoE layer has its three published weights (named in one line if not)."""

    def check(shapes: dict[str, Any], where: str) -> None:
        missing = [f"model.layers.{i}.mlp.experts.{e}.{proj}.weight" for i in moe_layers for e in range(experts)
                   for proj in ("gate_proj", "up_proj", "down_proj")
                   if f"model.layers.{i}.mlp.experts.{e}.{proj}.weight" not in shapes]
        if missing:
            raise DlmError(f"{where} lacks weights {', '.join(missing[:3])}{' ...' if len(missing) > 3 else ''}; "
                           "the checkpoint is incomplete or of another family")

    return check


def _translated(fn: Callable[[dict[str, Any]], Any], family: str) -> Callable[[dict[str, Any]], Any]:
    """``fn`` with a value of the wrong type in config.json reported in one line."""

    def translate(cfg: dict[str, Any]) -> Any:
        try:
            return fn(cfg)
        except (ValueError, TypeError, ArithmeticError) as exc:
            raise DlmError(f"{family} config.json is not valid ({' '.join(str(exc).split())}); "
                           "re-download the model") from None

    translate.__doc__ = fn.__doc__
    return translate


def _llada2_config(cfg: dict[str, Any]) -> Glm4MoeConfig:
    """The GLM-4-MoE config of a LLaDA2 ``config.json`` (the defaults are those of LLaDA2's own config class)."""
    family = "LLaDA2"
    _need(cfg, ("vocab_size", "hidden_size", "num_hidden_layers", "num_attention_heads", "num_experts",
                "num_experts_per_tok", "moe_intermediate_size"), family)
    unsupported = []
    if cfg.get("norm_head"):
        unsupported.append("norm_head=true")
    if cfg.get("use_sliding_window"):
        unsupported.append("use_sliding_window=true")
    if cfg.get("rope_scaling"):
        unsupported.append(f"rope_scaling={cfg['rope_scaling']!r}")
    if cfg.get("score_function", "sigmoid") != "sigmoid":
        unsupported.append(f"score_function={cfg.get('score_function')!r}")
    if cfg.get("hidden_act", "silu") != "silu":
        unsupported.append(f"hidden_act={cfg.get('hidden_act')!r}")
    _refuse(family, unsupported)
    n = _ints(cfg, family, num_experts_per_tok=(1, 1), first_k_dense_replace=(0, 0), num_shared_experts=(0, 0),
              n_group=(8, 1), topk_group=(4, 1))
    _routing(family, cfg["num_experts"], n["num_experts_per_tok"], n["n_group"], n["topk_group"])
    heads = cfg["num_attention_heads"]
    top_k, first_dense = n["num_experts_per_tok"], n["first_k_dense_replace"]
    intermediate = cfg.get("intermediate_size")
    if first_dense and not intermediate:
        raise DlmError(f"{family} config.json has dense layers (first_k_dense_replace) but no intermediate_size")
    kwargs = dict(
        vocab_size=cfg["vocab_size"], hidden_size=cfg["hidden_size"], num_hidden_layers=cfg["num_hidden_layers"],
        num_attention_heads=heads, num_key_value_heads=cfg.get("num_key_value_heads") or heads,
        head_dim=cfg.get("head_dim") or cfg["hidden_size"] // heads,
        intermediate_size=intermediate or cfg["moe_intermediate_size"], hidden_act="silu",
        max_position_embeddings=cfg.get("max_position_embeddings") or 16384,
        rms_norm_eps=float(cfg.get("rms_norm_eps", 1e-5)),
        rope_parameters={"rope_type": "default", "rope_theta": float(cfg.get("rope_theta", 10000.0)),
                         "partial_rotary_factor": float(cfg.get("partial_rotary_factor", 0.5))},
        attention_bias=bool(cfg.get("use_qkv_bias", False)), use_qk_norm=bool(cfg.get("use_qk_norm", False)),
        n_routed_experts=cfg["num_experts"], num_experts_per_tok=top_k,
        moe_intermediate_size=cfg["moe_intermediate_size"], n_shared_experts=n["num_shared_experts"],
        n_group=n["n_group"], topk_group=n["topk_group"],
        routed_scaling_factor=float(cfg.get("routed_scaling_factor", 2.5)), first_k_dense_replace=first_dense,
        # LLaDA2's gate renormalises the chosen scores whenever it picks more than one expert.
        norm_topk_prob=top_k > 1, tie_word_embeddings=bool(cfg.get("tie_word_embeddings", False)),
    )
    config = _make(Glm4MoeConfig, kwargs, family)
    config.dense_bias = bool(cfg.get("use_bias", True))  # the attention output's bias (LLaDA2's default: on)
    return config


llada2_config = _translated(_llada2_config, "LLaDA2")


def llada2_block(cfg: dict[str, Any]) -> int:
    value = cfg.get("block_size", LLADA2_BLOCK)
    if not isinstance(value, int) or isinstance(value, bool) or value < 1:
        raise DlmError(f"LLaDA2 config.json: block_size = {value!r} must be a positive integer")
    return value


def build_llada2(cfg: dict[str, Any]) -> LLaDA2Denoiser:
    """A freshly initialised LLaDA2 network (tests and the equivalence benchmark)."""
    return LLaDA2Denoiser(llada2_config(cfg))


def llada2_spec(cfg: dict[str, Any]) -> NativeSpec:
    config = llada2_config(cfg)
    moe_layers = list(range(config.first_k_dense_replace, config.num_hidden_layers))
    return NativeSpec(family="llada2", network=LLaDA2Denoiser, config=config, key_mapping=LLADA2_KEYS,
                      max_length=int(cfg.get("max_position_embeddings") or 16384), shift=False,
                      block_size=llada2_block(cfg), mask_id=cfg.get("mask_token_id"), mask_token="<|mask|>",
                      default_mask_id=LLADA2_MASK_ID,
                      check_names=expert_check(config.n_routed_experts, moe_layers))


# --- LLaDA-MoE ---------------------------------------------------------------------------------------------

class LLaDAMoEDenoiser(DenoiserStack):
    """LLaDA-MoE: Qwen3-MoE layers run bidirectionally (module doc)."""

    prunable = False  # Window-Diffusion's pruned forward is not tested over expert routing

    config_class = Qwen3MoeConfig
    parts = (qwen3moe.Qwen3MoeDecoderLayer, qwen3moe.Qwen3MoeRMSNorm, qwen3moe.Qwen3MoeRotaryEmbedding)
    _no_split_modules = ["Qwen3MoeDecoderLayer"]


def _llada_moe_config(cfg: dict[str, Any]) -> Qwen3MoeConfig:
    """The Qwen3-MoE config of a LLaDA-MoE ``config.json``."""
    family = "LLaDA-MoE"
    _need(cfg, ("vocab_size", "hidden_size", "num_hidden_layers", "num_attention_heads", "num_experts",
                "num_experts_per_tok", "expert_intermediate_size"), family)
    layers = cfg["num_hidden_layers"]
    top_k = _ints(cfg, family, num_experts_per_tok=(1, 1))["num_experts_per_tok"]
    _routing(family, cfg["num_experts"], top_k)
    freq = cfg.get("moe_layer_freq")
    if freq in (None, []):
        freq = [1] * layers
    if not isinstance(freq, list) or len(freq) < layers or not all(isinstance(f, int) for f in freq):
        raise DlmError(f"{family} config.json: moe_layer_freq must list 0 (dense) or 1 (MoE) for each of its "
                       f"{layers} layers, got {freq!r}")
    dense = [i for i in range(layers) if freq[i] == 0]
    unsupported = []
    if cfg.get("shared_expert_intermediate_size") not in (None, 0, -1):
        unsupported.append("a shared expert (shared_expert_intermediate_size)")
    if cfg.get("moe_router_enable_expert_bias"):
        unsupported.append("moe_router_enable_expert_bias=true")
    if cfg.get("clip_qkv") is not None:
        unsupported.append("clip_qkv")
    if cfg.get("qk_layernorm") is False:
        unsupported.append("qk_layernorm=false")
    if cfg.get("partial_rotary_factor") not in (None, -1, 1, 1.0):
        unsupported.append(f"partial_rotary_factor={cfg.get('partial_rotary_factor')!r}")
    if cfg.get("rope_scaling"):
        unsupported.append(f"rope_scaling={cfg['rope_scaling']!r}")
    if cfg.get("hidden_act", "silu") != "silu":
        unsupported.append(f"hidden_act={cfg.get('hidden_act')!r}")
    if dense and (cfg.get("dense_intermediate_size") or 0) < 1:
        unsupported.append("dense layers without dense_intermediate_size")
    _refuse(family, unsupported)
    heads = cfg["num_attention_heads"]
    kwargs = dict(
        vocab_size=cfg["vocab_size"], hidden_size=cfg["hidden_size"], num_hidden_layers=layers,
        num_attention_heads=heads, num_key_value_heads=cfg.get("num_key_value_heads") or heads,
        head_dim=cfg["hidden_size"] // heads, hidden_act="silu",
        intermediate_size=cfg.get("dense_intermediate_size") if dense else cfg["expert_intermediate_size"],
        max_position_embeddings=cfg.get("max_position_embeddings") or 4096,
        rms_norm_eps=float(cfg.get("rms_norm_eps", 1e-5)),
        rope_parameters={"rope_type": "default", "rope_theta": float(cfg.get("rope_theta") or 10000.0)},
        attention_bias=bool(cfg.get("attention_bias", False)), num_experts=cfg["num_experts"],
        num_experts_per_tok=top_k, moe_intermediate_size=cfg["expert_intermediate_size"],
        # LLaDA-MoE's router never renormalises the chosen probabilities, whatever norm_topk_prob says.
        norm_topk_prob=False, decoder_sparse_step=1, mlp_only_layers=dense,
        tie_word_embeddings=bool(cfg.get("tie_word_embeddings", False)), use_sliding_window=False,
    )
    return _make(Qwen3MoeConfig, kwargs, family)


llada_moe_config = _translated(_llada_moe_config, "LLaDA-MoE")


def build_llada_moe(cfg: dict[str, Any]) -> LLaDAMoEDenoiser:
    return LLaDAMoEDenoiser(llada_moe_config(cfg))


def llada_moe_spec(cfg: dict[str, Any]) -> NativeSpec:
    config = llada_moe_config(cfg)
    moe_layers = [i for i in range(config.num_hidden_layers) if i not in config.mlp_only_layers]
    return NativeSpec(family="llada-moe", network=LLaDAMoEDenoiser, config=config,
                      max_length=int(cfg.get("max_position_embeddings") or 4096), shift=False,
                      mask_id=cfg.get("mask_token_id"), mask_token="<|mask|>", default_mask_id=LLADA_MOE_MASK_ID,
                      check_names=expert_check(config.num_experts, moe_layers))


def _register_expert_fusion() -> None:
    """Fuse the per-expert published weights while loading, with transformers' own Qwen2-MoE conversion."""
    from transformers.conversion_mapping import get_checkpoint_conversion_mapping, register_checkpoint_conversion_mapping

    for cls in (LLaDA2Denoiser, LLaDAMoEDenoiser):
        register_checkpoint_conversion_mapping(cls.__name__, get_checkpoint_conversion_mapping("qwen2_moe"),
                                               overwrite=True)


_register_expert_fusion()
