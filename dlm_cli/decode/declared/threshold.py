"""Fast-dLLM's threshold and factor strategies, and the keys the threshold family shares (the rules:
:mod:`dlm_cli.decode.rules.threshold`)."""

from __future__ import annotations

from dataclasses import replace

from ..keys import Key, Strategy, register_strategy

RANKS = ("confidence", "margin", "entropy")  # what rank scores positions by (rules.base.rank_scores)

THRESHOLD = Key("threshold", float, 0.9, "commit every masked position of the block whose confidence is ≥ this",
                min=0.0, max=1.0)
RANK = Key("rank", str, "confidence", "what positions are ranked by: confidence p(x0), margin p_top1 − p_top2 "
           "(Dream's topk_margin) or entropy (negative entropy, Dream's entropy)", choices=RANKS)
# A threshold on an entropy score is the entropy-bounded rule: the threshold family refuses it.
THRESHOLD_RANK = replace(RANK, refuse=(("entropy", "a bound on entropy is the entropy-bounded rule; "
                                                   "use strategy = \"eb\""),))

register_strategy(
    Strategy(
        name="threshold",
        kind="diffusion",
        summary="Fast-dLLM threshold: commit every masked position with confidence ≥ threshold (at least one)",
        keys=(THRESHOLD, THRESHOLD_RANK),
        impl="dlm_cli.decode.rules.threshold:Threshold",
    )
)

register_strategy(
    Strategy(
        name="factor",
        kind="diffusion",
        summary="Fast-dLLM factor: commit the top n while (n + 1)(1 − c_(n)) < factor",
        keys=(Key("factor", float, 1.0, "the factor f of the rule (n + 1)(1 − c_(n)) < f", min=0.0, min_open=True),),
        impl="dlm_cli.decode.rules.threshold:Factor",
    )
)
