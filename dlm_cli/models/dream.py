"""Dream family (Dream-v0-Base/Instruct-7B, DiffuCoder-7B): a thin adapter over transformers' Qwen2 layers.

Dream is Qwen2.5 initialised and trained as a masked diffusion model: the same weights and names
(q/k/v with biases, o without), attention made bidirectional, and, because it starts from an AR
model, the AR alignment kept: the logits at position ``i - 1`` predict token ``i`` (``shift``).
Its config.json says ``model_type: "Dream"``, ``architectures: ["DreamModel"]`` and carries
``mask_token_id`` (151666 for Dream).
"""

from __future__ import annotations

from typing import Any

from transformers import Qwen2Config
from transformers.models.qwen2.modeling_qwen2 import Qwen2DecoderLayer, Qwen2RMSNorm, Qwen2RotaryEmbedding

from . import qwen
from .native import NativeSpec
from .stack import DenoiserStack

FAMILY = "dream"
DEFAULT_MASK_ID = 151666


def is_dream_config(cfg: dict[str, Any]) -> bool:
    return str(cfg.get("model_type", "")).lower() == "dream" or "DreamModel" in (cfg.get("architectures") or [])


def build_net(cfg: dict[str, Any]) -> DenoiserStack:
    config = qwen.hf_config(Qwen2Config, cfg, "Dream")
    return qwen.build_stack(config, Qwen2DecoderLayer, Qwen2RMSNorm, Qwen2RotaryEmbedding)


def spec(cfg: dict[str, Any]) -> NativeSpec:
    qwen.hf_config(Qwen2Config, cfg, "Dream")  # fail early on unsupported options
    return NativeSpec(
        family=FAMILY,
        build=lambda: build_net(cfg),
        rename=qwen.rename,
        max_length=qwen.max_length(cfg),
        shift=True,
        mask_id=cfg.get("mask_token_id"),
        mask_token="<|mask|>",
        default_mask_id=DEFAULT_MASK_ID,
    )
