"""Block-diffusion families over transformers' Llama, Qwen2 and Qwen3 layers: SDAR, Fast-dLLM v2, dlm's adapters.

Both attend causally between blocks of a fixed size counted from position 0 and bidirectionally
inside a block, which :class:`~dlm_cli.models.base.Denoiser` implements from ``block_size``; the
prefix KV cache is then exact. They differ in the rest:

- **SDAR** (``model_type: "sdar"``, ``SDARForCausalLM``; JetLM/SDAR-*-Chat): Qwen3 layers (q/k
  RMS norms), ``block_size`` in config.json (4 for the published chat models), ``mask_token_id``
  151669. Its diffusion loss scores each masked position with its own logits, so logits predict
  in place (no shift).
- **Fast-dLLM v2** (``model_type: "Fast_dLLM_Qwen"``, ``Fast_dLLM_QwenForCausalLM``;
  Efficient-Large-Model/Fast_dLLM_v2_7B): Qwen2.5 layers, block size ``bd_size`` (32). It keeps
  the AR next-token alignment: position ``i - 1`` predicts token ``i`` (its sampler shifts the
  logits right by one), so the first slot of a block is predicted from the last position of the
  previous, final block. The mask token is ``|<MASK>|`` (151665). Its sampler's "small blocks"
  are dlm's ``block_length`` when it is below ``bd_size``.
- **dlm block-diffusion adapters** (``model_type: "dlm-block-diffusion"``, :mod:`.adapter`): an AR
  checkpoint (Llama, Qwen2 or Qwen3 layers) plus a LoRA delta, adapted the Fast-dLLM v2 way (AR shift
  kept); ``smollm2-dlm`` is SmolLM2-135M-Instruct so adapted.

:data:`~dlm_cli.models.stack.NETWORKS` is the one table of layer kinds; every family here takes its
network from it.
"""

from __future__ import annotations

from typing import Any

from ..errors import DlmError
from . import qwen
from .native import NativeSpec
from .stack import NETWORKS, DenoiserStack
from .detect import is_sdar_config, is_fast_dllm_v2_config  # noqa: F401  (re-exported)

SDAR_MASK_ID = 151669
FAST_DLLM_V2_MASK_ID = 151665


def config_block_size(cfg: dict[str, Any], key: str, default: int | None, family: str) -> int:
    value = cfg.get(key, default)
    if not isinstance(value, int) or isinstance(value, bool) or value < 1:
        raise DlmError(f"{family} config.json needs a positive integer {key!r} (the model's block size), "
                       f"got {value!r}")
    return value


def hf_config(cfg: dict[str, Any], layers: str, family: str) -> Any:
    """The transformers config of ``layers`` (a :data:`~dlm_cli.models.stack.NETWORKS` kind) for a config.json."""
    if layers not in NETWORKS:
        raise DlmError(f"{family}: unknown layer kind {layers!r}; dlm's block-diffusion stack supports "
                       f"{', '.join(NETWORKS)}")
    return qwen.hf_config(NETWORKS[layers].config_class, cfg, family, ("mlp_bias",) if layers == "llama" else ())


def build(cfg: dict[str, Any], layers: str, family: str) -> DenoiserStack:
    """A freshly initialised block-diffusion network of ``layers`` described by a config.json dict."""
    return NETWORKS[layers](hf_config(cfg, layers, family))


def build_sdar(cfg: dict[str, Any]) -> DenoiserStack:
    return build(cfg, "qwen3", "SDAR")


def build_fast_dllm_v2(cfg: dict[str, Any]) -> DenoiserStack:
    return build(cfg, "qwen2", "Fast-dLLM v2")


def sdar_spec(cfg: dict[str, Any]) -> NativeSpec:
    if cfg.get("num_experts") or "SDARMoeForCausalLM" in (cfg.get("architectures") or []):
        raise DlmError("SDAR mixture-of-experts checkpoints are not implemented natively (only the dense ones are); "
                       "rerun with --trust-remote-code to use the repository's own code")
    config = hf_config(cfg, "qwen3", "SDAR")
    # SDAR's own sampler takes the block length as an argument; the published checkpoints say 4.
    size = config_block_size(cfg, "block_size", 4, "SDAR")
    return NativeSpec(family="sdar", network=NETWORKS["qwen3"], config=config,
                      max_length=qwen.max_length(cfg), shift=False, block_size=size,
                      mask_id=cfg.get("mask_token_id"), mask_token="<|MASK|>", default_mask_id=SDAR_MASK_ID)


def fast_dllm_v2_spec(cfg: dict[str, Any]) -> NativeSpec:
    config = hf_config(cfg, "qwen2", "Fast-dLLM v2")
    size = config_block_size(cfg, "bd_size", 32, "Fast-dLLM v2")
    return NativeSpec(family="fast-dllm-v2", network=NETWORKS["qwen2"], config=config,
                      max_length=qwen.max_length(cfg), shift=True, block_size=size,
                      mask_id=cfg.get("mask_token_id"), mask_token="|<MASK>|", default_mask_id=FAST_DLLM_V2_MASK_ID)
