"""The live view at a narrow terminal: it wraps, keeps within the height, and follows the active part."""

from __future__ import annotations

import io
import re

import pytest
from rich.cells import cell_len
from rich.console import Console

from dlm_cli.decode.events import Done, Draft, Start, Step, Verify
from dlm_cli.view.canvas import Canvas
from dlm_cli.view.live import CanvasFrame

WIDTH, HEIGHT = 40, 10


class Words:
    """Token ``i`` is the word ``w{i}``: which slots a frame shows can be read off the screen."""

    all_special_ids: list[int] = []

    def decode(self, ids, **_):
        return "".join(f"w{i} " for i in ids)


def frame(canvas: Canvas, width: int = WIDTH, height: int = HEIGHT, **kw) -> list[str]:
    console = Console(width=width, height=height, file=io.StringIO(), force_terminal=True, color_system=None)
    console.print(CanvasFrame(canvas, **kw))
    return console.file.getvalue().rstrip("\n").split("\n")


def shown(lines: list[str]) -> set[int]:
    return {int(w) for line in lines for w in re.findall(r"\bw(\d+)\b", line)}


def check_fits(lines: list[str], width: int = WIDTH, height: int = HEIGHT) -> None:
    assert len(lines) < height  # a row stays free for the cursor
    assert all(cell_len(line) <= width for line in lines)


def test_a_wide_canvas_wraps_and_every_slot_reaches_the_screen_as_it_becomes_active():
    c = Canvas(Words(), (999,))
    c.apply(Start("diffusion", 5, 256, 32))
    seen: set[int] = set()
    for step, a in enumerate(range(0, 256, 8)):
        c.apply(Step(step, step + 1, list(range(a, a + 8)), list(range(a, a + 8)), [0.95] * 8, block=a // 32))
        lines = frame(c)
        check_fits(lines)
        visible = shown(lines)
        assert set(range(a, a + 8)) <= visible  # this step's commits
        if a + 8 < 256:  # the first masked slot follows them on screen
            last = next(i for i, line in enumerate(lines) if f"w{a + 7}" in line)
            assert "▯" in lines[last] or lines[last + 1].startswith("▯")
        for line in lines:  # words are wrapped whole, never cut at the edge
            assert all(re.fullmatch(r"w\d+|▯+|…|\d+|earlier|more|tokens|slots|[·/\w.]+|■|≥[\d.]+|<[\d.]+", w) for w in line.split())
        earlier = [line for line in lines if "earlier tokens" in line]
        if earlier:  # the marker counts exactly the slots above the first row shown
            assert int(re.search(r"… (\d+) earlier", earlier[0]).group(1)) == min(visible)
        seen |= visible
    assert seen == set(range(256))
    assert min(visible) > 0 and 255 in visible  # the last frame follows the tail


def test_a_block_longer_than_the_screen_shows_its_start():
    c = Canvas(Words(), (999,))
    c.apply(Start("diffusion", 5, 256, 256))  # one block over the whole canvas
    c.apply(Step(0, 1, list(range(100)), list(range(100)), [0.9] * 100))
    lines = frame(c)
    check_fits(lines)
    last = next(i for i, line in enumerate(lines) if "w99" in line)  # the first masked slot is visible
    assert "▯" in lines[last] or lines[last + 1].startswith("▯")
    assert any("more slots" in line for line in lines)


def test_ar_frames_follow_the_newest_tokens_and_the_draft_being_verified():
    c = Canvas(Words(), (999,))
    c.apply(Start("autoregressive", 5, 400))
    pos = 0
    for step in range(60):
        c.apply(Draft(step, pos, [1000 + step, 2000 + step]))
        lines = frame(c)
        check_fits(lines)
        assert {1000 + step, 2000 + step} <= shown(lines)  # the preview, at the tail
        c.apply(Verify(step, step + 1, pos, accepted_tokens=[pos, pos + 1], drafted=2, bonus=pos + 2))
        pos += 3
        lines = frame(c)
        check_fits(lines)
        assert pos - 1 in shown(lines) and "accepted draft" in " ".join(lines)  # the legend, wrapped
    assert min(shown(lines)) > 0


def test_the_last_frame_that_stays_on_screen_shows_the_whole_text():
    c = Canvas(Words(), (999,))
    c.apply(Start("diffusion", 5, 128, 32))
    c.apply(Step(0, 1, list(range(128)), list(range(128)), [0.9] * 128))
    c.apply(Done(tokens=list(range(120)), nfe=1, steps=1, seconds=0.1, ttft_seconds=0.1, finish_reason="repetition"))
    lines = frame(c, final=True, whole=True)
    assert shown(lines) == set(range(120))  # the whole text, cut where the run ended
    assert all(cell_len(line) <= WIDTH for line in lines)
    assert len(frame(c, final=True)) < HEIGHT  # a transient last frame still fits


def test_live_view_of_a_real_run_never_draws_past_the_terminal(tiny_llada):
    from dlm_cli import profiles
    from dlm_cli.decode import run
    from dlm_cli.models.loading import load
    from dlm_cli.prompting import encode
    from dlm_cli.view import show

    model = load(str(tiny_llada))
    s = profiles.load("speedy", sets=["threshold=0.5", "eotp=false"], flags={"max_new_tokens": 160, "seed": 0})
    err = Console(width=WIDTH, height=HEIGHT, file=io.StringIO(), force_terminal=True,
                  soft_wrap=True)  # as dlm generate makes it
    canvas = Canvas(model.tokenizer, model.eos_ids)
    result = show(run(model, encode(model.tokenizer, "hello"), s), canvas, view="live", out=io.StringIO(),
                  err_console=err, transient=True)
    assert canvas.done is not None and not result.interrupted
    raw = err.file.getvalue()
    # Each redraw moves the cursor up over the previous frame: those frames fit the terminal's height...
    ups = [len(run_) // len("\x1b[1A\x1b[2K") for run_ in re.findall(r"(?:\x1b\[1A\x1b\[2K)+", raw)]
    # (a redraw moves up one row less than the frame has, the transient erase at the end as many as it
    # has: a frame of at most HEIGHT - 1 rows leaves the cursor's row free either way)
    assert len(ups) >= 3 and max(ups) < HEIGHT
    # ... and no row is wider than it (escape sequences removed; rows end at a newline or a carriage return).
    rows = re.split(r"[\r\n]", re.sub(r"\x1b\[[0-9;?]*[A-Za-z]", "", raw))
    assert sum("committed" in row for row in rows) >= 3
    assert all(cell_len(row) <= WIDTH for row in rows)
    assert not re.search(r"[\x00-\x08\x0b-\x1f]", re.sub(r"\x1b\[[0-9;?]*[A-Za-z]", "", raw.replace("\r", "")))


@pytest.mark.parametrize("height", [2, 3, 4, 5, 6])
def test_tiny_terminals_still_show_the_active_slot(height):
    c = Canvas(Words(), (999,))
    c.apply(Start("diffusion", 5, 256, 32))
    c.apply(Step(0, 1, list(range(120)), list(range(120)), [0.9] * 120))
    lines = frame(c, height=height)
    check_fits(lines, height=height)
    assert "▯" in "".join(lines)  # the first masked slot
    if height >= 5:
        assert 119 in shown(lines)  # and the last commit before it


class Subwords:
    """Tokens with a leading space, as BPE tokenizers make them: `` w3``."""

    all_special_ids: list[int] = []

    def decode(self, ids, **_):
        return "".join(f" w{i}" for i in ids)


def test_masks_wrap_apart_so_a_committed_word_never_jumps_back_up_a_row():
    import random

    c = Canvas(Subwords(), (999,))
    c.apply(Start("diffusion", 5, 96, 32))
    order = list(range(96))
    for b in range(0, 96, 32):  # within each block, commits in a shuffled (parallel-decoding-like) order
        block = order[b:b + 32]
        random.Random(b).shuffle(block)
        order[b:b + 32] = block
    row_of: dict[int, int] = {}
    for step in range(0, 96, 3):
        slots = order[step:step + 3]
        c.apply(Step(step, step + 1, slots, slots, [0.95] * 3, block=slots[0] // 32))
        lines = frame(c, width=33, height=60)
        for r, line in enumerate(lines):
            for w in re.findall(r"\bw(\d+)\b", line):
                assert r >= row_of.get(int(w), 0), f"w{w} jumped up from row {row_of[int(w)]} to {r}"
                row_of[int(w)] = r
    assert len(row_of) == 96


@pytest.mark.parametrize("color_by, words", [("confidence", "confidence ■ ≥0.9 ■ ≥0.7"), ("step", "colour: the step")])
def test_the_dllm_view_has_a_colour_legend(color_by, words):
    from typer.testing import CliRunner

    from dlm_cli.cli import app

    r = CliRunner().invoke(app, ["generate", "-m", "dlm-demo", "Sort these numbers: 4 7 1 9 3", "--view", "live",
                                 "--color-by", color_by])
    assert r.exit_code == 0 and words in r.stderr and "▯ masked" in r.stderr and "this step" in r.stderr, r.stderr
