"""``gemma-native``: DiffusionGemma's own sampler, run step by step so that views and bench see it.

The algorithm is transformers' ``DiffusionGemmaGenerationMixin.generate`` (canvas after canvas; in
each, up to ``max_denoising_steps`` decoder passes with a linear temperature schedule from
``t_max`` to ``t_min``, the entropy-bounded acceptance of arXiv:2505.24857 — accept the
lowest-entropy slots while their summed entropy minus the largest stays under ``entropy_bound``
— renoising the rest with random tokens, self-conditioning on the last logits, and an early stop
once the argmax canvas has been stable for ``stability_threshold`` steps with mean entropy under
``confidence_threshold``). The outer loop is rewritten here as a generator of events; every step
calls the mixin's own ``_denoising_step``, so a run equals ``model.generate`` with the same seed.

Its canvas is not monotonic: any slot can change at any step. The first step of a canvas reports
every slot as committed (its argmax so far), later steps report the slots whose argmax changed as
``edited``. NFE counts decoder passes; the encoder pass per canvas is reported in the stats. The
keys shared by the diffusion strategies (``block_length``, ``cache``, ``eotp``, ``temperature``,
``top_k``, ``top_p``) do not apply to this sampler; its own keys (:mod:`..declared.gemma_native`),
when unset, take the checkpoint's ``generation_config.json`` values.
"""

from __future__ import annotations

import math
from typing import Any, Iterator, TYPE_CHECKING

import torch

from ...errors import DlmError
from ...models.compat import cache_kwarg
from ..canvas import BlockCanvas
from ..events import Clock, Event, Step

if TYPE_CHECKING:
    from ..keys import RunSettings
    from ...models.protocols import DLLM


def generation_overrides(settings: RunSettings) -> dict[str, Any]:
    """The keys the user set, as overrides of the checkpoint's generation config."""
    from transformers.models.diffusion_gemma.generation_diffusion_gemma import EntropyBoundSamplerConfig

    s, out = settings, {}
    for key in ("max_denoising_steps", "t_min", "t_max", "stability_threshold", "confidence_threshold"):
        if getattr(s, key) is not None:
            out[key] = getattr(s, key)
    if s.entropy_bound is not None:
        out["sampler_config"] = EntropyBoundSamplerConfig(entropy_bound=float(s.entropy_bound))
    return out


@torch.inference_mode()
def run(model: DLLM, prompt_ids: list[int], settings: RunSettings, part: Any, generator: torch.Generator | None,
        clock: Clock) -> Iterator[Event]:
    net, s = model.net, settings
    dev = model.device
    try:
        gc, _ = net._prepare_generation_config(None, **generation_overrides(s))
    except ValueError as exc:
        raise DlmError(f"gemma-native: {exc}") from None
    # The native sampler draws from torch's global generator; seeding it makes a run reproducible.
    torch.manual_seed(s.seed)
    P, G, C = len(prompt_ids), s.max_new_tokens, model.canvas_length
    c = BlockCanvas(model, prompt_ids, s, clock, block_length=C)  # Start, clock, TTFT and Done (its own canvas)
    ids = torch.tensor([prompt_ids], dtype=torch.long, device=dev)
    cache = net._prepare_cache_for_generation(generation_config=gc, batch_size=1, max_length=P + G + C)
    sampler = net._prepare_sampler(gc)
    processors = net._prepare_logits_processor(gc, None)
    stopping = net._prepare_diffusion_stopping_criteria(gc)
    eos = torch.tensor(model.eos_ids, device=dev)
    enc_kw = cache_kwarg(net.model.encoder.forward)
    prep_kw = cache_kwarg(net._prepare_denoiser_inputs)
    step_kw = cache_kwarg(net._denoising_step)

    yield c.start()
    nfe = 0
    encoded = canvases = 0
    for k in range(math.ceil(G / C)):
        cur = P + k * C
        # The causal encoder adds what became final (the prompt, then the last canvas) to the cache.
        enc = net.model.encoder(input_ids=ids[:, encoded:cur], **{enc_kw: cache},
                                position_ids=torch.arange(encoded, cur, device=dev).unsqueeze(0))
        cache = getattr(enc, "cache", None) or getattr(enc, "past_key_values", None) or cache
        encoded, canvases = cur, k + 1
        canvas, sc, masks, finished = net._prepare_denoiser_inputs(
            decoder_attention_mask=torch.ones((1, cur + C), dtype=torch.bool, device=dev), **{prep_kw: cache},
            sampler=sampler, diffusion_stopping_criteria=stopping, batch_size=1, device=dev, model_kwargs={})
        argmax, shown = canvas, None
        slots = min(C, G - k * C)  # canvas slots inside the answer
        positions_all = torch.arange(slots, device=dev)
        for cur_step in reversed(range(1, gc.max_denoising_steps + 1)):
            canvas, argmax, sc, finished = net._denoising_step(
                decoder_forward=net.forward, current_canvas=canvas, argmax_canvas=argmax, input_ids=ids,
                decoder_position_ids=torch.arange(cur, cur + C, device=dev).unsqueeze(0),
                self_conditioning_logits=sc, mask_mapping=masks, **{step_kw: cache},
                finished_denoising=finished, cur_step=cur_step, sampler=sampler, logits_processor=processors,
                diffusion_stopping_criteria=stopping)
            nfe += 1
            now = argmax[0, :slots]
            conf = torch.softmax(sc[0, :slots].float(), dim=-1).gather(-1, now.unsqueeze(-1)).squeeze(-1)
            if shown is None:
                pos, edited = positions_all, positions_all[:0]
            else:
                pos, edited = positions_all[:0], (now != shown).nonzero().squeeze(-1)
            shown = now.clone()
            yield c.record(Step(c.steps, nfe, (pos + k * C).tolist(), now[pos].tolist(), conf[pos].tolist(), block=k,
                                edited=(edited + k * C).tolist(), edited_tokens=now[edited].tolist()))
            if bool(finished.all()):
                break
        ids = torch.cat([ids, argmax], dim=-1)
        hits = torch.isin(argmax[0, :slots], eos).nonzero()
        final = argmax[0, : int(hits[0]) if len(hits) else slots]  # a finished canvas is final
        if c.repeats is not None and c.feed_final(final.cpu().numpy()):
            break
        if len(hits):
            break

    out = ids[0, P : P + G].tolist()
    yield c.done(nfe, tokens=out, blocks=canvases,
                 encoder_forwards=canvases, canvas_length=C, max_denoising_steps=gc.max_denoising_steps)
