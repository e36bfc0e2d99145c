"""``dlm bench --batch-size N``: each row's prompts decoded N at a time (:mod:`.decode.batch`).

The rows are the same rows over the same prompts; their outputs equal batch 1's (every prompt's
greedy tokens, NFE and steps). Only the time is shared: a batch's decode seconds are split evenly
over its prompts, so a row's seconds are the sum of its batches' seconds and tok/s is the batch's
throughput. A prompt's TTFT counts from its batch's start.
"""

from __future__ import annotations

from typing import Any, TYPE_CHECKING

from ..errors import UsageError

if TYPE_CHECKING:
    from ..models.protocols import Model


def check_rows(model: Model, runs: list[tuple[str, Any]], batch_size: int) -> None:
    """Refuse, naming the row, a profile the batched decoder does not run."""
    from ..decode.batch import check_batchable

    for name, s in runs:
        try:
            check_batchable(model, s.frozen())
        except UsageError as exc:
            raise UsageError(f"--batch-size {batch_size}: profile {name!r}: {exc}") from None


def decode_chunk(model: Model, chunk: list[list[int]], settings: Any, watch: Any = None,
                 draft: Any = None) -> tuple[list[Any], float]:
    """Decode ``chunk`` as one batch: each prompt's Done, in order, and the batch's decode seconds."""
    from ..decode.batch import run_batch
    from ..decode.events import Done

    dones: list[Any] = [None] * len(chunk)
    events = run_batch(model, chunk, settings, draft=draft)
    for row, ev in (watch(events) if watch is not None else events):
        if isinstance(ev, Done):
            dones[row] = ev
    return dones, max(d.seconds for d in dones)
