"""Keys shared by every strategy (length, sampling) and by every diffusion strategy (blocks, cache, EoTP)."""

from __future__ import annotations

from ..keys import Conflict, Key, register_keys


def needs_cache(key: str, off: object) -> Conflict:
    """``key`` refreshes a KV cache: it means nothing with ``cache = "none"``."""
    return Conflict(lambda v: v.get("cache") == "none" and v.get(key, off) != off,
                    lambda v: f"{key} = {v[key]!r} refreshes a KV cache, but cache = 'none'; "
                              f"set cache = \"prefix\" or \"dual\", or drop {key}")


register_keys(
    None,
    [
        Key("max_new_tokens", int, 64, "generation slots (dLLM) or the most tokens to generate (AR)", min=1),
        Key("temperature", float, 0.0, "sampling temperature; 0 is greedy", min=0.0),
        Key("top_k", int, 0, "sample only from the k most likely tokens; 0 is off", min=0),
        Key("top_p", float, 1.0, "sample only from the smallest set with this much probability; 1 is off",
            min=0.0, max=1.0, min_open=True),
        Key("seed", int, None, "random seed; default: a fresh one, reported in --json", min=0, max=2**63 - 1,
            optional=True),
        Key("compile", str, "auto", "torch.compile the AR decode step over a static KV cache (its warm-up "
            "reported apart), or a dLLM's network: on, off, auto (on for CUDA only: the CPU warm-up is "
            "about a minute), or max-autotune (on, with inductor choosing each product's kernel by timing "
            "them on this machine, the weights frozen into the graph; a warm-up of minutes, cached)",
            choices=("auto", "on", "off", "max-autotune")),
        Key("quantize", str, "none", "weights: none, int8 (torchao weight-only int8), int8-dynamic (int8 "
            "weights and activations) or int4 (torchao group-wise int4 weights; needs --dtype bfloat16)",
            choices=("none", "int8", "int8-dynamic", "int4")),
        Key("kernels", str, "auto", "the CPU's linear products: onednn (weights prepacked once for oneDNN: "
            "faster for a block's rows and on two threads), torch (torch's own), or auto (onednn for float32 "
            "weights up to 2 GiB on a CPU whose free memory holds the packed copies, which double those "
            "weights' memory)",
            choices=("auto", "onednn", "torch")),
    ],
)

register_keys(
    "diffusion",
    [
        Key("block_length", int, 32, "semi-autoregressive block length: blocks are decoded left to right", min=1),
        Key("cache", str, "none", "KV cache: none, prefix (Fast-dLLM prefix cache) or dual (prefix + suffix); "
            "exact for block-diffusion models", choices=("none", "prefix", "dual")),
        Key("eotp", bool, False, "end-of-text prediction: once an end token is committed, the slots after it "
            "are final and never decoded (Learn2PD)"),
        Key("lookup", bool, False, "input-guided commits: draft the slots after the committed text from n-gram "
            "matches in the prompt and commit the run where the model's proposals agree (prompt lookup)"),
        Key("ngram_max", int, 3, "with lookup: the longest n-gram looked up (down to 1)", min=1,
            old=("lookup_ngram",)),
        Key("draft_length", int, 16, "with lookup: the most slots drafted at a step", min=1, old=("lookup_draft",)),
        Key("refresh", int, 0, "with a prefix or dual cache, recompute the whole cache every N steps of a block "
            "(1: every step, exact); 0: only at block starts", min=0),
        Key("elastic_threshold", float, 0.0, "Elastic-Cache: recompute the cache when the cosine similarity of "
            "the attention paid to the most-attended token between steps falls below this; 0 is off",
            min=0.0, max=1.0),
        Key("elastic_layer", int, 0, "Elastic-Cache: the layer whose attention is watched and from which the cache "
            "is refreshed (negative: from the top; 0 refreshes every layer)"),
    ],
    conflicts=(needs_cache("refresh", 0), needs_cache("elastic_threshold", 0.0)),
)
