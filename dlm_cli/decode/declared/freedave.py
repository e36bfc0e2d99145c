"""FreeDave's strategy (its loop: :mod:`dlm_cli.decode.loops.freedave`)."""

from __future__ import annotations

from ...capabilities import CANVAS_BATCH
from ..keys import Conflict, Key, Strategy, no_cache, own_loop, register_strategy

register_strategy(
    Strategy(
        name="freedave",
        kind="diffusion",
        summary="FreeDave: lossless draft-and-verify; exactly the one-token-per-step output with fewer NFEs",
        keys=(Key("draft_length", int, 4, "K: drafts D_1..D_K verified in one batched forward", min=1,
                  old=("freedave_drafts",)),),
        loop="freedave",
        needs=(CANVAS_BATCH,),  # its drafts are verified as a batch of canvases in one forward
        conflicts=(no_cache("freedave", "FreeDave verifies its drafts in one batched forward without a cache"),
                   own_loop("freedave"),
                   Conflict(lambda v: v.get("temperature", 0.0) > 0,
                            "strategy 'freedave' is lossless against greedy one-token-per-step decoding only; "
                            "set temperature = 0")),
    )
)
