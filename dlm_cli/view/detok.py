"""Streaming detokenization: the text of a growing token list, without decoding it all again.

Like mlx-lm's streaming detokenizers, only the tokens since the last settled point are decoded at
each update, so streaming a long answer costs time linear in its length. The segment is decoded
together with a few tokens of settled context and the context's own text is cut off, which keeps
the spaces that SentencePiece tokenizers attach to a word's first piece; a point is settled only
where the text does not end inside a multi-byte character. Should the incremental text ever
disagree with a full decode (a tokenizer whose clean-up looks across the cut), it decodes in full.
"""

from __future__ import annotations

from typing import Any

CONTEXT = 4  # settled tokens decoded with each segment
SEGMENT = 16  # tokens after which the segment settles


class StreamingText:
    def __init__(self, tokenizer: Any) -> None:
        self.tokenizer = tokenizer
        self.settled: list[int] = []  # tokens whose text is ``self.base``
        self.base = ""

    def _decode(self, ids: list[int]) -> str:
        return self.tokenizer.decode(ids, skip_special_tokens=True)

    def text(self, tokens: list[int]) -> str:
        """The text of ``tokens``, a list that usually extends the one of the previous call."""
        n = len(self.settled)
        if len(tokens) < n or tokens[:n] != self.settled:  # shorter, or an edit rewrote settled text
            self.settled, self.base, n = [], "", 0
        ctx = tokens[max(0, n - CONTEXT) : n]
        ctx_text = self._decode(ctx) if ctx else ""
        full = self._decode(ctx + tokens[n:])
        if not full.startswith(ctx_text):  # the cut changed how the context decodes: start afresh
            self.settled, self.base = [], ""
            return self._decode(tokens)
        out = self.base + full[len(ctx_text):]
        if len(tokens) - n >= SEGMENT and not out.endswith("\ufffd"):
            self.settled, self.base = list(tokens), out
        return out
