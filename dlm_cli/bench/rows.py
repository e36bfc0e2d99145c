"""A bench row: what one profile measured over the prompts, and the formulas of its columns."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Optional


@dataclass
class Row:
    profile: str
    strategy: str
    runs: int = 0
    nfe: Optional[float] = 0.0  # None: unknown (a remote row: the server's forwards)
    draft_nfe: float = 0.0
    generated_tokens: float = 0.0
    tokens_per_nfe: Optional[float] = 0.0
    tokens_per_second: float = 0.0
    tokens_per_second_iqr: tuple[float, float] = (0.0, 0.0)
    seconds: float = 0.0
    ttft_seconds: float = 0.0
    prefill_seconds: float = 0.0
    decode_seconds: float = 0.0
    speedup: float = 1.0
    speedup_iqr: tuple[float, float] = (1.0, 1.0)
    speedup_plain: float = 1.0
    agreement: float = 1.0
    score: Optional[float] = None
    task_scores: dict[str, float] = field(default_factory=dict)
    acceptance_rate: Optional[float] = None
    peak_memory_mb: Optional[float] = 0.0
    weight_gbps: Optional[float] = 0.0
    sweep: dict[str, str] = field(default_factory=dict)
    baseline: bool = False
    cache: Optional[str] = None
    warnings: list[str] = field(default_factory=list)
    answers: list[dict[str, Any]] = field(default_factory=list)  # per prompt (first rep): text, expected, score
    batch_size: int = 1


FORMULAS = {
    "tokens_per_nfe": "generated tokens / NFE, where generated tokens stop before the first end token "
                      "(no padding, nothing after it) and NFE counts the model's forward passes",
    "tokens_per_second": "generated tokens / decode seconds over all prompts; the median over reps (IQR)",
    "speedup": "headline baseline seconds / row seconds over the same prompts (ratio of sums, median over "
               "reps); the headline baseline is one token per step with EoTP (it stops at the end token) for "
               "a dLLM, ar for an AR model; ( ) is the IQR of the per-prompt ratios",
    "speedup_plain": "one-token-per-step baseline without EoTP (it decodes every slot) seconds / row seconds",
    "agreement": "share of prompts whose generated tokens equal the first baseline's",
    "prefill_seconds": "mean time to the first committed token (the prompt's forward and the first step)",
    "decode_seconds": "mean seconds per prompt after the first committed token (seconds - prefill seconds)",
    "weight_gbps": "weight bytes x forwards per second (draft forwards at the draft's bytes), as gpt-fast "
                   "reports it; hold it against the machine's copy bandwidth (2 x bytes / seconds of a 256 MiB "
                   "copy)",
    "peak_memory_mb": "CUDA: the allocator's peak; CPU: the process's resident set, sampled at every event",
    "remote": "a url: row (an OpenAI-compatible server): its streamed text re-tokenised by the bench's model "
              "gives the generated tokens, TTFT is the first streamed text, agreement compares texts; NFE, GB/s and "
              "peak memory are the server's and unknown (null)",
    "batch_size": "prompts decoded together, one forward per step (--batch-size); a batch's seconds are split "
                  "evenly over its prompts, and a prompt's TTFT counts from its batch's start",
}
