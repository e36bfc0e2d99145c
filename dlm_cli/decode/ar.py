"""The draft sources of the autoregressive strategies: ``ar``, ``speculative``, ``lookup``, ``aded``, ``diffuspec``,
``ead``, ``dflash`` (declared, with their keys, in :mod:`.declared.ar`)."""

from __future__ import annotations

import weakref
from typing import Any, TYPE_CHECKING

from ..errors import DlmError, UsageError
from .drafts import DiffusionDraft, LookupDraft, ModelDraft, NoDraft, TextDraft

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


def mirror(model: ARModel, settings: RunSettings, draft: Any) -> Any:
    from .mirror import MirrorDraft

    checked_draft(draft, "autoregressive",
                  "the mirror strategy needs a draft model: pass --draft MODEL (e.g. --draft dlm-demo-ar-draft with "
                  "-m dlm-demo-ar)",
                  "the draft {name} is a diffusion LLM; mirror needs an autoregressive (causal) draft model")
    if not same_tokenizer(model.tokenizer, draft.tokenizer):
        raise DlmError(f"the draft {draft.info.name} has a different tokenizer from {model.info.name}; mirror needs "
                       "the target's tokenizer (its branches are the target's tokens)")
    return MirrorDraft(draft, model, settings, width(model), stop=tuple(model.eos_ids))


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


def ead(model: ARModel, settings: RunSettings, draft: Any) -> Any:
    if draft is None or getattr(draft, "kind", None) != "autoregressive":
        raise UsageError("the ead strategy switches between a small and a large AR model: pass the small one as "
                         "--draft (e.g. -m dlm-demo-ar --draft dlm-demo-ar-draft)")
    if not same_tokenizer(model.tokenizer, draft.tokenizer):
        raise DlmError(f"the small model {draft.info.name} has a different tokenizer from {model.info.name}; EAD "
                       "hands the sequence from one to the other and needs one tokenizer")
    return draft


def learned(method: str) -> Any:
    """The factory of a learned drafter's strategy: the --draft directory must be a ``method`` drafter of this target."""

    def factory(model: ARModel, settings: RunSettings, draft: Any) -> Any:
        from ..models.drafter import bound_drafter
        from .learned import SOURCES

        bound_drafter(method, model, draft)
        return SOURCES[method](draft, model, settings, width(model), tuple(model.eos_ids))

    return factory


dflash = learned("dflash")
clover = learned("clover")


def ppd(model: ARModel, settings: RunSettings, draft: Any) -> Any:
    from .ppd import bind

    return bind(model, settings, draft)


def hidden_transfer(model: ARModel, settings: RunSettings, draft: Any) -> Any:
    """Hidden Transfer's source: the --draft directory's maps, refused unless they are a hidden-transfer drafter of
    this target."""
    from ..models.drafter import bound_drafter
    from .loops.hidden_transfer import TransferSource

    bound_drafter("hidden-transfer", model, draft)
    return TransferSource(draft, model, settings, tuple(model.eos_ids))
