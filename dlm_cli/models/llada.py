"""LLaDA family (LLaDA-8B Base/Instruct, LLaDA-1.5, and the dlm demo dLLM): a thin adapter.

LLaDA is a Llama-shaped transformer with bidirectional attention whose logits at position ``i``
predict token ``i``. Its checkpoints use their own config keys (``d_model``, ``n_heads``,
``mlp_hidden_size``, ``mask_token_id`` ...) and weight names (``model.transformer.blocks.N.*``).
This module translates both onto dlm's network of transformers' Llama layers
(:class:`~dlm_cli.models.stack.LlamaDenoiser`): the config into a ``LlamaConfig``, the names into
a ``from_pretrained`` key mapping. No LLaDA code is copied.
"""

from __future__ import annotations

import re
from typing import Any

from transformers import LlamaConfig

from .detect import is_llada_config  # noqa: F401  (re-exported)
from ..errors import DlmError
from .native import NativeSpec
from .stack import LlamaDenoiser

FAMILY = "llada"
DEFAULT_MASK_ID = 126336

# LLaDA module name -> ours (Llama's); N is a block index. Each holds a weight and, with include_bias, a bias.
MODULES = [
    ("model.transformer.wte", "model.embed_tokens"),
    ("model.transformer.ln_f", "model.norm"),
    ("model.transformer.ff_out", "lm_head"),
    ("model.transformer.blocks.N.attn_norm", "model.layers.N.input_layernorm"),
    ("model.transformer.blocks.N.ff_norm", "model.layers.N.post_attention_layernorm"),
    ("model.transformer.blocks.N.q_proj", "model.layers.N.self_attn.q_proj"),
    ("model.transformer.blocks.N.k_proj", "model.layers.N.self_attn.k_proj"),
    ("model.transformer.blocks.N.v_proj", "model.layers.N.self_attn.v_proj"),
    ("model.transformer.blocks.N.attn_out", "model.layers.N.self_attn.o_proj"),
    ("model.transformer.blocks.N.ff_proj", "model.layers.N.mlp.gate_proj"),
    ("model.transformer.blocks.N.up_proj", "model.layers.N.mlp.up_proj"),
    ("model.transformer.blocks.N.ff_out", "model.layers.N.mlp.down_proj"),
]


def _pattern(module: str) -> str:
    return re.escape(module).replace("N", r"(\d+)")


# transformers' from_pretrained key_mapping: a published module name -> ours (the .weight/.bias suffix is kept).
KEY_MAPPING = {_pattern(theirs): ours.replace("N", r"\1") for theirs, ours in MODULES}
# Every weight name a LLaDA checkpoint may hold; anything else is another family's.
PUBLISHED = re.compile("|".join(rf"{_pattern(theirs)}\.(?:weight|bias)" for theirs, _ in MODULES))


def _rename(name: str, pairs: list[tuple[str, str]]) -> str | None:
    for a, b in pairs:
        m = re.fullmatch(rf"{_pattern(a)}\.(weight|bias)", name)
        if m:
            *block, suffix = m.groups()
            return f"{b.replace('N', block[0]) if block else b}.{suffix}"
    return None


def to_ours(name: str) -> str | None:
    """Our module name for a published LLaDA weight name, or None if it is not a LLaDA weight."""
    return _rename(name, MODULES)


def to_llada(name: str) -> str:
    """The published LLaDA weight name for one of ours (used when saving the demo model)."""
    out = _rename(name, [(b, a) for a, b in MODULES])
    if out is None:
        raise KeyError(name)
    return out


def llama_config(cfg: dict[str, Any]) -> LlamaConfig:
    """Translate a LLaDA ``config.json`` into the LlamaConfig of its network."""
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


def _llama_config(cfg: dict[str, Any], bias: bool) -> LlamaConfig:
    d_model, n_heads, n_layers = int(cfg["d_model"]), int(cfg["n_heads"]), int(cfg["n_layers"])
    hidden = cfg.get("mlp_hidden_size") or int(cfg.get("mlp_ratio", 4)) * d_model
    if cfg.get("activation_type", "silu") == "swiglu" and not cfg.get("mlp_hidden_size"):
        hidden //= 2
    vocab = int(cfg.get("embedding_size") or cfg["vocab_size"])
    return LlamaConfig(
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


def build_net(cfg: dict[str, Any]) -> LlamaDenoiser:
    """The network a LLaDA ``config.json`` describes, freshly initialised (tests and the demo trainer)."""
    return LlamaDenoiser(llama_config(cfg))


def mask_id(cfg: dict[str, Any]) -> int:
    return int(cfg.get("mask_token_id", DEFAULT_MASK_ID))


def spec(cfg: dict[str, Any]) -> NativeSpec:
    return NativeSpec(
        family=FAMILY,
        network=LlamaDenoiser,
        config=llama_config(cfg),
        key_mapping=KEY_MAPPING,
        published=PUBLISHED,
        max_length=int(cfg.get("max_sequence_length", 4096)),
        mask_id=mask_id(cfg),
        token_count=int(cfg["vocab_size"]) if cfg.get("vocab_size") else None,
    )
