"""dParallel's entropy-threshold strategy (the rule: :mod:`dlm_cli.decode.rules.dparallel`)."""

from __future__ import annotations

from ..keys import Key, Strategy, register_strategy

ENTROPY_THRESHOLD = Key("entropy_threshold", float, 0.5, "commit every masked position of the block whose entropy "
                        "(nats) is at most this, and at least the lowest-entropy one", min=0.0)

register_strategy(Strategy(
    name="entropy-threshold", kind="diffusion",
    summary="dParallel: commit the lowest-entropy masked position and every one with entropy ≤ entropy_threshold",
    keys=(ENTROPY_THRESHOLD,), impl="dlm_cli.decode.rules.dparallel:EntropyThreshold"))
