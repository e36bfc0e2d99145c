"""The entropy-bounded strategy, ``eb`` (the rule: :mod:`dlm_cli.decode.rules.entropy`)."""

from __future__ import annotations

from ..keys import Key, Strategy, register_strategy

ENTROPY_BUDGET = Key("entropy_budget", float, 0.5, "the most summed entropy (nats) one step may commit", min=0.0)

register_strategy(Strategy(
    name="eb", kind="diffusion",
    summary="entropy-bounded (EB-sampler, SDAR): commit the lowest-entropy positions while their summed entropy ≤ "
            "entropy_budget",
    keys=(ENTROPY_BUDGET,), impl="dlm_cli.decode.rules.entropy:EntropyBounded"))
