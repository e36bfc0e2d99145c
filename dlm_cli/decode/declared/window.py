"""Window-Diffusion's strategy (its loop: :mod:`dlm_cli.decode.loops.window`)."""

from __future__ import annotations

from ...capabilities import BIDIRECTIONAL, PRUNED_FORWARD
from ..keys import Conflict, Key, Strategy, at_most, own_loop, register_strategy
from .baseline import BASELINE_KEYS

register_strategy(
    Strategy(
        name="window",
        kind="diffusion",
        summary="Window-Diffusion: compute only a sliding window of active tokens, read the buffer from a stale "
                "cache refreshed periodically, prune the far-field masks",
        keys=(
            *BASELINE_KEYS,
            Key("active_tokens", int, 16, "A: the first A masks (plus the tokens committed since the last refresh) "
                "are computed at each pruned step (LLaDA 16; the authors' Dream setting is 32)", min=1),
            Key("window_tokens", int, 64, "W: pruned steps attend to the committed tokens and the first W masks at "
                "the last refresh; masks past them are pruned (LLaDA 64; Dream 128)", min=1),
            Key("refresh", int, 32, "a refresh step (a full forward that rewrites the cache and rebuilds the "
                "window) every N steps, from the first; 1 refreshes every step (the baseline's output)", min=1),
            Key("window_refresh", str, "canvas", "what a refresh step computes: canvas (the whole canvas, as the "
                "authors' LLaDA code) or window (only the window, as their Dream code)",
                choices=("canvas", "window")),
            Key("cache", str, "window", "Window-Diffusion keeps its own cache of the window", choices=("window",)),
            Key("block_length", int, None, "not used: Window-Diffusion has no semi-autoregressive blocks",
                min=1, optional=True),
        ),
        impl="dlm_cli.decode.rules.baseline:Baseline",
        loop="window",
        needs=(BIDIRECTIONAL, PRUNED_FORWARD),
        conflicts=(
            at_most("active_tokens", "window_tokens"),
            own_loop("window"),
            Conflict(lambda v: v.get("block_length") is not None,
                     "strategy 'window' has no semi-autoregressive blocks (the window supplies the locality); "
                     "drop block_length"),
            Conflict(lambda v: v.get("elastic_threshold", 0.0) != 0.0,
                     "strategy 'window' refreshes its cache every `refresh` steps, not by Elastic-Cache's test; "
                     "drop elastic_threshold"),
        ),
    )
)
