"""CreditDecoding's strategy (the rule: :mod:`dlm_cli.decode.rules.credit`)."""

from __future__ import annotations

from ..keys import Key, Strategy, register_strategy
from .threshold import THRESHOLD, THRESHOLD_RANK

register_strategy(
    Strategy(
        name="credit",
        kind="diffusion",
        summary="CreditDecoding: decayed trace credits fused into the logits, then the threshold rule",
        keys=(
            THRESHOLD, THRESHOLD_RANK,
            Key("credit_decay", float, 0.8, "β: credits decay by this factor at each step", min=0.0, max=1.0),
            Key("credit_gamma", float, 0.2, "γ: a masked position's top-1 token gains p_top1^γ credit", min=0.0),
            Key("credit_alpha", float, 0.7, "α: fused logits are logits + α·log(1 + credit)", min=0.0),
        ),
        impl="dlm_cli.decode.rules.credit:Credit",
    )
)
