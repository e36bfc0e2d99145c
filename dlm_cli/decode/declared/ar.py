"""The autoregressive strategies and their keys: ``ar``, ``speculative``, ``lookup``, ``aded``, ``diffuspec``,
``ead``, ``dflash``, ``mirror`` (their draft sources: :mod:`dlm_cli.decode.ar`)."""

from __future__ import annotations

from ...capabilities import DRAFT_MODEL
from ..keys import Conflict, Key, Strategy, at_most, register_strategy

TREE_WIDTH = Key("tree_width", int, 1, "draft a token tree of this many branches, all verified in one target "
                 "forward under a tree attention mask (lossless; adaptive_draft and draft_confidence apply to one run "
                 "only); 1: one run, no tree", min=1, max=64)

TREE_DEPTH = Key("tree_depth", int, None, "tokens per branch of a tree (tree_width > 1); default: draft_length",
                 min=1, max=256, optional=True)

register_strategy(Strategy(
    "ar", "autoregressive", "plain AR decoding, one target forward per token: the baseline for speculative and lookup",
    impl="dlm_cli.decode.ar:plain", loop="ar"))

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
    impl="dlm_cli.decode.ar:speculative", loop="ar", needs=(DRAFT_MODEL,), drafts=True,
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
    impl="dlm_cli.decode.ar:lookup", loop="ar", drafts=True, conflicts=(at_most("ngram_min", "ngram_max"),)))

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
    impl="dlm_cli.decode.ar:aded", loop="ar"))

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
    impl="dlm_cli.decode.ar:diffuspec", loop="ar", needs=(DRAFT_MODEL,), drafts=True, conflicts=(at_most("draft_min", "draft_length"),)))

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
    impl="dlm_cli.decode.ar:ead", loop="ead", needs=(DRAFT_MODEL,)))

LOOKUP_TREE = Conflict(lambda v: bool(v.get("with_lookup")) and v.get("tree_width", 1) < 2,
                       "with_lookup = true puts prompt lookup's draft in the token tree as a second branch; "
                       "add --set tree_width=2 (or more)")

register_strategy(Strategy(
    "dflash", "autoregressive",
    "DFlash (Chen et al. 2026): a learned block-diffusion drafter (--draft DIR from dlm drafter train) reads the "
    "target's hidden states from the verify forward and drafts a block in one forward; greedy output identical "
    "to ar, sampling exact",
    keys=(
        Key("draft_length", int, None, "draft tokens per verify step; default and most: the drafter's block size "
            "- 1", min=1, max=256, optional=True),
        TREE_WIDTH, TREE_DEPTH,
        Key("with_lookup", bool, False, "the token tree (tree_width >= 2) also holds prompt lookup's draft (n-grams "
            "3 to 1 of the prompt and output, 15 tokens) as its second branch: the learned drafter for new text, "
            "lookup for copied text"),
    ),
    impl="dlm_cli.decode.ar:dflash", loop="ar", needs=(DRAFT_MODEL,), drafts=True, hidden=True,
    conflicts=(LOOKUP_TREE,)))

register_strategy(Strategy(
    "clover", "autoregressive",
    "Clover (Xiao et al. 2024; Clover-2's architecture): learned regressive draft heads (--draft DIR from dlm "
    "drafter train --method clover) over the target's last hidden state from the verify forward, each head fed "
    "the token the one before proposed; greedy output identical to ar, sampling exact",
    keys=(
        Key("draft_length", int, None, "draft tokens per verify step; default and most: the drafter's heads",
            min=1, max=256, optional=True),
        TREE_WIDTH, TREE_DEPTH,
        Key("with_lookup", bool, False, "the token tree (tree_width >= 2) also holds prompt lookup's draft (n-grams "
            "3 to 1 of the prompt and output, 15 tokens) as its second branch: the learned drafter for new text, "
            "lookup for copied text"),
    ),
    impl="dlm_cli.decode.ar:clover", loop="ar", needs=(DRAFT_MODEL,), drafts=True, hidden=True,
    conflicts=(LOOKUP_TREE,)))

register_strategy(Strategy(
    "mirror", "autoregressive",
    "Mirror speculative decoding's schedule (Apple 2025), on one device: speculative decoding with a fixed "
    "draft window whose verify forward also exits early at a middle layer; a correction among the early exit's "
    "top-k would have had its next window drafted during the verify (a branch reused), otherwise the draft runs "
    "after it (a fallback). Output identical to speculative's (greedy: to ar's); the reuse rate is measured and "
    "the two-device time projected, never claimed",
    keys=(
        Key("draft_length", int, 4, "draft tokens per window (gamma)", min=1, max=64),
        Key("mirror_exit_layer", int, None, "the target layer whose output the early exit reads (1 to the depth); "
            "default: half the target's depth", min=1, max=1024, optional=True),
        Key("mirror_topk", int, 8, "candidates per depth the early exit sends to the draft (kappa)", min=1, max=256),
    ),
    impl="dlm_cli.decode.ar:mirror", loop="ar", needs=(DRAFT_MODEL,), drafts=True, hidden=True))

register_strategy(Strategy(
    "ppd", "autoregressive",
    "PPD (Chen et al. 2024, hardware-aware parallel prompt decoding): trained prompt tokens (--draft DIR from dlm "
    "drafter train --method ppd) ride in every verify forward, attached to each tree node, and guess the next "
    "tokens; a sparse tree over their top ranks, sized for this machine, is verified in the same forward; greedy "
    "output identical to ar, sampling exact",
    keys=(
        Key("tree_width", int, 10, "ranks of each prompt's guesses the tree may use (PPD: top-10)", min=1, max=64),
        Key("tree_nodes", int, None, "candidate nodes per forward, the most likely rank paths by the drafter's "
            "hit rates; default: the size dlm drafter train measured as fastest here (else 12); 0: no tree",
            min=0, max=256, optional=True),
    ),
    # hidden: its forward takes input embeddings and a tree mask, which the compiled static-cache step does not.
    impl="dlm_cli.decode.ar:ppd", loop="ppd", needs=(DRAFT_MODEL,), drafts=True, hidden=True))

register_strategy(Strategy(
    "hidden-transfer", "autoregressive",
    "Hidden Transfer (Wu et al. 2024): learned linear maps (--draft DIR from dlm drafter train) turn a middle "
    "layer's state into pseudo hidden states of the next tokens, which the target's own upper layers decode in "
    "the verify forward; no draft model forward; greedy output identical to ar, sampling exact",
    keys=(
        Key("draft_length", int, None, "draft tokens per verify step; default and most: the drafter's slots",
            min=1, max=256, optional=True),
        TREE_WIDTH, TREE_DEPTH,
    ),
    impl="dlm_cli.decode.ar:hidden_transfer", loop="hidden-transfer", needs=(DRAFT_MODEL,), drafts=True,
    hidden=True))
