"""The generation canvas as the events describe it: what each slot holds and when it was committed.

Views consume events through a :class:`Canvas`; it also knows the text that is final so far (the
committed slots before the first mask or end token), which is what a pipe gets streamed and what
survives a Ctrl-C.
"""

from __future__ import annotations

from typing import Any

from ..decode.events import Done, Draft, Event, Start, Step, Verify


# A token's text on the terminal: a control character (ESC, CR, ...) would move the cursor or start an
# escape sequence, so it is shown as its Unicode control picture; a tab is four spaces.
SHOWN = {c: 0x2400 + c for c in range(32) if c != 10} | {9: "    ", 0x7F: 0x2421} | {c: 0xFFFD for c in range(0x80, 0xA0)}


class Canvas:
    def __init__(self, tokenizer: Any, eos_ids: tuple[int, ...]) -> None:
        self.tokenizer = tokenizer
        self.eos_ids = set(eos_ids)
        self.kind = "diffusion"
        self.tokens: list[int | None] = []
        self.confidence: list[float | None] = []
        self.step_of: list[int | None] = []
        self.origin: list[str] = []  # AR: "target", "draft", "correction", "bonus"
        self.last: set[int] = set()
        self.edited: set[int] = set()
        self.draft: list[int] = []
        self.step = -1
        self.nfe = 0
        self.block = 0
        self.block_length: int | None = None
        self.done: Done | None = None
        self.drafted = 0
        self.accepted = 0
        self._pieces: dict[int, str] = {}
        # Control tokens (<|im_end|>, <|eot_id|>, ...) never reach the text: the views show a dot.
        self.special = set(getattr(tokenizer, "all_special_ids", None) or ()) | self.eos_ids

    # -- events -------------------------------------------------------------------------------
    def apply(self, event: Event) -> None:
        if isinstance(event, Start):
            self.kind = event.kind
            self.block_length = event.block_length
            if event.kind == "diffusion":
                n = event.length
                self.tokens, self.confidence, self.step_of = [None] * n, [None] * n, [None] * n
                self.origin = ["target"] * n
        elif isinstance(event, Step):
            self.step, self.nfe, self.block = event.step, event.nfe, event.block
            self.last = set(event.positions)
            self.edited = set(event.edited)
            for p, t, c in zip(event.positions, event.tokens, event.confidences):
                self._put(p, t, c, event.step, "target")
            for p in event.filled:
                self._put(p, event.filled_token, None, event.step, "filled")
            for p, t in zip(event.edited, event.edited_tokens):
                self._put(p, t, None, event.step, "edited")
        elif isinstance(event, Draft):
            self.draft = list(event.tokens)
        elif isinstance(event, Verify):
            self.step, self.nfe = event.step, event.nfe
            self.draft = []
            self.drafted += event.drafted
            self.accepted += len(event.accepted_tokens)
            pos = event.position
            self.last = set()
            for t in event.accepted_tokens:
                self._put(pos, t, None, event.step, "draft")
                self.last.add(pos)
                pos += 1
            for t, origin in ((event.correction, "correction"), (event.bonus, "bonus")):
                if t is not None:
                    self._put(pos, t, None, event.step, origin)
                    self.last.add(pos)
                    pos += 1
        elif isinstance(event, Done):
            self.done = event
            self.nfe = event.nfe

    def _put(self, pos: int, token: int | None, conf: float | None, step: int, origin: str) -> None:
        while pos >= len(self.tokens):
            self.tokens.append(None)
            self.confidence.append(None)
            self.step_of.append(None)
            self.origin.append("target")
        self.tokens[pos] = token
        self.confidence[pos] = conf
        self.step_of[pos] = step
        self.origin[pos] = origin

    # -- text ---------------------------------------------------------------------------------
    def piece(self, token: int) -> str:
        """The text of one token as a view shows it (cached: the live view asks for the same ids every frame)."""
        text = self._pieces.get(token)
        if text is None and token in self.special:
            text = self._pieces[token] = "·"
        if text is None:
            text = self.tokenizer.decode([token], skip_special_tokens=False, clean_up_tokenization_spaces=False)
            text = self._pieces[token] = text.translate(SHOWN)
        return text

    @property
    def committed(self) -> int:
        return sum(t is not None for t in self.tokens)

    @property
    def counted(self) -> int:
        """The generated tokens as every figure counts them (stats line, bench, page, replay): committed
        tokens up to the first end token, never the padding after it; at the end, the run's own count."""
        if self.done is not None:
            return len(self.done.tokens)
        return len(self.committed_tokens()) if self.kind == "diffusion" else len(self.final_tokens())

    def final_tokens(self) -> list[int]:
        """Committed tokens before the first masked slot or end token: text that will not change."""
        if self.done is not None:
            return list(self.done.tokens)
        out: list[int] = []
        for t in self.tokens:
            if t is None or t in self.eos_ids:
                break
            out.append(t)
        return out

    def final_text(self) -> str:
        return self.tokenizer.decode(self.final_tokens(), skip_special_tokens=True)

    def committed_tokens(self) -> list[int]:
        """Every committed token before the first end token, skipping still-masked slots."""
        out = []
        for t in self.tokens:
            if t is not None and t in self.eos_ids:
                break
            if t is not None:
                out.append(t)
        return out
