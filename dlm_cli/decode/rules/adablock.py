"""AdaBlock (Lu et al., 2025, "AdaBlock-dLLM"): the block ends at a semantic boundary.

At the start of each block, the first forward also returns a look-ahead of rows up to
``adablock_max`` positions from the block start. Among those at least ``adablock_min`` positions
in, the rows whose argmax is a delimiter token (its text ends with one of ``delimiters``, or holds
a newline) with confidence ≥ ``delimiter_threshold`` are boundaries; the block ends just after the
most confident one. With no boundary the block keeps ``block_length``. Inside the block the
threshold rule commits. Block-diffusion models cap the look-ahead at their own block grid.
"""

from __future__ import annotations

from typing import Any, TYPE_CHECKING

import torch

from .base import AdaptiveBlocks
from .threshold import Threshold

if TYPE_CHECKING:
    from ..keys import RunSettings
    from ...models.protocols import DLLM

_DELIMITERS: dict[tuple[int, str, str], torch.Tensor] = {}


def delimiter_ids(tokenizer: Any, vocab: int, delimiters: str, device: Any = "cpu") -> torch.Tensor:
    """Boolean ``[vocab]``: tokens whose text ends with a delimiter character or holds a newline."""
    key = (id(tokenizer), delimiters, str(device))
    if key not in _DELIMITERS:
        texts = tokenizer.batch_decode([[i] for i in range(vocab)])
        chars = set(delimiters)
        _DELIMITERS[key] = torch.tensor(
            [bool(t.rstrip(" ")) and (t.rstrip(" ")[-1] in chars or ("\n" in chars and "\n" in t)) for t in texts],
            device=device)  # copied to the device once, not at each block
    return _DELIMITERS[key]


def boundary(x0: torch.Tensor, probability: torch.Tensor, is_delimiter: torch.Tensor, lo: int,
             tau: float) -> int | None:
    """Row index of the most confident delimiter at row ≥ ``lo`` with probability ≥ ``tau`` (earliest on ties)."""
    ok = is_delimiter.to(x0.device)[x0] & (probability >= tau)
    ok[:lo] = False
    score = torch.where(ok, probability.double(), torch.full_like(probability, -1.0, dtype=torch.float64))
    r = int(torch.where(ok.any(), torch.argmax(score), -1))  # the block's one read: the row, or -1 for none
    return None if r < 0 else r


class AdaBlock(Threshold, AdaptiveBlocks):
    name = "adablock"

    def __init__(self, settings: RunSettings) -> None:
        super().__init__(settings)
        self.lookahead = max(settings.adablock_max - settings.block_length, 0)

    def block_end(self, model: DLLM, bs: int, be: int, limit: int, x0: torch.Tensor, probability: torch.Tensor) -> int:
        s = self.settings
        is_delimiter = delimiter_ids(model.tokenizer, model.vocab_size, s.delimiters, x0.device)
        r = boundary(x0, probability, is_delimiter, s.adablock_min - 1, s.delimiter_threshold)
        return be if r is None else bs + r + 1
