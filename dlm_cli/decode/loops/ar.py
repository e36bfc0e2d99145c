"""The AR decode loop: plain decoding (``ar``), draft-and-verify (``speculative``), input-guided drafting (``lookup``).

One loop serves all three; only the :mod:`~dlm_cli.decode.drafts` source differs (none, a draft
model, the same with re-encoded text, n-gram lookup). Each iteration is one target forward over
the tokens the target has not seen plus the draft, so the target cache always covers every
committed token but the last. Verification (Leviathan et al. 2023; Chen et al. 2023):

- greedy: accept draft tokens while each equals the target's argmax, then the target's own token
  (a correction, or a bonus after a full accept): the output is the target's greedy output;
- sampling: accept ``x_i`` when ``u_i <= p_i(x_i) / q_i(x_i)``; at the first rejection sample from
  ``normalize(max(0, p_i - q_i))``; after a full accept, a bonus from ``p_{k+1}``. ``p`` and ``q``
  get the same temperature, top-k and top-p. A source without draft probabilities (lookup, a
  re-encoded draft) proposes as if ``q`` were one-hot on its token, which is still exact: accept
  with ``p(x)``, else sample ``p`` with ``x`` removed.

Rejected positions are cropped from the transformers cache, which is then exactly the cache of the
committed prefix. The repetition stop (:mod:`..repetition`) reads each step's accepted run; it
depends on the output tokens alone, so speculative and lookup still give ``ar``'s output with it.
"""

from __future__ import annotations

import time
from typing import Any, Iterator

import torch

from ...models.causal import rollback
from ..events import Clock, Done, Draft, Event, Start, Step, Verify
from ..repetition import repetition_stop
from ..sampling import probabilities


def verify(logits: torch.Tensor, draft: torch.Tensor, q: torch.Tensor | None, settings: Any,
           generator: torch.Generator | None) -> tuple[int, int]:
    """The target's verdict on ``draft`` (``k`` tokens) from its ``k + 1`` rows of logits.

    Returns ``(n, token)``: the first ``n`` draft tokens are accepted and ``token`` follows them
    (the correction when ``n < k``, the bonus when ``n == k``).
    """
    k = draft.shape[0]
    if settings.temperature <= 0:
        pred = logits.argmax(-1)
        if k == 0:
            return 0, int(pred[0])
        n = int((pred[:k] == draft).cumprod(0).sum())
        return n, int(pred[n])
    p = probabilities(logits, settings)
    n = 0
    if k:
        rows = torch.arange(k, device=p.device)
        p_x = p[rows, draft]
        q_x = q[rows, draft] if q is not None else torch.ones_like(p_x)
        u = torch.rand(k, dtype=p.dtype, device=p.device, generator=generator)
        n = int((u * q_x <= p_x).cumprod(0).sum())
    if n < k:
        residual = p[n].clone()
        if q is not None:
            residual = (residual - q[n]).clamp_min(0)
        else:
            residual[draft[n]] = 0
        if residual.sum() <= 0:  # p == q up to rounding: nothing to correct, sample p itself
            residual = p[n]
        return n, int(torch.multinomial(residual / residual.sum(), 1, generator=generator))
    return n, int(torch.multinomial(p[k], 1, generator=generator))


def run(target: Any, prompt_ids: list[int], settings: Any, source: Any, generator: torch.Generator,
        clock: Clock) -> Iterator[Event]:
    """Generate with ``target``, drafting from ``source`` (see :mod:`~dlm_cli.decode.drafts`), and yield events."""
    device = target.device
    eos = set(target.eos_ids)
    limit = settings.max_new_tokens
    seq = list(prompt_ids)
    buf = torch.empty(len(seq) + limit + 1, dtype=torch.long, device=device)
    buf[: len(seq)] = torch.tensor(seq, dtype=torch.long, device=device)
    cache = target.new_cache()
    cached = 0  # positions the target cache holds (always len(seq) - 1 after a step)
    out: list[int] = []
    nfe = steps = drafted = accepted = 0
    drafted_at: list[int] = []
    accepted_at: list[int] = []
    draft_s = verify_s = 0.0
    ttft = None
    finish = "length"
    repeats = repetition_stop(settings)

    yield Start(kind="autoregressive", prompt_tokens=len(seq), length=limit)
    source.begin(seq, generator)
    while len(out) < limit:
        t0 = time.perf_counter()
        draft, q = source.propose(seq, limit - len(out) - 1)
        draft = draft.to(device)  # no-ops unless the draft model lives on another device
        q = q.to(device) if q is not None else None
        t1 = time.perf_counter()
        k = int(draft.shape[0])
        draft_s += t1 - t0
        if k:
            draft_list = draft.tolist()
            yield Draft(step=steps, position=len(out), tokens=draft_list, source=source.name)
            t1 = time.perf_counter()
            feed = torch.cat([buf[cached: len(seq)], draft])
        else:
            draft_list = []
            feed = buf[cached: len(seq)]
        logits = target.forward(feed, cache, keep=k + 1)
        nfe += 1
        n, token = verify(logits, draft, q, settings, generator)
        new = draft_list[:n] + [token]
        verify_s += time.perf_counter() - t1
        rollback(cache, len(seq) + n)
        cached = len(seq) + n
        position = len(out)
        for i in range(k):
            if i == len(drafted_at):
                drafted_at.append(0)
                accepted_at.append(0)
            drafted_at[i] += 1
            accepted_at[i] += i < n
        drafted += k
        accepted += n
        stop = next((i for i, t in enumerate(new) if t in eos), None)
        if stop is not None:
            new = new[: stop + 1]
            finish = "eos"
        if repeats is not None:
            body = new if stop is None else new[:-1]
            keep = repeats.feed(body) if body else None
            if keep is not None:
                new, stop, finish = body[:keep], keep, "repetition"
        buf[len(seq): len(seq) + len(new)] = torch.tensor(new, dtype=torch.long, device=device)
        seq.extend(new)
        out.extend(new[:-1] if finish == "eos" else new)
        source.accepted(seq, n, k)
        if ttft is None:
            ttft = clock.elapsed()
        if k:
            acc = new[:n]  # the accepted draft tokens (cut by an end token or the repetition stop)
            tail = new[len(acc):]
            yield Verify(step=steps, nfe=nfe, position=position, accepted_tokens=acc, drafted=k,
                         rejected=draft_list[n:],
                         correction=tail[0] if tail and n < k else None,
                         bonus=tail[0] if tail and n == k else None)
        else:
            conf = float(torch.softmax(logits[0].float(), -1)[token])
            yield Step(step=steps, nfe=nfe, positions=[position], tokens=[token], confidences=[conf])
        steps += 1
        if stop is not None:
            break
    counts: dict[str, Any] = {"draft_nfe": source.nfe, "verifies": steps}
    if source.name != "none":
        counts.update(drafted=drafted, accepted=accepted, draft_seconds=draft_s, verify_seconds=verify_s,
                      draft_source=source.name, extra=source.stats(),
                      acceptance_per_position=[a / d for a, d in zip(accepted_at, drafted_at)])
    yield Done(tokens=out, nfe=nfe, steps=steps, seconds=clock.elapsed(), ttft_seconds=ttft, finish_reason=finish,
               **counts)
