"""ETE, Explore-Then-Exploit (the rule: :mod:`dlm_cli.decode.rules.ete`)."""

from __future__ import annotations

from ..keys import Key, Strategy, register_strategy

register_strategy(
    Strategy(
        name="ete",
        kind="diffusion",
        summary="ETE (dlm's reading of the abstract): threshold commits across the whole canvas, plus the "
                "highest-entropy masks when too few pass",
        keys=(Key("threshold", float, 0.9, "exploit: commit every masked position with confidence ≥ this",
                  min=0.0, max=1.0),
              Key("explore_below", int, 2, "explore when the threshold commits fewer than this many", min=0,
                  max=4096),
              Key("explore", int, 1, "explore: how many highest-entropy masked positions to commit as well",
                  min=0, max=4096)),
        impl="dlm_cli.decode.rules.ete:ExploreThenExploit",
    )
)
