"""The ``causal`` family: any autoregressive LM that transformers' ``AutoModelForCausalLM`` builds natively.

Registered last, so every dLLM family gets the first look at a config. Only architectures that
transformers ships are accepted (no repository code), and only safetensors weights unless
``--allow-pickle``. The decoders see a :class:`CausalLM`: the network, its tokenizer and end ids,
and :meth:`CausalLM.forward`, which runs new tokens over a transformers ``DynamicCache`` and
returns the logits of the last few positions. With ``compile`` on for a run, the cache is a
``StaticCache`` and the step is compiled (:mod:`.speed`).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch

from .base import ModelInfo, OutputLayer, SpeedState

FAMILY = "causal"


@dataclass(eq=False)
class CausalLM(OutputLayer):
    """An AR language model behind the speculative decoders' narrow interface."""

    net: Any
    tokenizer: Any
    info: ModelInfo
    eos_ids: tuple[int, ...]
    max_length: int
    token_count: int | None = None  # real vocabulary size when the output layer is padded beyond it
    kind: str = field(default="autoregressive", init=False)
    compilable: bool = field(default=True, init=False)  # a static cache and a compiled step (see .speed)
    capabilities: frozenset[str] = field(default=frozenset(), init=False)  # what a dLLM strategy could need: none
    speed: SpeedState = field(default_factory=SpeedState, init=False, repr=False)

    def new_cache(self) -> Any:
        if self.speed.compile_on:
            from .speed import static_cache

            return static_cache(self, self.speed.length)
        from transformers import DynamicCache

        return DynamicCache(config=self.net.config)

    @torch.inference_mode()
    def forward(self, ids: torch.Tensor, cache: Any, keep: int = 1, mask: torch.Tensor | None = None,
                positions: torch.Tensor | None = None, hidden: tuple[int, ...] = ()) -> Any:
        """Logits ``[keep, V]`` for the last ``keep`` of ``ids`` (1-D, new tokens only), appended to ``cache``.

        ``mask`` (a 4-D additive mask over cache + ids) and ``positions`` (``[1, len(ids)]``) replace the
        causal ones, for a token tree (:mod:`dlm_cli.decode.tree`; never over a static cache: a run
        with trees does not compile). ``hidden``: also return the outputs of these decoder layers
        (0-based) at every position of ``ids``, concatenated, ``[len(ids), len(hidden) * d]``, as
        ``(logits, features)``: the features a learned drafter reads (:mod:`.drafter`), from the
        same forward.
        """
        if hasattr(cache, "dlm_filled"):
            if mask is not None or hidden:
                raise ValueError("a token tree's mask and hidden states cannot run over a static cache")
            from .speed import static_forward

            out = static_forward(self, ids, cache, keep)
        else:
            from .compat import cache_kwarg

            kw = {cache_kwarg(self.net.forward): cache}
            if mask is not None:
                kw.update(attention_mask=mask, position_ids=positions)
            if hidden:
                kw["output_hidden_states"] = True
            res = self.net(input_ids=ids[None], use_cache=True, logits_to_keep=keep, **kw)
            out = res.logits[0]
            if hidden:
                feats = torch.cat([res.hidden_states[i + 1][0] for i in hidden], -1)
                return (out if self.token_count is None else out[:, : self.token_count]), feats
        return out if self.token_count is None else out[:, : self.token_count]

    def forward_embeds(self, ids: torch.Tensor, extra: torch.Tensor, cache: Any, mask: torch.Tensor,
                       positions: torch.Tensor, keep_rows: torch.Tensor) -> torch.Tensor:
        """Logits ``[len(keep_rows), V]`` of the rows ``keep_rows`` of the input ``[ids ; extra]``: the token
        ``ids`` (1-D) followed by ``extra`` rows given as input embeddings ``[m, d]`` (PPD's prompt tokens,
        :mod:`dlm_cli.decode.loops.ppd`), under the 4-D additive ``mask`` ``[1, 1, n + m, cached + n + m]`` at
        ``positions`` ``[1, n + m]``, appended to ``cache`` (a ``DynamicCache``; ``None``: no cache, nothing kept).

        Not under inference mode: training backpropagates through the frozen network into ``extra``
        (:mod:`dlm_cli.train.ppd`); decoding calls it under ``torch.inference_mode``. The token rows go in
        as their own embeddings, so their outputs are those ``forward`` gives them under the same mask.
        """
        from .compat import cache_kwarg

        embed = self.net.get_input_embeddings()
        rows = embed(ids)
        x = torch.cat([rows, extra.to(rows.dtype)]) if extra is not None and extra.shape[0] else rows
        kw: dict[str, Any] = {"use_cache": cache is not None}
        if cache is not None:
            kw[cache_kwarg(self.net.forward)] = cache
        res = self.net(inputs_embeds=x[None], attention_mask=mask, position_ids=positions,
                       logits_to_keep=keep_rows, **kw)
        out = res.logits[0]
        return out if self.token_count is None else out[:, : self.token_count]
    @torch.inference_mode()
    def forward_transfer(self, ids: torch.Tensor, cache: Any, transfer: Any, anchors: torch.Tensor, keep: int = 1,
                         mask: torch.Tensor | None = None,
                         positions: torch.Tensor | None = None) -> tuple[torch.Tensor, torch.Tensor]:
        """Hidden Transfer's split forward (:func:`.hidden_transfer.split_forward`): the logits ``[keep, V]`` of the
        last ``keep`` of ``ids`` (equal to :meth:`forward`'s) and the final-layer states, before the final norm,
        of the ``transfer.slots`` pseudo rows of each row in ``anchors`` (``[A, k, d]``; :meth:`early_logits`
        decodes them). ``mask`` and ``positions`` as in :meth:`forward`; the cache ends as :meth:`forward` leaves it."""
        from .hidden_transfer import split_forward

        if hasattr(cache, "dlm_filled"):
            raise ValueError("hidden-transfer's split forward cannot run over a static cache")
        n = ids.shape[0]
        past = cache.get_seq_length()
        if mask is None:
            see = torch.ones(n, past + n, dtype=torch.bool, device=ids.device).tril(past)
            pos = torch.arange(past, past + n, device=ids.device)
        else:
            see, pos = mask[0, 0] == 0, positions[0]
        real, pseudo = split_forward(self.net, transfer, anchors, see, pos, ids=ids, cache=cache)
        return self.early_logits(real[n - keep:]), pseudo

    @property
    def depth(self) -> int:
        """The number of decoder layers."""
        return int(self.net.config.num_hidden_layers)

    @torch.inference_mode()
    def early_logits(self, hidden: torch.Tensor) -> torch.Tensor:
        """The output layer applied to a decoder layer's outputs ``hidden [n, d]`` (an early exit): the final
        norm, then the head; ``[n, V]``."""
        norm = getattr(self.net.base_model, "norm", None)
        if norm is None:
            from ..errors import DlmError

            raise DlmError(f"{self.info.name} has no final norm where transformers' decoders keep it "
                           "(model.norm); an early exit cannot read its layers")
        out = self.net.get_output_embeddings()(norm(hidden))
        return out if self.token_count is None else out[..., : self.token_count]

    @torch.inference_mode()
    def forward_rows(self, ids: torch.Tensor, cache: Any, mask: torch.Tensor, positions: torch.Tensor) -> torch.Tensor:
        """Logits ``[B, n, V]`` of a batch's new tokens ``ids [B, n]`` appended to ``cache`` (a ``DynamicCache``
        with ``B`` rows), under the 4-D additive ``mask`` ``[B, 1, n, T + n]`` at ``positions [B, n]``: a
        ragged batch (:mod:`dlm_cli.decode.batch_ar`), each row its own keys and positions."""
        from .compat import cache_kwarg

        kw = {cache_kwarg(self.net.forward): cache}
        out = self.net(input_ids=ids, use_cache=True, attention_mask=mask, position_ids=positions, **kw).logits
        return out if self.token_count is None else out[..., : self.token_count]


def rollback(cache: Any, length: int) -> None:
    """Drop every cached position at and after ``length`` (rejected draft tokens)."""
    if hasattr(cache, "dlm_filled"):
        from .speed import crop_static

        crop_static(cache, length)
        return
    extra = cache.get_seq_length() - length
    if extra > 0:
        cache.crop(-extra)  # negative: tokens to remove (every transformers 5 release reads it so)


def is_causal_config(cfg: dict[str, Any]) -> bool:
    """A config transformers knows natively (no ``auto_map`` code needed) with a causal-LM head."""
    from transformers.models.auto.modeling_auto import MODEL_FOR_CAUSAL_LM_MAPPING_NAMES

    return isinstance(cfg.get("model_type"), str) and cfg["model_type"] in MODEL_FOR_CAUSAL_LM_MAPPING_NAMES


def load_causal(path: Path, cfg: dict[str, Any], opts: Any, name: str) -> CausalLM:
    from transformers import AutoModelForCausalLM

    from .files import eos_ids, model_info, prepare, pretrained

    prep = prepare(path, cfg, opts, name)
    net = pretrained(AutoModelForCausalLM, path, prep, name, what="a causal LM",
                     other="architecture than its config.json says", trust_remote_code=False)
    tok = prep.tokenizer
    rows = int(net.get_output_embeddings().weight.shape[0])
    text_cfg = net.config.get_text_config() if hasattr(net.config, "get_text_config") else net.config
    context = (getattr(text_cfg, "max_position_embeddings", None) or cfg.get("max_position_embeddings")
               or cfg.get("n_positions") or 2048)
    return CausalLM(net=net, tokenizer=tok, info=model_info(name, FAMILY, path, net, tok),
                    eos_ids=eos_ids(cfg, tok, path), max_length=int(context),
                    token_count=len(tok) if len(tok) < rows else None)
