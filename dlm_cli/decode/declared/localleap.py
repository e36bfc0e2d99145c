"""LocalLeap's strategy (the rule: :mod:`dlm_cli.decode.rules.localleap`)."""

from __future__ import annotations

from ..keys import Key, Strategy, register_strategy

register_strategy(
    Strategy(
        name="localleap",
        kind="diffusion",
        summary="LocalLeap: commit anchors (c ≥ anchor_threshold) and their neighbours within leap_radius "
                "with c ≥ leap_threshold",
        keys=(
            Key("anchor_threshold", float, 0.9, "a masked position with confidence ≥ this is an anchor",
                min=0.0, max=1.0),
            Key("leap_threshold", float, 0.75, "neighbours of an anchor are committed when their confidence "
                "is ≥ this", min=0.0, max=1.0),
            Key("leap_radius", int, 4, "neighbourhood radius, in positions, around each anchor", min=0),
        ),
        impl="dlm_cli.decode.rules.localleap:LocalLeap",
    )
)
