"""Keys shared by every strategy (length, sampling) and by every diffusion strategy (blocks, cache, EoTP)."""

from __future__ import annotations

from .keys import Key, register_keys

register_keys(
    None,
    [
        Key("max_new_tokens", int, 64, "generation slots (dLLM) or the most tokens to generate (AR)", min=1),
        Key("temperature", float, 0.0, "sampling temperature; 0 is greedy", min=0.0),
        Key("top_k", int, 0, "sample only from the k most likely tokens; 0 is off", min=0),
        Key("top_p", float, 1.0, "sample only from the smallest set with this much probability; 1 is off",
            min=0.0, max=1.0, min_open=True),
        Key("seed", int, None, "random seed; default: a fresh one, reported in --json", min=0, optional=True),
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
    ],
)
