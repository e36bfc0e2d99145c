"""Batched dLLM decoding: B prompts step together, one forward per step, each row its own run.

``run_batch(model, prompts, settings)`` decodes every prompt as :func:`~dlm_cli.decode.run` would
decode it alone (:mod:`.loops.blocks`: blocks outer, steps inner, a commit rule per step) and yields
``(row, event)``: each row's own Start, Steps and Done, its positions relative to its own generation.

The batch is one canvas tensor ``[B, W]``, the prompts left-padded to the longest, so every row's
generation starts at the same column. Padding changes no row's logits beyond float rounding: each
row runs at its own positions (its column minus its padding: the rotary embedding sees what it sees
alone), no real query attends a padding key, and padding queries attend only padding keys (a query
with no key would give NaN, and NaN values times zero weights would reach real rows). A block-diffusion
model's block-causal mask is cut on each row's own grid.

Each row keeps its own :class:`~.canvas.BlockCanvas` over a view of its part of the batch canvas:
its committed slots, its block, its EoTP end, its repetition stop, its NFE (its own steps: a row's
events equal its batch-1 events) and its Done. Rows step at their own pace: at a forward one row may
be in its third block and another in its first; the forward's logits are gathered at each row's own
block. A step's commits of every row travel to the host in one transfer. A row that finishes leaves
the batch at once (the canvas is compacted, and the padding columns no row needs any more are cut),
so the batch's forwards are the most steps any row takes.

Supported: the strategies ``threshold`` (confidence rank) and ``baseline`` (low-confidence remasking)
on dlm's own dLLM stacks (:class:`~dlm_cli.models.stack.DenoiserStack`), with ``cache = "none"``, or,
for block-diffusion models, their exact prefix/dual cache (:mod:`.batch_cache`).
With ``temperature > 0`` row ``i`` draws from its own generator seeded ``seed + i``: prompt ``i``
alone with that seed gives the same output.
"""

from __future__ import annotations

from typing import Any, Iterator, TYPE_CHECKING

import numpy as np
import torch

from ..errors import UsageError
from .canvas import BlockCanvas
from .events import Clock, Event, timed
from .keys import STRATEGIES
from .rules.base import Scheduled
from .sampling import make_sampler, propose, wide_dtype

if TYPE_CHECKING:
    from .keys import RunSettings
    from ..models.protocols import DLLM

STRATEGIES_BATCHED = ("threshold", "baseline")


def check_batchable(model: DLLM, cfg: RunSettings, what: str = "--batch-size") -> None:
    """Refuse, with the fix, what batched decoding does not do yet."""
    from ..models.stack import DenoiserStack

    if cfg.strategy not in STRATEGIES_BATCHED:
        raise UsageError(f"{what}: batched decoding supports the strategies {' and '.join(STRATEGIES_BATCHED)} "
                         f"(profiles quality, and speedy with --set cache=none), not strategy {cfg.strategy!r}; "
                         f"drop {what} for this profile")
    if model.kind != "diffusion" or not isinstance(model.net, DenoiserStack):
        raise UsageError(f"{what}: batched decoding needs one of dlm's own dLLM networks (LLaDA, Dream, SDAR, "
                         f"Fast-dLLM v2, dlm adapters); {model.info.name} is not one; drop {what}")
    if cfg.cache != "none" and not model.block_size:
        raise UsageError(f"{what}: batched decoding keeps a KV cache only for block-diffusion models (where it is "
                         f"exact), but the profile says cache = {cfg.cache!r}; add --set cache=none")
    if cfg.lookup:
        raise UsageError(f"{what}: batched decoding has no input-guided commits yet; drop lookup=true")
    if getattr(cfg, "rank", "confidence") != "confidence":
        raise UsageError(f"{what}: batched decoding ranks by confidence only, not {cfg.rank!r}; drop rank")
    if getattr(cfg, "remasking", "low_confidence") != "low_confidence":
        raise UsageError(f"{what}: batched decoding has no random remasking; drop remasking")


class _Row:
    """One request of the batch: its canvas, its place (block ``b`` = ``[bs, be)``, step ``i``), its NFE."""

    __slots__ = ("index", "c", "off", "b", "bs", "be", "i", "quotas", "remaining", "nfe", "generator", "exact",
                 "sampler")

    def __init__(self, index: int, c: BlockCanvas, off: int, generator: torch.Generator | None, cfg: RunSettings) -> None:
        self.index, self.c, self.off, self.generator = index, c, off, generator
        self.sampler = make_sampler(cfg, generator, c.mask_id)  # the row's own draws
        self.b, self.bs, self.be, self.i, self.nfe, self.remaining = 0, c.prompt, c.prompt, 0, 0, 0
        self.quotas: list[int] = []
        self.exact = 0  # with a cache: the row's keys and values are final for positions [0, exact)

    def enter(self, bs: int, rule: Any) -> bool:
        """Move to the first block at or after ``bs`` with masks left (counting skipped blocks, as the
        block driver does); False when none is left."""
        c = self.c
        while bs < c.end:
            be = c.next_block(bs)
            remaining = c.masked(bs, be)
            if remaining:
                self.bs, self.be, self.i, self.remaining = bs, be, 0, remaining
                self.quotas = rule.quotas(remaining, be - bs, c.slots) if isinstance(rule, Scheduled) else []
                return True
            bs, self.b = be, self.b + 1
        return False

    def quota(self) -> int:
        return self.quotas[self.i] if self.i < len(self.quotas) else self.remaining


def run_batch(model: DLLM, prompts: list[list[int]], settings: RunSettings) -> Iterator[tuple[int, Event]]:
    """Decode every prompt of ``prompts`` in one batch; yields ``(row, event)``, each row's events in order."""
    from . import check_fits, resolve_seed
    from ..models.speed import prepare

    if not prompts or any(len(p) == 0 for p in prompts):
        raise UsageError("batched decoding needs at least one prompt, and no empty prompt")
    strategy = STRATEGIES[settings.strategy]
    check_fits(strategy, model)
    resolve_seed(settings)
    cfg = settings.frozen()
    check_batchable(model, cfg)
    # Quantization applies as for one run; the batch's forwards run eagerly (their shapes change per step).
    prepare(model, cfg, max(map(len, prompts)) + cfg.max_new_tokens + 1, static=False)
    rule = strategy.factory(cfg)
    clock = Clock()
    return timed(_loop(model, prompts, cfg, rule, clock), clock)


def _loop(model: DLLM, prompts: list[list[int]], cfg: RunSettings, rule: Any, clock: Clock) -> Iterator[tuple[int, Event]]:
    from . import make_generator

    dev, mask_id, G = model.device, model.mask_id, cfg.max_new_tokens
    top = max(map(len, prompts))
    W = top + G
    # The last column is a trash slot: a step's padded rows (a row whose block is narrower) write there.
    X = torch.full((len(prompts), W + 1), mask_id, dtype=torch.long, device=dev)
    rows: list[_Row] = []
    for i, ids in enumerate(prompts):
        model.begin(len(ids), None)
        off = top - len(ids)
        c = BlockCanvas(model, ids, cfg, clock, x=X[i : i + 1, off : off + len(ids) + G])
        gen = make_generator(dev, cfg.seed + i) if cfg.temperature > 0 else None
        rows.append(_Row(i, c, off, gen, cfg))
        yield i, c.start()
    cache = None
    if cfg.cache != "none":  # block-diffusion models only (check_batchable): the exact prefix cache
        from .batch_cache import RowsCache

        cache = RowsCache(max(-(-(len(p) + G) // model.block_size) * model.block_size for p in prompts))
    neg_inf = torch.full((), -torch.inf, dtype=rows[0].c.wide, device=dev)
    eos = rows[0].c.eos
    active = []
    for r in rows:
        if r.enter(r.c.prompt, rule):
            active.append(r)
        else:
            yield r.index, r.c.done(0, blocks=r.b, cache=cfg.cache, refreshes=0, edits=0)
    if len(active) < len(rows):
        X, W = _compact(X, active, [r.index for r in active], W)
        if cache is not None:
            cache.keep([r.index for r in active])
    while active:
        # Each row's block, as columns of the batch canvas; a narrower block is padded with the trash column.
        n = max(r.be - r.bs for r in active)
        cols = np.full((len(active), n), W, dtype=np.int64)
        for k, r in enumerate(active):
            cols[k, : r.be - r.bs] = np.arange(r.off + r.bs, r.off + r.be)
        cols_t = torch.from_numpy(cols).to(dev)
        logits = _forward(model, X, W, cache, active, cols_t)
        tok = X.gather(1, cols_t)
        cand = (tok == mask_id) & (cols_t < W)
        x0, prob = _propose(logits, active, cfg, mask_id)
        conf = torch.where(cand, prob, neg_inf)
        sel = _select(cfg, conf, cand, active) & cand
        if cfg.eotp:  # Learn2PD: nothing after the first end token a row writes is committed this step
            hit = (sel & torch.isin(x0, eos)).long()
            sel = sel & ((torch.cumsum(hit, 1) - hit) == 0)
        X.scatter_(1, cols_t, torch.where(sel, x0, tok))
        packed = torch.stack([sel, torch.zeros_like(sel), x0, conf]).to(rows[0].c.wide)
        packed = packed.cpu().numpy()  # the step's one host transfer, every row's commits together
        left, places = [], []
        for k, r in enumerate(active):
            r.nfe += 1
            yield r.index, r.c.absorb(r.bs, packed[:, k, : r.be - r.bs], nfe=r.nfe, block=r.b)
            r.remaining = r.c.masked(r.bs, r.be)
            r.i += 1
            if r.remaining == 0:
                r.b += 1
                if not r.enter(r.be, rule):
                    yield r.index, r.c.done(r.nfe, blocks=r.b, cache=cfg.cache, refreshes=0, edits=r.c.edits)
                    continue
            left.append(r)
            places.append(k)
        if len(left) < len(active):
            X, W = _compact(X, left, places, W)
            if cache is not None:
                cache.keep(places)
        active = left


def _forward(model: DLLM, X: torch.Tensor, W: int, cache: Any, active: list[_Row], cols: torch.Tensor) -> torch.Tensor:
    """The step's one forward: each row's cached window, or (no cache) the canvas up to what the rows need."""
    if cache is not None:
        from .batch_cache import cached_logits

        return cached_logits(model, X, W, cache, active, cols)
    end = W
    if model.block_size:  # block-causal: a row's forward needs only its block's model block and before
        end = max(r.off + -(-r.be // model.block_size) * model.block_size for r in active)
    offs = torch.tensor([r.off for r in active], dtype=torch.long, device=X.device)
    return batch_logits(model, X, W, end, offs, cols)


def _compact(X: torch.Tensor, keep: list[_Row], places: list[int], W: int) -> tuple[torch.Tensor, int]:
    """The batch canvas of the rows ``keep`` only (at rows ``places`` of ``X``), without the padding columns
    none of them needs; each row's canvas view is moved onto it. Returns the canvas and its real width."""
    cut = min((r.off for r in keep), default=0)
    out = X.index_select(0, torch.tensor(places, dtype=torch.long, device=X.device))[:, cut:].contiguous()
    for k, r in enumerate(keep):
        r.off -= cut
        r.c.x = out[k : k + 1, r.off : r.off + r.c.length]
    return out, W - cut


@torch.inference_mode()
def batch_logits(model: DLLM, X: torch.Tensor, W: int, end: int, offs: torch.Tensor, cols: torch.Tensor) -> torch.Tensor:
    """Logits ``[B, n, V]`` predicting the tokens at columns ``cols`` ``[B, n]`` from a forward over columns
    ``[0, end)`` of the batch canvas ``X`` (``W`` real columns; past them, masks as :meth:`Denoiser.logits`
    pads a block-diffusion window), each row at its own positions (column minus its padding ``offs``)."""
    B, dev = X.shape[0], X.device
    ids = X[:, : min(end, W)]
    if end > W:
        ids = torch.cat([ids, torch.full((B, end - W), model.mask_id, dtype=X.dtype, device=dev)], dim=1)
    pos = torch.arange(end, device=dev)[None, :] - offs[:, None]
    real = pos >= 0
    if model.block_size:
        blk = torch.where(real, pos // model.block_size, -1)
        allow = (blk[:, None, :] <= blk[:, :, None]) & real[:, None, :]
    else:
        allow = real[:, None, :].expand(B, end, end)
    allow = allow | (~real[:, :, None] & ~real[:, None, :])
    pred = (cols - 1 if model.shift else cols).clamp(0, end - 1)  # shift: the output at i - 1 predicts i
    out = model.net(ids, positions=pos.clamp_min(0), mask=allow, rows=pred)
    return out if model.token_count is None else out[..., : model.token_count]


def _propose(logits: torch.Tensor, active: list[_Row], cfg: RunSettings, mask_id: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Each row's candidates and confidences: greedy for the whole batch at once; sampled row by row,
    each from its own generator with the draws of its own block's shape (as alone)."""
    if cfg.temperature == 0:
        return propose(logits, exclude=mask_id)
    x0 = torch.zeros(logits.shape[:2], dtype=torch.long, device=logits.device)
    prob = torch.zeros(logits.shape[:2], dtype=wide_dtype(logits.device),
                       device=logits.device)
    for k, r in enumerate(active):
        w = r.be - r.bs
        x0[k, :w], prob[k, :w] = r.sampler(logits[k, :w])
    return x0, prob


def _select(cfg: RunSettings, conf: torch.Tensor, cand: torch.Tensor, active: list[_Row]) -> torch.Tensor:
    """The commit rule on every row at once (``conf`` is ``-inf`` off the candidates and on the padding)."""
    n = conf.shape[1]
    first = torch.arange(n, device=conf.device)[None, :]
    if cfg.strategy == "threshold":  # Fast-dLLM: every c >= tau, and at least the most confident (first on ties)
        return (cand & (conf >= cfg.threshold)) | (first == conf.argmax(1, keepdim=True))
    # baseline (LLaDA): the top quota of each row; a stable sort keeps argmax's first-on-ties for one per step
    k = torch.tensor([r.quota() for r in active], dtype=torch.long, device=conf.device)
    order = torch.sort(conf, dim=1, descending=True, stable=True).indices
    rank = torch.empty_like(order).scatter_(1, order, first.expand_as(order).contiguous())
    return rank < k[:, None]
