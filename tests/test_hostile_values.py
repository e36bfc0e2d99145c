"""Bad values and misfit combinations: one `dlm: ...` line, exit 2, no traceback (issue 21)."""

from __future__ import annotations

import json

import pytest
from test_cli import assert_one_line_error, dlm


@pytest.mark.parametrize("args,fragments", [
    (["--set", "threshold=nan", "-p", "speedy"], ["threshold = nan", "not a finite number"]),
    (["--temperature", "nan"], ["temperature", "not a finite number"]),
    (["--set", "top_p=nan"], ["top_p = nan", "not a finite number"]),
    (["--set", "threshold=inf", "-p", "speedy"], ["threshold = inf", "not a finite number"]),
    (["--seed", str(2**64)], ["seed", "out of range"]),
])
def test_non_finite_and_huge_values_are_refused(tiny_llada, args, fragments):
    r = dlm("generate", "-m", str(tiny_llada), "hi", "-n", "8", *args)
    assert_one_line_error(r, 2, *fragments)


def test_draft_confidence_nan_is_refused():
    r = dlm("generate", "-m", "dlm-demo-ar", "--draft", "dlm-demo-ar-draft", "-p", "speculative", "hi",
            "--set", "draft_confidence=nan")
    assert_one_line_error(r, 2, "draft_confidence = nan", "not a finite number")


def test_pace_infinity_and_an_absurd_per_task_are_refused(tiny_llada):
    assert dlm("generate", "-m", str(tiny_llada), "hi", "-n", "8", "--pace", "inf").exit_code == 2
    r = dlm("bench", "--per-task", "100000")
    assert r.exit_code == 2 and "Traceback" not in r.stderr and "per-task" in r.stderr


def test_a_profile_path_that_is_a_directory_says_so(tiny_llada, tmp_path):
    (tmp_path / "d.toml").mkdir()
    r = dlm("generate", "-m", str(tiny_llada), "hi", "-p", str(tmp_path / "d.toml"))
    assert_one_line_error(r, 2, "is a directory")


def test_a_user_profile_with_a_numeric_description_still_lists(monkeypatch, tmp_path):
    folder = tmp_path / "cfg" / "dlm" / "profiles"
    folder.mkdir(parents=True)
    (folder / "odd.toml").write_text('strategy = "threshold"\ndescription = 42\n')
    monkeypatch.setenv("XDG_CONFIG_HOME", str(tmp_path / "cfg"))
    r = dlm("profiles", "list", "--json") if "--json" in dlm("profiles", "list", "--help").stdout else dlm(
        "profiles", "list")
    assert r.exit_code == 0 and "Traceback" not in r.stderr and "odd" in r.stdout


@pytest.mark.parametrize("args,fragments", [
    (["-m", "dlm-demo-ar", "-p", "quality"], ["strategy 'baseline' needs a diffusion LLM", "dlm-demo-ar"]),
    (["--set", "strategy=ar"], ["strategy 'ar' needs an autoregressive"]),
    (["-p", "speculative"], ["strategy 'speculative' needs an autoregressive"]),  # not "lower -n"
    (["--draft", "dlm-demo-ar-draft"], ["--draft is for speculative decoding", "drop --draft"]),
])
def test_a_profile_or_draft_that_does_not_fit_the_model_is_a_usage_error(tiny_llada, args, fragments):
    base = [] if "-m" in args else ["-m", str(tiny_llada)]
    r = dlm("generate", *base, "hi", "-n", "8", *args)
    assert_one_line_error(r, 2, *fragments)


def test_json_never_carries_nan(tiny_llada):
    out = dlm("generate", "-m", str(tiny_llada), "hi", "-n", "8", "--json", "--seed", "0")
    assert out.exit_code == 0
    json.loads(out.stdout, parse_constant=lambda c: pytest.fail(f"non-JSON constant {c}"))


def test_trace_onto_the_input_file_is_refused_and_the_file_kept(tiny_llada, tmp_path):
    notes = tmp_path / "notes.md"
    notes.write_text("keep me\n")
    r = dlm("generate", "-m", str(tiny_llada), "fix", "-f", str(notes), "-n", "8", "--trace", str(notes))
    assert_one_line_error(r, 2, "--trace", "is the input file")
    assert notes.read_text() == "keep me\n"


@pytest.mark.parametrize("where,fragment", [("missing/dir/t.jsonl", "cannot write --trace"), (".", "is a directory")])
def test_trace_that_cannot_be_written_is_one_line(tiny_llada, tmp_path, where, fragment):
    r = dlm("generate", "-m", str(tiny_llada), "hi", "-n", "8", "--trace", str(tmp_path / where))
    assert_one_line_error(r, 2, fragment)


def test_stdout_on_a_full_device_is_one_line(tiny_llada):
    import os
    import subprocess
    import sys

    if not os.path.exists("/dev/full"):
        pytest.skip("no /dev/full here")
    with open("/dev/full", "w") as full:
        p = subprocess.run([sys.executable, "-m", "dlm_cli", "generate", "-m", str(tiny_llada), "hi", "-n", "8",
                            "--seed", "0"], stdout=full, stderr=subprocess.PIPE, text=True, timeout=120)
    assert p.returncode == 1 and "Traceback" not in p.stderr and "Exception ignored" not in p.stderr
    assert [line for line in p.stderr.splitlines() if line.startswith("dlm: ")] == [
        next(line for line in p.stderr.splitlines() if "cannot write the output" in line)]


def test_a_trace_that_hits_a_full_disk_exits_1_after_the_text(tiny_llada):
    import os

    if not os.path.exists("/dev/full"):
        pytest.skip("no /dev/full here")
    r = dlm("generate", "-m", str(tiny_llada), "hi", "-n", "8", "--seed", "0", "--trace", "/dev/full")
    assert r.exit_code == 1 and "Traceback" not in r.stderr and r.stdout.strip()
    last = r.stderr.strip().splitlines()[-1]  # after the text and the stats line, one error line
    assert last.startswith("dlm: the trace /dev/full is incomplete (No space left on device); the text is whole")
    assert "NFE" in r.stderr.strip().splitlines()[-2]


def test_n_beyond_the_toy_dllms_trained_canvas_is_refused_with_its_range():
    from typer.testing import CliRunner

    from dlm_cli.cli import app

    r = CliRunner().invoke(app, ["generate", "-m", "dlm-demo", "Sort these numbers: 4 7 1 9 3", "-n", "65"])
    assert r.exit_code == 2 and r.stdout == ""
    assert r.stderr.strip() == ("dlm: dlm-demo was trained to fill canvases of up to 64 slots, and with -n 65 it "
                                "answers with nothing; use -n 64 or less, or -m dlm-demo-long (trained on up to 256 "
                                "slots)")
    ok = CliRunner().invoke(app, ["generate", "-m", "dlm-demo", "Sort these numbers: 4 7 1 9 3", "-n", "64"])
    assert ok.exit_code == 0 and ok.stdout.strip() == "1 3 4 7 9"
    b = CliRunner().invoke(app, ["bench", "-m", "dlm-demo", "--tasks", "sort", "-n", "128"])
    assert b.exit_code == 2 and "up to 64 slots" in b.stderr
