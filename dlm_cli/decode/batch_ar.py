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

**Drafts.** Each row keeps its own draft source, as alone: lookup's index, ADED's table, a draft
model's settings. The ``speculative`` rows' draft forwards are the batch's too: the draft model's caches
are one more ragged cache, and each drafted position is one draft forward over every row still
drafting (:meth:`ArBatchEngine._draft_together`), each row with its own length, stop tokens, confidence
stop and draws; a row's draft cache is cut back after its verdict as alone. Not batched (refused with the fix): drafters that read the target's hidden
states (``dflash``) or are dLLMs (``diffuspec``), token trees, PEARL, the compiled static-cache step, and
model families whose cache is not plain (sliding-window layers).
"""

from __future__ import annotations

import time
from typing import Any, Hashable, TYPE_CHECKING

import torch

from ..errors import UsageError
from .rows import RowClock as _RowClock, admit
from .drafts import ModelDraft
from .events import Clock, Done, Draft, Event, Start, Step

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
    if getattr(cfg, "compile", "off") in ("on", "max-autotune"):
        raise UsageError(f"{what}: batched AR decoding runs eagerly over a ragged cache; add --set compile=off")
    from transformers import DynamicCache

    kinds = {type(layer).__name__ for layer in DynamicCache(config=model.net.config).layers}
    if kinds - {"DynamicLayer"}:
        raise UsageError(f"{what}: batched AR decoding needs a model whose KV cache is plain, but "
                         f"{model.info.name}'s has {', '.join(sorted(kinds - {'DynamicLayer'}))} layers (sliding-window "
                         f"attention); drop {what} for this model")


class _Row:
    """One request: its output, draft source and generator, and the AR loop's counters."""

    __slots__ = ("key", "cfg", "o", "source", "gen", "clock", "nfe", "steps", "drafted", "accepted",
                 "drafted_at", "accepted_at", "draft_s", "verify_s", "ttft", "pos", "draft", "q", "t_draft",
                 "together")

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
        self.together = False  # its draft model's forwards are the batch's (ArBatchEngine._draft_together)

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
        if self.together:  # the batch cuts its draft cache (one ragged cache for every drafting row)
            self.source.keep(o.seq, n, k)
        else:
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


class _Ragged:
    """Rows of one transformers ``DynamicCache`` whose columns are valid per row (see the module doc)."""

    def __init__(self, device: torch.device) -> None:
        self.device = device
        self.cache: Any = None
        self.valid: torch.Tensor | None = None  # [B, T]: column t holds row b's keys

    def add(self, cache: Any) -> None:
        """A new last row: ``cache``, a one-row cache whose every column is the row's."""
        layers = _layers(cache)
        P = layers[0].keys.shape[2]
        if self.cache is None or self.valid is None:
            self.cache, self.valid = cache, torch.ones((1, P), dtype=torch.bool, device=self.device)
            return
        T = self.valid.shape[1]
        W = max(T, P)
        for a, b in zip(_layers(self.cache), layers):
            for name in ("keys", "values"):
                x, y = getattr(a, name), getattr(b, name)
                setattr(a, name, torch.cat([_left_pad(x, W - T), _left_pad(y, W - P)], dim=0))
        valid_new = torch.zeros((1, W), dtype=torch.bool, device=self.device)
        valid_new[:, W - P:] = True
        self.valid = torch.cat([_left_pad_mask(self.valid, W - T), valid_new], dim=0)

    def inputs(self, feeds: list[list[int]] | torch.Tensor, lens: list[int], starts: list[int],
               dtype: torch.dtype) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
        """A forward's ``ids [B, n]``, 4-D additive mask, positions and real-query mask for rows feeding
        ``lens[b]`` tokens (``feeds``: per-row lists, or a device tensor ``[B, n]``) from position ``starts[b]``.
        Query i of row b sees the row's valid columns and the new ones up to its own; a padding query sees
        itself only (a query with no key gives NaN, and NaN times a zero weight is still NaN)."""
        assert self.valid is not None
        dev = self.device
        B, T = self.valid.shape
        n = max(1, max(lens))
        if isinstance(feeds, torch.Tensor):
            ids = feeds
        else:
            host = torch.zeros((B, n), dtype=torch.long)
            for b, f in enumerate(feeds):
                if lens[b]:
                    host[b, : lens[b]] = torch.tensor(f[: lens[b]])
            ids = host.to(dev)
        j = torch.arange(n, device=dev)
        real = j[None, :] < torch.tensor(lens, device=dev)[:, None]
        allow_new = ((j[None, :] <= j[:, None])[None] & real[:, None, :]) | torch.eye(n, dtype=torch.bool, device=dev)[None]
        allow = torch.cat([self.valid[:, None, :].expand(B, n, T), allow_new], dim=2)
        mask = torch.zeros(allow.shape, dtype=dtype, device=dev).masked_fill_(~allow, torch.finfo(dtype).min)[:, None]
        pos = (torch.tensor(starts, dtype=torch.long)[:, None] + torch.arange(n)[None, :]).to(dev)
        return ids, mask, pos, real

    def append(self, kept: torch.Tensor) -> None:
        """The columns a forward just wrote: ``kept [B, n]`` says which stay the rows' keys."""
        assert self.valid is not None
        self.valid = torch.cat([self.valid, kept.to(self.device)], dim=1)

    def truncate(self, counts: list[int]) -> None:
        """Row b keeps only its first ``counts[b]`` valid columns (a draft cache cut back after a verdict)."""
        assert self.valid is not None
        upto = torch.tensor(counts, dtype=torch.long, device=self.device)[:, None]
        self.valid = self.valid & (self.valid.long().cumsum(1) <= upto)

    def keep(self, places: list[int]) -> None:
        """Only the rows at ``places``, then squeezed."""
        if not places:
            self.cache = self.valid = None
            return
        assert self.valid is not None
        idx = torch.tensor(places, dtype=torch.long, device=self.device)
        for layer in _layers(self.cache):
            layer.keys = layer.keys.index_select(0, idx)
            layer.values = layer.values.index_select(0, idx)
        self.valid = self.valid.index_select(0, idx)
        self.squeeze()

    def maybe_squeeze(self) -> None:
        assert self.valid is not None
        width = self.valid.shape[1]
        if width > SQUEEZE_MIN and (~self.valid).sum(1).min().item() > SQUEEZE_SHARE * width:
            self.squeeze()

    def squeeze(self) -> None:
        """Each row's valid columns moved to the right end, in order; the columns no row needs are cut."""
        valid = self.valid
        assert valid is not None
        W = int(valid.sum(1).max().item())
        if W == valid.shape[1] and bool(valid.all()):
            return
        B, T = valid.shape
        # The source column of each target column: a stable sort puts invalid columns first, in order.
        order = torch.sort(valid.to(torch.int8), dim=1, stable=True).indices[:, T - W:]  # [B, W]
        self.valid = valid.gather(1, order)
        for layer in _layers(self.cache):
            for name in ("keys", "values"):
                x = getattr(layer, name)
                setattr(layer, name, x.gather(2, order[:, None, :, None].expand(B, x.shape[1], W, x.shape[3])))


class ArBatchEngine:
    """A running batch of AR requests that rows join (at the next step) and leave (when done, or dropped)."""

    def __init__(self, model: ARModel, clock: Clock | None = None, draft: Any = None) -> None:
        self.model, self.draft = model, draft
        self.clock = clock or Clock()
        self.rows: list[_Row] = []
        self.waiting: list[tuple[_Row, list[int]]] = []
        self.target = _Ragged(model.device)  # the target's keys and values, a row per self.rows
        # ``speculative`` rows' draft model caches, one ragged cache in the order of self.drafting
        self.drafting: list[_Row] = []
        self.drafts = _Ragged(draft.device) if draft is not None else None

    @property
    def valid(self) -> torch.Tensor | None:
        return self.target.valid

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
        from . import make_generator
        from .loops.ar import Output
        from ..models.speed import prepare

        strategy, cfg = admit(self, ids, settings)
        source = strategy.factory(self.model, cfg, self.draft)
        if isinstance(source, ModelDraft):  # the draft model's kernels as alone (decode.speed_up)
            prepare(source.model, cfg, len(ids) + cfg.max_new_tokens + 1, static=False)
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
            self.target.add(cache)
            self.rows.append(r)
            src = r.source
            if (type(src) is ModelDraft and self.drafts is not None and src.model is self.draft
                    and _has_keys(src.cache)):
                # From now on its draft forwards are the batch's: its cache joins the draft rows'.
                self.drafts.add(src.cache)
                src.cache = None
                r.together = True
                self.drafting.append(r)
        self.waiting = []

    # -- the step -----------------------------------------------------------------------------

    @torch.inference_mode()
    def _step(self, out: list[tuple[Hashable, Event]]) -> None:
        from .loops.ar import verdict

        rows, model, dev = self.rows, self.model, self.model.device
        assert self.valid is not None
        together = {id(r) for r in self.drafting}
        if self.drafting:
            self._draft_together()
        for r in rows:
            if id(r) not in together:
                r.propose()
        t1 = time.perf_counter()
        B = len(rows)
        ks = [len(r.draft) for r in rows]
        feeds = [[r.o.seq[-1], *r.draft] for r in rows]
        feed, mask, pos, real = self.target.inputs(feeds, [1 + k for k in ks], [r.pos for r in rows], model.net.dtype)
        n = feed.shape[1]
        logits = model.forward_rows(feed, self.target.cache, mask, pos)
        # Greedy rows at once: the accepted run is the draft's agreement with the argmax; sampling rows alone.
        pred = logits.argmax(-1)  # [B, n]
        agree = (pred[:, :-1] == feed[:, 1:]) & real[:, 1:]
        nn = agree.long().cumprod(1).sum(1)
        tok = pred.gather(1, nn[:, None])[:, 0]
        for b, r in enumerate(rows):
            if r.cfg.temperature > 0:
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
        self.target.append(kept)
        if self.drafting:
            assert self.drafts is not None
            self.drafts.truncate([r.source.cached for r in self.drafting])
        if done:
            self._keep([b for b in range(B) if b not in done])
        else:
            self.target.maybe_squeeze()
            if self.drafting:
                assert self.drafts is not None
                self.drafts.maybe_squeeze()

    def _draft_together(self) -> None:
        """Every ``speculative`` row's draft, one draft-model forward per drafted position for all of them,
        each row drafting as :meth:`~.drafts.ModelDraft.run` does alone (its length, its stop tokens, its
        confidence stop, its own draws)."""
        from .sampling import probabilities, sample

        assert self.drafts is not None and self.draft is not None
        rows, ragged, D = self.drafting, self.drafts, self.draft
        t0 = time.perf_counter()
        B = len(rows)
        srcs: list[ModelDraft] = [r.source for r in rows]
        counts = [min(s.length, r.o.room() - 1) for s, r in zip(srcs, rows)]
        feeds = [r.o.seq[s.cached:] if c > 0 else [] for s, r, c in zip(srcs, rows, counts)]
        for s, c in zip(srcs, counts):
            if c > 0:
                s.lengths.append(c)
        tokens: list[list[torch.Tensor]] = [[] for _ in range(B)]
        qs: list[list[torch.Tensor]] = [[] for _ in range(B)]
        host: list[list[int]] = [[] for _ in range(B)]
        watch = [s.settings.draft_confidence > 0 for s in srcs]
        stopped = [False] * B
        last: torch.Tensor | None = None
        it = 0
        while True:
            part = [counts[b] > it and not stopped[b] for b in range(B)]
            if not any(part):
                break
            lens = [(len(feeds[b]) if it == 0 else 1) if part[b] else 0 for b in range(B)]
            fed: list[list[int]] | torch.Tensor = feeds if it == 0 else last[:, None]  # type: ignore[index]
            ids, mask, pos, real = ragged.inputs(fed, lens, [s.cached for s in srcs], D.net.dtype)
            logits = D.forward_rows(ids, ragged.cache, mask, pos)
            ragged.append(real)
            at = torch.tensor([max(n - 1, 0) for n in lens], device=logits.device)
            rowl = logits[torch.arange(B, device=logits.device), at]  # [B, V]: each row's next-token logits
            tok = rowl.argmax(-1)
            confs: list[torch.Tensor | None] = [None] * B
            for b in range(B):
                if not part[b]:
                    continue
                srcs[b].nfe += 1
                srcs[b].cached += lens[b]
                st = srcs[b].settings
                if st.temperature > 0:
                    q = probabilities(rowl[b : b + 1], st)[0]
                    tok[b] = sample(q, rows[b].gen)
                    qs[b].append(q)
                    if watch[b]:
                        confs[b] = q[tok[b]]
                elif watch[b]:
                    r = rowl[b].double()
                    confs[b] = (r[tok[b]] - torch.logsumexp(r, -1)).exp()
                tokens[b].append(tok[b])
            if any(w and p for w, p in zip(watch, part)):  # the confidence stop reads each token on the host
                for b in range(B):
                    if part[b] and watch[b]:
                        t, c = torch.stack([tok[b].double(), confs[b].double()]).tolist()  # type: ignore[union-attr]
                        host[b].append(int(t))
                        if c < srcs[b].settings.draft_confidence or int(t) in srcs[b].stop:
                            stopped[b] = True
            last = tok
            it += 1
        drafted = [torch.stack(t).tolist() if t and not watch[b] else host[b] for b, t in enumerate(tokens)]
        for b, r in enumerate(rows):
            h, q = drafted[b], qs[b]
            if not watch[b]:
                cut = next((i + 1 for i, t in enumerate(h) if t in srcs[b].stop), len(h))
                h, q = h[:cut], q[:cut]
            r.draft = h
            r.q = srcs[b].fit(torch.stack(q)) if q else None
        spent = time.perf_counter() - t0
        for r in rows:  # the draft time, shared evenly
            r.t_draft = spent / B
            r.draft_s += spent / B

    def _keep(self, places: list[int]) -> None:
        """Only the rows at ``places``, their caches squeezed."""
        keep = [self.rows[k] for k in places]
        self.target.keep(places)
        self.rows = keep
        if self.drafting:
            assert self.drafts is not None
            ids = {id(r) for r in keep}
            dplaces = [k for k, r in enumerate(self.drafting) if id(r) in ids]
            self.drafts.keep(dplaces)
            self.drafting = [self.drafting[k] for k in dplaces]


def _has_keys(cache: Any) -> bool:
    layers = getattr(cache, "layers", None)
    return bool(layers) and all(getattr(layer, "is_initialized", False) for layer in layers)


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
