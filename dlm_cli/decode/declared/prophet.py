"""Prophet's strategy (the rule: :mod:`dlm_cli.decode.rules.prophet`)."""

from __future__ import annotations

from ..keys import Key, Strategy, register_strategy
from .baseline import BASELINE_KEYS

register_strategy(
    Strategy(
        name="prophet",
        kind="diffusion",
        summary="Prophet: baseline steps, then commit everything at once when the top-2 logit gap passes "
                "7.5 / 5.0 / 2.5",
        keys=BASELINE_KEYS + (
            Key("prophet_window", int, 8, "how many next masked positions the top-2 gap is averaged over", min=1),
        ),
        impl="dlm_cli.decode.rules.prophet:Prophet",
    )
)
