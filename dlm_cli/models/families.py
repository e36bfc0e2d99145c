"""The model families dlm loads natively, in detection order."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, Callable

from importlib import import_module

from . import detect

if TYPE_CHECKING:
    from .files import LoadOptions


def lazy(module: str, name: str) -> Callable[..., Any]:
    """``module.name``, imported on the first call: listing the families (``dlm models``) imports no torch."""

    def call(*args: Any, **kwargs: Any) -> Any:
        return getattr(import_module(f"{__package__}.{module}"), name)(*args, **kwargs)

    call.__qualname__ = f"{module}.{name}"
    return call


def native(module: str, spec: str) -> Callable[..., Any]:
    """The shared native loader for ``module.spec`` (see :mod:`.native`), built on the first call."""

    def call(*args: Any, **kwargs: Any) -> Any:
        from .native import loader

        return loader(getattr(import_module(f"{__package__}.{module}"), spec))(*args, **kwargs)

    call.__qualname__ = f"{module}.{spec}"
    return call


@dataclass
class Family:
    """How to recognise and load one model family."""

    name: str
    kind: str  # "diffusion" or "autoregressive"
    detect: Callable[[dict[str, Any]], bool]
    load: Callable[[Path, dict[str, Any], "LoadOptions", str], Any]
    example: str = ""


FAMILIES: list[Family] = []


def register_family(family: Family) -> None:
    FAMILIES.append(family)


# First: a delta names its base, whose own family is then detected as usual.
register_family(Family("lora-delta", "any", detect.is_lora_config, lazy("lora", "load_lora"),
                       example="dlm generate -m ./distilled \"...\" (dlm distill's output: a LoRA over any model)"))
register_family(Family("drafter", "drafter", detect.is_drafter_config, lazy("drafter", "load_drafter"),
                       example="dlm generate -m smollm2 -p dflash --draft ./smollm2-dflash \"...\" (dlm drafter train's output)"))
register_family(Family("block-diffusion", "diffusion", detect.is_adapter_config,
                       lazy("adapter", "load_adapter"),
                       example="dlm generate -m smollm2-dlm \"...\" (an AR model + dlm's LoRA delta)"))
# Before "llada": LLaDA-MoE-7B-A1B is published with model_type "llada" (its architecture tells it apart).
register_family(Family("llada-moe", "diffusion", detect.is_llada_moe_config, native("moe", "llada_moe_spec"),
                       example="dlm generate -m inclusionAI/LLaDA-MoE-7B-A1B-Instruct \"...\""))
register_family(Family("llada2", "diffusion", detect.is_llada2_config, native("moe", "llada2_spec"),
                       example="dlm generate -m inclusionAI/LLaDA2.1-mini -p llada21-s \"...\""))
register_family(Family("llada", "diffusion", detect.is_llada_config, native("llada", "spec"),
                       example="dlm generate -m GSAI-ML/LLaDA-8B-Instruct \"...\""))
register_family(Family("dream", "diffusion", detect.is_dream_config, native("dream", "spec"),
                       example="dlm generate -m Dream-org/Dream-v0-Instruct-7B \"...\""))
register_family(Family("sdar", "diffusion", detect.is_sdar_config,
                       native("block_diffusion", "sdar_spec"),
                       example="dlm generate -m JetLM/SDAR-1.7B-Chat \"...\""))
register_family(Family("fast-dllm-v2", "diffusion", detect.is_fast_dllm_v2_config,
                       native("block_diffusion", "fast_dllm_v2_spec"),
                       example="dlm generate -m Efficient-Large-Model/Fast_dLLM_v2_7B \"...\""))
register_family(Family("diffusion-gemma", "diffusion", detect.is_diffusion_gemma_config,
                       lazy("diffusion_gemma", "load_diffusion_gemma"),
                       example="dlm generate -m google/diffusiongemma-26B-A4B-it \"...\""))

# Registered last: every dLLM family looks at a config first.
register_family(Family("causal", "autoregressive", lazy("causal", "is_causal_config"), lazy("causal", "load_causal"),
                       example="dlm generate -m dlm-demo-ar --draft dlm-demo-ar-draft \"...\""))
