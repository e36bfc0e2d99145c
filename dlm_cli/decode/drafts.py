"""Draft sources for the AR loop in :mod:`~dlm_cli.decode.loops.ar`: where candidate tokens come from.

A source answers ``propose(seq, room)`` with at most ``room`` draft tokens (a 1-D tensor in the
target's vocabulary) and their draft probabilities ``q`` (``[k, V]``, or None when it has none),
and hears back how many were accepted. ``seq`` is the committed sequence (prompt + output).
"""

from __future__ import annotations

from typing import Any, TYPE_CHECKING

import torch

from ..models.causal import rollback

if TYPE_CHECKING:
    from .keys import RunSettings

EMPTY = torch.empty(0, dtype=torch.long)


class NoDraft:
    """Plain AR decoding: nothing is drafted, every step is one target token."""

    name = "none"

    def __init__(self) -> None:
        self.nfe = 0

    def begin(self, seq: list[int], generator: torch.Generator | None) -> None:
        pass

    def propose(self, seq: list[int], room: int) -> tuple[torch.Tensor, torch.Tensor | None]:
        return EMPTY, None

    def accepted(self, seq: list[int], n: int, k: int) -> None:
        pass

    def stats(self) -> dict[str, Any]:
        return {}


class ModelDraft(NoDraft):
    """A smaller AR model with the target's tokenizer drafts ``draft_length`` tokens, one forward each.

    ``adaptive``: transformers' heuristic draft length, +2 after a fully accepted draft and -1
    (not below 1) otherwise, starting from ``draft_length`` at every generation. ``confidence``: stop
    drafting after a token whose draft probability is below it (0 never stops early). Its cache
    holds the committed sequence but the last token, like the target's; drafting feeds the tokens
    it has not seen, so after a full accept it catches up on two tokens at once. Drafting also stops
    after one of the target's end tokens (``stop``): nothing after it can be committed, so a draft
    token past it would be a wasted draft forward and a wasted verified position.
    """

    name = "draft"

    def __init__(self, draft: Any, settings: RunSettings, width: int, stop: tuple[int, ...] = ()) -> None:
        super().__init__()
        self.model, self.settings, self.width = draft, settings, width
        self.stop = frozenset(stop)
        self.length = settings.draft_length
        self.cache: Any = None
        self.cached = 0
        self.generator: torch.Generator | None = None
        self.lengths: list[int] = []

    def begin(self, seq: list[int], generator: torch.Generator | None) -> None:
        self.cache = self.model.new_cache()
        self.cached = 0
        self.length = self.settings.draft_length
        self.generator = generator

    def run(self, ids: list[int], count: int, stop: set[int] = frozenset(),
            confidence: float | None = None) -> tuple[torch.Tensor, torch.Tensor | None]:
        """Feed ``ids`` (tokens the draft cache lacks) and draft up to ``count`` tokens greedily or by sampling.

        With ``draft_confidence`` each draft token and its probability come to the host together (the
        early stop decides on them); without, the whole draft comes in one transfer at the end and
        is cut after its first ``stop`` token. ``confidence`` overrides ``draft_confidence``.
        """
        from .sampling import probabilities, sample

        s = self.settings
        sampling = s.temperature > 0
        confidence = s.draft_confidence if confidence is None else confidence
        watch = confidence > 0
        feed = torch.tensor(ids, dtype=torch.long, device=self.model.device)
        tokens: list[torch.Tensor] = []
        qs: list[torch.Tensor] = []
        host: list[int] = []
        for _ in range(count):
            logits = self.model.forward(feed, self.cache, keep=1)
            self.nfe += 1
            self.cached += feed.shape[0]
            if sampling:
                q = probabilities(logits, s)[0]
                tok = sample(q, self.generator)
                qs.append(q)
                conf = q[tok] if watch else None
            else:
                tok = logits[0].argmax(-1)
                row = logits[0].double()
                conf = (row[tok] - torch.logsumexp(row, -1)).exp() if watch else None
            tokens.append(tok)
            feed = tok[None]
            if watch:
                t, c = torch.stack([tok.double(), conf.double()]).tolist()
                host.append(int(t))
                if c < confidence or int(t) in stop:
                    break
        if not tokens:
            return EMPTY, None
        if not watch:
            host = torch.stack(tokens).tolist()
            cut = next((i + 1 for i, t in enumerate(host) if t in stop), len(host))
            host, qs = host[:cut], qs[:cut]
        return torch.tensor(host, dtype=torch.long), self.fit(torch.stack(qs)) if qs else None

    def fit(self, q: torch.Tensor) -> torch.Tensor:
        """Draft probabilities over the target's vocabulary (a padded output layer on one side only)."""
        if q.shape[-1] == self.width or not self.width:
            return q
        return q[..., : self.width] if q.shape[-1] > self.width else torch.nn.functional.pad(q, (0, self.width - q.shape[-1]))

    def propose_tree(self, seq: list[int], room: int) -> Any:
        """``tree_width`` branches of ``tree_depth`` tokens: see :func:`~dlm_cli.decode.tree.draft_tree`."""
        from .tree import draft_tree

        return draft_tree(self, seq, room)

    def propose(self, seq: list[int], room: int) -> tuple[torch.Tensor, torch.Tensor | None]:
        count = min(self.length, room)
        if count <= 0:
            return EMPTY, None
        self.lengths.append(count)
        return self.run(seq[self.cached:], count, self.stop)

    def accepted(self, seq: list[int], n: int, k: int) -> None:
        rollback(self.cache, self.keep(seq, n, k))

    def keep(self, seq: list[int], n: int, k: int) -> int:
        """After a verdict: the positions the draft cache keeps (the committed sequence but its last token),
        and the next draft length (``adaptive_draft``); the caller cuts the cache there."""
        self.cached = min(self.cached, len(seq) - 1)
        if self.settings.adaptive_draft and k:
            self.length = self.length + 2 if n == k else max(1, self.length - 1)
        return self.cached

    def stats(self) -> dict[str, Any]:
        return {"mean_draft_length": sum(self.lengths) / len(self.lengths) if self.lengths else 0.0}


class TextDraft(ModelDraft):
    """A draft with another tokenizer (universal assisted decoding, as in transformers).

    The committed text is re-encoded with the draft's tokenizer; the draft's cache keeps the
    longest prefix that still matches. Its draft is decoded to text and encoded with the target's
    tokenizer; the target verifies those tokens as a proposal without probabilities (exact, see
    :func:`~dlm_cli.decode.loops.ar.verify`).
    """

    name = "text"
    propose_tree = None  # the re-encoded draft is one run of the target's tokens: no tree

    def __init__(self, draft: Any, target: Any, settings: RunSettings) -> None:
        super().__init__(draft, settings, 0)
        self.target = target
        self.prompt_len = 0
        self.prefix: list[int] = []
        self.held: list[int] = []  # the draft-vocabulary tokens in the draft cache

    def begin(self, seq: list[int], generator: torch.Generator | None) -> None:
        super().begin(seq, generator)
        self.prompt_len = len(seq)
        text = self.target.tokenizer.decode(seq, skip_special_tokens=False)
        self.prefix = list(self.model.tokenizer.encode(text, add_special_tokens=False))
        self.held = []

    def propose(self, seq: list[int], room: int) -> tuple[torch.Tensor, torch.Tensor | None]:
        count = min(self.length, room)
        if count <= 0:
            return EMPTY, None
        dtok = self.model.tokenizer
        text = self.target.tokenizer.decode(seq[self.prompt_len:], skip_special_tokens=False)
        want = self.prefix + list(dtok.encode(text, add_special_tokens=False)) if text else list(self.prefix)
        same = 0
        for a, b in zip(self.held, want):
            if a != b:
                break
            same += 1
        same = min(same, len(want) - 1)
        rollback(self.cache, same)
        self.cached = same
        tokens, _ = self.run(want[same:], count, stop=set(self.model.eos_ids))
        drafted = tokens.tolist()
        self.held = want + drafted[:-1]
        self.lengths.append(count)
        if drafted and drafted[-1] in self.model.eos_ids:
            drafted = drafted[:-1]
        ids = self.target.tokenizer.encode(dtok.decode(drafted, skip_special_tokens=False), add_special_tokens=False)
        return torch.tensor(ids[:room], dtype=torch.long), None

    def accepted(self, seq: list[int], n: int, k: int) -> None:
        # The draft cache is re-synchronised from the text at the next proposal.
        if self.settings.adaptive_draft and k:
            self.length = self.length + 2 if n == k else max(1, self.length - 1)


class LookupDraft(NoDraft):
    """Input-guided drafting (prompt lookup; Aggressive Decoding, Ge et al. 2022): no draft model.

    The last ``n`` committed tokens, for ``n`` from ``ngram_max`` down to ``ngram_min``, are looked
    up among the earlier n-grams of the prompt and the output; the tokens that followed the most
    recent match are the draft (at most ``draft_length``). With ``realign``, when nothing
    matches because the model just wrote a token of its own (an edit of the input), the n-gram
    before that token is looked up instead and the draft resumes after the token it replaced, as
    Aggressive Decoding re-aligns after an edit. An index of every n-gram's positions grows with
    the sequence, so a lookup costs a few dictionary reads, not a scan.
    """

    name = "lookup"

    def __init__(self, settings: RunSettings, *, ngram_min: int | None = None, realign: bool | None = None) -> None:
        super().__init__()
        self.lo = settings.ngram_min if ngram_min is None else ngram_min
        self.hi, self.most = settings.ngram_max, settings.draft_length
        self.skips = (0, 1) if (settings.realign if realign is None else realign) else (0,)
        self.width = getattr(settings, "tree_width", 1)
        self.depth = getattr(settings, "tree_depth", None)
        self.index: dict[tuple[int, ...], list[int]] = {}
        self.indexed = 0
        self.hits = 0
        self.misses = 0

    def begin(self, seq: list[int], generator: torch.Generator | None) -> None:
        self.index, self.indexed = {}, 0

    def _grow(self, seq: list[int]) -> None:
        # The n-gram ending before position j, continued by seq[j]; j < len(seq) so every match has a continuation.
        for j in range(max(self.indexed, 1), len(seq)):
            for n in range(self.lo, min(self.hi, j) + 1):
                self.index.setdefault(tuple(seq[j - n: j]), []).append(j)
        self.indexed = len(seq)

    def propose(self, seq: list[int], room: int) -> tuple[torch.Tensor, torch.Tensor | None]:
        count = min(self.most, room)
        if count <= 0:
            return EMPTY, None
        self._grow(seq)
        end = len(seq)
        for skip in self.skips:
            for n in range(min(self.hi, end - skip - 1), self.lo - 1, -1):
                for j in reversed(self.index.get(tuple(seq[end - skip - n: end - skip]), ())):
                    if j < end - skip:  # an earlier occurrence, not the looked-up n-gram itself
                        self.hits += 1
                        return torch.tensor(seq[j + skip: j + skip + count], dtype=torch.long), None
        self.misses += 1
        return EMPTY, None

    def propose_tree(self, seq: list[int], room: int) -> Any:
        """Up to ``tree_width`` different continuations, longest n-gram first, latest match first, as one tree.

        Each is what followed one earlier match (at most ``tree_depth`` tokens, default
        ``draft_length``); they share the tree where they agree.
        """
        from .tree import trie

        depth = min(self.depth or self.most, room)
        if depth <= 0:
            return None
        self._grow(seq)
        end = len(seq)
        paths: list[list[int]] = []
        seen: set[tuple[int, ...]] = set()
        for skip in self.skips:
            for n in range(min(self.hi, end - skip - 1), self.lo - 1, -1):
                for j in reversed(self.index.get(tuple(seq[end - skip - n: end - skip]), ())):
                    cont = tuple(seq[j + skip: j + skip + depth])
                    if j < end - skip and cont and cont not in seen:
                        seen.add(cont)
                        paths.append(list(cont))
                        if len(paths) == self.width:
                            break
                if len(paths) == self.width:
                    break
            if paths:  # the realigned lookup only when the plain one found nothing, as in propose()
                break
        if not paths:
            self.misses += 1
            return None
        self.hits += 1
        return trie(paths)

    def stats(self) -> dict[str, Any]:
        return {"lookup_hits": self.hits, "lookup_misses": self.misses}


class ContextNGram:
    """The causal proxy of DiffuSpec's path search: an interpolated 3-gram model of the context so far.

    DiffuSpec fits a KenLM 3-gram on each dataset's training split; dlm has no such corpus at run
    time, so the proxy is fitted on the prompt and the output, and grows with them:
    ``p(w | a, b) = 0.6·c(abw)/c(ab) + 0.3·c(bw)/c(b) + 0.1·(c(w) + 1)/(N + V)``, with the weight
    of an unseen context given to the lower orders.
    """

    def __init__(self, vocab: int) -> None:
        self.vocab = vocab
        self.uni: dict[int, int] = {}
        self.bi: dict[tuple[int, int], int] = {}
        self.tri: dict[tuple[int, int, int], int] = {}
        self.ctx1: dict[int, int] = {}
        self.ctx2: dict[tuple[int, int], int] = {}
        self.seen = 0

    def grow(self, seq: list[int]) -> None:
        for j in range(self.seen, len(seq)):
            w = seq[j]
            self.uni[w] = self.uni.get(w, 0) + 1
            if j >= 1:
                self.bi[(seq[j - 1], w)] = self.bi.get((seq[j - 1], w), 0) + 1
                self.ctx1[seq[j - 1]] = self.ctx1.get(seq[j - 1], 0) + 1
            if j >= 2:
                key = (seq[j - 2], seq[j - 1])
                self.tri[(*key, w)] = self.tri.get((*key, w), 0) + 1
                self.ctx2[key] = self.ctx2.get(key, 0) + 1
        self.seen = len(seq)

    def logp(self, a: int | None, b: int | None, w: int) -> float:
        import math

        uni = (self.uni.get(w, 0) + 1) / (self.seen + self.vocab)
        parts, weights = [], []
        if a is not None and b is not None and self.ctx2.get((a, b)):
            parts.append(self.tri.get((a, b, w), 0) / self.ctx2[(a, b)])
            weights.append(0.6)
        if b is not None and self.ctx1.get(b):
            parts.append(self.bi.get((b, w), 0) / self.ctx1[b])
            weights.append(0.3)
        rest = 1.0 - sum(weights)
        return math.log(sum(p * x for p, x in zip(weights, parts)) + rest * uni)


class DiffusionDraft(NoDraft):
    """DiffuSpec (Li et al., 2025): a dLLM with the target's tokenizer drafts a span in one forward.

    Each round appends ``k`` masks to the committed sequence and runs one dLLM forward (the token
    lattice ``q_i``). The causal-consistency path search keeps, per position, the smallest set of
    top tokens whose probability mass reaches ``cps_mass`` (at most ``cps_candidates``, the end token
    always added), stops the lattice after the first position whose own set holds an end token,
    and beam-searches it (width ``cps_beam``) left to right by ``λ·log q_i + (1 − λ)·log p_ng``,
    ``λ = cps_lambda``, with the n-gram proxy :class:`ContextNGram`. The best path is the draft;
    the target verifies it as any proposal without draft probabilities (greedy: its own greedy
    output; sampling: exact, one-hot ``q``). The next span length is set by DiffuSpec's adaptive
    draft length: EMAs (ρ = 0.5) of the generated length (before the first end token) and of the
    accepted length, ``k ← clip(⌊L̄gen⌋ + δ·[L̄acc ≥ L̄gen], draft_min, draft_length)``, starting at
    ``draft_length``. A block-diffusion drafter keeps an exact prefix KV cache of the committed text.
    """

    name = "diffusion"

    def __init__(self, drafter: Any, settings: RunSettings, width: int, stop: tuple[int, ...]) -> None:
        super().__init__()
        self.model, self.settings, self.width = drafter, settings, width
        self.stop = tuple(stop)
        self.k = settings.draft_length
        self.gen_ema = self.acc_ema = float(settings.draft_length)
        self.cache: Any = None
        self.valid = 0  # drafter cache positions [0, valid) hold final tokens
        self.proxy = ContextNGram(width)
        self.lengths: list[int] = []
        self.last_gen = 0

    def begin(self, seq: list[int], generator: torch.Generator | None) -> None:
        s = self.settings
        self.k, self.gen_ema, self.acc_ema = s.draft_length, float(s.draft_length), float(s.draft_length)
        self.model.begin(len(seq), generator)
        self.cache = self.model.new_cache() if self.model.block_size is not None else None
        self.valid = 0
        self.proxy = ContextNGram(self.width)
        self.proxy.grow(seq)

    def lattice(self, seq: list[int], k: int) -> torch.Tensor:
        """One drafter forward over ``seq`` + ``k`` masks: the probabilities at the masks, ``[k, V]``."""
        m = self.model
        n = len(seq)
        x = torch.full((1, n + k), m.mask_id, dtype=torch.long, device=m.device)
        x[0, :n] = torch.tensor(seq, dtype=torch.long, device=m.device)
        self.nfe += 1
        if self.cache is None:
            logits = m.logits(x, 0, n + k, rows=(n, n + k))[0]
        else:
            logits = m.logits(x, self.valid, n + k, cache=self.cache, rows=(n, n + k))[0]
            self.valid = n // m.block_size * m.block_size  # blocks before the committed text's last are final
            self.cache.truncate(self.valid)
        probs = torch.softmax(logits.float(), -1)
        if probs.shape[1] != self.width:
            probs = probs[:, : self.width] if probs.shape[1] > self.width else torch.nn.functional.pad(
                probs, (0, self.width - probs.shape[1]))
        return probs

    def search(self, seq: list[int], probs: torch.Tensor) -> list[int]:
        """The causal-consistency path search over the lattice: the draft's tokens."""
        import math

        s = self.settings
        top = torch.topk(probs, min(s.cps_candidates, probs.shape[1]), dim=-1)
        # The smallest prefix of each row's top tokens whose mass reaches cps_mass, and the end
        # tokens' own probabilities: one host transfer for the whole lattice.
        keep = (top.values.cumsum(-1) - top.values) < s.cps_mass
        ends = probs[:, list(self.stop)]
        vals, ids, keep, ends = top.values.tolist(), top.indices.tolist(), keep.tolist(), ends.tolist()
        self.last_gen = next((i for i, row in enumerate(ids) if row[0] in self.stop), len(ids))  # L_gen
        eos = set(self.stop)
        sets = []
        for row_v, row_i, row_k, row_e in zip(vals, ids, keep, ends):
            cands = [(t, v) for t, v, ok in zip(row_i, row_v, row_k) if ok]
            natural_end = any(t in eos for t, _ in cands)
            have = {t for t, _ in cands}
            cands += [(e, p) for e, p in zip(self.stop, row_e) if e not in have]
            sets.append(cands)
            if natural_end:
                break
        lam = s.cps_lambda
        beams: list[tuple[float, list[int], bool]] = [(0.0, [], False)]
        for cands in sets:
            grown = []
            for score, path, ended in beams:
                if ended:
                    grown.append((score, path, True))
                    continue
                ctx = seq + path
                a = ctx[-2] if len(ctx) >= 2 else None
                b = ctx[-1] if ctx else None
                for t, q in cands:
                    lq = math.log(max(q, 1e-30))
                    grown.append((score + lam * lq + (1 - lam) * self.proxy.logp(a, b, t), path + [t], t in eos))
            grown.sort(key=lambda g: g[0], reverse=True)
            beams = grown[: s.cps_beam]
        return beams[0][1] if beams else []

    def propose(self, seq: list[int], room: int) -> tuple[torch.Tensor, torch.Tensor | None]:
        k = min(self.k, room)
        if k <= 0:
            return EMPTY, None
        self.proxy.grow(seq)
        path = self.search(seq, self.lattice(seq, k))  # also sets L_gen = min(s_t - 1, k)
        self.lengths.append(len(path))
        return torch.tensor(path, dtype=torch.long), None

    def accepted(self, seq: list[int], n: int, k: int) -> None:
        s, rho = self.settings, 0.5
        self.gen_ema = (1 - rho) * self.gen_ema + rho * self.last_gen
        self.acc_ema = (1 - rho) * self.acc_ema + rho * n
        grow = s.draft_step if self.acc_ema >= self.gen_ema else 0
        self.k = max(s.draft_min, min(s.draft_length, int(self.gen_ema) + grow))

    def stats(self) -> dict[str, Any]:
        return {"mean_draft_length": sum(self.lengths) / len(self.lengths) if self.lengths else 0.0}
