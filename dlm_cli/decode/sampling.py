"""Candidate tokens and their confidences from logits, with temperature, top-k and top-p.

Sampling uses the Gumbel-max trick in float64, as LLaDA and Fast-dLLM do (low-precision Gumbel
noise hurts masked-diffusion sampling, arXiv:2409.02908). The confidence of a candidate is its
probability under the model's plain softmax, so a threshold means the same thing at every
temperature, as in the reference implementations.
"""

from __future__ import annotations

import torch
from transformers.generation.logits_process import TopKLogitsWarper, TopPLogitsWarper


def _wide(t: torch.Tensor) -> torch.Tensor:
    # MPS has no float64.
    return t.float() if t.device.type == "mps" else t.double()


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
    wide = _wide(logits)
    u = torch.rand(wide.shape, dtype=wide.dtype, device=wide.device, generator=generator)
    return torch.argmax(wide - torch.log(-torch.log(u.clamp_min(1e-300))), dim=-1)


def propose(
    logits: torch.Tensor,
    *,
    temperature: float = 0.0,
    top_k: int = 0,
    top_p: float = 1.0,
    generator: torch.Generator | None = None,
) -> tuple[torch.Tensor, torch.Tensor]:
    """For logits ``[n, V]``: the candidate token ``x0`` per row and its confidence ``p(x0)`` (float64)."""
    probs = torch.softmax(_wide(logits), dim=-1)
    if temperature > 0:
        x0 = gumbel_argmax(warp(logits, temperature, top_k, top_p), generator)
    else:
        x0 = torch.argmax(logits, dim=-1)
    return x0, probs.gather(-1, x0.unsqueeze(-1)).squeeze(-1)
