"""The AR decode loop: plain decoding (``ar``), draft-and-verify (``speculative``), input-guided drafting (``lookup``, ``aded``).

One loop serves them all; only the :mod:`~dlm_cli.decode.drafts` source differs (none, a draft
model, the same with re-encoded text, n-gram lookup, the ADED table). Each iteration is one
target forward over the tokens the target has not seen plus the draft, so the target cache
always covers every committed token but the last. Verification (Leviathan et al. 2023; Chen et
al. 2023):

- greedy: accept draft tokens while each equals the target's argmax, then the target's own token
  (a correction, or a bonus after a full accept): the output is the target's greedy output;
- sampling: accept ``x_i`` when ``u_i <= p_i(x_i) / q_i(x_i)``; at the first rejection sample from
  ``normalize(max(0, p_i - q_i))``; after a full accept, a bonus from ``p_{k+1}``. ``p`` and ``q``
  get the same temperature, top-k and top-p. A source without draft probabilities (lookup, a
  re-encoded draft) proposes as if ``q`` were one-hot on its token, which is still exact: accept
  with ``p(x)``, else sample ``p`` with ``x`` removed. Samples are drawn by the exponential race
  (:func:`~dlm_cli.decode.sampling.sample`) from the run's generator, on the device.

With ``tree_width > 1`` the source drafts a token tree instead of one run, verified in the same
single forward under a tree attention mask (:mod:`~dlm_cli.decode.tree`); ``pearl = true`` runs
PEARL's schedule instead (:mod:`.pearl`). A source with ``features`` (a learned drafter, :mod:`..learned`)
hears, through ``observe``, the target's hidden states at the newly committed positions that the
verify forward computed: no extra target forward. Each step moves its verdict to the host in one transfer
(accepted count and token, plus the token's confidence for a plain AR step). Rejected positions
are cropped from the cache, which is then exactly the cache of the committed prefix. The
repetition stop (:mod:`..repetition`) reads each step's accepted run; it depends on the output
tokens alone, so every lossless method still gives ``ar``'s output with it.
"""

from __future__ import annotations

import time
from typing import Any, Iterator, TYPE_CHECKING

import torch

from ...models.causal import rollback
from .. import tree as trees
from ..drafts import EMPTY
from ..events import Clock, Done, Draft, Event, Start, Step, Verify
from ..repetition import repetition_stop
from ..sampling import probabilities, sample

if TYPE_CHECKING:
    from ..keys import RunSettings


def verdict(logits: torch.Tensor, draft: torch.Tensor, q: torch.Tensor | None, settings: RunSettings,
            generator: torch.Generator | None, bonus: bool = True) -> torch.Tensor:
    """The target's verdict on ``draft`` (``k`` tokens) as a device tensor ``[n, token]``, no host sync.

    ``logits`` has ``k + 1`` rows (``k`` without ``bonus``). The first ``n`` draft tokens are accepted
    and ``token`` follows them: the correction when ``n < k``, the bonus when ``n == k`` (without
    ``bonus`` there is then no token, and ``token`` means nothing).
    """
    k = draft.shape[0]
    if settings.temperature <= 0:
        pred = logits.argmax(-1)
        n = (pred[:k] == draft).cumprod(0).sum()
        return torch.stack([n, pred[n.clamp_max(logits.shape[0] - 1)]])
    p = probabilities(logits, settings)
    if not k:
        return torch.stack([torch.zeros((), dtype=torch.long, device=p.device), sample(p[0], generator)])
    rows = torch.arange(k, device=p.device)
    p_x = p[rows, draft]
    q_x = q[rows, draft] if q is not None else torch.ones_like(p_x)
    u = torch.rand(k, dtype=p.dtype, device=p.device, generator=generator)
    n = (u * q_x <= p_x).cumprod(0).sum()
    residual = p.clone()
    if q is not None:
        residual[:k] = (p[:k] - q[:k]).clamp_min(0)
    else:
        residual[rows, draft] = 0
    at = n.clamp_max(p.shape[0] - 1)
    row = residual[at]
    row = torch.where(row.sum() > 0, row, p[at])  # p == q up to rounding: nothing to correct, sample p itself
    return torch.stack([n, sample(row, generator)])


def verify(logits: torch.Tensor, draft: torch.Tensor, q: torch.Tensor | None, settings: RunSettings,
           generator: torch.Generator | None) -> tuple[int, int]:
    """:func:`verdict` on the host: ``(n, token)``."""
    n, token = verdict(logits, draft, q, settings, generator).tolist()
    return n, token


class Output:
    """The committed sequence and the output: end tokens, the length limit and the repetition stop."""

    def __init__(self, target: Any, prompt_ids: list[int], settings: RunSettings) -> None:
        self.eos = set(target.eos_ids)
        self.limit = settings.max_new_tokens
        self.seq = list(prompt_ids)
        self.out: list[int] = []
        self.finish = "length"
        self.stopped = False
        self.repeats = repetition_stop(settings)

    def room(self) -> int:
        return self.limit - len(self.out)

    def commit(self, new: list[int]) -> list[int]:
        """Append ``new`` (cut at an end token or by the repetition stop); returns what was committed."""
        stop = next((i for i, t in enumerate(new) if t in self.eos), None)
        if stop is not None:
            new = new[: stop + 1]
            self.finish, self.stopped = "eos", True
        if self.repeats is not None:
            body = new if stop is None else new[:-1]
            keep = self.repeats.feed(body) if body else None
            if keep is not None:
                new, self.finish, self.stopped = body[:keep], "repetition", True
        self.seq.extend(new)
        self.out.extend(new[:-1] if self.finish == "eos" else new)
        if len(self.out) >= self.limit:
            self.stopped = True
        return new


def tally(drafted_at: list[int], accepted_at: list[int], depth: int, n: int) -> None:
    """Count a step that drafted ``depth`` positions and accepted the first ``n``, per draft position."""
    for i in range(depth):
        if i == len(drafted_at):
            drafted_at.append(0)
            accepted_at.append(0)
        drafted_at[i] += 1
        accepted_at[i] += i < n


def verify_event(step: int, nfe: int, position: int, new: list[int], n: int, k: int, drafted: list[int],
                 nodes: int | None = None) -> Verify:
    """The Verify event of a step that committed ``new`` (``n`` accepted of the ``k``-token ``drafted`` run)."""
    acc = new[:n]  # the accepted draft tokens (cut by an end token or the repetition stop)
    tail = new[len(acc):]
    return Verify(step=step, nfe=nfe, position=position, accepted_tokens=acc, drafted=k if nodes is None else nodes,
                  rejected=drafted[n:], correction=tail[0] if tail and n < k else None,
                  bonus=tail[0] if tail and n == k else None)


def run(target: Any, prompt_ids: list[int], settings: RunSettings, source: Any, generator: torch.Generator,
        clock: Clock) -> Iterator[Event]:
    """Generate with ``target``, drafting from ``source`` (see :mod:`~dlm_cli.decode.drafts`), and yield events."""
    device = target.device
    o = Output(target, prompt_ids, settings)
    seq = o.seq
    cache = target.new_cache()
    cached = 0  # positions the target cache holds (always len(seq) - 1 after a step)
    nfe = steps = drafted = accepted = 0
    drafted_at: list[int] = []
    accepted_at: list[int] = []
    draft_s = verify_s = 0.0
    ttft = None
    tree_mode = getattr(settings, "tree_width", 1) > 1 and callable(getattr(source, "propose_tree", None))
    # A learned drafter reads these target layers' hidden states at the committed positions, from the verify forward.
    wants = tuple(getattr(source, "features", ()) or ())
    extra = {"hidden": wants} if wants else {}

    yield Start(kind="autoregressive", prompt_tokens=len(seq), length=o.limit)
    source.begin(seq, generator)
    while not o.stopped:
        t0 = time.perf_counter()
        tree = None
        if tree_mode:
            tree = source.propose_tree(seq, o.room() - 1)
            draft, q = EMPTY, None
        else:
            draft, q = source.propose(seq, o.room() - 1)
        t1 = time.perf_counter()
        draft_s += t1 - t0
        pending = seq[cached:]
        position = len(o.out)
        if tree is not None and len(tree):
            k = len(tree)
            shown = tree.paths[0]
            yield Draft(step=steps, position=position, tokens=shown, source=source.name)
            t1 = time.perf_counter()
            mask, pos = trees.attention(tree, cached, len(pending), target.net.dtype, device)
            feed = torch.tensor(pending + tree.tokens, dtype=torch.long, device=device)
            logits = target.forward(feed, cache, keep=k + 1, mask=mask, positions=pos, **extra)
            if wants:
                logits, feats = logits
            path, token = trees.verify(logits, tree, settings, generator)
            if wants:
                source.observe(feats[list(range(len(pending))) + [len(pending) + i for i in path]])
            trees.keep_branch(cache, len(seq), path)
            n = len(path)
            draft_list = tree.branch(path)
            depth = max(tree.depths)
        else:
            k = int(draft.shape[0])
            draft_list = draft.tolist()
            if k:
                yield Draft(step=steps, position=position, tokens=draft_list, source=source.name)
                t1 = time.perf_counter()
            feed = torch.tensor(pending + draft_list, dtype=torch.long, device=device)
            logits = target.forward(feed, cache, keep=k + 1, **extra)
            if wants:
                logits, feats = logits
            v = verdict(logits, feed[len(pending):], q.to(device) if q is not None else None, settings, generator)
            if k:
                n, token = v.tolist()
            else:  # the token's probability under the plain softmax, for the view's colours: no full softmax
                row = logits[0].double()
                conf = (row[v[1]] - torch.logsumexp(row, -1)).exp()
                n, token, conf = torch.cat([v.double(), conf[None]]).tolist()
                n, token = int(n), int(token)
            rollback(cache, len(seq) + n)
            if wants:
                source.observe(feats[: len(pending) + n])
            depth = k
        nfe += 1
        verify_s += time.perf_counter() - t1
        cached = len(seq) + n
        tally(drafted_at, accepted_at, depth, n)
        drafted += k
        accepted += n
        new = o.commit([*draft_list[:n], token])
        source.accepted(seq, n, k)
        if ttft is None:
            ttft = clock.elapsed()
        if k:
            yield verify_event(steps, nfe, position, new, n, len(draft_list) if tree is not None else k, draft_list,
                               nodes=k if tree is not None else None)
        elif new:
            yield Step(step=steps, nfe=nfe, positions=[position], tokens=new, confidences=[conf])
        steps += 1
    counts: dict[str, Any] = {"draft_nfe": source.nfe, "verifies": steps}
    if source.name != "none":
        counts.update(drafted=drafted, accepted=accepted, draft_seconds=draft_s, verify_seconds=verify_s,
                      draft_source=source.name, extra=source.stats(),
                      acceptance_per_position=[a / d for a, d in zip(accepted_at, drafted_at)])
    yield Done(tokens=o.out, nfe=nfe, steps=steps, seconds=clock.elapsed(), ttft_seconds=ttft,
               finish_reason=o.finish, **counts)
