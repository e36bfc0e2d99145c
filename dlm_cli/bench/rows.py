"""A bench row: what one profile measured over the prompts, and the formulas of its columns."""

from __future__ import annotations

import statistics
from dataclasses import dataclass, field
from typing import Any, Optional

from ..evals.prompt import score


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
    "processes": "under torchrun or accelerate launch, each process decodes its contiguous share of the prompts; a "
                 "row's seconds are every process's decode seconds summed (so tok/s and speedup are per process, "
                 "as one process would measure), and wall_seconds is the whole run's wall-clock on rank 0 (every "
                 "row's warm-up and reps on the slowest share, and the gather)",
    "batch_size": "prompts decoded together, one forward per step (--batch-size); a batch's seconds are split "
                  "evenly over its prompts, and a prompt's TTFT counts from its batch's start",
}


def _median(xs: list[float]) -> float:
    return statistics.median(xs) if xs else 0.0


def _iqr(xs: list[float]) -> tuple[float, float]:
    """The first and third quartiles (the values themselves for fewer than four)."""
    if len(xs) < 4:
        return (min(xs), max(xs)) if xs else (0.0, 0.0)
    q = statistics.quantiles(xs, n=4, method="inclusive")
    return q[0], q[2]


def build_rows(model: Any, draft: Any, runs: list[tuple[str, Any]], prompts: list[Any], dones: dict[str, list[Any]],
               seconds: dict[str, list[list[float]]], peaks: dict[str, int], *, reps: int, baselines: int,
               sweeps: dict[str, dict[str, str]], batch_size: int) -> list[Row]:
    """The rows' figures from what every run gave (``dones[row][prompt]``, ``seconds[row][rep][prompt]``, the
    peak memory in bytes); the formulas are :data:`FORMULAS`."""
    from ..decode import STRATEGIES
    from .answers import answer
    from .machine import weight_bytes
    from .remote import Remote

    n = len(dones[runs[0][0]])
    per_prompt = {name: [_median([seconds[name][r][k] for r in range(reps)]) for k in range(n)] for name, _ in runs}
    totals = {name: [sum(seconds[name][r][:n]) for r in range(reps)] for name, _ in runs}
    plain, head = runs[0][0], runs[baselines - 1][0]
    head_total, plain_total = _median(totals[head]), _median(totals[plain])
    own_bytes = weight_bytes(model)
    draft_bytes = weight_bytes(draft) if draft is not None else 0
    rows = []
    texts = {name: [d.text if isinstance(s, Remote) else model.tokenizer.decode(d.tokens, skip_special_tokens=True)
                    for d in dones[name]] for name, s in runs}
    for idx, (name, s) in enumerate(runs):
        ds = dones[name]
        remote = isinstance(s, Remote)
        tok = sum(len(d.tokens) for d in ds)
        nfe = None if remote else sum(d.nfe for d in ds)
        draft_nfe = sum(d.draft_nfe or 0 for d in ds)
        total = _median(totals[name])
        rates = [tok / t if t > 0 else 0.0 for t in totals[name]]
        ttft = [d.ttft_seconds or 0.0 for d in ds]
        decode_s = total - sum(ttft)
        row = Row(profile=name, strategy=s.strategy, runs=len(ds) * reps, nfe=None if nfe is None else nfe / len(ds),
                  generated_tokens=tok / len(ds), tokens_per_nfe=None if nfe is None else tok / nfe if nfe else 0.0,
                  tokens_per_second=_median(rates), tokens_per_second_iqr=_iqr(rates), seconds=total,
                  ttft_seconds=statistics.mean(ttft), prefill_seconds=statistics.mean(ttft),
                  decode_seconds=max(decode_s, 0.0) / len(ds),
                  baseline=idx < baselines, sweep=dict(sweeps.get(name, {})),
                  cache=None if remote else getattr(s.frozen(), "cache", None), batch_size=batch_size)
        row.speedup = head_total / total if total > 0 else 0.0
        row.speedup_plain = plain_total / total if total > 0 else 0.0
        ratios = [b / t for b, t in zip(per_prompt[head], per_prompt[name]) if t > 0]
        row.speedup_iqr = _iqr(ratios)
        if remote:  # the text is all a server gives back
            row.agreement = sum(t == b for t, b in zip(texts[name], texts[plain])) / len(ds)
            row.weight_gbps = row.peak_memory_mb = None  # the server's forwards and memory: unknown here
        else:
            row.agreement = sum(d.tokens == b.tokens for d, b in zip(ds, dones[plain])) / len(ds)
            row.draft_nfe = draft_nfe / len(ds)
            if total > 0:
                row.weight_gbps = (own_bytes * nfe + draft_bytes * draft_nfe) / total / 1e9
            row.peak_memory_mb = peaks[name] / 2**20
        drafted = sum(d.drafted or 0 for d in ds)
        if drafted:
            row.acceptance_rate = sum(d.accepted or 0 for d in ds) / drafted
        scores: dict[str, list[bool]] = {}
        for p, text in zip(prompts, texts[name]):
            ok = score(p, text)
            row.answers.append(answer(p, text, ok))
            if ok is not None:
                scores.setdefault(p.task or "all", []).append(ok)
        if scores:
            flat = [x for v in scores.values() for x in v]
            row.score = sum(flat) / len(flat)
            row.task_scores = {t: sum(v) / len(v) for t, v in scores.items()}
        if not row.baseline and row.speedup < 1.0:
            row.warnings.append(f"slower than the baseline ({head})")
        if not remote and STRATEGIES[s.strategy].drafts and not drafted:
            row.warnings.append("drafted nothing")
        rows.append(row)
    return rows
