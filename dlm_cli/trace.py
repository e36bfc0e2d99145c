"""Trace files: what ``dlm generate --trace`` writes, and what ``dlm replay`` and ``dlm trace html`` read.

A trace is JSON lines: a ``Trace`` header (model, profile, settings, end and control token ids), one
line per decoding event (``Start``, ``Step``, ``Draft``, ``Verify``, ``Done``, as in
:mod:`dlm_cli.decode.events`), and a ``Vocab`` footer with the text of every token id the events
name and the final text. The footer makes a trace readable without the model: a run recorded on
a GPU machine replays on a laptop.
"""

from __future__ import annotations

import html
import json
from dataclasses import dataclass, field, fields
from pathlib import Path
from typing import Any, IO, Iterable, Iterator, Optional, TYPE_CHECKING

from .decode.events import Done, Draft, Event, Start, Step, Verify
from .errors import UsageError

if TYPE_CHECKING:
    from .models.protocols import Model

VERSION = 1
EVENTS = {cls.__name__: cls for cls in (Start, Step, Draft, Verify, Done)}


def header(model: Model, settings: Any, prompt_tokens: int) -> dict[str, Any]:
    tok = model.tokenizer
    return {"event": "Trace", "version": VERSION, "model": model.info.name, "family": model.info.family,
            "kind": model.kind, "profile": settings.profile, "strategy": settings.strategy,
            "settings": settings.as_dict(), "prompt_tokens": prompt_tokens, "eos_ids": list(model.eos_ids),
            "special_ids": sorted(set(getattr(tok, "all_special_ids", None) or ()) | set(model.eos_ids))}


def token_ids(event: Event) -> Iterator[int]:
    """Every token id an event names."""
    if isinstance(event, Step):
        yield from event.tokens
        yield from event.edited_tokens
        if event.filled_token is not None:
            yield event.filled_token
    elif isinstance(event, Draft):
        yield from event.tokens
    elif isinstance(event, Verify):
        yield from event.accepted_tokens
        yield from event.rejected
        yield from (t for t in (event.correction, event.bonus) if t is not None)
    elif isinstance(event, Done):
        yield from event.tokens


class Recorder:
    """Passes events through and remembers the token ids they name (for the trace's footer)."""

    def __init__(self) -> None:
        self.ids: set[int] = set()

    def wrap(self, events: Iterable[Event]) -> Iterator[Event]:
        for ev in events:
            self.ids.update(token_ids(ev))
            yield ev

    def footer(self, tokenizer: Any, text: str) -> dict[str, Any]:
        pieces = {str(i): tokenizer.decode([i], skip_special_tokens=False, clean_up_tokenization_spaces=False)
                  for i in sorted(self.ids)}
        return {"event": "Vocab", "pieces": pieces, "text": text}


class PiecesTokenizer:
    """The part of a tokenizer the views use, from a trace's footer (no model needed)."""

    def __init__(self, pieces: dict[int, str], special: set[int]) -> None:
        self.pieces, self.all_special_ids = pieces, sorted(special)
        self._special = special

    def decode(self, ids: Iterable[int], skip_special_tokens: bool = False, **_: Any) -> str:
        return "".join(self.pieces.get(i, "\ufffd") for i in ids if not (skip_special_tokens and i in self._special))


@dataclass
class Trace:
    path: Path
    head: dict[str, Any]
    events: list[Event] = field(default_factory=list)
    pieces: dict[int, str] = field(default_factory=dict)
    text: Optional[str] = None

    @property
    def done(self) -> Optional[Done]:
        return next((e for e in reversed(self.events) if isinstance(e, Done)), None)

    def tokenizer(self) -> PiecesTokenizer:
        return PiecesTokenizer(self.pieces, set(self.head.get("special_ids", [])))


def _event(obj: dict[str, Any], where: str) -> Event:
    cls = EVENTS[obj.pop("event")]
    names = {f.name for f in fields(cls)}
    unknown = set(obj) - names
    if unknown:
        raise UsageError(f"{where}: a {cls.__name__} event with unknown fields {sorted(unknown)}; "
                         "was it written by a newer dlm?")
    try:
        return cls(**obj)
    except TypeError as exc:
        raise UsageError(f"{where}: a {cls.__name__} event is incomplete ({exc})") from None


def read(path: Path) -> Trace:
    """Read and check a trace file; a bad one is one UsageError naming the file and line."""
    try:
        raw = Path(path).read_bytes()
    except OSError as exc:
        raise UsageError(f"cannot read trace {path}: {exc.strerror or exc}; give a file that "
                         "dlm generate --trace FILE wrote") from None
    try:
        lines = raw.decode("utf-8").splitlines()
    except UnicodeDecodeError:
        raise UsageError(f"{path} is not a text file; give a file that dlm generate --trace FILE wrote") from None
    trace: Optional[Trace] = None
    for n, line in enumerate(lines, 1):
        if not line.strip():
            continue
        where = f"{path}:{n}"
        try:
            obj = json.loads(line)
        except json.JSONDecodeError:
            if n == len(lines):  # the last line of a run stopped mid-write: the rest still replays
                break
            raise UsageError(f"{where} is not JSON; a trace has one JSON object per line") from None
        if not isinstance(obj, dict) or not isinstance(obj.get("event"), str):
            raise UsageError(f"{where} is not a trace event (no \"event\" field)")
        kind = obj["event"]
        if trace is None:
            if kind != "Trace":
                raise UsageError(f"{path} has no trace header; it was written by an older dlm or is not a trace "
                                 "(record one with dlm generate --trace FILE)")
            if obj.get("version") != VERSION:
                raise UsageError(f"{path} is trace version {obj.get('version')!r}; this dlm reads version {VERSION}")
            trace = Trace(Path(path), obj)
        elif kind == "Vocab":
            pieces = obj.get("pieces")
            if not isinstance(pieces, dict):
                raise UsageError(f"{where}: the Vocab footer has no pieces")
            trace.pieces = {int(k): str(v) for k, v in pieces.items()}
            trace.text = obj.get("text") if isinstance(obj.get("text"), str) else None
        elif kind in EVENTS:
            trace.events.append(_event(obj, where))
        else:
            raise UsageError(f"{where}: unknown event {kind!r}")
    if trace is None:
        raise UsageError(f"{path} is empty; record a trace with dlm generate --trace FILE")
    if not trace.events or not isinstance(trace.events[0], Start):
        raise UsageError(f"{path} has no Start event; the generation it records never began")
    return trace


def write_line(out: IO[str], obj: dict[str, Any]) -> None:
    out.write(json.dumps(obj, ensure_ascii=False) + "\n")
    out.flush()


# -- the decode-order map -----------------------------------------------------------------------

ORIGIN_COLOURS = {"draft": "#2da44e", "correction": "#cf222e", "bonus": "#0969da", "target": None,
                  "edited": "#8250df", "filled": "#8c959f"}


def _step_colour(step: int, steps: int) -> str:
    """Early steps blue, late steps orange (HSL hue 220 → 30)."""
    t = step / max(steps - 1, 1)
    return f"hsl({220 - 190 * t:.0f}, 75%, 82%)"


@dataclass
class Slot:
    position: int
    token: int
    step: int
    confidence: Optional[float]
    origin: str
    edited: bool = False


def slots(trace: Trace) -> list[Slot]:
    """The final text's tokens, each with the step that last wrote it, its confidence and its origin."""
    out: dict[int, Slot] = {}
    for ev in trace.events:
        if isinstance(ev, Step):
            for p, t, c in zip(ev.positions, ev.tokens, ev.confidences):
                out[p] = Slot(p, t, ev.step, c, "target")
            for p, t in zip(ev.edited, ev.edited_tokens):
                out[p] = Slot(p, t, ev.step, None, "edited", edited=True)
        elif isinstance(ev, Verify):
            pos = ev.position
            for t in ev.accepted_tokens:
                out[pos] = Slot(pos, t, ev.step, None, "draft")
                pos += 1
            for t, origin in ((ev.correction, "correction"), (ev.bonus, "bonus")):
                if t is not None:
                    out[pos] = Slot(pos, t, ev.step, None, origin)
                    pos += 1
    done = trace.done
    n = len(done.tokens) if done is not None else len(out)
    return [out[p] for p in sorted(out) if p < n]


def html_map(trace: Trace) -> str:
    """One self-contained page: the text coloured by commit step, hovers, origins and a step timeline."""
    tok = trace.tokenizer()
    cells = slots(trace)
    steps = max((c.step for c in cells), default=0) + 1
    done = trace.done
    h = trace.head
    spans = []
    for c in cells:
        piece = tok.decode([c.token], skip_special_tokens=True)
        colour = ORIGIN_COLOURS.get(c.origin) if c.origin != "target" else None
        style = (f"background:{_step_colour(c.step, steps)}" if colour is None
                 else f"background:{_step_colour(c.step, steps)};border-bottom:3px solid {colour}")
        tip = f"position {c.position} · step {c.step}" + (
            f" · confidence {c.confidence:.3f}" if c.confidence is not None else "") + f" · {c.origin}" + (
            " · edited" if c.edited else "")
        spans.append(f'<span class="tok" data-step="{c.step}" data-origin="{c.origin}" style="{style}" '
                     f'title="{html.escape(tip)}">{html.escape(piece) or "&#8203;"}</span>')
    per_step = [0] * steps
    nfe_at = [0] * steps
    for ev in trace.events:
        if isinstance(ev, (Step, Verify)) and ev.step < steps:
            nfe_at[ev.step] = ev.nfe
    for c in cells:
        per_step[c.step] += 1
    top = max(per_step, default=1) or 1
    width = max(steps * 8, 200)
    bars = "".join(
        f'<rect class="bar" x="{i * width / steps:.1f}" y="{60 - 56 * k / top:.1f}" width="{max(width / steps - 1, 1):.1f}" '
        f'height="{56 * k / top:.1f}" fill="{_step_colour(i, steps)}"><title>step {i}: {k} tokens, NFE {nfe_at[i]}'
        f'</title></rect>' for i, k in enumerate(per_step))
    legend = "".join(f'<span class="key" style="border-bottom:3px solid {col}">{name}</span>'
                     for name, col in ORIGIN_COLOURS.items() if col and any(c.origin == name for c in cells))
    stats = (f"{len(cells)} tokens · {done.nfe} NFE · {steps} steps" if done is not None else f"{len(cells)} tokens")
    title = f"dlm decode order · {h.get('model')} · {h.get('profile')} ({h.get('strategy')})"
    return f"""<!doctype html>
<html lang="en"><head><meta charset="utf-8"><title>{html.escape(title)}</title>
<style>
body {{ font: 15px/1.7 ui-monospace, SFMono-Regular, Menlo, monospace; margin: 2em; color: #1f2328; background: #fff; }}
h1 {{ font-size: 16px; }} .meta {{ color: #59636e; }}
#text {{ white-space: pre-wrap; border: 1px solid #d1d9e0; padding: 1em; border-radius: 6px; }}
.tok {{ border-radius: 2px; }} .tok:hover {{ outline: 2px solid #1f2328; }}
.key {{ margin-right: 1em; }} svg {{ display: block; margin-top: 1em; }}
</style></head>
<body>
<h1>{html.escape(title)}</h1>
<p class="meta">{html.escape(stats)} · colour = the step that committed the token (blue early, orange late); hover a token for its step and confidence. {legend}</p>
<div id="text">{"".join(spans)}</div>
<svg id="timeline" width="{width}" height="64" aria-label="tokens committed per step">{bars}</svg>
<p class="meta">timeline: tokens committed per step (bar height), step 0 at the left; hover a bar for its NFE.</p>
</body></html>
"""


def run_replay(path: Path, *, view: str, pace: float, color_by: str, quiet: bool) -> int:
    """Show a recorded generation again; the text goes to stdout, the view and stats to stderr."""
    import sys

    from rich.console import Console

    from .view.stats import stats_line
    from .view import show
    from .view.canvas import Canvas

    trace = read(path)
    err = Console(stderr=True, highlight=False, soft_wrap=True)
    tok = trace.tokenizer()
    canvas = Canvas(tok, tuple(trace.head.get("eos_ids", ())))
    view = view or ("live" if err.is_terminal else "none")
    tty = sys.stdout.isatty()
    shown = show(iter(trace.events), canvas, view=view, out=sys.stdout, err_console=err, color_by=color_by,
                 transient=tty, pace=pace, stream=not tty)
    done = canvas.done
    kept = done.tokens if done is not None else canvas.final_tokens()
    text = trace.text if trace.text is not None and done is not None else tok.decode(kept, skip_special_tokens=True)
    rest = text[len(shown.streamed):] if text.startswith(shown.streamed) else text
    sys.stdout.write(rest + "\n")
    sys.stdout.flush()
    if shown.interrupted:
        err.print(f"dlm: replay interrupted after {len(kept)} tokens", markup=False, highlight=False)
        from .errors import interrupt_code

        return interrupt_code(shown.cause)
    if not quiet:
        h = trace.head
        limit = (h.get("settings") or {}).get("max_new_tokens")
        line = (stats_line(done, limit=limit if isinstance(limit, int) else None) if done is not None
                else f"{len(kept)} tokens · the recorded run stopped early")
        err.print(f"replay of {h.get('model')} · {h.get('profile')} · {line}", style="dim", markup=False,
                  highlight=False)
    return 0


def run_html(path: Path, out: Path) -> None:
    trace = read(path)
    if out.resolve() == Path(path).resolve():
        raise UsageError(f"-o {out} is the trace itself; name another file")
    from .atomic import write_text_atomically

    try:
        write_text_atomically(out, html_map(trace))
    except OSError as exc:
        raise UsageError(f"cannot write -o {out}: {exc.strerror or exc}; give a path in a writable directory") from None
