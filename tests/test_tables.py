"""Tables into a file or a pipe: laid out at their natural width, every cell whole (no `…`, no folding)."""

from __future__ import annotations

import os
import subprocess
import sys

from typer.testing import CliRunner

from dlm_cli.cli import app

TOY = ["-m", "dlm-demo", "--tasks", "sort", "--per-task", "1", "--reps", "1", "--threads", "1"]


def assert_whole(out: str, *cells: str) -> None:
    assert "…" not in out, out
    for cell in cells:
        assert any(cell in line for line in out.splitlines()), (cell, out)


def test_profiles_show_into_a_pipe_keeps_every_meaning_on_its_row():
    env = {**os.environ, "COLUMNS": "80"}  # even where a narrow width is set for the terminal
    res = subprocess.run([sys.executable, "-m", "dlm_cli", "profiles", "show", "speedy"], capture_output=True,
                         text=True, env=env, timeout=120)
    assert res.returncode == 0, res.stderr
    from dlm_cli.decode import STRATEGIES  # noqa: F401  (registers the keys)
    from dlm_cli.decode.keys import keys_for

    keys = keys_for("threshold")
    rows = {line.split("│")[1].strip(): line for line in res.stdout.splitlines() if line.count("│") >= 5}
    assert set(keys) <= set(rows), res.stdout
    for name, key in keys.items():
        assert key.help in rows[name], (name, rows[name])  # the meaning whole, on the key's own line
    assert_whole(res.stdout)


def test_bench_and_tune_tables_into_a_file_keep_every_row_name_whole():
    r = CliRunner().invoke(app, ["bench", *TOY, "-p", "speedy", "--set", "threshold=0.5,0.9", "--set",
                                 "block_length=8,32"])
    assert r.exit_code == 0, r.stderr
    names = [f"speedy threshold={t} block_length={b}" for t in (0.5, 0.9) for b in (8, 32)]
    assert_whole(r.stdout, "baseline+eotp", *names, "1 prompt × 1 rep · baselines baseline and baseline+eotp")
    r = CliRunner().invoke(app, ["tune", *TOY, "-p", "speedy", "--search", "threshold=0.5,0.9", "--search",
                                 "block_length=8,32"])
    assert r.exit_code == 0, r.stderr
    assert_whole(r.stdout, *names, "Pareto front")
    for name in names:  # one line per row in each of the three tables
        assert sum(line.strip().startswith(name + " ") or f" {name} " in line for line in r.stdout.splitlines()) >= 3
