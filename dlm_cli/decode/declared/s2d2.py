"""S2D2's strategy (its loop: :mod:`dlm_cli.decode.loops.s2d2`)."""

from __future__ import annotations

from ...capabilities import AR_AT_BLOCK_1
from ..keys import Key, Strategy, own_loop, register_strategy
from .threshold import THRESHOLD

register_strategy(
    Strategy(
        name="s2d2",
        kind="diffusion",
        summary="S2D2: block-diffusion drafts verified by the same model run as an AR model (block size 1)",
        keys=(
            THRESHOLD,
            Key("s2d2_min_gain", float, 2.0, "verify the leftmost masked span when its expected accepted length "
                "Σ_j Π_{i≤j} c_i reaches this (0: always, which is exactly greedy AR decoding)", min=0.0),
        ),
        loop="s2d2",
        needs=(AR_AT_BLOCK_1,),  # it verifies its drafts with the model run at block size 1
        conflicts=(own_loop("s2d2"),),
    )
)
