"""LLaDA family (LLaDA-8B Base/Instruct, LLaDA-1.5, and the dlm demo dLLM): a thin adapter.

LLaDA is a Llama-shaped transformer with bidirectional attention whose logits at position ``i``
predict token ``i``. Its checkpoints use their own config keys (``d_model``, ``n_heads``,
``mlp_hidden_size``, ``mask_token_id`` ...) and weight names (``model.transformer.blocks.N.*``).
This module translates both onto transformers' Llama modules; no LLaDA code is copied.
"""

from __future__ import annotations

import re
from typing import Any

from transformers import LlamaConfig
from transformers.models.llama.modeling_llama import LlamaDecoderLayer, LlamaRMSNorm, LlamaRotaryEmbedding

from ..errors import DlmError
from .native import NativeSpec
from .stack import DenoiserStack

FAMILY = "llada"
DEFAULT_MASK_ID = 126336

# LLaDA weight name -> our (Llama/Qwen2) name. Applied with re.fullmatch.
_TO_OURS = [
    (r"model\.transformer\.wte\.weight", r"model.embed_tokens.weight"),
    (r"model\.transformer\.ln_f\.weight", r"model.norm.weight"),
    (r"model\.transformer\.ff_out\.weight", r"lm_head.weight"),
    (r"model\.transformer\.blocks\.(\d+)\.attn_norm\.weight", r"model.layers.\1.input_layernorm.weight"),
    (r"model\.transformer\.blocks\.(\d+)\.ff_norm\.weight", r"model.layers.\1.post_attention_layernorm.weight"),
    (r"model\.transformer\.blocks\.(\d+)\.(q|k|v)_proj\.(weight|bias)", r"model.layers.\1.self_attn.\2_proj.\3"),
    (r"model\.transformer\.blocks\.(\d+)\.attn_out\.(weight|bias)", r"model.layers.\1.self_attn.o_proj.\2"),
    (r"model\.transformer\.blocks\.(\d+)\.ff_proj\.(weight|bias)", r"model.layers.\1.mlp.gate_proj.\2"),
    (r"model\.transformer\.blocks\.(\d+)\.up_proj\.(weight|bias)", r"model.layers.\1.mlp.up_proj.\2"),
    (r"model\.transformer\.blocks\.(\d+)\.ff_out\.(weight|bias)", r"model.layers.\1.mlp.down_proj.\2"),
]
_TO_LLADA = [
    (r"model\.embed_tokens\.weight", r"model.transformer.wte.weight"),
    (r"model\.norm\.weight", r"model.transformer.ln_f.weight"),
    (r"lm_head\.weight", r"model.transformer.ff_out.weight"),
    (r"model\.layers\.(\d+)\.input_layernorm\.weight", r"model.transformer.blocks.\1.attn_norm.weight"),
    (r"model\.layers\.(\d+)\.post_attention_layernorm\.weight", r"model.transformer.blocks.\1.ff_norm.weight"),
    (r"model\.layers\.(\d+)\.self_attn\.(q|k|v)_proj\.(weight|bias)", r"model.transformer.blocks.\1.\2_proj.\3"),
    (r"model\.layers\.(\d+)\.self_attn\.o_proj\.(weight|bias)", r"model.transformer.blocks.\1.attn_out.\2"),
    (r"model\.layers\.(\d+)\.mlp\.gate_proj\.(weight|bias)", r"model.transformer.blocks.\1.ff_proj.\2"),
    (r"model\.layers\.(\d+)\.mlp\.up_proj\.(weight|bias)", r"model.transformer.blocks.\1.up_proj.\2"),
    (r"model\.layers\.(\d+)\.mlp\.down_proj\.(weight|bias)", r"model.transformer.blocks.\1.ff_out.\2"),
]


def _rename(name: str, table: list[tuple[str, str]]) -> str | None:
    for pattern, repl in table:
        if re.fullmatch(pattern, name):
            return re.sub(pattern, repl, name)
    return None


def to_ours(name: str) -> str | None:
    """Our module name for a published LLaDA weight name, or None if it is not a LLaDA weight."""
    return _rename(name, _TO_OURS)


def to_llada(name: str) -> str:
    """The published LLaDA weight name for one of ours (used when saving the demo model)."""
    out = _rename(name, _TO_LLADA)
    if out is None:
        raise KeyError(name)
    return out


def is_llada_config(cfg: dict[str, Any]) -> bool:
    archs = cfg.get("architectures") or []
    return cfg.get("model_type") == "llada" or "LLaDAModelLM" in archs


def llama_config(cfg: dict[str, Any]) -> tuple[LlamaConfig, bool]:
    """Translate a LLaDA ``config.json`` into a LlamaConfig; also returns whether weights are tied."""
    unsupported = []
    if cfg.get("block_type", "llama") != "llama":
        unsupported.append(f"block_type={cfg.get('block_type')!r}")
    if cfg.get("alibi"):
        unsupported.append("alibi=true")
    if not cfg.get("rope", True):
        unsupported.append("rope=false")
    if cfg.get("layer_norm_type", "rms") != "rms":
        unsupported.append(f"layer_norm_type={cfg.get('layer_norm_type')!r}")
    if cfg.get("activation_type", "silu") not in ("silu", "swiglu"):
        unsupported.append(f"activation_type={cfg.get('activation_type')!r}")
    bias = bool(cfg.get("include_bias", False))
    qkv_bias = cfg.get("include_qkv_bias")
    if qkv_bias is not None and bool(qkv_bias) != bias:
        unsupported.append("include_qkv_bias different from include_bias")
    if cfg.get("attention_layer_norm"):
        unsupported.append("attention_layer_norm=true")
    if unsupported:
        raise DlmError(
            "this LLaDA checkpoint uses options dlm does not implement natively: "
            + ", ".join(unsupported)
            + "; rerun with --trust-remote-code to use the repository's own code"
        )
    from huggingface_hub.errors import StrictDataclassError

    try:
        return _llama_config(cfg, bias)
    except KeyError as exc:
        raise DlmError(f"LLaDA config.json lacks the key {exc.args[0]!r}; is the checkpoint complete?") from None
    except (ValueError, TypeError, ArithmeticError, StrictDataclassError) as exc:
        raise DlmError(f"LLaDA config.json is not valid ({' '.join(str(exc).split())}); re-download the model") from None


def _llama_config(cfg: dict[str, Any], bias: bool) -> tuple[LlamaConfig, bool]:
    d_model, n_heads, n_layers = int(cfg["d_model"]), int(cfg["n_heads"]), int(cfg["n_layers"])
    hidden = cfg.get("mlp_hidden_size") or int(cfg.get("mlp_ratio", 4)) * d_model
    if cfg.get("activation_type", "silu") == "swiglu" and not cfg.get("mlp_hidden_size"):
        hidden //= 2
    vocab = int(cfg.get("embedding_size") or cfg["vocab_size"])
    llama = LlamaConfig(
        vocab_size=vocab,
        hidden_size=d_model,
        intermediate_size=int(hidden),
        num_hidden_layers=n_layers,
        num_attention_heads=n_heads,
        num_key_value_heads=int(cfg.get("n_kv_heads") or (1 if cfg.get("multi_query_attention") else n_heads)),
        max_position_embeddings=int(cfg.get("max_sequence_length", 4096)),
        rms_norm_eps=float(cfg.get("rms_norm_eps", 1e-5)),
        rope_parameters={"rope_type": "default", "rope_theta": float(cfg.get("rope_theta", 10000.0))},
        attention_bias=bias,
        mlp_bias=bias,
        hidden_act="silu",
        tie_word_embeddings=bool(cfg.get("weight_tying", False)),
    )
    return llama, bool(cfg.get("weight_tying", False))


def build_net(cfg: dict[str, Any]) -> DenoiserStack:
    llama, tied = llama_config(cfg)
    return DenoiserStack(llama, LlamaDecoderLayer, LlamaRMSNorm, LlamaRotaryEmbedding, tie_word_embeddings=tied)


def mask_id(cfg: dict[str, Any]) -> int:
    return int(cfg.get("mask_token_id", DEFAULT_MASK_ID))


def spec(cfg: dict[str, Any]) -> NativeSpec:
    llama_config(cfg)  # fail early on unsupported options
    return NativeSpec(
        family=FAMILY,
        build=lambda: build_net(cfg),
        rename=to_ours,
        strict_names=True,
        max_length=int(cfg.get("max_sequence_length", 4096)),
        mask_id=mask_id(cfg),
        token_count=int(cfg["vocab_size"]) if cfg.get("vocab_size") else None,
    )
