"""Batched dLLM decoding: rows step together, one forward per step, each row its own run.

:class:`BatchEngine` holds a running batch that rows join and leave while it runs (SGLang's
first-done-first-out): :meth:`~BatchEngine.add` queues a prompt, which joins at the next step;
:meth:`~BatchEngine.step` runs one forward over every row and returns ``(key, event)`` pairs; a row
that finishes leaves at once, and :meth:`~BatchEngine.drop` takes one out (a client that left).
``run_batch(model, prompts, settings)`` is the fixed batch: every prompt added, then stepped until
none is left. Every row decodes as :func:`~dlm_cli.decode.run` would decode it alone
(:mod:`.loops.blocks`: blocks outer, steps inner, a commit rule per step): its own Start, Steps and
Done, its positions relative to its own generation, whenever it joined.

The batch is one canvas tensor ``[B, W]``, the prompts left-padded to the longest, so every row's
generation starts at the same column (a row with fewer generation slots ends earlier: right padding).
When rows join, the canvas is laid out again; when rows leave, it is compacted and the padding
columns no row needs any more are cut. Padding changes no row's logits beyond float rounding: each
row runs at its own positions (its column minus its padding: the rotary embedding sees what it sees
alone), no real query attends a padding key, and padding queries attend only padding keys (a query
with no key would give NaN, and NaN values times zero weights would reach real rows). A
block-diffusion model's block-causal mask is cut on each row's own grid.

Each row keeps its own :class:`~.canvas.BlockCanvas` over a view of its part of the batch canvas:
its committed slots, its block, its EoTP end, its repetition stop, its NFE (its own steps: a row's
events equal its batch-1 events), its settings (rule, threshold, length, sampling, seed) and its
Done, timed from when it joined. Rows step at their own pace: at a forward one row may be in its
third block and another in its first; the forward's logits are gathered at each row's own block. A
step's commits of every row travel to the host in one transfer.

An AR model batches through :class:`~.batch_ar.ArBatchEngine` (``ar``, ``lookup``, ``aded``), which
:func:`new_engine` picks. For a dLLM, supported: the strategies ``threshold`` (confidence rank) and ``baseline`` (low-confidence remasking)
on a model that runs ragged batches (:data:`~dlm_cli.capabilities.RAGGED_BATCH`), with
``cache = "none"``, or a prefix/dual cache (:mod:`.batch_cache`: exact for block-diffusion models,
Fast-dLLM's approximation for LLaDA and Dream, refreshed at block starts only); one cache setting per batch. With ``temperature > 0`` a row draws from its own generator seeded with
its seed (``run_batch``: ``seed + i`` for prompt ``i``): the prompt alone with that seed gives the same output.
"""

from __future__ import annotations

from typing import Any, Hashable, Iterator, TYPE_CHECKING

import numpy as np
import torch

from ..capabilities import BLOCK_CACHE, RAGGED_BATCH, describe
from ..errors import UsageError
from .canvas import BlockCanvas
from .rows import RowClock as _RowClock, admit
from .events import Clock, Event
from .rules.base import Scheduled
from .sampling import make_sampler, propose, wide_dtype

if TYPE_CHECKING:
    from .keys import RunSettings
    from ..models.protocols import DLLM

STRATEGIES_BATCHED = ("threshold", "baseline")


def check_batchable(model: DLLM, cfg: RunSettings, what: str = "--batch-size") -> None:
    """Refuse, with the fix, what batched decoding does not do yet (an AR model: :mod:`.batch_ar`)."""
    if model.kind == "autoregressive":
        from .batch_ar import check_batchable_ar

        check_batchable_ar(model, cfg, what)  # type: ignore[arg-type]
        return
    if cfg.strategy not in STRATEGIES_BATCHED:
        raise UsageError(f"{what}: batched decoding supports the strategies {' and '.join(STRATEGIES_BATCHED)} "
                         f"(profiles quality and speedy), not strategy {cfg.strategy!r}; "
                         f"drop {what} for this profile")
    if model.kind != "diffusion" or RAGGED_BATCH not in model.capabilities:
        raise UsageError(f"{what}: batched decoding needs {describe([RAGGED_BATCH])}; {model.info.name} is not "
                         f"one; drop {what}")
    if cfg.cache != "none" and BLOCK_CACHE not in model.capabilities:
        if model.block_size:
            raise UsageError(f"{what}: batched decoding keeps this model's KV cache only where it is exact, but the "
                             f"profile says cache = {cfg.cache!r}; add --set cache=none")
        if cfg.refresh or cfg.elastic_threshold:
            raise UsageError(f"{what}: batched decoding refreshes a prefix or dual cache only at block starts; add "
                             "--set refresh=0 --set elastic_threshold=0, or --set cache=none")
    if cfg.lookup:
        raise UsageError(f"{what}: batched decoding has no input-guided commits yet; drop lookup=true")
    if getattr(cfg, "rank", "confidence") != "confidence":
        raise UsageError(f"{what}: batched decoding ranks by confidence only, not {cfg.rank!r}; drop rank")
    if getattr(cfg, "remasking", "low_confidence") != "low_confidence":
        raise UsageError(f"{what}: batched decoding has no random remasking; drop remasking")


class _Row:
    """One request of the batch: its canvas, settings and rule, its place (block ``b`` = ``[bs, be)``,
    step ``i``), its NFE."""

    __slots__ = ("key", "c", "cfg", "rule", "off", "span", "b", "bs", "be", "i", "quotas", "remaining", "nfe",
                 "exact", "sampler")

    def __init__(self, key: Hashable, c: BlockCanvas, cfg: RunSettings, rule: Any, seed: int) -> None:
        from . import make_generator

        self.key, self.c, self.cfg, self.rule, self.off = key, c, cfg, rule, 0
        b = c.model.block_size
        # The positions a forward of this row covers: its canvas, to its last model block's end (as alone).
        self.span = -(-c.length // b) * b if b else c.length
        generator = make_generator(c.device, seed) if cfg.temperature > 0 else None
        self.sampler = make_sampler(cfg, generator, c.mask_id)  # the row's own draws
        self.b, self.bs, self.be, self.i, self.nfe, self.remaining = 0, c.prompt, c.prompt, 0, 0, 0
        self.quotas: list[int] = []
        self.exact = 0  # with a cache: the row's keys and values are final for positions [0, exact)

    def enter(self, bs: int) -> bool:
        """Move to the first block at or after ``bs`` with masks left (counting skipped blocks, as the
        block driver does); False when none is left."""
        c = self.c
        while bs < c.end:
            be = c.next_block(bs)
            remaining = c.masked(bs, be)
            if remaining:
                self.bs, self.be, self.i, self.remaining = bs, be, 0, remaining
                self.quotas = self.rule.quotas(remaining, be - bs, c.slots) if isinstance(self.rule, Scheduled) else []
                return True
            bs, self.b = be, self.b + 1
        return False

    def quota(self) -> int:
        return self.quotas[self.i] if self.i < len(self.quotas) else self.remaining

    def done(self) -> Event:
        return self.c.done(self.nfe, blocks=self.b, cache=self.cfg.cache, refreshes=0, edits=self.c.edits)


class BatchEngine:
    """A running batch of dLLM canvases that rows join (at the next step) and leave (when done, or dropped).

    ``cache``: the batch's one cache setting (``"none"``, or a block-diffusion model's ``"prefix"`` /
    ``"dual"``); a row whose settings say otherwise is refused by :meth:`add`.
    """

    def __init__(self, model: DLLM, cache: str = "none", clock: Clock | None = None) -> None:
        self.model, self.cache_mode = model, cache
        self.clock = clock or Clock()
        self.rows: list[_Row] = []  # decoding, in the order of the canvas's rows
        self.waiting: list[_Row] = []  # added, joining at the next step
        self.X: torch.Tensor | None = None
        self.W = 0  # real columns of X; column W is a trash slot (a step's padded rows write there)
        self.cache: Any = None
        dev = model.device
        self.eos = torch.tensor(model.eos_ids, dtype=torch.long, device=dev)
        self.neg_inf = torch.full((), -torch.inf, dtype=wide_dtype(dev), device=dev)

    def __len__(self) -> int:
        return len(self.rows) + len(self.waiting)

    def refusal(self, cfg: RunSettings) -> str | None:
        """Why a run with settings ``cfg`` cannot join this batch, or None."""
        try:
            check_batchable(self.model, cfg, "a batched row")
        except UsageError as exc:
            return str(exc)
        if cfg.cache != self.cache_mode:
            return f"the batch runs with cache = {self.cache_mode!r}, the row asks for cache = {cfg.cache!r}"
        return None

    def add(self, key: Hashable, ids: list[int], settings: Any, seed: int | None = None) -> None:
        """Queue prompt ``ids`` with ``settings`` (a profile's settings, as :func:`~dlm_cli.decode.run` takes);
        it joins at the next :meth:`step`. ``seed`` replaces the settings' seed for the row's draws."""
        strategy, cfg = admit(self, ids, settings)
        c = BlockCanvas(self.model, ids, cfg, self.clock)
        self.waiting.append(_Row(key, c, cfg, strategy.factory(cfg), cfg.seed if seed is None else seed))

    def drop(self, key: Hashable) -> tuple[int, int] | None:
        """Take row ``key`` out of the batch now (between steps); its steps and NFE so far, or None if absent."""
        for k, r in enumerate(self.rows):
            if r.key == key:
                keep = [j for j in range(len(self.rows)) if j != k]
                self._compact(keep)
                return r.c.steps, r.nfe
        for r in self.waiting:
            if r.key == key:
                self.waiting.remove(r)
                return 0, 0
        return None

    def step(self) -> list[tuple[Hashable, Event]]:
        """Let the waiting rows join, then one forward over every row: each row's events, in order."""
        self.clock.resume()
        try:
            return self._step()
        finally:
            self.clock.pause()

    # -- the step ---------------------------------------------------------------------------

    def _join(self, out: list[tuple[Hashable, Event]]) -> None:
        joined = []
        for r in self.waiting:
            self.model.begin(r.c.prompt, None)
            r.c.clock = _RowClock(self.clock)
            out.append((r.key, r.c.start()))
            if r.enter(r.c.prompt):
                joined.append(r)
            else:
                out.append((r.key, r.done()))
        self.waiting = []
        if not joined:
            return
        rows = self.rows + joined
        # A new layout: generations start at one column, each row's canvas copied over.
        top = max(r.c.prompt for r in rows)
        W = max(top - r.c.prompt + r.c.length for r in rows)
        X = torch.full((len(rows), W + 1), self.model.mask_id, dtype=torch.long, device=self.model.device)
        for k, r in enumerate(rows):
            r.off = top - r.c.prompt
            X[k, r.off : r.off + r.c.length] = r.c.x[0]
            r.c.x = X[k : k + 1, r.off : r.off + r.c.length]
        self.X, self.W, self.rows = X, W, rows
        if self.cache_mode != "none":  # each row's prefix or dual cache (batch_cache)
            from .batch_cache import RowsCache

            size = max(r.span for r in rows)
            if self.cache is None:
                self.cache = RowsCache(size)
            self.cache.add(len(joined), size)

    def _step(self) -> list[tuple[Hashable, Event]]:
        out: list[tuple[Hashable, Event]] = []
        if self.waiting:
            self._join(out)
        active = self.rows
        if not active:
            return out
        X, W, dev, mask_id = self.X, self.W, self.model.device, self.model.mask_id
        assert X is not None
        # Each row's block, as columns of the batch canvas; a narrower block is padded with the trash column.
        n = max(r.be - r.bs for r in active)
        cols = np.full((len(active), n), W, dtype=np.int64)
        for k, r in enumerate(active):
            cols[k, : r.be - r.bs] = np.arange(r.off + r.bs, r.off + r.be)
        cols_t = torch.from_numpy(cols).to(dev)
        logits = self._forward(cols_t)
        tok = X.gather(1, cols_t)
        cand = (tok == mask_id) & (cols_t < W)
        x0, prob = _propose(logits, active, mask_id)
        conf = torch.where(cand, prob, self.neg_inf)
        sel = _select(conf, cand, active) & cand
        eotp = [r.cfg.eotp for r in active]
        if any(eotp):  # Learn2PD: nothing after the first end token a row writes is committed this step
            hit = (sel & torch.isin(x0, self.eos)).long()
            first = (torch.cumsum(hit, 1) - hit) == 0
            if not all(eotp):
                first = first | ~torch.tensor(eotp, device=dev)[:, None]
            sel = sel & first
        X.scatter_(1, cols_t, torch.where(sel, x0, tok))
        packed = torch.stack([sel, torch.zeros_like(sel), x0, conf]).to(self.neg_inf.dtype)
        packed = packed.cpu().numpy()  # the step's one host transfer, every row's commits together
        keep = []
        for k, r in enumerate(active):
            r.nfe += 1
            out.append((r.key, r.c.absorb(r.bs, packed[:, k, : r.be - r.bs], nfe=r.nfe, block=r.b)))
            r.remaining = r.c.masked(r.bs, r.be)
            r.i += 1
            if r.remaining == 0:
                r.b += 1
                if not r.enter(r.be):
                    out.append((r.key, r.done()))
                    continue
            keep.append(k)
        if len(keep) < len(active):
            self._compact(keep)
        return out

    def _forward(self, cols: torch.Tensor) -> torch.Tensor:
        """The step's one forward: each row's cached window, or (no cache) the canvas up to what the rows need."""
        X, W, active, model = self.X, self.W, self.rows, self.model
        if self.cache is not None:
            from .batch_cache import cached_logits

            return cached_logits(model, X, W, self.cache, active, cols)
        end = W
        if model.block_size:  # block-causal: a row's forward needs only its block's model block and before
            end = max(r.off + -(-r.be // model.block_size) * model.block_size for r in active)
        offs = torch.tensor([r.off for r in active], dtype=torch.long, device=X.device)
        spans = torch.tensor([r.span for r in active], dtype=torch.long, device=X.device)
        return batch_logits(model, X, W, end, offs, cols, spans)

    def _compact(self, places: list[int]) -> None:
        """Only the rows at ``places`` of the canvas, without the padding columns none of them needs."""
        keep = [self.rows[k] for k in places]
        if self.cache is not None:
            self.cache.keep(places)
        self.rows = keep
        if not keep:
            self.X, self.W, self.cache = None, 0, None
            return
        assert self.X is not None
        cut = min(r.off for r in keep)
        W = max(r.off + r.c.length for r in keep) - cut
        X = self.X.index_select(0, torch.tensor(places, dtype=torch.long, device=self.X.device))
        X = torch.cat([X[:, cut : cut + W], X[:, -1:]], dim=1)
        for k, r in enumerate(keep):
            r.off -= cut
            r.c.x = X[k : k + 1, r.off : r.off + r.c.length]
        self.X, self.W = X, W


def new_engine(model: Any, cache: str = "none", clock: Clock | None = None, draft: Any = None) -> Any:
    """A running batch for ``model``: :class:`BatchEngine` for a dLLM (with the batch's ``cache`` setting),
    :class:`~.batch_ar.ArBatchEngine` for an AR model (its cache is always the ragged KV cache; ``draft``:
    the run's draft model, for ``speculative``)."""
    if model.kind == "autoregressive":
        from .batch_ar import ArBatchEngine

        return ArBatchEngine(model, clock, draft=draft)
    return BatchEngine(model, cache, clock)


def run_batch(model: DLLM, prompts: list[list[int]], settings: Any, draft: Any = None) -> Iterator[tuple[int, Event]]:
    """Decode every prompt of ``prompts`` in one batch; yields ``(row, event)``, each row's events in order.
    Prompt ``i`` draws (``temperature > 0``) with seed ``seed + i``."""
    from . import resolve_seed

    if not prompts or any(len(p) == 0 for p in prompts):
        raise UsageError("batched decoding needs at least one prompt, and no empty prompt")
    seed = resolve_seed(settings)
    check_batchable(model, settings.frozen())
    engine = new_engine(model, getattr(settings.frozen(), "cache", "none"), draft=draft)
    for i, ids in enumerate(prompts):
        engine.add(i, ids, settings, seed=seed + i)
    return _drain(engine)


def _drain(engine: Any) -> Iterator[tuple[int, Event]]:
    while len(engine):
        yield from engine.step()


@torch.inference_mode()
def batch_logits(model: DLLM, X: torch.Tensor, W: int, end: int, offs: torch.Tensor, cols: torch.Tensor,
                 spans: torch.Tensor | None = None) -> torch.Tensor:
    """Logits ``[B, n, V]`` predicting the tokens at columns ``cols`` ``[B, n]`` from a forward over columns
    ``[0, end)`` of the batch canvas ``X`` (``W`` real columns; past them, masks as :meth:`Denoiser.logits`
    pads a block-diffusion window), each row at its own positions (column minus its padding ``offs``),
    each row's keys its positions ``[0, spans)`` (None: every column from its padding on)."""
    B, dev = X.shape[0], X.device
    ids = X[:, : min(end, W)]
    if end > W:
        ids = torch.cat([ids, torch.full((B, end - W), model.mask_id, dtype=X.dtype, device=dev)], dim=1)
    pos = torch.arange(end, device=dev)[None, :] - offs[:, None]
    real = pos >= 0
    if spans is not None:
        real = real & (pos < spans[:, None])
    if model.block_size:
        blk = torch.where(real, pos // model.block_size, -1)
        allow = (blk[:, None, :] <= blk[:, :, None]) & real[:, None, :]
    else:
        allow = real[:, None, :].expand(B, end, end)
    allow = allow | (~real[:, :, None] & ~real[:, None, :])
    pred = (cols - 1 if model.shift else cols).clamp(0, end - 1)  # shift: the output at i - 1 predicts i
    out = model.net(ids, positions=pos.clamp_min(0), mask=allow, rows=pred)
    return out if model.token_count is None else out[..., : model.token_count]


def _propose(logits: torch.Tensor, active: list[_Row], mask_id: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Each row's candidates and confidences: greedy for the whole batch at once; a sampling row draws
    from its own generator with the draws of its own block's shape (as alone)."""
    x0, prob = propose(logits, exclude=mask_id)
    for k, r in enumerate(active):
        if r.cfg.temperature > 0:
            w = r.be - r.bs
            x0[k, :w], prob[k, :w] = r.sampler(logits[k, :w])
    return x0, prob


def _select(conf: torch.Tensor, cand: torch.Tensor, active: list[_Row]) -> torch.Tensor:
    """Each row's commit rule, on every row at once (``conf`` is ``-inf`` off the candidates and on the padding)."""
    n, dev = conf.shape[1], conf.device
    first = torch.arange(n, device=dev)[None, :]
    rules = [r.cfg.strategy for r in active]
    sel = None
    if "threshold" in rules:  # Fast-dLLM: every c >= tau, and at least the most confident (first on ties)
        tau = torch.tensor([r.cfg.threshold if s == "threshold" else 0.0 for r, s in zip(active, rules)],
                           dtype=conf.dtype, device=dev)
        sel = (cand & (conf >= tau[:, None])) | (first == conf.argmax(1, keepdim=True))
    if "baseline" in rules:  # LLaDA: the top quota of each row; a stable sort keeps argmax's first-on-ties
        k = torch.tensor([r.quota() for r in active], dtype=torch.long, device=dev)
        order = torch.sort(conf, dim=1, descending=True, stable=True).indices
        rank = torch.empty_like(order).scatter_(1, order, first.expand_as(order).contiguous())
        base = rank < k[:, None]
        if sel is None:
            return base
        is_thr = torch.tensor([s == "threshold" for s in rules], device=dev)
        sel = torch.where(is_thr[:, None], sel, base)
    assert sel is not None
    return sel
