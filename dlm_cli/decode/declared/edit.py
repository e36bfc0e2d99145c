"""LLaDA2.1's token-to-token editing, ``edit`` (the rule: :mod:`dlm_cli.decode.rules.edit`)."""

from __future__ import annotations

from ..keys import Key, Strategy, register_strategy
from .threshold import THRESHOLD, THRESHOLD_RANK

register_strategy(
    Strategy(
        name="edit",
        kind="diffusion",
        summary="LLaDA2.1 editing: threshold mask-to-token commits plus token-to-token rewrites above "
                "edit_threshold",
        keys=(
            THRESHOLD, THRESHOLD_RANK,
            Key("edit_threshold", float, 0.9, "rewrite a committed token when the model predicts another one "
                "with probability above this", min=0.0, max=1.0),
            Key("edit_post_steps", int, 4, "most extra steps per block, after its last mask, while edits happen",
                min=0),
        ),
        impl="dlm_cli.decode.rules.edit:Edit",
    )
)
