"""Loading a family that dlm runs with its own network: LLaDA, Dream, SDAR, Fast-dLLM v2.

Each family module answers ``spec(cfg)`` with a :class:`NativeSpec`: its network class (a
:class:`~dlm_cli.models.stack.DenoiserStack` of one layer kind), the transformers config its
``config.json`` translates to, how its published weight names map to ours, and its token
conventions. :func:`load_native` does the rest the same way for all of them: the shared checks of
:func:`~dlm_cli.models.files.prepare`, ``from_pretrained``, the mask and end-of-text ids.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable

from ..errors import DlmError
from .base import Denoiser


@dataclass
class NativeSpec:
    """How :func:`load_native` loads one family's network.

    ``key_mapping``: published weight-name patterns -> ours (transformers' ``key_mapping``), for a
    family whose layout differs from the Llama/Qwen names. ``published``: every published name
    must match it (LLaDA's), so that another family's weights are refused rather than loaded.
    ``mask_id`` wins; else ``mask_token`` is looked up in the tokenizer; else ``default_mask_id``.
    ``token_count`` is the real vocabulary size when the embedding is padded beyond it.
    """

    family: str
    network: type
    config: Any
    max_length: int
    key_mapping: dict[str, str] | None = None
    published: re.Pattern[str] | None = None
    shift: bool = False
    block_size: int | None = None
    mask_id: int | None = None
    mask_token: str | None = None
    default_mask_id: int | None = None
    token_count: int | None = None
    # Further checks of the weight headers (names -> shapes) before anything is read: the MoE families
    # name a missing expert here, where the load-time fusion of the experts could only fail as a whole.
    check_names: Callable[[dict[str, Any], str], None] | None = None


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


def published_names(spec: NativeSpec, where: str) -> Callable[[dict[str, Any] | None], None]:
    """A check of the weight headers: a name the family's layout does not know is another family's weight."""

    def check(shapes: dict[str, Any] | None) -> None:
        if shapes is None:  # pickles have no header to read
            return
        if spec.check_names is not None:
            spec.check_names(shapes, where)
        if spec.published is None:
            return
        foreign = sorted(n for n in shapes if not spec.published.fullmatch(n))
        if foreign:
            raise DlmError(f"{where} holds weights that are not {spec.family}'s ({', '.join(foreign[:3])}"
                           f"{' ...' if len(foreign) > 3 else ''}); its weights are of another family than its "
                           "config.json says")

    return check


def load_native(path: Path, cfg: dict[str, Any], opts: Any, name: str, spec: NativeSpec) -> Denoiser:
    """Load a natively supported dLLM family described by ``spec``."""
    from .files import eos_ids, model_info, prepare, pretrained

    prep = prepare(path, cfg, opts, name, names=published_names(spec, str(path)))
    net = pretrained(spec.network, path, prep, name, what=f"a {spec.family} model", other="family", strict=True,
                     config=spec.config, key_mapping=spec.key_mapping)
    tok, rows = prep.tokenizer, net.lm_head.weight.shape[0]
    return Denoiser(
        net=net,
        tokenizer=tok,
        info=model_info(name, spec.family, path, net, tok),
        mask_id=resolve_mask_id(spec, tok, rows),
        eos_ids=eos_ids(cfg, tok, path),
        max_length=spec.max_length,
        shift=spec.shift,
        block_size=spec.block_size,
        # Rows past the tokenizer's vocabulary are embedding padding: they never decode to text.
        token_count=spec.token_count or (len(tok) if len(tok) < rows else None),
    )


def loader(spec_fn: Callable[[dict[str, Any]], NativeSpec]) -> Callable[[Path, dict[str, Any], Any, str], Denoiser]:
    """A :class:`~dlm_cli.models.families.Family` ``load`` function for a family module's ``spec``."""

    def load(path: Path, cfg: dict[str, Any], opts: Any, name: str) -> Denoiser:
        return load_native(path, cfg, opts, name, spec_fn(cfg))

    return load
