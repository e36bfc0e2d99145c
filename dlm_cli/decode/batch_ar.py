"""Batched AR decoding: ``ar``, ``lookup``, ``aded`` and ``speculative`` rows step together, one target
forward per step.

:class:`ArBatchEngine` has :class:`~.batch.BatchEngine`'s interface (``add``, ``step``, ``drop``,
``refusal``), so ``dlm bench --batch-size``, ``dlm serve --max-batch`` and lm-eval's ``batch_size``
batch an AR model as they batch a dLLM. Every row decodes as the AR loop (:mod:`.loops.ar`) decodes
it alone: its own draft source, its own verdicts, its own repetition stop, NFE and events.

**Ragged rows over one cache.** The rows share one transformers ``DynamicCache`` of ``T`` columns;
a boolean ``valid [B, T]`` says which columns hold a row's keys. A step feeds each row its last
committed token and its draft (``1 + k_r`` tokens; the forward is ``max`` wide, padded on the right)
at ``T`` new columns; each row's queries see its own valid columns and the new ones up to their
own (causal), at the row's own positions (the rotary embedding sees what it sees alone). After the
verdict a row keeps the columns of its committed tokens; its rejected draft tokens and the padding
become invalid columns that no later query attends (holes), so acceptance may differ per row with
no copying. The holes and the left padding are squeezed out when a row leaves, or when they are a
third of the cache (:meth:`ArBatchEngine._squeeze`, one gather per layer).

**Joining.** A new row's first step (its prompt and first draft) runs alone, exactly as the AR loop's
first forward, over its own cache; that cache then joins the batch's, left-padded to a common
length. Rows join between steps (a server's request arrives while others decode).

**Exactness.** Greedy rows give the tokens they give alone (padding changes a logit only by float
rounding); a sampling row draws from its own generator seeded with its seed, in the order it would
alone, so the prompt alone with that seed gives the same output. Each step's verdicts of every row
travel to the host in one transfer.

**Drafts.** Each row keeps its own draft source, as alone: lookup's index, ADED's table, or a draft
model's own cache (``speculative``: the row's draft forwards run one row at a time, the target's verify
forward is the batch's). Not batched (refused with the fix): drafters that read the target's hidden
states (``dflash``) or are dLLMs (``diffuspec``), token trees, PEARL, the compiled static-cache step, and
model families whose cache is not plain (sliding-window layers).
"""

from __future__ import annotations

import time
from typing import Any, Hashable, TYPE_CHECKING

import torch

from ..errors import UsageError
from .events import Clock, Done, Draft, Event, Start, Step
from .keys import STRATEGIES

if TYPE_CHECKING:
    from .keys import RunSettings
    from ..models.protocols import ARModel

STRATEGIES_BATCHED_AR = ("ar", "lookup", "aded", "speculative")
# The cache is squeezed when every row's holes are more than this share of its columns (and it is wider than SQUEEZE_MIN).
SQUEEZE_SHARE = 1 / 3
SQUEEZE_MIN = 48


def check_batchable_ar(model: ARModel, cfg: RunSettings, what: str = "--batch-size") -> None:
    """Refuse, with the fix, what batched AR decoding does not do."""
    if cfg.strategy not in STRATEGIES_BATCHED_AR:
        raise UsageError(f"{what}: batched AR decoding supports the strategies {', '.join(STRATEGIES_BATCHED_AR)} "
                         f", not strategy {cfg.strategy!r}; drop {what} for this profile")
    if (getattr(cfg, "tree_width", 1) or 1) > 1:
        raise UsageError(f"{what}: batched AR decoding verifies one draft run per row, not a token tree; "
                         "add --set tree_width=1")
    if getattr(cfg, "pearl", False):
        raise UsageError(f"{what}: batched AR decoding runs draft and verify in turn, not PEARL's overlap; "
                         "add --set pearl=false")
    if getattr(cfg, "compile", "off") == "on":
        raise UsageError(f"{what}: batched AR decoding runs eagerly over a ragged cache; add --set compile=off")


class _RowClock:
    __slots__ = ("clock", "base")

    def __init__(self, clock: Clock) -> None:
        self.clock, self.base = clock, clock.elapsed()

    def elapsed(self) -> float:
        return self.clock.elapsed() - self.base


class _Row:
    """One request: its output, draft source and generator, and the AR loop's counters."""

    __slots__ = ("key", "cfg", "o", "source", "gen", "clock", "nfe", "steps", "drafted", "accepted",
                 "drafted_at", "accepted_at", "draft_s", "verify_s", "ttft", "pos", "draft", "q", "t_draft")

    def __init__(self, key: Hashable, cfg: RunSettings, o: Any, source: Any, gen: torch.Generator) -> None:
        self.key, self.cfg, self.o, self.source, self.gen = key, cfg, o, source, gen
        self.clock: Any = None
        self.nfe = self.steps = self.drafted = self.accepted = 0
        self.drafted_at: list[int] = []
        self.accepted_at: list[int] = []
        self.draft_s = self.verify_s = 0.0
        self.ttft: float | None = None
        self.pos = 0  # the position of the row's last committed token (the one not yet in the cache)
        self.draft: list[int] = []
        self.q: torch.Tensor | None = None
        self.t_draft = 0.0

    def propose(self) -> None:
        t0 = time.perf_counter()
        draft, q = self.source.propose(self.o.seq, self.o.room() - 1)
        self.draft, self.q = draft.tolist(), q
        self.t_draft = time.perf_counter() - t0
        self.draft_s += self.t_draft

    def settle(self, n: int, token: int, conf: float, t_verify: float) -> list[Event]:
        """Commit the verdict ``(n, token)`` on the row's draft: the events the AR loop yields for the step."""
        from .loops.ar import verify_event

        k, draft, o = len(self.draft), self.draft, self.o
        self.nfe += 1
        self.verify_s += t_verify
        for i in range(k):
            if i == len(self.drafted_at):
                self.drafted_at.append(0)
                self.accepted_at.append(0)
            self.drafted_at[i] += 1
            self.accepted_at[i] += i < n
        self.drafted += k
        self.accepted += n
        position = len(o.out)
        new = o.commit([*draft[:n], token])
        self.source.accepted(o.seq, n, k)
        if self.ttft is None:
            self.ttft = self.clock.elapsed()
        out: list[Event] = []
        if k:
            out.append(Draft(step=self.steps, position=position, tokens=draft, source=self.source.name))
            out.append(verify_event(self.steps, self.nfe, position, new, n, k, draft))
        elif new:
            out.append(Step(step=self.steps, nfe=self.nfe, positions=[position], tokens=new, confidences=[conf]))
        self.steps += 1
        self.pos = len(o.seq) - 1
        return out

    def done(self) -> Done:
        src = self.source
        counts: dict[str, Any] = {"draft_nfe": src.nfe, "verifies": self.steps}
        if src.name != "none":
            counts.update(drafted=self.drafted, accepted=self.accepted, draft_seconds=self.draft_s,
                          verify_seconds=self.verify_s, draft_source=src.name, extra=src.stats(),
                          acceptance_per_position=[a / d for a, d in zip(self.accepted_at, self.drafted_at)])
        return Done(tokens=self.o.out, nfe=self.nfe, steps=self.steps, seconds=self.clock.elapsed(),
                    ttft_seconds=self.ttft, finish_reason=self.o.finish, **counts)


class ArBatchEngine:
    """A running batch of AR requests that rows join (at the next step) and leave (when done, or dropped)."""

    def __init__(self, model: ARModel, clock: Clock | None = None, draft: Any = None) -> None:
        self.model, self.draft = model, draft
        self.clock = clock or Clock()
        self.rows: list[_Row] = []
        self.waiting: list[tuple[_Row, list[int]]] = []
        self.cache: Any = None  # a DynamicCache over the rows (batch dimension = self.rows)
        self.valid: torch.Tensor | None = None  # [B, T]: column t holds row b's keys

    def __len__(self) -> int:
        return len(self.rows) + len(self.waiting)

    def refusal(self, cfg: RunSettings) -> str | None:
        try:
            check_batchable_ar(self.model, cfg, "a batched row")
        except UsageError as exc:
            return str(exc)
        return None

    def add(self, key: Hashable, ids: list[int], settings: Any, seed: int | None = None) -> None:
        """Queue prompt ``ids`` with ``settings``; it joins at the next :meth:`step` (``seed`` replaces the
        settings' seed for the row's draws)."""
        from . import check_fits, make_generator, resolve_seed
        from .loops.ar import Output
        from ..models.speed import prepare

        if not ids:
            raise UsageError("batched decoding needs a prompt of at least one token")
        strategy = STRATEGIES[settings.strategy]
        check_fits(strategy, self.model)
        resolve_seed(settings)
        cfg = settings.frozen()
        why = self.refusal(cfg)
        if why is not None:
            raise UsageError(why)
        prepare(self.model, cfg, len(ids) + cfg.max_new_tokens + 1, static=False)
        assert strategy.factory is not None
        source = strategy.factory(self.model, cfg, self.draft)
        gen = make_generator(self.model.device, cfg.seed if seed is None else seed)
        self.waiting.append((_Row(key, cfg, Output(self.model, ids, cfg), source, gen), list(ids)))

    def drop(self, key: Hashable) -> tuple[int, int] | None:
        """Take row ``key`` out now (between steps); its steps and NFE so far, or None if absent."""
        for k, r in enumerate(self.rows):
            if r.key == key:
                self._keep([j for j in range(len(self.rows)) if j != k])
                return r.steps, r.nfe
        for item in self.waiting:
            if item[0].key == key:
                self.waiting.remove(item)
                return 0, 0
        return None

    def step(self) -> list[tuple[Hashable, Event]]:
        """Let the waiting rows join (each one's first forward), then one forward over every row."""
        self.clock.resume()
        try:
            out: list[tuple[Hashable, Event]] = []
            if self.waiting:
                self._join(out)
            elif self.rows:
                self._step(out)
            return out
        finally:
            self.clock.pause()

    # -- joining ------------------------------------------------------------------------------

    def _join(self, out: list[tuple[Hashable, Event]]) -> None:
        from transformers import DynamicCache

        from .loops.ar import verdict
        from ..models.causal import rollback

        model, dev = self.model, self.model.device
        for r, ids in self.waiting:
            r.clock = _RowClock(self.clock)
            out.append((r.key, Start(kind="autoregressive", prompt_tokens=len(ids), length=r.o.limit)))
            r.source.begin(r.o.seq, r.gen)
            r.propose()
            t1 = time.perf_counter()
            cache = DynamicCache(config=model.net.config)
            k = len(r.draft)
            feed = torch.tensor(ids + r.draft, dtype=torch.long, device=dev)
            logits = model.forward(feed, cache, keep=k + 1)
            q = r.q.to(dev) if r.q is not None else None
            v = verdict(logits, feed[len(ids):], q, r.cfg, r.gen)
            row = logits[0].double()
            conf = (row[v[1]] - torch.logsumexp(row, -1)).exp()
            n, token, c = torch.cat([v.double(), conf[None]]).tolist()
            n, token = int(n), int(token)
            rollback(cache, len(ids) + n)
            out += [(r.key, ev) for ev in r.settle(n, token, c, time.perf_counter() - t1)]
            if r.o.stopped:
                out.append((r.key, r.done()))
                continue
            self._merge(r, cache)
        self.waiting = []

    def _merge(self, r: _Row, cache: Any) -> None:
        """Add row ``r``, whose own cache holds its committed tokens but the last, to the batch."""
        layers = _layers(cache)
        P = layers[0].keys.shape[2]
        dev = self.model.device
        if self.cache is None:
            self.cache, self.valid, self.rows = cache, torch.ones((1, P), dtype=torch.bool, device=dev), [r]
            return
        assert self.valid is not None
        T = self.valid.shape[1]
        W = max(T, P)
        mine = _layers(self.cache)
        for a, b in zip(mine, layers):
            for name in ("keys", "values"):
                x, y = getattr(a, name), getattr(b, name)
                setattr(a, name, torch.cat([_left_pad(x, W - T), _left_pad(y, W - P)], dim=0))
        valid_new = torch.zeros((1, W), dtype=torch.bool, device=dev)
        valid_new[:, W - P:] = True
        self.valid = torch.cat([_left_pad_mask(self.valid, W - T), valid_new], dim=0)
        self.rows.append(r)

    # -- the step -----------------------------------------------------------------------------

    @torch.inference_mode()
    def _step(self, out: list[tuple[Hashable, Event]]) -> None:
        from .loops.ar import verdict

        rows, model, dev = self.rows, self.model, self.model.device
        assert self.valid is not None
        for r in rows:
            r.propose()
        t1 = time.perf_counter()
        B, T = self.valid.shape
        ks = [len(r.draft) for r in rows]
        n = 1 + max(ks)
        feed = torch.zeros((B, n), dtype=torch.long)
        lens = torch.tensor([1 + k for k in ks])
        for b, r in enumerate(rows):
            feed[b, : 1 + ks[b]] = torch.tensor([r.o.seq[-1], *r.draft])
        feed = feed.to(dev)
        pos = torch.tensor([r.pos for r in rows], dtype=torch.long)[:, None] + torch.arange(n)[None, :]
        j = torch.arange(n, device=dev)
        real = (j[None, :] < lens.to(dev)[:, None])  # [B, n]
        # Query i of row b sees the row's valid columns and the new columns up to its own; a padding query
        # sees itself only (a query with no key gives NaN, and NaN times a zero weight is still NaN).
        causal = j[None, :] <= j[:, None]  # [n, n]
        new_keys = causal[None] & real[:, None, :]
        new_keys = new_keys | torch.eye(n, dtype=torch.bool, device=dev)[None]
        old_keys = self.valid[:, None, :].expand(B, n, T)
        allow = torch.cat([old_keys, new_keys], dim=2)
        dtype = model.net.dtype
        mask = torch.zeros(allow.shape, dtype=dtype, device=dev).masked_fill_(~allow, torch.finfo(dtype).min)[:, None]
        logits = model.forward_rows(feed, self.cache, mask, pos.to(dev))
        # Greedy rows at once: the accepted run is the draft's agreement with the argmax; sampling rows alone.
        pred = logits.argmax(-1)  # [B, n]
        drafts = feed[:, 1:]
        agree = (pred[:, :-1] == drafts) & (j[None, : n - 1] < (lens.to(dev)[:, None] - 1))
        nn = agree.long().cumprod(1).sum(1)
        tok = pred.gather(1, nn[:, None])[:, 0]
        sampling = [b for b, r in enumerate(rows) if r.cfg.temperature > 0]
        for b in sampling:
            r = rows[b]
            q = r.q.to(dev) if r.q is not None else None
            v = verdict(logits[b, : 1 + ks[b]], feed[b, 1 : 1 + ks[b]], q, r.cfg, r.gen)
            nn[b], tok[b] = v[0], v[1]
        at = logits.gather(1, nn[:, None, None].expand(B, 1, logits.shape[2]))[:, 0].double()
        conf = (at.gather(1, tok[:, None])[:, 0] - torch.logsumexp(at, -1)).exp()
        verdicts = torch.stack([nn.double(), tok.double(), conf], 1).cpu().tolist()  # the step's one transfer
        t_verify = time.perf_counter() - t1
        kept = torch.zeros((B, n), dtype=torch.bool)
        done: list[int] = []
        for b, r in enumerate(rows):
            nb, token, c = verdicts[b]
            nb = int(nb)
            kept[b, : nb + 1] = True  # the fed last token and the accepted draft; the correction is not fed yet
            out += [(r.key, ev) for ev in r.settle(nb, int(token), c, t_verify)]
            if r.o.stopped:
                out.append((r.key, r.done()))
                done.append(b)
        self.valid = torch.cat([self.valid, kept.to(dev)], dim=1)
        if done:
            self._keep([b for b in range(B) if b not in done])
        elif self.valid.shape[1] > SQUEEZE_MIN and (~self.valid).sum(1).min().item() > SQUEEZE_SHARE * self.valid.shape[1]:
            self._squeeze()

    def _keep(self, places: list[int]) -> None:
        """Only the rows at ``places``, then the cache squeezed."""
        if not places:
            self.rows, self.cache, self.valid = [], None, None
            return
        assert self.valid is not None
        idx = torch.tensor(places, dtype=torch.long, device=self.valid.device)
        for layer in _layers(self.cache):
            layer.keys = layer.keys.index_select(0, idx)
            layer.values = layer.values.index_select(0, idx)
        self.valid = self.valid.index_select(0, idx)
        self.rows = [self.rows[k] for k in places]
        self._squeeze()

    def _squeeze(self) -> None:
        """Each row's valid columns moved to the right end, in order; the columns no row needs are cut."""
        valid = self.valid
        assert valid is not None
        counts = valid.sum(1)
        W = int(counts.max().item())
        if W == valid.shape[1] and bool(valid.all()):
            return
        B, T = valid.shape
        # The source column of each target column: a stable sort puts invalid columns first, in order.
        order = torch.sort(valid.to(torch.int8), dim=1, stable=True).indices[:, T - W:]  # [B, W]
        self.valid = valid.gather(1, order)
        for layer in _layers(self.cache):
            H, D = layer.keys.shape[1], layer.keys.shape[3]
            ix = order[:, None, :, None].expand(B, H, W, D)
            layer.keys = layer.keys.gather(2, ix)
            layer.values = layer.values.gather(2, ix.expand(B, layer.values.shape[1], W, layer.values.shape[3]))


def _layers(cache: Any) -> list[Any]:
    layers = getattr(cache, "layers", None)
    if not layers or any(type(layer).__name__ != "DynamicLayer" for layer in layers):
        raise UsageError("batched AR decoding needs a model whose KV cache is plain (no sliding-window layers); "
                         "drop --batch-size / --max-batch for this model")
    return list(layers)


def _left_pad(x: torch.Tensor, n: int) -> torch.Tensor:
    if n == 0:
        return x
    return torch.cat([x.new_zeros((x.shape[0], x.shape[1], n, x.shape[3])), x], dim=2)


def _left_pad_mask(m: torch.Tensor, n: int) -> torch.Tensor:
    if n == 0:
        return m
    return torch.cat([m.new_zeros((m.shape[0], n)), m], dim=1)
