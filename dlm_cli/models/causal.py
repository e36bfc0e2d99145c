"""The ``causal`` family: any autoregressive LM that transformers' ``AutoModelForCausalLM`` builds natively.

Registered last, so every dLLM family gets the first look at a config. Only architectures that
transformers ships are accepted (no repository code), and only safetensors weights unless
``--allow-pickle``. The decoders see a :class:`CausalLM`: the network, its tokenizer and end ids,
and :meth:`CausalLM.forward`, which runs new tokens over a transformers ``DynamicCache`` and
returns the logits of the last few positions.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch

from ..errors import DlmError
from .base import ModelInfo

FAMILY = "causal"


@dataclass(eq=False)
class CausalLM:
    """An AR language model behind the speculative decoders' narrow interface."""

    net: Any
    tokenizer: Any
    info: ModelInfo
    eos_ids: tuple[int, ...]
    max_length: int
    token_count: int | None = None  # real vocabulary size when the output layer is padded beyond it
    kind: str = field(default="autoregressive", init=False)

    @property
    def device(self) -> torch.device:
        return next(self.net.parameters()).device

    @property
    def vocab_size(self) -> int:
        return int(self.net.get_output_embeddings().weight.shape[0])

    def new_cache(self) -> Any:
        from transformers import DynamicCache

        return DynamicCache(config=self.net.config)

    @torch.inference_mode()
    def forward(self, ids: torch.Tensor, cache: Any, keep: int = 1) -> torch.Tensor:
        """Logits ``[keep, V]`` for the last ``keep`` of ``ids`` (1-D, new tokens only), appended to ``cache``."""
        from .compat import cache_kwarg

        kw = {cache_kwarg(self.net.forward): cache}
        out = self.net(input_ids=ids[None], use_cache=True, logits_to_keep=keep, **kw).logits[0]
        return out if self.token_count is None else out[:, : self.token_count]


def rollback(cache: Any, length: int) -> None:
    """Drop every cached position at and after ``length`` (rejected draft tokens)."""
    extra = cache.get_seq_length() - length
    if extra > 0:
        cache.crop(-extra)  # negative: tokens to remove (every transformers 5 release reads it so)


def is_causal_config(cfg: dict[str, Any]) -> bool:
    """A config transformers knows natively (no ``auto_map`` code needed) with a causal-LM head."""
    from transformers.models.auto.modeling_auto import MODEL_FOR_CAUSAL_LM_MAPPING_NAMES

    return isinstance(cfg.get("model_type"), str) and cfg["model_type"] in MODEL_FOR_CAUSAL_LM_MAPPING_NAMES


def load_causal(path: Path, cfg: dict[str, Any], opts: Any, name: str) -> CausalLM:
    from transformers import AutoModelForCausalLM

    from .files import eos_ids, load_tokenizer, model_info, pick_device, pick_dtype, quiet_transformers, weight_files
    from .memory import check_fits, tensor_shapes
    from .sizes import check_config

    device = pick_device(opts.device)
    dtype = pick_dtype(opts.dtype, device)
    files = weight_files(path, opts.allow_pickle)
    check_config(cfg, tensor_shapes(files), str(path))
    check_fits(files, dtype, device, name, opts.device_map)
    tok = load_tokenizer(path)
    kwargs: dict[str, Any] = {"dtype": dtype, "trust_remote_code": False,
                              "use_safetensors": all(f.suffix == ".safetensors" for f in files)}
    if opts.device_map:
        kwargs["device_map"] = opts.device_map
    try:
        with quiet_transformers():
            net, report = AutoModelForCausalLM.from_pretrained(str(path), output_loading_info=True, **kwargs)
    except (OSError, ValueError, KeyError, RuntimeError) as exc:
        raise DlmError(f"{name}: transformers could not load it as a causal LM ({type(exc).__name__}: "
                       f"{str(exc).splitlines()[0] if str(exc) else ''}); the checkpoint is incomplete or "
                       "does not match its config.json") from None
    missing = sorted(report.get("missing_keys") or [])
    if missing:  # transformers would initialise them at random and decode garbage
        raise DlmError(f"{path} lacks weights {', '.join(missing[:3])}{' ...' if len(missing) > 3 else ''}; "
                       "the checkpoint is incomplete or of another architecture than its config.json says")
    if not opts.device_map:
        net.to(device)
    net.eval()
    rows = int(net.get_output_embeddings().weight.shape[0])
    text_cfg = net.config.get_text_config() if hasattr(net.config, "get_text_config") else net.config
    context = (getattr(text_cfg, "max_position_embeddings", None) or cfg.get("max_position_embeddings")
               or cfg.get("n_positions") or 2048)
    return CausalLM(net=net, tokenizer=tok, info=model_info(name, FAMILY, path, net, tok),
                    eos_ids=eos_ids(cfg, tok, path), max_length=int(context),
                    token_count=len(tok) if len(tok) < rows else None)
