"""Candidate tokens and their confidences from logits, with temperature, top-k and top-p.

Sampling uses the Gumbel-max trick in float64, as LLaDA and Fast-dLLM do (low-precision Gumbel
noise hurts masked-diffusion sampling, arXiv:2409.02908). The confidence of a candidate is its
probability under the model's plain softmax, so a threshold means the same thing at every
temperature, as in the reference implementations.
"""

from __future__ import annotations

from functools import partial
from typing import Any, Callable

import torch
from transformers.generation.logits_process import TopKLogitsWarper, TopPLogitsWarper


def wide_dtype(device: torch.device | str) -> torch.dtype:
    """The dtype confidences and probabilities are compared in: float64, float32 on MPS (which has no float64)."""
    return torch.float32 if torch.device(device).type == "mps" else torch.float64


def widen(t: torch.Tensor) -> torch.Tensor:
    """``t`` in :func:`wide_dtype`."""
    return t.to(wide_dtype(t.device))


def warp(logits: torch.Tensor, temperature: float, top_k: int, top_p: float) -> torch.Tensor:
    """``logits / temperature`` with everything outside top-k / top-p set to -inf (rows are positions)."""
    out = logits / temperature if temperature > 0 else logits
    if top_k:
        out = TopKLogitsWarper(top_k=top_k)(None, out)
    if top_p < 1.0:
        out = TopPLogitsWarper(top_p=top_p)(None, out)
    return out


def gumbel_argmax(logits: torch.Tensor, generator: torch.Generator | None) -> torch.Tensor:
    """A sample from ``softmax(logits)`` per row, by the Gumbel-max trick in float64."""
    wide = widen(logits)
    u = torch.rand(wide.shape, dtype=wide.dtype, device=wide.device, generator=generator)
    return torch.argmax(wide - torch.log(-torch.log(u.clamp_min(1e-300))), dim=-1)


def sample(probs: torch.Tensor, generator: torch.Generator | None) -> torch.Tensor:
    """A sample per row of ``probs`` (unnormalised weights are fine) as ``argmax(probs / E)``, ``E ~ Exp(1)``.

    The exponential race (gpt-fast's sampler; the Gumbel-max trick in another form): no
    ``multinomial`` and no host sync, so it stays on the device; seeded by ``generator``.
    """
    e = torch.empty_like(probs).exponential_(generator=generator)
    return torch.argmax(probs / e, dim=-1)


def propose(
    logits: torch.Tensor,
    *,
    temperature: float = 0.0,
    top_k: int = 0,
    top_p: float = 1.0,
    generator: torch.Generator | None = None,
    exclude: int | None = None,
) -> tuple[torch.Tensor, torch.Tensor]:
    """For logits ``[n, V]``: the candidate token ``x0`` per row and its confidence ``p(x0)`` (float64).

    ``exclude`` (the mask token) is never proposed: committing it would leave the slot masked and
    the step without progress. The confidence stays the plain softmax's, so nothing else changes.
    """
    probs = torch.softmax(widen(logits), dim=-1)
    choose = logits if exclude is None or exclude >= logits.shape[-1] else without(logits, exclude)
    if temperature > 0:
        x0 = gumbel_argmax(warp(choose, temperature, top_k, top_p), generator)
    else:
        x0 = torch.argmax(choose, dim=-1)
    return x0, probs.gather(-1, x0.unsqueeze(-1)).squeeze(-1)


def make_sampler(settings: Any, generator: torch.Generator | None, exclude: int | None = None
                 ) -> Callable[[torch.Tensor], tuple[torch.Tensor, torch.Tensor]]:
    """The run's :func:`propose`, its sampling keys (temperature, top_k, top_p), generator and excluded
    token bound once: ``sampler(logits) -> (x0, p(x0))``."""
    return partial(propose, temperature=settings.temperature, top_k=settings.top_k, top_p=settings.top_p,
                   generator=generator, exclude=exclude)


def without(logits: torch.Tensor, token: int) -> torch.Tensor:
    """A copy of ``logits`` where ``token`` can never win (its logit is ``-inf``)."""
    out = logits.clone()
    out[..., token] = -torch.inf  # an int index: no index tensor to copy to the device
    return out


def probabilities(logits: torch.Tensor, settings: Any) -> torch.Tensor:
    """Rows of ``softmax(warp(logits))`` in float64: the distribution sampled from, for target and draft alike."""
    wide = widen(logits)
    return torch.softmax(warp(wide, settings.temperature, settings.top_k, settings.top_p), dim=-1)
