"""Informational lines say `dlm: note:`; error lines stay `dlm: ...` with their exit code."""

from __future__ import annotations

from typer.testing import CliRunner

from dlm_cli.cli import app


def dlm_lines(stderr: str) -> list[str]:
    return [line for line in stderr.splitlines() if line.startswith("dlm:")]


def test_bench_progress_and_dropped_rows_are_notes_and_an_error_is_not():
    r = CliRunner().invoke(app, ["bench", "-m", "dlm-demo-ar", "-p", "ar", "--tasks", "sort", "--per-task", "1",
                                 "--reps", "1", "--threads", "1"])
    assert r.exit_code == 0, r.stderr
    lines = dlm_lines(r.stderr)
    assert lines and all(line.startswith("dlm: note: ") for line in lines), lines
    assert "dlm: note: ar is the ar row already" in lines  # not "ar decodes exactly as ar"
    r = CliRunner().invoke(app, ["bench", "-m", "dlm-demo", "-p", "no-such-profile"])
    assert r.exit_code == 2 and dlm_lines(r.stderr)[0].startswith("dlm: unknown profile")


def test_trace_html_says_what_it_wrote_as_a_note(tmp_path):
    trace, page = tmp_path / "t.jsonl", tmp_path / "map.html"
    r = CliRunner().invoke(app, ["generate", "-m", "dlm-demo", "Sort these numbers: 4 7 1 9 3", "--trace", str(trace)])
    assert r.exit_code == 0, r.stderr
    r = CliRunner().invoke(app, ["trace", "html", str(trace), "-o", str(page)])
    assert r.exit_code == 0 and dlm_lines(r.stderr) == [f"dlm: note: wrote {page}"] and page.is_file()
