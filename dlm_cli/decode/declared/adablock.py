"""AdaBlock's strategy (the rule: :mod:`dlm_cli.decode.rules.adablock`)."""

from __future__ import annotations

from ..keys import Key, Strategy, at_most, register_strategy
from .threshold import THRESHOLD, THRESHOLD_RANK

register_strategy(
    Strategy(
        name="adablock",
        kind="diffusion",
        summary="AdaBlock: threshold decoding in blocks that end at a confident delimiter (newline, period, ...)",
        keys=(
            THRESHOLD, THRESHOLD_RANK,
            Key("adablock_min", int, 4, "the shortest adaptive block", min=1),
            Key("adablock_max", int, 64, "the longest adaptive block (the look-ahead window)", min=1),
            Key("delimiter_threshold", float, 0.3, "a predicted delimiter ends the block when its confidence "
                "is ≥ this", min=0.0, max=1.0),
            Key("delimiters", str, ".\n;!?", "characters that end a semantic unit"),
        ),
        impl="dlm_cli.decode.rules.adablock:AdaBlock",
        conflicts=(at_most("adablock_min", "adablock_max"),),
    )
)
