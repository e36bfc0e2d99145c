"""dlm's block-diffusion adapters: an AR checkpoint plus the few tensors that adapting it changed.

A directory with ``config.json`` ``{"model_type": "dlm-block-diffusion", ...}`` holds only the delta:

- ``adapter_config.json`` and ``adapter_model.safetensors``: a LoRA in PEFT's layout (``r``,
  ``lora_alpha``; ``<module>.lora_A.weight`` ``[r, in]`` and ``<module>.lora_B.weight`` ``[out, r]``),
  merged at load time as ``W + (lora_alpha / r) * B @ A``;
- ``mask_embedding.safetensors``: one tensor ``mask_embedding`` ``[hidden]``, the embedding of the
  mask token. It is appended as a new vocabulary row (``mask_token_id`` = the base vocabulary size),
  and the logits are cut back to the base vocabulary, so the mask is never proposed as a token.

``config.json`` also names ``base_model`` (an embedded or short name, a directory or a hub id, never
another adapter), ``layers`` (a :data:`~dlm_cli.models.stack.NETWORKS` kind; default the base's
``model_type``) and ``block_size``. The network keeps the AR shift (Fast-dLLM v2): the output at
``i - 1`` predicts token ``i``, so at block size 1 it is the base AR model with the LoRA merged.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import torch

from .detect import is_adapter_config, ADAPTER_TYPE  # noqa: F401  (re-exported)
from ..errors import DlmError
from .base import Denoiser

MODEL_TYPE = ADAPTER_TYPE
ADAPTER_FILE = "adapter_model.safetensors"
ADAPTER_CONFIG = "adapter_config.json"
MASK_FILE = "mask_embedding.safetensors"


def layer_kind(cfg: dict[str, Any], base_cfg: dict[str, Any], where: str) -> str:
    from .stack import NETWORKS

    kind = str(cfg.get("layers") or base_cfg.get("model_type") or "")
    if kind not in NETWORKS:
        raise DlmError(f"{where}: the base model's layers ({kind or '?'}) are not ones dlm can adapt; "
                       f"supported: {', '.join(NETWORKS)}")
    return kind


def read_json(path: Path) -> dict[str, Any]:
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise DlmError(f"{path.parent} lacks {path.name}; the adapter is incomplete, reinstall or re-export it") from None
    except (json.JSONDecodeError, UnicodeDecodeError, OSError) as exc:
        raise DlmError(f"{path} is not valid JSON ({exc}); reinstall or re-export the adapter") from None
    if not isinstance(data, dict):
        raise DlmError(f"{path} does not hold a JSON object; reinstall or re-export the adapter")
    return data


def read_delta(path: Path) -> tuple[dict[str, torch.Tensor], float, torch.Tensor]:
    """The LoRA tensors, their scale ``lora_alpha / r`` and the mask embedding of the adapter at ``path``."""
    from safetensors import SafetensorError
    from safetensors.torch import load_file

    conf = read_json(path / ADAPTER_CONFIG)
    r, alpha = conf.get("r"), conf.get("lora_alpha")
    if not isinstance(r, int) or r < 1 or not isinstance(alpha, (int, float)):
        raise DlmError(f"{path / ADAPTER_CONFIG} needs a positive integer 'r' and a number 'lora_alpha'")
    if conf.get("use_rslora") or conf.get("use_dora"):
        raise DlmError(f"{path / ADAPTER_CONFIG}: rsLoRA and DoRA adapters are not supported; use a plain LoRA")
    try:
        lora = load_file(str(path / ADAPTER_FILE))
        mask = load_file(str(path / MASK_FILE))["mask_embedding"]
    except FileNotFoundError as exc:
        raise DlmError(f"{path} lacks {Path(exc.filename or '').name or 'a delta file'}; reinstall or re-export "
                       "the adapter") from None
    except (SafetensorError, OSError, KeyError, RuntimeError) as exc:
        raise DlmError(f"the adapter in {path} is corrupt ({type(exc).__name__}: {exc}); reinstall or re-export it") from None
    return lora, float(alpha) / r, mask


def lora_pairs(lora: dict[str, torch.Tensor], where: str) -> dict[str, tuple[torch.Tensor, torch.Tensor]]:
    """``{weight name: (A, B)}`` from PEFT's ``<module>.lora_A.weight`` / ``lora_B.weight`` keys."""
    pairs: dict[str, tuple[torch.Tensor, torch.Tensor]] = {}
    for key, a in lora.items():
        if not key.endswith(".lora_A.weight"):
            if not key.endswith(".lora_B.weight"):
                raise DlmError(f"{where}: unexpected tensor {key!r} in {ADAPTER_FILE}; only LoRA A/B weights belong there")
            continue
        module = key[: -len(".lora_A.weight")]
        b = lora.get(f"{module}.lora_B.weight")
        if b is None:
            raise DlmError(f"{where}: {ADAPTER_FILE} has {key} but no matching lora_B; re-export the adapter")
        name = module.removeprefix("base_model.model.") + ".weight"
        pairs[name] = (a, b)
    return pairs


def merge(net: torch.nn.Module, lora: dict[str, torch.Tensor], scale: float, mask: torch.Tensor,
          where: str) -> int:
    """Merge the LoRA into ``net`` and append the mask row to its (tied) embedding; returns the mask id."""
    params = dict(net.named_parameters())
    for name, (a, b) in lora_pairs(lora, where).items():
        w = params.get(name)
        if w is None:
            raise DlmError(f"{where}: the LoRA adapts {name}, which the base model does not have; "
                           "the adapter belongs to another base model")
        if a.shape[1] != w.shape[1] or b.shape[0] != w.shape[0] or a.shape[0] != b.shape[1]:
            raise DlmError(f"{where}: the LoRA for {name} has shapes {tuple(a.shape)}, {tuple(b.shape)} that do not fit "
                           f"its weight {tuple(w.shape)}; the adapter belongs to another base model")
        with torch.no_grad():
            w += (scale * (b.float() @ a.float())).to(w.dtype)
    emb = net.model.embed_tokens
    if mask.ndim != 1 or mask.shape[0] != emb.weight.shape[1]:
        raise DlmError(f"{where}: mask_embedding has shape {tuple(mask.shape)}, expected ({emb.weight.shape[1]},); "
                       "the adapter belongs to another base model")
    vocab = emb.weight.shape[0]
    grown = torch.nn.Embedding(vocab + 1, emb.weight.shape[1], device=emb.weight.device, dtype=emb.weight.dtype)
    with torch.no_grad():
        grown.weight[:vocab] = emb.weight
        grown.weight[vocab] = mask.to(emb.weight.dtype)
    tied = net.lm_head.weight is emb.weight
    net.model.embed_tokens = grown
    if tied:
        net.lm_head.weight = grown.weight
    else:
        head = torch.nn.Linear(grown.weight.shape[1], vocab + 1, bias=False, device=grown.weight.device,
                               dtype=grown.weight.dtype)
        with torch.no_grad():
            head.weight[:vocab] = net.lm_head.weight
            head.weight[vocab] = 0
        net.lm_head = head
    return vocab


def resolve_base(cfg: dict[str, Any], opts: Any, where: str) -> tuple[Path, dict[str, Any]]:
    from .files import read_config
    from .resolve import resolve_path

    base = cfg.get("base_model")
    if not isinstance(base, str) or not base:
        raise DlmError(f"{where}/config.json needs 'base_model' (the AR model the adapter was trained on)")
    _, base_path = resolve_path(base, opts)
    base_cfg = read_config(base_path)
    if is_adapter_config(base_cfg):
        raise DlmError(f"{where}: base_model {base!r} is itself an adapter; name the AR model it adapts")
    return base_path, base_cfg


def build_base(base_path: Path, base_cfg: dict[str, Any], kind: str, dtype: torch.dtype, device: torch.device,
               allow_pickle: bool = False) -> torch.nn.Module:
    """The base checkpoint's weights in dlm's block-diffusion network of ``kind`` layers."""
    from .block_diffusion import hf_config
    from .files import Prepared, pretrained, weight_files
    from .memory import tensor_shapes
    from .sizes import check_config
    from .stack import NETWORKS

    files = weight_files(base_path, allow_pickle)
    check_config(base_cfg, tensor_shapes(files), str(base_path))
    return pretrained(NETWORKS[kind], base_path, Prepared(device, dtype, files, None), str(base_path),
                      what="the base of a block-diffusion adapter", other="family", strict=True,
                      config=hf_config(base_cfg, kind, "block-diffusion adapter"))


def load_adapter(path: Path, cfg: dict[str, Any], opts: Any, name: str) -> Denoiser:
    """Load an adapter directory over its base model (see the module doc)."""
    from . import qwen
    from .block_diffusion import config_block_size
    from .files import eos_ids, model_info, need_accelerate, prepare

    where = str(path)
    if opts.device_map:
        need_accelerate()
    size = config_block_size(cfg, "block_size", None, "dlm block-diffusion adapter")
    lora, scale, mask = read_delta(path)
    base_path, base_cfg = resolve_base(cfg, opts, where)
    kind = layer_kind(cfg, base_cfg, where)
    prep = prepare(base_path, base_cfg, opts, name)
    device, dtype, tok = prep.device, prep.dtype, prep.tokenizer
    # The merge runs in float32 on the CPU (a bfloat16 add of a small delta would round most of it away).
    net = build_base(base_path, base_cfg, kind, torch.float32, torch.device("cpu"), opts.allow_pickle)
    mask_id = merge(net, lora, scale, mask, where)
    net.to(device=device, dtype=dtype)
    if opts.device_map:  # placed once merged: accelerate spreads the layers, never splitting one
        from accelerate import dispatch_model, infer_auto_device_map

        net = dispatch_model(net, infer_auto_device_map(net, no_split_module_classes=list(net._no_split_modules),
                                                        dtype=dtype))
    return Denoiser(
        net=net,
        tokenizer=tok,
        info=model_info(name, "block-diffusion", path, net, tok),
        mask_id=mask_id,
        eos_ids=eos_ids(base_cfg, tok, base_path),
        max_length=qwen.max_length(base_cfg),
        shift=True,
        block_size=size,
        token_count=min(mask_id, len(tok)),  # the mask row (and any padding) is never proposed
    )
