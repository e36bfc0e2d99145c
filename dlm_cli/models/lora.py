"""A LoRA delta over any model dlm loads: what ``dlm distill`` writes.

A directory with ``config.json`` ``{"model_type": "dlm-lora", "base_model": ..., ...}`` holds:

- ``adapter_config.json`` and ``adapter_model.safetensors``: a LoRA in PEFT's layout (``r``,
  ``lora_alpha``, ``<module>.lora_A.weight`` ``[r, in]``, ``<module>.lora_B.weight`` ``[out, r]``),
  with module names relative to the network dlm builds for the base (``model.layers.0.self_attn.q_proj``);
- ``config.json``: ``base_model`` (an embedded or short name, a directory or a hub id of any family
  dlm loads, e.g. ``smollm2-dlm`` or ``GSAI-ML/LLaDA-8B-Instruct``; not another ``dlm-lora``),
  optional ``profile`` (the decoding profile the delta was trained for, used when none is named) and
  ``training`` (the recipe, for the record).

The base is loaded in float32 on the CPU, the LoRA merged as ``W + (lora_alpha / r) · B A`` (a
bfloat16 add of a small delta would round most of it away), then the network moves to the asked
device and dtype. The result is the base's own family with the merged weights: every strategy that
fits the base fits the delta.
"""

from __future__ import annotations

import copy
from pathlib import Path
from typing import Any

import torch

from .detect import is_lora_config, LORA_TYPE  # noqa: F401  (re-exported)
from ..errors import DlmError

MODEL_TYPE = LORA_TYPE
ADAPTER_FILE = "adapter_model.safetensors"
ADAPTER_CONFIG = "adapter_config.json"


def read_lora(path: Path) -> tuple[dict[str, torch.Tensor], float]:
    """The LoRA tensors of the delta at ``path`` and their scale ``lora_alpha / r``."""
    from safetensors import SafetensorError
    from safetensors.torch import load_file

    from .adapter import read_json

    conf = read_json(path / ADAPTER_CONFIG)
    r, alpha = conf.get("r"), conf.get("lora_alpha")
    if not isinstance(r, int) or isinstance(r, bool) or r < 1 or not isinstance(alpha, (int, float)):
        raise DlmError(f"{path / ADAPTER_CONFIG} needs a positive integer 'r' and a number 'lora_alpha'")
    if conf.get("use_rslora") or conf.get("use_dora"):
        raise DlmError(f"{path / ADAPTER_CONFIG}: rsLoRA and DoRA adapters are not supported; use a plain LoRA")
    try:
        lora = load_file(str(path / ADAPTER_FILE))
    except FileNotFoundError:
        raise DlmError(f"{path} lacks {ADAPTER_FILE}; the delta is incomplete, re-export it") from None
    except (SafetensorError, OSError, RuntimeError) as exc:
        raise DlmError(f"the LoRA in {path} is corrupt ({type(exc).__name__}: {exc}); re-export it") from None
    return lora, float(alpha) / r


def merge_lora(net: torch.nn.Module, lora: dict[str, torch.Tensor], scale: float, where: str) -> int:
    """Add ``scale · B A`` to each adapted weight of ``net`` (in its own dtype); returns how many."""
    from .adapter import lora_pairs

    params = dict(net.named_parameters())
    pairs = lora_pairs(lora, where)
    for name, (a, b) in pairs.items():
        w = params.get(name)
        if w is None:
            raise DlmError(f"{where}: the LoRA adapts {name}, which the base model does not have; "
                           "the delta belongs to another base model")
        if a.ndim != 2 or b.ndim != 2 or a.shape[1] != w.shape[1] or b.shape[0] != w.shape[0] \
                or a.shape[0] != b.shape[1]:
            raise DlmError(f"{where}: the LoRA for {name} has shapes {tuple(a.shape)}, {tuple(b.shape)} that do not "
                           f"fit its weight {tuple(w.shape)}; the delta belongs to another base model")
        with torch.no_grad():
            w += (scale * (b.to(w.device, torch.float32) @ a.to(w.device, torch.float32))).to(w.dtype)
    return len(pairs)


def load_lora(path: Path, cfg: dict[str, Any], opts: Any, name: str) -> Any:
    """Load the base the delta names, merge the delta, and place the network as ``opts`` asks."""
    from .files import pick_device, pick_dtype
    from .loading import load, read_config
    from .resolve import resolve_path

    where = str(path)
    base = cfg.get("base_model")
    if not isinstance(base, str) or not base:
        raise DlmError(f"{where}/config.json needs 'base_model' (the model the LoRA was trained on)")
    lora, scale = read_lora(path)
    _, base_path = resolve_path(base, opts)
    if is_lora_config(read_config(base_path)):
        raise DlmError(f"{where}: base_model {base!r} is itself a dlm-lora delta; name the model it was trained on")
    device = pick_device(opts.device)
    dtype = pick_dtype(opts.dtype, device)
    if opts.device_map:
        raise DlmError(f"{where}: --device-map is not supported for a LoRA delta yet; merge it on one device")
    wide = copy.copy(opts)
    wide.device, wide.dtype = "cpu", "float32"
    model = load(base, wide)
    merge_lora(model.net, lora, scale, where)
    model.net.to(device=device, dtype=dtype)
    info = model.info
    info.name, info.path = name, str(path)
    info.dtype, info.device = str(dtype).replace("torch.", ""), str(device)
    profile = cfg.get("profile")
    if profile is not None and hasattr(model, "profile"):
        from ..profiles import find

        if not isinstance(profile, str):
            raise DlmError(f"{where}/config.json: 'profile' must be a profile name")
        find(profile)  # a name no profile has is refused here, not at the first run
        model.profile = profile
    return model
