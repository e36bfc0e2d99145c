"""Learn2PD's strategy (the rule and its filter: :mod:`dlm_cli.decode.rules.learn2pd`)."""

from __future__ import annotations

from ..keys import Key, Strategy, register_strategy

register_strategy(
    Strategy(
        name="learn2pd",
        kind="diffusion",
        summary="Learn2PD: a learned filter over the block's confidences commits the positions already final",
        keys=(Key("filter_threshold", float, 0.96, "commit a masked position when the filter's score passes this",
                  min=0.0, max=1.0),
              Key("filter", str, "", "the filter file (dlm filter train); empty: the model's own, then the cache")),
        impl="dlm_cli.decode.rules.learn2pd:Learn2PD",
    )
)
