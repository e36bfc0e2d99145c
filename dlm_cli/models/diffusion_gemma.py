"""DiffusionGemma (google/diffusiongemma-*): transformers' own model behind dlm's Denoiser interface.

DiffusionGemma is native in transformers (``DiffusionGemmaForBlockDiffusion``), so nothing is
adapted below the model's own forward. Its shape differs from the masked-diffusion families:

- a causal *encoder* writes the keys and values of everything final (prompt, then each finished
  canvas) into a cache; a bidirectional *decoder* refines one *canvas* of ``canvas_length`` slots
  (256) that attends to that cache and to itself. Canvases start where the answer starts, so
  dlm's decode blocks are cut at canvas boundaries counted from the prompt end (``block_end``);
- it has no mask token: undecided slots hold uniformly random tokens, redrawn at every step
  (dlm keeps an out-of-vocabulary sentinel as ``mask_id`` and substitutes the noise here);
- each step feeds the previous step's logits of the same canvas back in (self-conditioning);
- logits predict in place and are soft-capped by the model.

Under dlm's strategies a committed slot keeps its token and every undecided slot is redrawn at
each step; self-conditioning reads the previous step's raw logits (the native sampler feeds back
its temperature-scaled ones and may re-noise any slot). The prefix cache is exact (the encoder is
causal), so every cache mode computes the same logits; ``cache = "none"`` re-encodes the prefix at
every step. The native sampler itself is the ``gemma-native`` strategy
(:mod:`dlm_cli.decode.gemma_native`).
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from .. import capabilities as C
from .base import Denoiser
from .compat import cache_kwarg
from .detect import is_diffusion_gemma_config  # noqa: F401  (re-exported)

FAMILY = "diffusion-gemma"


class EncoderPrefix:
    """The encoder's cache of the final prefix ``[0, length)``: what the decode loop calls a cache."""

    def __init__(self, config: Any) -> None:
        self._config = config
        self.clear()

    @property
    def length(self) -> int:
        return int(self.kv.get_seq_length())

    def clear(self) -> None:
        from transformers import DynamicCache

        self.kv = DynamicCache(config=self._config)

    def truncate(self, length: int) -> None:
        # The loop truncates to a block start, never inside the encoded prefix; if it ever does,
        # the prefix is encoded again (sliding-window layers cannot be cropped back).
        if length < self.length:
            self.clear()


@dataclass(eq=False)
class DiffusionGemmaDenoiser(Denoiser):
    """``block_size`` is the canvas length; ``mask_id`` is a sentinel one past the vocabulary."""

    canvas_length: int = 256

    @property
    def capabilities(self) -> frozenset[str]:
        """One canvas per forward, decoded by its own sampler; its canvas is not a block grid."""
        return frozenset({C.NATIVE_SAMPLER})

    def __post_init__(self) -> None:
        self._prompt: int | None = None
        self._generator: torch.Generator | None = None
        self._self_cond: tuple[int, torch.Tensor] | None = None  # (canvas start, last logits)

    @property
    def vocab_size(self) -> int:
        return int(self.net.config.text_config.vocab_size)

    def new_cache(self, size: int = 0) -> EncoderPrefix:
        return EncoderPrefix(self.net.config.get_text_config(decoder=True))

    def begin(self, prompt_tokens: int, generator: torch.Generator | None = None) -> None:
        self._prompt, self._generator, self._self_cond = prompt_tokens, generator, None

    def block_end(self, pos: int) -> int:
        p = self._prompt or 0
        return p + ((pos - p) // self.canvas_length + 1) * self.canvas_length

    def noise(self, shape: tuple[int, ...]) -> torch.Tensor:
        """Uniformly random tokens: DiffusionGemma's stand-in for "not decided yet"."""
        return torch.randint(0, self.vocab_size, shape, device=self.device, generator=self._generator)

    def encode(self, x: torch.Tensor, prefix: EncoderPrefix, upto: int) -> None:
        """Run the causal encoder over ``x[:, prefix.length:upto]``, appending to the prefix cache."""
        n0 = prefix.length
        if n0 >= upto:
            return
        positions = torch.arange(n0, upto, device=x.device).unsqueeze(0)
        enc = self.net.model.encoder
        enc(input_ids=x[:, n0:upto], position_ids=positions, **{cache_kwarg(type(enc).forward): prefix.kv})

    def decode_canvas(self, canvas: torch.Tensor, prefix: EncoderPrefix, start: int,
                      self_conditioning: torch.Tensor | None) -> torch.Tensor:
        """The decoder's soft-capped logits ``[B, C, V]`` for a canvas placed at ``start``."""
        positions = torch.arange(start, start + canvas.shape[1], device=canvas.device).unsqueeze(0)
        out = self.net(decoder_input_ids=canvas, **{cache_kwarg(type(self.net).forward): prefix.kv},
                       self_conditioning_logits=self_conditioning, decoder_position_ids=positions)
        return out.logits

    @torch.inference_mode()
    def logits(self, x: torch.Tensor, start: int = 0, end: int | None = None, *, cache: Any = None,
               rows: tuple[int, int] | None = None) -> torch.Tensor:
        """Logits ``[B, rows, V + 1]`` for ``rows``, which must lie in the canvas slots (after the prompt).

        The extra last column is the ``mask_id`` sentinel's, always -inf.

        Rows past the canvas holding ``rows[0]`` cannot be predicted before that canvas is final:
        they get flat (all-zero) logits. ``start`` and ``end`` are not needed: the canvas is found
        from the rows, and everything before it is the (final) prefix.
        """
        if self._prompt is None:
            raise ValueError("call begin(prompt_tokens, generator) before asking DiffusionGemma for logits")
        end = x.shape[1] if end is None else end
        r0, r1 = rows if rows is not None else (start, end)
        p, c = self._prompt, self.canvas_length
        if r0 < p:
            raise ValueError("DiffusionGemma's decoder predicts canvas slots only, not prompt positions")
        cs = p + (r0 - p) // c * c
        ce = cs + c
        prefix = cache if cache is not None else self.new_cache()
        if prefix.length > cs:
            prefix.clear()
        self.encode(x, prefix, cs)
        canvas = x[:, cs:min(ce, x.shape[1])]
        if canvas.shape[1] < c:  # the last canvas is always decoded whole, as the model was trained
            pad = torch.full((x.shape[0], c - canvas.shape[1]), self.mask_id, dtype=x.dtype, device=x.device)
            canvas = torch.cat([canvas, pad], dim=1)
        canvas = torch.where(canvas == self.mask_id, self.noise(tuple(canvas.shape)), canvas)
        sc = self._self_cond[1] if self._self_cond is not None and self._self_cond[0] == cs else None
        out = self.decode_canvas(canvas, prefix, cs, sc)
        self._self_cond = (cs, out.to(self.net.model.decoder.embed_tokens.weight.dtype))
        res = out[:, r0 - cs: min(r1, ce) - cs]
        if r1 > ce:
            res = torch.cat([res, res.new_zeros(res.shape[0], r1 - ce, res.shape[2])], dim=1)
        # One more column, for the sentinel: decoders may index logits by mask_id, never choose it.
        return torch.cat([res, res.new_full((*res.shape[:2], 1), -torch.inf)], dim=-1)


def load_diffusion_gemma(path: Path, cfg: dict[str, Any], opts: Any, name: str) -> DiffusionGemmaDenoiser:
    """Load with transformers' own class (no remote code), from safetensors only unless pickle is allowed."""
    from transformers import DiffusionGemmaForBlockDiffusion

    from .files import eos_ids, model_info, prepare, pretrained

    prep = prepare(path, cfg, opts, name)
    net = pretrained(DiffusionGemmaForBlockDiffusion, path, prep, name, what="DiffusionGemma", other="architecture")
    text = net.config.text_config
    return DiffusionGemmaDenoiser(
        net=net,
        tokenizer=prep.tokenizer,
        info=model_info(name, FAMILY, path, net, prep.tokenizer),
        mask_id=int(text.vocab_size),  # a sentinel: DiffusionGemma has no mask token (see module doc)
        eos_ids=eos_ids(cfg.get("text_config") or cfg, prep.tokenizer, path),
        max_length=int(text.max_position_embeddings),
        block_size=int(net.config.canvas_length),
        canvas_length=int(net.config.canvas_length),
    )
