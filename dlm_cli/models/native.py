"""Loading a family that dlm runs with its own adapter: LLaDA, Dream, SDAR, Fast-dLLM v2.

Each family module answers ``spec(cfg)`` with a :class:`NativeSpec` (how to build the network,
how its weight names map to ours, its token conventions); :func:`load_native` does the rest the
same way for all of them: device and dtype, the memory check, reading safetensors straight into a
network built on the meta device, the tokenizer, the mask and end-of-text ids.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable

import torch

from ..errors import DlmError
from .base import Denoiser


@dataclass
class NativeSpec:
    """How :func:`load_native` builds and fills one family's network.

    ``mask_id`` wins; else ``mask_token`` is looked up in the tokenizer; else ``default_mask_id``.
    ``token_count`` is the real vocabulary size when the embedding is padded beyond it.
    ``strict_names``: the family publishes its own weight names (LLaDA's), so a name ``rename`` does
    not know is another family's weight, not one to keep verbatim.
    """

    family: str
    build: Callable[[], Any]
    rename: Callable[[str], str | None]
    max_length: int
    shift: bool = False
    block_size: int | None = None
    mask_id: int | None = None
    mask_token: str | None = None
    default_mask_id: int | None = None
    token_count: int | None = None
    strict_names: bool = False  # a weight name ``rename`` does not map (None) belongs to another family


def resolve_mask_id(spec: NativeSpec, tokenizer: Any, vocab_size: int) -> int:
    mask = spec.mask_id
    if mask is None and spec.mask_token is not None:
        mask = tokenizer.get_vocab().get(spec.mask_token)
    if mask is None:
        mask = spec.default_mask_id
    if mask is None or not 0 <= int(mask) < vocab_size:
        raise DlmError(f"cannot tell the {spec.family} mask token (got {mask!r} for a vocabulary of {vocab_size}); "
                       "add mask_token_id to config.json")
    return int(mask)


def load_native(path: Path, cfg: dict[str, Any], opts: Any, name: str, spec: NativeSpec) -> Denoiser:
    """Load a natively supported dLLM family described by ``spec``."""
    from .files import (build_meta, check_weights, eos_ids, load_into, load_tokenizer, model_info, pick_device,
                        pick_dtype, published_shapes, read_tensors, weight_files)
    from .memory import check_fits
    from .sizes import check_config

    device = pick_device(opts.device)
    dtype = pick_dtype(opts.dtype, device)
    files = weight_files(path, opts.allow_pickle)
    shapes = published_shapes(files, spec.rename, spec.family if spec.strict_names else None, str(path))
    check_config(cfg, None if shapes is None else list(shapes), str(path))
    check_fits(files, dtype, device, name, opts.device_map)
    tok = load_tokenizer(path)  # before the weights: a broken download fails fast
    net = build_meta(spec.build)
    if shapes is not None:  # names and shapes against the config before a tensor is read
        check_weights(net, shapes, str(path))
    # With a device map the weights are read to the CPU first; accelerate then places each layer.
    home = torch.device("cpu") if opts.device_map else device
    tensors = read_tensors(files, spec.rename, dtype, home)
    net = load_into(net, tensors, home, str(path))
    net.to(dtype)
    if opts.device_map:
        net = shard(net, dtype)
    return Denoiser(
        net=net,
        tokenizer=tok,
        info=model_info(name, spec.family, path, net, tok),
        mask_id=resolve_mask_id(spec, tok, net.lm_head.weight.shape[0]),
        eos_ids=eos_ids(cfg, tok, path),
        max_length=spec.max_length,
        shift=spec.shift,
        block_size=spec.block_size,
        # Rows past the tokenizer's vocabulary are embedding padding: they never decode to text.
        token_count=spec.token_count or (len(tok) if len(tok) < net.lm_head.weight.shape[0] else None),
    )


def loader(spec_fn: Callable[[dict[str, Any]], NativeSpec]) -> Callable[[Path, dict[str, Any], Any, str], Denoiser]:
    """A :class:`~dlm_cli.models.loading.Family` ``load`` function for a family module's ``spec``."""

    def load(path: Path, cfg: dict[str, Any], opts: Any, name: str) -> Denoiser:
        return load_native(path, cfg, opts, name, spec_fn(cfg))

    return load


def shard(net: torch.nn.Module, dtype: torch.dtype) -> torch.nn.Module:
    """Spread the layers over every GPU (then the CPU) with accelerate: ``--device-map auto``.

    Decoder layers are never split; accelerate's hooks move each layer's inputs to its device, and
    each layer keeps its cached keys and values where it runs.
    """
    try:
        from accelerate import dispatch_model, infer_auto_device_map
    except ImportError:
        raise DlmError("--device-map auto needs accelerate: pip install 'accelerate>=1.0'") from None
    layer_cls = type(net.model.layers[0]).__name__
    device_map = infer_auto_device_map(net, no_split_module_classes=[layer_cls], dtype=dtype)
    return dispatch_model(net, device_map=device_map)
