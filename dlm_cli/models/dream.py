"""Dream family (Dream-v0-Base/Instruct-7B, DiffuCoder-7B): dlm's network of transformers' Qwen2 layers.

Dream is Qwen2.5 initialised and trained as a masked diffusion model: the same weights and names
(q/k/v with biases, o without), attention made bidirectional, and, because it starts from an AR
model, the AR alignment kept: the logits at position ``i - 1`` predict token ``i`` (``shift``).
Its config.json says ``model_type: "Dream"``, ``architectures: ["DreamModel"]`` and carries
``mask_token_id`` (151666 for Dream).
"""

from __future__ import annotations

from typing import Any

from transformers import Qwen2Config

from . import qwen
from .native import NativeSpec
from .stack import Qwen2Denoiser
from .detect import is_dream_config  # noqa: F401  (re-exported)

FAMILY = "dream"
DEFAULT_MASK_ID = 151666


def build_net(cfg: dict[str, Any]) -> Qwen2Denoiser:
    """The network a Dream ``config.json`` describes, freshly initialised (the tests' checkpoints)."""
    return Qwen2Denoiser(qwen.hf_config(Qwen2Config, cfg, "Dream"))


def spec(cfg: dict[str, Any]) -> NativeSpec:
    return NativeSpec(
        family=FAMILY,
        network=Qwen2Denoiser,
        config=qwen.hf_config(Qwen2Config, cfg, "Dream"),
        max_length=qwen.max_length(cfg),
        shift=True,
        mask_id=cfg.get("mask_token_id"),
        mask_token="<|mask|>",
        default_mask_id=DEFAULT_MASK_ID,
    )
