"""Window-Diffusion (Zuo et al., 2026, arXiv 2601.20332): a sliding window of computed tokens over a stale cache.

Masked positions are ranked left to right, r = 1, 2, ... Every ``refresh`` steps, from the first,
a refresh step runs a full forward (``window_refresh = "canvas"``: the whole canvas, as the
authors' LLaDA code; ``"window"``: only the window, as their Dream code), rewrites the cache of
every position it ran, and commits among every mask it saw. Then the classes hold until the next
refresh:

- **decoded** (prompt and committed tokens): their keys and values are cached;
- **window**: the decoded tokens and the first ``window_tokens`` masks (W); pruned steps attend
  only to these keys (plus the active ones);
- **far field**: the masks past the window, pruned: neither query nor key of any pruned step.

A pruned step computes only the **active** tokens: the first ``active_tokens`` masks still left (A;
the active set slides right as they are committed), the tokens committed since the refresh (the
post-decode transient, recomputed so that their keys and values carry their token), and, at the
first pruned step, the refresh step's own commits. Each runs at its own rotary position and its
keys and values overwrite the cache; the rest of the window (the **buffer**) is read stale from the
last refresh. The step commits among the active masks. For families whose logits predict the next
position (Dream) the predictor ``p − 1`` of each active mask ``p`` is computed too.

A mask that slides into the active set from past the window is computed and read from then on.

The commit rule is LLaDA's (the ``baseline`` rule): the top-k by confidence (or ``rank``), k from
its even schedule over ``steps`` (default one per step), for both families; the authors' Dream
code ranks by negative entropy (``rank = "entropy"`` here) and commits the leftmost mask at a
refresh step, which dlm does not copy. There are no semi-autoregressive blocks:
the window supplies the locality. With EoTP, the final end-token tail is pruned from every pruned
step (and from window refreshes), as the authors' Dream code cuts the canvas after the first end
token. Lossy: the stale buffer and the pruned far field are approximations; with ``refresh = 1``
every step is a full forward over the canvas and the greedy output is the baseline's with one
block.

Block-diffusion models are refused: their block-causal attention already keeps later blocks out
of a block's forward and their prefix cache is exact, so the method has nothing left to prune
that the paper defines (the smollm2-dlm block is 8 slots, below the default A = 16).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Iterator, TYPE_CHECKING

import numpy as np
import torch

from ..canvas import BlockCanvas
from ..events import Clock, Event
from ..rules.base import StepState
from ..rules.baseline import Baseline
from ..sampling import make_sampler

if TYPE_CHECKING:
    from ..keys import RunSettings
    from ...models.protocols import DLLM


def first_masks(masked: np.ndarray, n: int) -> np.ndarray:
    """The first ``n`` masked positions, left to right (rank ``r ≤ n``)."""
    return masked & (np.cumsum(masked) <= n)


@dataclass
class StepSets:
    """One step's positions (sorted canvas indices): which masks it may commit, which it computes, which it reads."""

    refresh: bool
    targets: np.ndarray  # masks whose logits the step reads: the commit candidates
    computed: np.ndarray  # positions run through the network (queries; their cache rows are rewritten)
    keys: np.ndarray  # positions attention reads (a superset of ``computed``)


class WindowPlan:
    """The token classes of Window-Diffusion between refreshes, on the canvas's host mirror."""

    def __init__(self, length: int, mask_id: int, active: int, window: int, refresh: int, whole: bool,
                 shift: bool) -> None:
        self.length, self.mask_id = length, mask_id
        self.active, self.window_tokens, self.refresh, self.whole, self.shift = active, window, refresh, whole, shift
        self.pos = np.arange(length)
        self.window = np.zeros(length, dtype=bool)  # decoded tokens and the first W masks at the last refresh
        self.recent = np.zeros(length, dtype=bool)  # committed at pruned steps since the refresh
        self.fresh = np.zeros(length, dtype=bool)  # committed at the refresh step: active at the next step only

    def window_set(self, host: np.ndarray, end: int) -> np.ndarray:
        """Decoded positions before ``end`` (the EoTP tail is final filler) and the first W masks."""
        masked = host == self.mask_id
        return (~masked & (self.pos < end)) | first_masks(masked, self.window_tokens)

    def sets(self, host: np.ndarray, end: int, step: int) -> StepSets:
        """What step ``step`` computes and reads, given the canvas ``host`` before it."""
        masked = host == self.mask_id
        if step % self.refresh == 0:
            computed = np.ones(self.length, dtype=bool) if self.whole else self.window_set(host, end)
            return StepSets(True, np.flatnonzero(masked & computed), np.flatnonzero(computed), np.flatnonzero(computed))
        act = first_masks(masked, self.active) | self.recent | self.fresh
        targets = masked & act
        computed = act.copy()
        if self.shift:  # the logits predicting p come from the output at p - 1
            computed[np.maximum(np.flatnonzero(targets) - 1, 0)] = True
        return StepSets(False, np.flatnonzero(targets), np.flatnonzero(computed), np.flatnonzero(computed | self.window))

    def update(self, host: np.ndarray, end: int, committed: np.ndarray, refresh: bool) -> None:
        """After a step's commit (``host`` is the canvas after it): rebuild the classes at a refresh, else slide."""
        if refresh:
            self.window = self.window_set(host, end)
            self.recent[:] = False
            self.fresh[:] = False
            self.fresh[committed] = True
        else:
            self.fresh[:] = False
            self.recent[committed] = True


def run(model: DLLM, prompt_ids: list[int], settings: RunSettings, rule: Baseline, generator: torch.Generator | None,
        clock: Clock) -> Iterator[Event]:
    """Decode ``prompt_ids`` with Window-Diffusion; yields Start, one Step per forward, then Done."""
    s = settings
    model.begin(len(prompt_ids), generator)
    c = BlockCanvas(model, prompt_ids, s, clock, block_length=s.max_new_tokens)
    P, G, dev = c.prompt, c.slots, c.device
    plan = WindowPlan(c.length, c.mask_id, s.active_tokens, s.window_tokens, s.refresh,
                      s.window_refresh == "canvas", model.shift)
    cache = model.new_cache()
    quotas = rule.quotas(G, G, G)
    sampler = make_sampler(s, generator, c.mask_id)
    neg_inf = torch.tensor(-torch.inf, dtype=c.wide, device=dev)
    nfe = refreshes = rows = pruned = 0

    yield c.start()
    i = 0
    while c.masked(P, c.end):
        st = plan.sets(c.host, c.end, i)
        if st.refresh:
            cache.clear()
            refreshes += i > 0
        else:
            pruned += 1
        n, k = len(st.targets), len(st.computed)
        index = torch.from_numpy(np.concatenate([st.targets, st.computed, st.keys])).to(dev)  # one transfer
        targets, computed, keys = index[:n], index[n : n + k], index[n + k :]
        logits = model.logits_at(c.x, targets, computed, keys, cache)[0]
        nfe += 1
        rows += k
        x0, prob = sampler(logits)
        cand = torch.ones(n, dtype=torch.bool, device=dev)
        quota = quotas[i] if i < len(quotas) else c.masked(P, c.end)
        state = StepState(logits, x0, prob, cand, min(quota, n), i, len(quotas), 0, generator, probability=prob,
                          tokens=c.x[0, targets], progress=c.progress())
        slot = targets - P
        sel = torch.zeros(G, dtype=torch.bool, device=dev).index_copy_(0, slot, rule.select(state))
        tok = torch.full((G,), c.mask_id, dtype=x0.dtype, device=dev).index_copy_(0, slot, x0)
        conf = neg_inf.expand(G).clone().index_copy_(0, slot, prob.to(c.wide))
        step = c.commit(P, sel, tok, conf, nfe=nfe, block=0)
        plan.update(c.host, c.end, P + np.asarray(step.positions, dtype=np.int64), st.refresh)
        yield step
        i += 1
    yield c.done(nfe, blocks=1, cache="window", refreshes=refreshes,
                 extra={"computed_rows": rows, "pruned_steps": pruned})
