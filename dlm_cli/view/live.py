"""The live unmasking view (rich): the canvas with masks as dim placeholders, this step's commits
highlighted, tokens coloured by confidence or by the step that committed them, and a counter line.

The canvas is word-wrapped to the terminal's width and cut to its height: a frame shows the rows
around the active part (a dLLM's first masked slot and the rest of its block, this step's commits;
an AR model's newest tokens and draft), with one line saying how many tokens lie above or below.
"""

from __future__ import annotations

import time
from bisect import bisect_right

from rich.console import Console, ConsoleOptions, RenderResult
from rich.live import Live
from rich.segment import Segment
from rich.text import Text

from .canvas import Canvas

MASK = "▯"
# A mask is drawn with a space before it: a run of masks is a run of short words apart from the text,
# so the wrapper breaks between them, and a word never travels to the next row glued to the masks after
# it (and back once they fill in). Rows only move down as a block fills in.
MASK_SLOT = " " + MASK
# Confidence bands, high to low.
CONF_STYLES = ((0.9, "green"), (0.7, "chartreuse3"), (0.5, "yellow"), (0.3, "dark_orange"), (0.0, "red"))
STEP_STYLES = ("cyan", "magenta", "blue", "green", "yellow", "bright_red", "bright_cyan", "bright_magenta")
ORIGIN_STYLES = {"draft": "green", "correction": "bold red", "bonus": "bold blue", "target": "default",
                 "filled": "grey37", "edited": "bold magenta"}


def confidence_style(c: float | None) -> str:
    if c is None:
        return "default"
    for bound, style in CONF_STYLES:
        if c >= bound:
            return style
    return "red"


def render_canvas(canvas: Canvas, color_by: str = "confidence", *, final: bool = False) -> Text:
    return canvas_text(canvas, color_by, final=final)[0]


def canvas_text(canvas: Canvas, color_by: str = "confidence", *, final: bool = False) -> tuple[Text, list[int]]:
    """The canvas as one Text, and where each slot's text starts in it (the draft preview's tokens last)."""
    text = Text()
    starts: list[int] = []
    done = canvas.done
    shown = len(done.tokens) if final and done is not None else len(canvas.tokens)
    for pos, tok in enumerate(canvas.tokens[:shown]):
        starts.append(len(text))
        if tok is None:
            text.append(MASK_SLOT, style="grey35")
            continue
        if tok in canvas.eos_ids:
            if final:
                starts.pop()
                break
            text.append("·", style="grey30")
            continue
        origin = canvas.origin[pos]
        if canvas.kind != "diffusion" or origin in ("filled", "edited"):
            style = ORIGIN_STYLES.get(origin, "default")
        elif color_by == "step":
            step = canvas.step_of[pos] or 0
            style = STEP_STYLES[step % len(STEP_STYLES)]
        else:
            style = confidence_style(canvas.confidence[pos])
        if pos in canvas.last and not final:
            style += " bold reverse"
        text.append(canvas.piece(tok), style=style)
    if canvas.draft and not final:
        for tok in canvas.draft:
            starts.append(len(text))
            text.append(canvas.piece(tok), style="grey50 italic")
    return text, starts


def focus(canvas: Canvas, slots: int) -> tuple[int, int, int]:
    """The slots a frame should show, ``(first, last, anchor)``: a dLLM's first masked slot (the anchor,
    always shown) to the end of its block, and this step's commits; else the newest tokens."""
    if slots == 0:
        return 0, 0, 0
    if canvas.kind == "diffusion":
        masked = next((i for i, t in enumerate(canvas.tokens[:slots]) if t is None), None)
        if masked is not None:
            end = min(slots, masked + (canvas.block_length or 1)) - 1
            recent = [p for p in canvas.last if p < slots]
            return min([masked, *recent]), max([end, *recent]), masked
    return slots - 1, slots - 1, slots - 1


class CanvasFrame:
    """One frame: the canvas wrapped to the width, the rows that fit the height, and the counter."""

    def __init__(self, canvas: Canvas, color_by: str = "confidence", *, final: bool = False,
                 whole: bool = False) -> None:
        self.canvas, self.color_by, self.final = canvas, color_by, final
        self.whole = whole  # every row, whatever the height (a last frame that stays on screen)

    def __rich_console__(self, console: Console, options: ConsoleOptions) -> RenderResult:
        width = max(1, options.max_width)
        text, starts = canvas_text(self.canvas, self.color_by, final=self.final)
        rows = text.wrap(console, width, overflow="fold", no_wrap=False)
        foot = counter(self.canvas, self.color_by).wrap(console, width, overflow="fold", no_wrap=False)
        # Rows for the canvas and its notes; one row under the frame stays free for the cursor.
        height = options.height or options.size.height
        foot = foot[: max(0, height - 2)]  # a tiny terminal keeps one row of canvas
        room = max(1, height - 1 - len(foot))
        top, bottom = 0, len(rows)
        above = below = ""
        if not self.whole and len(rows) > room and starts:
            row_at = row_starts(rows, text.plain)
            lo, hi, anchor = (bisect_right(row_at, starts[i]) - 1 for i in focus(self.canvas, len(starts)))
            notes = 1 if room >= 3 else 0
            top, bottom = window(lo, hi, anchor, len(rows), room - notes)
            if bottom < len(rows) and room >= 4:  # a second note, for the slots below
                top, bottom = window(lo, hi, anchor, len(rows), room - 2)
                below = f"… {len(starts) - slot_of(starts, row_at[bottom])} more slots"
            if top and notes:
                above = f"… {slot_of(starts, row_at[top])} earlier tokens"
        lines = [self.note(above, width)] if above else []
        lines += rows[top:bottom]
        lines += [self.note(below, width)] if below else []
        for i, line in enumerate([*lines, *foot]):
            if i:
                yield Segment.line()
            yield from line.render(console)

    @staticmethod
    def note(message: str, width: int) -> Text:
        line = Text(message, style="dim")
        line.truncate(width)
        return line


def row_starts(rows: list[Text], plain: str) -> list[int]:
    """Where each wrapped row starts in ``plain`` (wrapping drops only newlines and spaces at a break)."""
    out, at = [], 0
    for row in rows:
        found = plain.find(row.plain, at) if row.plain else at
        at = found if found >= 0 else at
        out.append(at)
        at += len(row.plain)
    return out


def slot_of(starts: list[int], offset: int) -> int:
    """The slot whose text holds character ``offset``."""
    return max(0, bisect_right(starts, offset) - 1)


def window(lo: int, hi: int, anchor: int, total: int, room: int) -> tuple[int, int]:
    """``room`` rows out of ``total``: rows ``lo..hi`` with the text before them above, or when they are
    more than fit, from row ``lo`` on, as long as row ``anchor`` stays in; the rows left over show what follows."""
    top = max(0, min(lo, hi + 1 - room), anchor + 1 - room)
    return top, min(total, top + room)


def legend(color_by: str) -> Text:
    """The dLLM view's key: what the colours, the masks and the highlight mean."""
    line = Text()
    if color_by == "step":
        line.append("colour: the step that committed it (", style="dim")
        for i, style in enumerate(STEP_STYLES[:4]):
            line.append(f"{i + 1}", style=style)
            line.append(" ", style="dim")
        line.append("…)  ", style="dim")
    else:
        line.append("confidence ", style="dim")
        for i, (bound, style) in enumerate(CONF_STYLES):
            line.append("■ ", style=style)
            label = f"≥{bound:g}" if bound > 0 else f"<{CONF_STYLES[i - 1][0]:g}"
            line.append(label + " ", style="dim")
        line.append(" ")
    line.append("■", style="bold reverse")
    line.append(" this step  ", style="dim")
    line.append(MASK, style="grey35")
    line.append(" masked  ", style="dim")
    line.append("■", style=ORIGIN_STYLES["filled"])
    line.append(" after the end", style="dim")
    return line


def counter(canvas: Canvas, color_by: str = "confidence") -> Text:
    made = canvas.counted
    parts = [f"step {canvas.step + 1}", f"NFE {canvas.nfe}"]
    if canvas.kind == "diffusion":
        parts.append(f"{made} committed · {len(canvas.tokens)} slots")
        if canvas.block_length:
            parts.append(f"block {canvas.block + 1}")
    else:
        parts.append(f"{made} tokens")
        if canvas.drafted:
            parts.append(f"accept {canvas.accepted / canvas.drafted:.0%}")
    if canvas.nfe:
        parts.append(f"{made / canvas.nfe:.2f} tok/NFE")
    line = Text(" · ".join(parts), style="dim")
    if canvas.kind == "diffusion":
        line.append("\n")
        line.append_text(legend(color_by))
    if canvas.kind != "diffusion" and canvas.drafted:
        line.append("\n")
        for label, style in (("accepted draft", ORIGIN_STYLES["draft"]), ("correction", ORIGIN_STYLES["correction"]),
                             ("bonus", ORIGIN_STYLES["bonus"]), ("being verified", "grey50 italic")):
            line.append("■ ", style=style)
            line.append(label + "  ", style="dim")
    return line


class LiveView:
    """Renders each event on stderr. ``transient``: erase at the end (the caller prints the text)."""

    def __init__(self, canvas: Canvas, console: Console, *, color_by: str = "confidence",
                 transient: bool = True, pace: float = 0.0) -> None:
        self.canvas = canvas
        self.console = console
        self.color_by = color_by
        self.pace = pace
        self.transient = transient
        self.live = Live(console=console, transient=transient, auto_refresh=False,
                         vertical_overflow="visible", redirect_stdout=False, redirect_stderr=False)
        self._last = 0.0

    def __enter__(self) -> "LiveView":
        self.live.__enter__()
        return self

    def __exit__(self, *exc: object) -> None:
        final = self.canvas.done is not None
        self.live.update(self.renderable(final=final), refresh=True)
        self.live.__exit__(*exc)
        if not self.console.is_terminal:  # into a log: the last frame ends its line, so the stats line starts one
            self.console.file.write("\n")

    def renderable(self, final: bool = False) -> CanvasFrame:
        return CanvasFrame(self.canvas, self.color_by, final=final, whole=final and not self.transient)

    def update(self) -> None:
        now = time.perf_counter()
        if self.pace > 0:
            wait = self.pace - (now - self._last)
            if wait > 0:
                time.sleep(wait)
        elif now - self._last < 1 / 30:
            return  # cap the frame rate; the last frame is drawn on exit
        self.live.update(self.renderable(), refresh=True)
        self._last = time.perf_counter()
