"""The runaway-repetition stop, shared by every strategy (keys ``stop_repeats``, ``stop_ngram``).

A small model asked to edit a text often falls into a loop: one sentence, written again and again
until ``max_new_tokens``. The stop ends generation (``finish_reason = "repetition"``) at the first
token that completes an n-gram of ``stop_ngram`` tokens already written ``stop_repeats`` times
earlier in the output; the output ends with that token. Only the generated text counts (an answer
that copies its prompt repeats nothing), and occurrences may overlap, so a one-token loop
(``the the the ...``) is an n-gram of repeats too.

The stop is a function of the output tokens alone: with it, every strategy's output is its output
without the stop, cut at that token. A lossless method (speculative, lookup, FreeDave) therefore
still gives its baseline's output with the same keys. The dLLM loops test the final prefix (the
committed slots before the first mask or end token) after each step; the AR loop each verify step's
accepted run.
"""

from __future__ import annotations

from typing import Sequence

import numpy as np


CHUNK = 256  # new tokens tested at once against the whole output (bounds the comparison's memory)


class RepetitionStop:
    """The output so far (a numpy buffer) and the test of each n-gram that new tokens complete."""

    def __init__(self, ngram: int, repeats: int) -> None:
        self.n, self.repeats = ngram, repeats
        self.buf = np.empty(256, dtype=np.int64)
        self.size = 0

    def feed(self, tokens: Sequence[int] | np.ndarray) -> int | None:
        """Append ``tokens`` to the output; when one of them completes the ``repeats + 1``-th occurrence
        of an n-gram, return how many of them to keep (up to and including it), else None."""
        new = np.asarray(tokens, dtype=np.int64)
        start, end = self.size, self.size + len(new)
        if end > len(self.buf):
            self.buf = np.concatenate([self.buf[:start], np.empty(max(end, 2 * len(self.buf)) - start, np.int64)])
        self.buf[start:end] = new
        self.size = end
        n = self.n
        buf = self.buf[:end]
        ends = np.arange(max(start, n - 1), end)  # the tokens that complete a new n-gram
        back = np.arange(1, n)
        for lo in range(0, len(ends), CHUNK):
            e = ends[lo : lo + CHUNK]
            # Earlier n-grams ending in the same token (end position p < e), then the whole n-gram compared.
            same = buf[e, None] == buf[None, n - 1 : e[-1]]
            same &= np.arange(n - 1, e[-1])[None, :] < e[:, None]
            row, col = np.nonzero(same)
            p = col + n - 1
            full = (buf[e[row, None] - back] == buf[p[:, None] - back]).all(-1)
            hits = np.flatnonzero(np.bincount(row[full], minlength=len(e)) >= self.repeats)
            if len(hits):
                last = int(e[hits[0]])
                self.size = last + 1
                return last + 1 - start
        return None


def first_repeat(tokens: Sequence[int], ngram: int, repeats: int) -> int | None:
    """Where the stop would end ``tokens``: the number of tokens kept, or None if it never triggers."""
    return RepetitionStop(ngram, repeats).feed(tokens)


def repetition_stop(settings: object) -> RepetitionStop | None:
    """The run's stop, or None when ``stop_repeats`` is 0."""
    repeats = getattr(settings, "stop_repeats", 0)
    return RepetitionStop(settings.stop_ngram, repeats) if repeats else None
