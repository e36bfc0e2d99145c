"""The live unmasking view (rich): the canvas with masks as dim placeholders, this step's commits
highlighted, tokens coloured by confidence or by the step that committed them, and a counter line.
"""

from __future__ import annotations

import time

from rich.console import Console, Group
from rich.live import Live
from rich.text import Text

from .canvas import Canvas

MASK = "▯"
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
    text = Text()
    for pos, tok in enumerate(canvas.tokens):
        if tok is None:
            text.append(MASK, style="grey35")
            continue
        if tok in canvas.eos_ids:
            if final:
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
            text.append(canvas.piece(tok), style="grey50 italic")
    return text


def counter(canvas: Canvas) -> Text:
    made = len(canvas.final_tokens()) if canvas.kind != "diffusion" else canvas.committed
    parts = [f"step {canvas.step + 1}", f"NFE {canvas.nfe}"]
    if canvas.kind == "diffusion":
        parts.append(f"{made}/{len(canvas.tokens)} committed")
        if canvas.block_length:
            parts.append(f"block {canvas.block + 1}")
    else:
        parts.append(f"{made} tokens")
        if canvas.drafted:
            parts.append(f"accept {canvas.accepted / canvas.drafted:.0%}")
    if canvas.nfe:
        parts.append(f"{made / canvas.nfe:.2f} tok/NFE")
    line = Text(" · ".join(parts), style="dim")
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

    def renderable(self, final: bool = False) -> Group:
        return Group(render_canvas(self.canvas, self.color_by, final=final), counter(self.canvas))

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
