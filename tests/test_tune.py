"""dlm tune: the searched grid as bench rows, the best point above the floor written as a profile, the plot."""

from __future__ import annotations

import json

from typer.testing import CliRunner

from dlm_cli.cli import app

runner = CliRunner()
BASE = ["tune", "-m", "dlm-demo", "-p", "speedy", "--tasks", "sort", "--per-task", "1", "--reps", "1", "-n", "16"]


def test_tune_writes_the_best_point_as_a_profile_and_plots_the_front(tmp_path):
    out_profile, png, html = tmp_path / "fast.toml", tmp_path / "front.png", tmp_path / "front.html"
    r = runner.invoke(app, BASE + ["--search", "threshold=0.5:0.9:0.4", "--search", "block_length=8,16",
                                   "--write", str(out_profile), "--plot", str(png), "--json"])
    assert r.exit_code == 0, r.stderr
    out = json.loads(r.stdout)
    names = [row["profile"] for row in out["rows"]]
    assert names[:2] == ["baseline", "baseline+eotp"] and len(names) == 6
    assert out["best"] in names[2:] and set(out["front"]) <= set(names)
    best = next(row for row in out["rows"] if row["profile"] == out["best"])
    searched = [row for row in out["rows"] if not row["baseline"]]
    ok = [row for row in searched if (row["score"] if row["score"] is not None else row["agreement"]) >= out["floor"]]
    assert best["speedup"] == max(row["speedup"] for row in ok)  # the fastest point at or above the floor
    from dlm_cli import profiles

    s = profiles.load(str(out_profile))
    assert s.strategy == "threshold" and s.eotp is True  # speedy's own keys kept
    assert {"threshold": str(s.threshold), "block_length": str(s.block_length)} == {
        k: str(float(v)) if k == "threshold" else v for k, v in best["sweep"].items()}
    assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    r2 = runner.invoke(app, BASE + ["--search", "threshold=0.5,0.9", "--plot", str(html), "--format", "csv"])
    assert r2.exit_code == 0, r2.stderr
    assert "<svg" in html.read_text() and r2.stdout.startswith("profile,")


def test_tune_refuses_when_nothing_reaches_the_floor_or_the_profile_exists(tmp_path):
    target = tmp_path / "x.toml"
    r = runner.invoke(app, BASE + ["--search", "threshold=0.5,0.9", "--floor", "2", "--write", str(target)])
    assert r.exit_code == 2 and "no searched point reaches the floor 2" in r.stderr and not target.exists()
    target.write_text("strategy = 'threshold'\n")
    r = runner.invoke(app, BASE + ["--search", "threshold=0.5,0.9", "--write", str(target)])
    assert r.exit_code == 2 and "exists; pass --force" in r.stderr
    assert target.read_text() == "strategy = 'threshold'\n"
    r = runner.invoke(app, BASE)
    assert r.exit_code == 2 and "needs at least one --search" in r.stderr
    r = runner.invoke(app, BASE + ["--search", "threshold=0.5,0.9", "--set", "threshold=0.7"])
    assert r.exit_code == 2 and "--set threshold is also searched" in r.stderr
