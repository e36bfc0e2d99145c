"""What a loaded model offers, by name: models declare capabilities, strategies declare needs.

A model's ``capabilities`` (a frozenset of the names below) follow from how it attends and what its
wrapper can run, never from its family's name; a :class:`~dlm_cli.decode.keys.Strategy` lists the
ones it ``needs``. :func:`missing` is the one check (run by the session before a model decodes, and
by ``decode.run`` for callers of the library), so a new family is one file that declares what it
offers, and a new strategy one file that declares what it needs.
"""

from __future__ import annotations

from typing import Iterable

BLOCK_CACHE = "block-cache"  # block-causal attention: an exact KV cache of the committed blocks
AR_AT_BLOCK_1 = "ar-at-block-1"  # run at block size 1 it is an AR model (verifies its own drafts)
BIDIRECTIONAL = "bidirectional"  # every position sees every other: LLaDA's likelihood estimate applies
PRUNED_FORWARD = "pruned-forward"  # dlm's own layer stack: a forward over a subset of positions
CANVAS_BATCH = "canvas-batch"  # several canvases (a batch) in one forward
LAYER_REFRESH = "layer-refresh"  # a forward that restarts from a stored layer input (Elastic-Cache)
RAGGED_BATCH = "ragged-batch"  # a batch of canvases of different lengths: per-row positions, masks and cache
NATIVE_SAMPLER = "native-sampler"  # the family's own sampler (uniform noise, self-conditioning)

# What each capability means, in the words of a refusal: "needs a model that ...".
DESCRIBE = {
    BLOCK_CACHE: "attends block-causally, so its committed blocks have an exact KV cache (SDAR, Fast-dLLM v2, "
                 "LLaDA2, dlm's block adapters such as smollm2-dlm)",
    AR_AT_BLOCK_1: "is an AR model when run at block size 1 (SDAR, Fast-dLLM v2, dlm's block adapters)",
    BIDIRECTIONAL: "is fully bidirectional (LLaDA, Dream, LLaDA-MoE)",
    PRUNED_FORWARD: "runs on dlm's own layer stack, whose forward can skip positions (LLaDA, Dream)",
    CANVAS_BATCH: "can run a batch of canvases in one forward (every dLLM but DiffusionGemma)",
    LAYER_REFRESH: "can rerun its upper layers from a stored layer input (Elastic-Cache's layer-wise refresh: "
                   "dlm's own layer stacks)",
    RAGGED_BATCH: "runs canvases of different lengths in one forward, each row at its own positions under its own "
                  "attention mask and KV cache (dlm's own layer stacks: LLaDA, Dream, SDAR, Fast-dLLM v2, LLaDA2, "
                  "LLaDA-MoE, dlm's adapters)",
    NATIVE_SAMPLER: "has a sampler of its own (DiffusionGemma)",
}

# Needs a strategy can have that are not the model's: they concern the run.
DRAFT_MODEL = "draft-model"  # a separate AR draft model (--draft)


def missing(needs: Iterable[str], offered: Iterable[str]) -> list[str]:
    """The model capabilities among ``needs`` that ``offered`` lacks (run needs such as a draft excluded)."""
    have = set(offered)
    return [n for n in needs if n in DESCRIBE and n not in have]


def describe(names: Iterable[str]) -> str:
    """``a model that ... and ...`` for a refusal."""
    return "a model that " + " and ".join(DESCRIBE[n] for n in names)
