"""The one-line summary of a finished generation that generate and replay print on stderr."""

from __future__ import annotations

from typing import Any

from ..threads import busy_share


def stats_line(done: Any, *, interrupted: bool = False, paced: bool = False, dtype: str | None = None,
               limit: int | None = None, threads: int | None = None) -> str:
    """``limit`` is the run's max_new_tokens, named when the run stopped there; ``threads`` the run's
    CPU threads, for the advice when the cores were busy."""
    parts = [f"{len(done.tokens)} tokens", f"{done.nfe} NFE", f"{done.tokens_per_nfe:.2f} tok/NFE",
             f"{done.tokens_per_second:.1f} tok/s"]
    if dtype:
        parts.append(dtype)
    if done.ttft_seconds is not None:
        parts.append(f"TTFT {done.ttft_seconds * 1000:.0f} ms")
    if done.draft_source is not None:  # the AR loop drafted
        parts.append(f"accept {done.acceptance_rate or 0.0:.0%} ({done.accepted}/{done.drafted})")
        parts.append(f"mean accepted length {done.mean_accepted_length or 0.0:.2f}")
        if done.draft_nfe:
            parts.append(f"draft NFE {done.draft_nfe}")
        parts.append(f"draft/verify {done.draft_seconds:.2f}/{done.verify_seconds:.2f} s")
    if done.finish_reason == "repetition":
        parts.append("stopped: the text repeats (stop_repeats = 0 turns this off)")
    elif done.finish_reason == "length":
        parts.append(f"stopped: length, -n {limit}" if limit else "stopped: length")
    if interrupted:
        parts.append("interrupted")
    share = busy_share(getattr(done, "cpu_seconds", None), done.seconds)
    if share is not None:  # the cores were shared: the figures above measure the machine's load, not dlm
        hint = "; try --threads 1" if threads and threads > 1 else ""
        parts.append(f"CPU busy: the decode thread ran {share:.0%} of the time, other processes had the cores{hint}")
    elif paced:
        parts.append("paced view: idle threads slow each step, bench for speed")
    return " · ".join(parts)
