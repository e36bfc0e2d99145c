"""What a dLLM batch (:mod:`.batch`) and an AR batch (:mod:`.batch_ar`) share: admitting a row, a row's clock."""

from __future__ import annotations

from typing import Any

from ..errors import UsageError
from .events import Clock
from .keys import STRATEGIES


class RowClock:
    """A row's decode seconds: the batch's busy seconds since the row joined."""

    __slots__ = ("clock", "base")

    def __init__(self, clock: Clock) -> None:
        self.clock, self.base = clock, clock.elapsed()

    def elapsed(self) -> float:
        return self.clock.elapsed() - self.base


def admit(engine: Any, ids: list[int], settings: Any) -> tuple[Any, Any]:
    """A row's strategy and frozen settings, checked as a run would check them and against ``engine``'s
    batch (refused with the reason); the model prepared as for one run (quantization, kernels: the batch's
    forwards run eagerly, their shapes change per step)."""
    from . import check_fits, resolve_seed
    from ..models.speed import prepare

    if not ids:
        raise UsageError("batched decoding needs a prompt of at least one token")
    strategy = STRATEGIES[settings.strategy]
    check_fits(strategy, engine.model)
    resolve_seed(settings)
    cfg = settings.frozen()
    why = engine.refusal(cfg)
    if why is not None:
        raise UsageError(why)
    prepare(engine.model, cfg, len(ids) + cfg.max_new_tokens + 1, static=False)
    return strategy, cfg

