"""The autoregressive strategies and their keys: ``ar``, ``speculative``, ``lookup``, ``aded``, ``diffuspec``, ``ead``, ``dflash``."""

from __future__ import annotations

import weakref
from typing import Any, TYPE_CHECKING

from ..capabilities import DRAFT_MODEL
from ..errors import DlmError, UsageError
from .drafts import DiffusionDraft, LookupDraft, ModelDraft, NoDraft, TextDraft
from .keys import Conflict, Key, Strategy, at_most, register_strategy

if TYPE_CHECKING:
    from .keys import RunSettings
    from ..models.protocols import ARModel


_SAME: "weakref.WeakKeyDictionary[Any, weakref.WeakKeyDictionary[Any, bool]]" = weakref.WeakKeyDictionary()


def same_tokenizer(a: Any, b: Any) -> bool:
    """Both tokenizers map every token string to the same id (the draft's ids mean the target's tokens).

    Remembered per pair of tokenizer objects: comparing two vocabularies costs about a millisecond
    per 10k tokens, which a bench or a chat would otherwise pay at every generation.
    """
    if a is b:
        return True
    try:
        known = _SAME.setdefault(a, weakref.WeakKeyDictionary())
        if b not in known:
            known[b] = len(a) == len(b) and a.get_vocab() == b.get_vocab()
        return known[b]
    except TypeError:  # an object that cannot be weakly referenced
        return len(a) == len(b) and a.get_vocab() == b.get_vocab()


def width(model: ARModel) -> int:
    return model.token_count or model.vocab_size


def plain(model: ARModel, settings: RunSettings, draft: Any) -> NoDraft:
    return NoDraft()


def checked_draft(draft: Any, kind: str, missing: str, other_kind: str) -> Any:
    """``draft``, refused with ``missing`` when there is none and ``other_kind`` when it is not of ``kind``."""
    if draft is None:
        raise UsageError(missing)
    if getattr(draft, "kind", None) != kind:
        raise UsageError(other_kind.format(name=draft.info.name))
    return draft


def speculative(model: ARModel, settings: RunSettings, draft: Any) -> Any:
    checked_draft(draft, "autoregressive",
                  "the speculative strategy needs a draft model: pass --draft MODEL (e.g. --draft dlm-demo-ar-draft "
                  "with -m dlm-demo-ar), or use -p lookup, which drafts from the input",
                  "the draft {name} is a diffusion LLM; speculative decoding needs an autoregressive (causal) draft model")
    if same_tokenizer(model.tokenizer, draft.tokenizer):
        return ModelDraft(draft, settings, width(model), stop=tuple(model.eos_ids))
    if settings.allow_different_tokenizers:
        if settings.tree_width > 1 or settings.pearl:
            raise UsageError("tree_width > 1 and pearl need a draft with the target's tokenizer; with "
                             "--allow-different-tokenizers set tree_width = 1 and pearl = false")
        return TextDraft(draft, model, settings)
    raise DlmError(f"the draft {draft.info.name} has a different tokenizer from the target {model.info.name} "
                   f"({len(draft.tokenizer)} vs {len(model.tokenizer)} tokens, or other ids); pass "
                   "--allow-different-tokenizers to draft by re-encoding text (exact, usually slower), or "
                   "pick a draft that shares the target's tokenizer")


def diffuspec(model: ARModel, settings: RunSettings, draft: Any) -> DiffusionDraft:
    checked_draft(draft, "diffusion",
                  "the diffuspec strategy drafts with a diffusion LLM: pass --draft DLLM with the target's tokenizer "
                  "(e.g. -m smollm2 --draft smollm2-dlm, or -m dlm-demo-ar --draft dlm-demo)",
                  "diffuspec drafts with a diffusion LLM, but {name} is autoregressive; use -p speculative for an AR "
                  "draft")
    if not same_tokenizer(model.tokenizer, draft.tokenizer):
        raise DlmError(f"the drafter {draft.info.name} has a different tokenizer from {model.info.name}; DiffuSpec "
                       "needs the target's tokenizer")
    return DiffusionDraft(draft, settings, width(model), tuple(model.eos_ids))


def lookup(model: ARModel, settings: RunSettings, draft: Any) -> LookupDraft:
    return LookupDraft(settings)


def aded(model: ARModel, settings: RunSettings, draft: Any) -> Any:
    from .aded import AdedDraft

    return AdedDraft(settings)


TREE_WIDTH = Key("tree_width", int, 1, "draft a token tree of this many branches, all verified in one target "
                 "forward under a tree attention mask (lossless; adaptive_draft and draft_confidence apply to one run "
                 "only); 1: one run, no tree", min=1, max=64)
TREE_DEPTH = Key("tree_depth", int, None, "tokens per branch of a tree (tree_width > 1); default: draft_length",
                 min=1, max=256, optional=True)


register_strategy(Strategy(
    "ar", "autoregressive", "plain AR decoding, one target forward per token: the baseline for speculative and lookup",
    factory=plain, loop="ar"))

register_strategy(Strategy(
    "speculative", "autoregressive",
    "draft with a small model, verify in one target forward (Leviathan et al. 2023): greedy output identical "
    "to the target's, sampling exact by rejection",
    keys=(
        Key("draft_length", int, 4, "draft tokens per verify step (the start value when adaptive_draft)", min=1,
            max=64, old=("gamma",)),
        Key("adaptive_draft", bool, True, "transformers' heuristic: draft_length +2 after a fully accepted draft, "
            "-1 otherwise; reset for every generation", old=("adaptive_gamma",)),
        Key("draft_confidence", float, 0.6, "stop drafting after a token the draft gives less than this "
            "probability; 0 never stops early", min=0.0, max=1.0),
        Key("allow_different_tokenizers", bool, False, "let a draft with another tokenizer work by re-encoding "
            "text (universal assisted decoding); also --allow-different-tokenizers"),
        TREE_WIDTH, TREE_DEPTH,
        Key("pearl", bool, False, "PEARL's schedule (Liu et al. 2025): verify the first draft token before the "
            "rest (pre-verify) and keep drafting the next draft_length tokens before a verify (post-verify); "
            "on one device a schedule, not concurrency; draft_confidence and adaptive_draft do not apply"),
    ),
    factory=speculative, loop="ar", needs=(DRAFT_MODEL,), drafts=True,
    conflicts=(Conflict(lambda v: bool(v.get("pearl")) and v.get("tree_width", 1) > 1,
                        "pearl = true drafts one run per window; set tree_width = 1 or pearl = false"),)))

register_strategy(Strategy(
    "lookup", "autoregressive",
    "input-guided drafting (prompt lookup, Aggressive Decoding): the draft is what followed the last n-gram's "
    "latest earlier match in the prompt or the output; no draft model",
    keys=(
        Key("ngram_max", int, 3, "longest n-gram looked up (tried first)", min=1, max=32),
        Key("ngram_min", int, 1, "shortest n-gram looked up", min=1, max=32),
        Key("draft_length", int, 15, "most tokens proposed per verify step", min=1, max=256,
            old=("num_draft_tokens",)),
        Key("realign", bool, True, "when the last n-gram has no match (the model just edited the input), "
            "resume the draft after the token it replaced (Aggressive Decoding)"),
        TREE_WIDTH, TREE_DEPTH,
    ),
    factory=lookup, loop="ar", drafts=True, conflicts=(at_most("ngram_min", "ngram_max"),)))

register_strategy(Strategy(
    "aded", "autoregressive",
    "ADED (adaptive draft-verification): a tri-gram table built from the prompt and updated from the output, "
    "an MCTS over it drafts a tree of paths; no draft model; greedy output identical to ar",
    keys=(
        Key("draft_length", int, 4, "depth of the search: tokens per path before ADED's one-token greedy "
            "extension", min=1, max=64),
        Key("aded_iterations", int, 150, "MCTS iterations per draft", min=1, max=100000),
        Key("aded_top_k", int, 24, "successors a search node expands to", min=1, max=1024),
        Key("tree_width", int, 1, "paths taken from the search, by visit count, as one token tree (the paper: 24); "
            "1: the most visited path, no tree", min=1, max=256),
        Key("tree_nodes", int, 64, "at most this many tree nodes (ADED's max_num_draft); lowest-visit paths "
            "dropped first", min=1, max=1024),
    ),
    factory=aded, loop="ar"))

register_strategy(Strategy(
    "diffuspec", "autoregressive",
    "DiffuSpec: a dLLM with the target's tokenizer drafts a span in one forward, a causal-consistency path "
    "search over its top-k lattice picks the draft, the AR target verifies it (greedy: identical to ar)",
    keys=(
        Key("draft_length", int, 30, "the longest span drafted (k_max, also the first span)", min=1, max=256),
        Key("draft_min", int, 20, "the shortest span the adaptive draft length sets (k_min)", min=1, max=256),
        Key("draft_step", int, 10, "the adaptive length's step δ when acceptance keeps up", min=0, max=256),
        Key("cps_mass", float, 0.8, "a position's candidates: its top tokens until their mass reaches this",
            min=0.0, max=1.0, min_open=True),
        Key("cps_candidates", int, 15, "at most this many candidates per position (the end token added)",
            min=1, max=256),
        Key("cps_beam", int, 3, "beam width of the path search", min=1, max=64),
        Key("cps_lambda", float, 0.5, "weight of the drafter's log-probability against the n-gram proxy's",
            min=0.0, max=1.0),
    ),
    factory=diffuspec, loop="ar", needs=(DRAFT_MODEL,), drafts=True, conflicts=(at_most("draft_min", "draft_length"),)))


def ead(model: ARModel, settings: RunSettings, draft: Any) -> Any:
    if draft is None or getattr(draft, "kind", None) != "autoregressive":
        raise UsageError("the ead strategy switches between a small and a large AR model: pass the small one as "
                         "--draft (e.g. -m dlm-demo-ar --draft dlm-demo-ar-draft)")
    if not same_tokenizer(model.tokenizer, draft.tokenizer):
        raise DlmError(f"the small model {draft.info.name} has a different tokenizer from {model.info.name}; EAD "
                       "hands the sequence from one to the other and needs one tokenizer")
    return draft


register_strategy(Strategy(
    "ead", "autoregressive",
    "EAD (entropy adaptive decoding): the small model (--draft) writes while the rolling entropy stays low, the "
    "large one (-m) while it is high; lossy",
    keys=(
        Key("ead_threshold", float, 2.0, "switch to the large model while the rolling entropy (bits) is above "
            "this", min=0.0),
        Key("ead_window", int, 5, "tokens in the rolling entropy average", min=1, max=1024),
        Key("ead_min_run", int, 4, "tokens a model writes before a switch (dlm's reading of the stability "
            "constraint)", min=1, max=4096),
    ),
    factory=ead, loop="ead", needs=(DRAFT_MODEL,)))


def learned(method: str) -> Any:
    """The factory of a learned drafter's strategy: the --draft directory must be a ``method`` drafter of this target."""

    def factory(model: ARModel, settings: RunSettings, draft: Any) -> Any:
        from ..models.drafter import check_target

        if draft is None or getattr(draft, "kind", None) != "drafter":
            what = "no --draft" if draft is None else f"--draft {draft.info.name}, which is not a learned drafter"
            raise UsageError(f"the {method} strategy drafts with a learned drafter, but the run has {what}; train one "
                             f"with `dlm drafter train -m {model.info.name} --method {method} --out DIR` and pass "
                             "--draft DIR")
        if draft.method != method:
            raise UsageError(f"the drafter {draft.info.name} is a {draft.method} drafter; use -p {draft.method} with it")
        check_target(draft, model)
        if draft.device != model.device:
            draft.net.to(model.device)
        from .learned import DFlashDraft

        return DFlashDraft(draft, model, settings, width(model), tuple(model.eos_ids))

    return factory


register_strategy(Strategy(
    "dflash", "autoregressive",
    "DFlash (Chen et al. 2026): a learned block-diffusion drafter (--draft DIR from dlm drafter train) reads the "
    "target's hidden states from the verify forward and drafts a block in one forward; greedy output identical "
    "to ar, sampling exact",
    keys=(
        Key("draft_length", int, None, "draft tokens per verify step; default and most: the drafter's block size "
            "- 1", min=1, max=256, optional=True),
        TREE_WIDTH, TREE_DEPTH,
    ),
    factory=learned("dflash"), loop="ar", needs=(DRAFT_MODEL,), drafts=True))
