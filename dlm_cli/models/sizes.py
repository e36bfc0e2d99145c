"""Config sizes a loader can build from: positive, plausible, and no more layers than the weights hold.

A network is built from config.json before its weights are read, so a hostile or broken config
(``num_hidden_layers = 10**5``, ``n_heads = 0``, a context of 10**12 tokens) would allocate,
divide by zero or run for minutes first. :func:`check_config` runs before anything is built:
every size key must be a positive integer within a plausible bound, and the layer count must not
exceed the layers the weight headers hold (the shapes are compared with the built network by
``from_pretrained``, whose report :func:`dlm_cli.models.files.pretrained` turns into one line).
"""

from __future__ import annotations

import re
from collections.abc import Iterable
from typing import Any

from ..errors import DlmError

# key -> largest plausible value. Far above any published model, low enough to refuse before building.
BOUNDS = {
    "vocab_size": 2**24, "embedding_size": 2**24, "hidden_size": 2**20, "d_model": 2**20, "n_embd": 2**20,
    "intermediate_size": 2**22, "mlp_hidden_size": 2**22, "moe_intermediate_size": 2**22,
    "num_hidden_layers": 4096, "n_layers": 4096, "n_layer": 4096, "num_layers": 4096,
    "num_attention_heads": 2**16, "n_heads": 2**16, "n_head": 2**16, "num_key_value_heads": 2**16,
    "n_kv_heads": 2**16, "head_dim": 2**16, "num_experts": 2**16,
    "max_position_embeddings": 2**24, "max_sequence_length": 2**24, "n_positions": 2**24,
}
LAYER_KEYS = ("num_hidden_layers", "n_layers", "n_layer", "num_layers")
# Weight names with a layer index: model.layers.N., model.transformer.blocks.N., transformer.h.N.
_LAYER = re.compile(r"(?:^|\.)(?:layers|blocks|h|layer)\.(\d+)\.")


def _configs(cfg: dict[str, Any]) -> Iterable[tuple[str, dict[str, Any]]]:
    yield "", cfg
    for key in ("text_config", "llm_config", "language_config"):
        sub = cfg.get(key)
        if isinstance(sub, dict):
            yield f"{key}.", sub


def check_values(cfg: dict[str, Any], where: str) -> None:
    """Every size key present is a positive integer no larger than its bound (one line otherwise)."""
    for prefix, sub in _configs(cfg):
        for key, bound in BOUNDS.items():
            value = sub.get(key)
            if value is None or isinstance(value, list):  # absent, or per-layer sizes
                continue
            if isinstance(value, bool) or not isinstance(value, int) or value < 1:
                raise DlmError(f"{where}/config.json: {prefix}{key} = {value!r} must be a positive integer; "
                               "the config is broken, re-download the model")
            if value > bound:
                raise DlmError(f"{where}/config.json: {prefix}{key} = {value} is implausible (more than {bound}); "
                               "the config is broken or hostile, re-download the model")
        value = sub.get("mask_token_id")
        if value is not None and (isinstance(value, bool) or not isinstance(value, int) or value < 0):
            raise DlmError(f"{where}/config.json: {prefix}mask_token_id = {value!r} is not a token id; "
                           "the config is broken, re-download the model")


def weight_layers(names: Iterable[str]) -> int | None:
    """How many layers the weight names index (the largest index + 1); None when none carries one."""
    top = -1
    for name in names:
        for m in _LAYER.finditer(name):
            top = max(top, int(m.group(1)))
    return top + 1 if top >= 0 else None


def check_config(cfg: dict[str, Any], names: Iterable[str] | None, where: str) -> None:
    """:func:`check_values`, then the config's layer count against the layers in the weight ``names``.

    ``names`` is None when the weights have no readable header (pickles): only the bounds apply.
    """
    check_values(cfg, where)
    if names is None:
        return
    held = weight_layers(names)
    if held is None:
        return
    for prefix, sub in _configs(cfg):
        for key in LAYER_KEYS:
            value = sub.get(key)
            if isinstance(value, int) and value > held:
                raise DlmError(f"{where}/config.json says {prefix}{key} = {value} but the weights hold {held} "
                               "layers; config and weights do not match (a broken or mixed-up download)")
