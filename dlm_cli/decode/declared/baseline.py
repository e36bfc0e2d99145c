"""LLaDA's baseline strategy and its keys, which prophet and window share (the rule:
:mod:`dlm_cli.decode.rules.baseline`)."""

from __future__ import annotations

from ..keys import Key, Strategy, register_strategy
from .threshold import RANK

BASELINE_KEYS = (
    Key("steps", int, None, "denoising steps over the whole generation; default: max_new_tokens "
        "(one token per step)", min=1, optional=True),
    Key("remasking", str, "low_confidence", "how positions are ranked for commit",
        choices=("low_confidence", "random")),
    RANK,
)

register_strategy(
    Strategy(
        name="baseline",
        kind="diffusion",
        summary="LLaDA low-confidence remasking: a fixed number of tokens per step (the quality reference)",
        keys=BASELINE_KEYS,
        impl="dlm_cli.decode.rules.baseline:Baseline",
    )
)
