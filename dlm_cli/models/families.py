"""The model families dlm loads natively, in detection order."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable

from . import adapter, block_diffusion, causal, diffusion_gemma, dream, llada
from .files import LoadOptions
from .native import loader


@dataclass
class Family:
    """How to recognise and load one model family."""

    name: str
    kind: str  # "diffusion" or "autoregressive"
    detect: Callable[[dict[str, Any]], bool]
    load: Callable[[Path, dict[str, Any], LoadOptions, str], Any]
    example: str = ""


FAMILIES: list[Family] = []


def register_family(family: Family) -> None:
    FAMILIES.append(family)


register_family(Family("block-diffusion", "diffusion", adapter.is_adapter_config, adapter.load_adapter,
                       example="dlm generate -m smollm2-dlm \"...\" (an AR model + dlm's LoRA delta)"))
register_family(Family("llada", "diffusion", llada.is_llada_config, loader(llada.spec),
                       example="dlm generate -m GSAI-ML/LLaDA-8B-Instruct \"...\""))
register_family(Family("dream", "diffusion", dream.is_dream_config, loader(dream.spec),
                       example="dlm generate -m Dream-org/Dream-v0-Instruct-7B \"...\""))
register_family(Family("sdar", "diffusion", block_diffusion.is_sdar_config, loader(block_diffusion.sdar_spec),
                       example="dlm generate -m JetLM/SDAR-1.7B-Chat \"...\""))
register_family(Family("fast-dllm-v2", "diffusion", block_diffusion.is_fast_dllm_v2_config,
                       loader(block_diffusion.fast_dllm_v2_spec),
                       example="dlm generate -m Efficient-Large-Model/Fast_dLLM_v2_7B \"...\""))
register_family(Family("diffusion-gemma", "diffusion", diffusion_gemma.is_diffusion_gemma_config,
                       diffusion_gemma.load_diffusion_gemma,
                       example="dlm generate -m google/diffusiongemma-26B-A4B-it \"...\""))

# Registered last: every dLLM family looks at a config first.
register_family(Family("causal", "autoregressive", causal.is_causal_config, causal.load_causal,
                       example="dlm generate -m dlm-demo-ar --draft dlm-demo-ar-draft \"...\""))
