"""PEARL (Liu et al., ICLR 2025, arXiv 2408.11850): pre-verify and post-verify, as a schedule on one device.

PEARL runs the draft and the target at the same time on two devices. Its two modes, read from
the authors' ``parallel_speculative_decoding`` (METHODS-MORE §7), with ``γ = draft_length``:

- **pre-verify** (the prefix ends in a verified token): the draft proposes ``d1..dγ``; the target
  runs one forward over the tokens its cache lacks, whose last distribution checks ``d1`` alone.
  Rejected: the correction is committed, the draft is dropped, the mode stays. Accepted: ``d1`` is
  committed, ``d2..dγ`` stay pending, and the mode becomes post-verify.
- **post-verify** (``γ - 1`` pending tokens): the draft keeps drafting the next ``γ`` tokens
  ``e1..eγ`` after the pending ones; the target's forward over the pending tokens checks them and
  ``e1``. All accepted: they are committed, ``e2..eγ`` become pending, the mode stays (the draft
  runs on ahead, so the effective draft length grows). A rejection: the accepted run and the
  correction are committed, everything after it is dropped from both caches, back to pre-verify.

Each check is the standard speculative rule (:func:`.ar.verdict` without a bonus row), so the
output is the target's: identical to ``ar`` when greedy, its distribution when sampling. On one
device nothing overlaps: a pre-verify round costs γ draft forwards and a one-token target
forward for at most one token, and the look-ahead drafts of a post-verify round are lost when
the round rejects, so the schedule only pays where draft and target really run in parallel.
"""

from __future__ import annotations

import time
from typing import Any, Iterator, TYPE_CHECKING

import torch

from ...models.causal import rollback
from ..events import Clock, Done, Draft, Event, Start
from .ar import Output, verdict, verify_event

if TYPE_CHECKING:
    from ..keys import RunSettings


def run(target: Any, prompt_ids: list[int], settings: RunSettings, source: Any, generator: torch.Generator,
        clock: Clock) -> Iterator[Event]:
    device = target.device
    gamma = settings.draft_length
    o = Output(target, prompt_ids, settings)
    seq = o.seq
    cache = target.new_cache()
    cached = 0
    pending: list[int] = []
    pending_q: torch.Tensor | None = None
    post = False
    nfe = steps = drafted = accepted = 0
    draft_s = verify_s = 0.0
    ttft = None
    pre_rounds = post_rounds = 0

    yield Start(kind="autoregressive", prompt_tokens=len(seq), length=o.limit)
    source.begin(seq, generator)
    while not o.stopped:
        t0 = time.perf_counter()
        position = len(o.out)
        room = o.room()
        if post:
            count = 0 if pending and pending[-1] in o.eos else min(gamma, room - len(pending))
        else:
            count = min(gamma, room)
        ahead = seq + pending
        if count > 0:
            fresh, q = source.run(ahead[source.cached:], count, source.stop, confidence=0.0)
        else:
            fresh, q = torch.empty(0, dtype=torch.long), None
        fresh_list = fresh.tolist()
        draft_s += time.perf_counter() - t0
        if fresh_list:
            yield Draft(step=steps, position=position + len(pending), tokens=fresh_list, source=source.name)
        t1 = time.perf_counter()
        # The tokens this forward checks: pre-verify d1; post-verify the pending ones and e1.
        check = (pending + fresh_list[:1]) if post else fresh_list[:1]
        k = len(check)
        check_q = None
        if settings.temperature > 0 and k:
            check_q = torch.cat(([pending_q] if post and pending else []) + ([q[:1]] if fresh_list else [])).to(device)
        both = torch.tensor(seq[cached:] + check, dtype=torch.long, device=device)
        # The forward feeds all but the last checked token: its rows predict the k checked tokens.
        logits = target.forward(both[:-1] if k else both, cache, keep=max(k, 1))
        nfe += 1
        n, token = verdict(logits, both[len(seq) - cached:], check_q, settings, generator, bonus=not k).tolist()
        verify_s += time.perf_counter() - t1
        if post:
            post_rounds += 1
        else:
            pre_rounds += 1
        whole = n == k and k > 0
        drafted += k
        accepted += n
        new = o.commit(check if whole else check[:n] + [token])
        cached = len(seq) - 1
        rollback(cache, cached)
        if whole:  # d1 (or every pending token and e1) accepted: what the draft ran on ahead is pending
            pending, pending_q, post = fresh_list[1:], (q[1:] if q is not None else None), True
        else:  # the draft's look-ahead is lost with the rejected token
            pending, pending_q, post = [], None, False
            source.cached = min(source.cached, len(seq) - 1)
            rollback(source.cache, source.cached)
        if ttft is None:
            ttft = clock.elapsed()
        yield verify_event(steps, nfe, position, new, n, k, check)
        steps += 1
    yield Done(tokens=o.out, nfe=nfe, steps=steps, seconds=clock.elapsed(), ttft_seconds=ttft,
               finish_reason=o.finish, draft_nfe=source.nfe, verifies=steps, drafted=drafted, accepted=accepted,
               draft_seconds=draft_s, verify_seconds=verify_s, draft_source="pearl",
               extra={"pre_verify_rounds": pre_rounds, "post_verify_rounds": post_rounds})
