"""Which family a config belongs to: the detectors of :mod:`.families`, torch-free, so telling a model's kind
(``predict_kind``: the early checks before a model loads) imports nothing heavy."""

from __future__ import annotations

from typing import Any

LORA_TYPE = "dlm-lora"  # dlm distill's output: a LoRA delta over a base it names
DRAFTER_TYPE = "dlm-drafter"  # dlm drafter train's output
ADAPTER_TYPE = "dlm-block-diffusion"  # dlm's block-diffusion adapter over an AR model


def _archs(cfg: dict[str, Any]) -> list[Any]:
    return cfg.get("architectures") or []


def is_lora_config(cfg: dict[str, Any]) -> bool:
    return cfg.get("model_type") == LORA_TYPE


def is_drafter_config(cfg: dict[str, Any]) -> bool:
    return cfg.get("model_type") == DRAFTER_TYPE


def is_adapter_config(cfg: dict[str, Any]) -> bool:
    return cfg.get("model_type") == ADAPTER_TYPE


def is_llada_moe_config(cfg: dict[str, Any]) -> bool:
    return (str(cfg.get("model_type", "")).lower() in ("lladamoe", "llada_moe")
            or any(a in _archs(cfg) for a in ("LLaDAMoEModelLM", "LLaDAMoEModel")))


def is_llada2_config(cfg: dict[str, Any]) -> bool:
    return str(cfg.get("model_type", "")).lower() in ("llada2_moe", "llada21_moe") or "LLaDA2MoeModelLM" in _archs(cfg)


def is_llada_config(cfg: dict[str, Any]) -> bool:
    return cfg.get("model_type") == "llada" or "LLaDAModelLM" in _archs(cfg)


def is_dream_config(cfg: dict[str, Any]) -> bool:
    return str(cfg.get("model_type", "")).lower() == "dream" or "DreamModel" in _archs(cfg)


def is_sdar_config(cfg: dict[str, Any]) -> bool:
    return cfg.get("model_type") == "sdar" or "SDARForCausalLM" in _archs(cfg)


def is_fast_dllm_v2_config(cfg: dict[str, Any]) -> bool:
    return (str(cfg.get("model_type", "")).lower() == "fast_dllm_qwen"
            or "Fast_dLLM_QwenForCausalLM" in _archs(cfg))


def is_diffusion_gemma_config(cfg: dict[str, Any]) -> bool:
    return cfg.get("model_type") == "diffusion_gemma" or "DiffusionGemmaForBlockDiffusion" in _archs(cfg)
