"""One counting rule: the live canvas, replay, the web page and the stats line count the generated tokens
up to the first end token, as bench does, never the padding after it."""

from __future__ import annotations

import re

import pytest
from typer.testing import CliRunner

from dlm_cli.cli import app

SORT = "Sort these numbers: 4 7 1 9 3"


def figures(stderr: str) -> tuple[tuple[int, str], tuple[int, str]]:
    """(tokens, tok/NFE) of the live view's last counter line and of the stats line."""
    counters = re.findall(r"(\d+) committed · \d+ slots .*?([\d.]+) tok/NFE", stderr)
    stats = re.findall(r"^(?:replay of .* · )?(\d+) tokens · \d+ NFE · ([\d.]+) tok/NFE", stderr, re.M)
    assert counters and len(stats) == 1, stderr
    return (int(counters[-1][0]), counters[-1][1]), (int(stats[0][0]), stats[0][1])


@pytest.mark.parametrize("profile", ["quality", "speedy"])  # every slot decoded; EoTP fills the rest
def test_the_live_counter_and_replay_count_as_the_stats_line_does(profile, tmp_path):
    trace = tmp_path / "t.jsonl"
    r = CliRunner().invoke(app, ["generate", "-m", "dlm-demo", SORT, "-p", profile, "--view", "live",
                                 "--trace", str(trace)])
    assert r.exit_code == 0, r.stderr
    live, stats = figures(r.stderr)
    assert live == stats and stats[0] == len(r.stdout.split()) == 5  # "1 3 4 7 9": the padding is not counted
    r = CliRunner().invoke(app, ["replay", str(trace), "--view", "live", "--pace", "0"])
    assert r.exit_code == 0, r.stderr
    assert figures(r.stderr) == (live, stats)


def test_before_the_end_the_counter_counts_committed_tokens_up_to_the_first_end_token():
    from dlm_cli.decode.events import Start, Step
    from dlm_cli.view.canvas import Canvas
    from dlm_cli.view.live import counter

    class Tok:
        all_special_ids = [9]

        def decode(self, ids, **kw):
            return " ".join(map(str, ids))

    c = Canvas(Tok(), (9,))
    c.apply(Start("diffusion", 3, 8, 8))
    c.apply(Step(0, 1, [0, 1, 3], [5, 6, 9], [0.9] * 3, filled=[4, 5, 6, 7], filled_token=9))
    c.apply(Step(1, 2, [2, 7], [7, 9], [0.9] * 2))
    assert "3 committed · 8 slots" in counter(c).plain and "1.50 tok/NFE" in counter(c).plain
