"""dlm bench: one run, the baseline first, speedups as ratios, agreement and scores per profile."""

from __future__ import annotations

import json

from typer.testing import CliRunner

from dlm_cli.cli import app
from dlm_cli.models.loading import DEMO_DIR, EMBEDDED

runner = CliRunner()


def prompts_file(tmp_path):
    p = tmp_path / "p.jsonl"
    p.write_text('{"prompt": "hello world"}\n\n{"prompt": "sort: 3 1 2", "answer": "1 2 3", "task": "sort"}\n')
    return p


def test_bench_json_rows(tiny_llada, tmp_path):
    r = runner.invoke(app, ["bench", "-m", str(tiny_llada), "--prompts", str(prompts_file(tmp_path)),
                            "-p", "quality,speedy", "--reps", "2", "-n", "32", "--json"])
    assert r.exit_code == 0, r.stderr
    out = json.loads(r.stdout)
    rows = {row["profile"]: row for row in out["rows"]}
    # quality is the baseline's configuration: one row, not two of the same thing
    assert list(rows) == ["baseline", "baseline+eotp", "speedy"] and out["prompts"] == 2
    assert "quality decodes exactly as baseline; its row is baseline's" in r.stderr
    base, speedy = rows["baseline"], rows["speedy"]
    assert base["speedup_plain"] == 1.0 and base["agreement"] == 1.0 and base["nfe"] == 32
    assert rows["baseline+eotp"]["speedup"] == 1.0 and out["headline_baseline"] == "baseline+eotp"
    assert base["baseline"] and not speedy["baseline"] and set(out["formulas"]) >= {"speedup", "tokens_per_nfe"}
    assert speedy["nfe"] < base["nfe"] and speedy["tokens_per_nfe"] > 1
    assert base["score"] is not None and set(base["task_scores"]) == {"sort"}
    assert base["runs"] == 4


def test_bench_table(tiny_llada, tmp_path):
    r = runner.invoke(app, ["bench", "-m", str(tiny_llada), "--prompts", str(prompts_file(tmp_path)),
                            "-p", "speedy", "--reps", "1", "-n", "16"])
    assert r.exit_code == 0, r.stderr
    assert "baseline" in r.stdout and "speedy" in r.stdout and "tok/NFE" in r.stdout


def test_bench_bad_prompts_file(tiny_llada, tmp_path):
    bad = tmp_path / "bad.jsonl"
    bad.write_text('{"prompt": "ok"}\n{"text": "no prompt key"}\n')
    r = runner.invoke(app, ["bench", "-m", str(tiny_llada), "--prompts", str(bad)])
    assert r.exit_code == 2 and f"{bad}:2" in r.stderr and "prompt" in r.stderr


def test_ctrl_c_during_bench_prints_the_rows_measured_so_far(tiny_llada, monkeypatch):
    import json as _json

    from typer.testing import CliRunner

    import dlm_cli.decode as decode
    from dlm_cli.cli import app
    from dlm_cli.errors import Interrupted

    real, calls = decode.run, []

    def interrupted_later(*args, **kwargs):
        calls.append(1)
        if len(calls) == 3 + 3 * 3 + 1:  # warm-up (3), three prompts for the three rows, then Ctrl-C
            raise Interrupted()  # what dlm's SIGINT handler raises
        return real(*args, **kwargs)

    monkeypatch.setattr(decode, "run", interrupted_later)
    r = CliRunner().invoke(app, ["bench", "-m", "dlm-demo", "-p", "speedy", "-n", "16", "--per-task", "2", "--json"])
    assert r.exit_code == 130 and "Traceback" not in r.stderr, (r.exit_code, r.stderr, r.exception)
    out = _json.loads(r.stdout)
    assert out["interrupted"] and out["prompts"] == 3 and out["reps"] == 1
    assert [row["profile"] for row in out["rows"]] == ["baseline", "baseline+eotp", "speedy"]
    assert all(row["runs"] == 3 for row in out["rows"])
    assert r.stderr.strip().splitlines()[-1] == "dlm: interrupted", r.stderr


def test_eotp_baseline_stops_at_the_end_token_with_the_same_output():
    """The headline baseline is the one-token-per-step baseline that stops at the end token: fewer NFE, same text."""
    r = runner.invoke(app, ["bench", "-m", "dlm-demo", "--tasks", "sort,copy", "--per-task", "2", "-p", "speedy",
                            "--reps", "1", "-n", "32", "--json"])
    assert r.exit_code == 0, r.stderr
    out = json.loads(r.stdout)
    plain, eotp, speedy = out["rows"]
    assert (plain["profile"], eotp["profile"]) == ("baseline", "baseline+eotp") and plain["baseline"] and eotp["baseline"]
    assert plain["nfe"] == 32 and eotp["nfe"] < 16  # the toy answers are about six tokens
    assert eotp["agreement"] == 1.0 and eotp["generated_tokens"] == plain["generated_tokens"]
    assert eotp["tokens_per_nfe"] > 2 * plain["tokens_per_nfe"]
    for row in out["rows"]:
        assert row["peak_memory_mb"] > 0 and row["weight_gbps"] > 0 and row["prefill_seconds"] > 0
        lo, hi = row["speedup_iqr"]
        assert lo <= hi


def test_sweep_rows_are_the_product_of_the_listed_values():
    r = runner.invoke(app, ["bench", "-m", "dlm-demo", "--tasks", "sort", "--per-task", "1", "-p", "speedy",
                            "--reps", "1", "-n", "16", "--set", "threshold=0.5,0.9", "--set", "block_length=8,16",
                            "--format", "jsonl"])
    assert r.exit_code == 0, r.stderr
    rows = [json.loads(line) for line in r.stdout.splitlines()]
    names = [row["profile"] for row in rows]
    assert names == ["baseline", "baseline+eotp", "speedy threshold=0.5 block_length=8",
                     "speedy threshold=0.5 block_length=16", "speedy threshold=0.9 block_length=8",
                     "speedy threshold=0.9 block_length=16"]
    assert rows[3]["sweep"] == {"threshold": "0.5", "block_length": "16"} and rows[0]["sweep"] == {}


def test_bench_formats_and_duplicate_rows(tmp_path):
    base = ["bench", "-m", "dlm-demo", "--tasks", "copy", "--per-task", "1", "--reps", "1", "-n", "16"]
    r = runner.invoke(app, base + ["-p", "speedy,speedy", "--format", "csv"])
    assert r.exit_code == 0, r.stderr
    import csv
    import io

    table = list(csv.DictReader(io.StringIO(r.stdout)))
    assert [t["profile"] for t in table] == ["baseline", "baseline+eotp", "speedy"]  # speedy once
    assert "dlm: note: speedy is the speedy row already" in r.stderr
    assert {"speedup_q1", "speedup_q3", "score_copy", "weight_gbps"} <= set(table[0])
    md = runner.invoke(app, base + ["-p", "speedy", "--format", "md"])
    assert md.exit_code == 0 and "| profile | strategy | NFE |" in md.stdout and "headline baseline" in md.stdout
    bad = runner.invoke(app, base + ["-p", "speedy", "--format", "xml"])
    assert bad.exit_code == 2 and "--format 'xml' is unknown" in bad.stderr


def test_bench_progress_lines_when_stderr_is_not_a_terminal():
    r = runner.invoke(app, ["bench", "-m", "dlm-demo", "--tasks", "copy", "--per-task", "2", "--reps", "1",
                            "-n", "16", "-p", "speedy", "--json"])
    assert r.exit_code == 0, r.stderr
    lines = [line for line in r.stderr.splitlines() if line.startswith("dlm: note: bench ")]
    assert lines[-1] == "dlm: note: bench 6/6 runs" and 1 < len(lines) <= 10


def test_a_block_diffusion_models_baselines_keep_its_exact_prefix_cache(tmp_path):
    from checkpoints import make_sdar

    sdar = make_sdar(tmp_path / "sdar", sharpen=6.0)
    p = tmp_path / "p.jsonl"
    p.write_text('{"prompt": "hello world"}\n{"prompt": "sort: 3 1 2"}\n')
    r = runner.invoke(app, ["bench", "-m", str(sdar), "--prompts", str(p), "-p", "quality", "--reps", "1",
                            "-n", "16", "--json"])
    assert r.exit_code == 0, r.stderr
    rows = json.loads(r.stdout)["rows"]
    assert [(row["profile"], row["cache"]) for row in rows] == [("baseline", "prefix"), ("baseline+eotp", "prefix"),
                                                                 ("quality", "none")]
    assert rows[2]["agreement"] == 1.0 and rows[2]["nfe"] == rows[0]["nfe"]  # exact: the same output, the same NFE
    md = runner.invoke(app, ["bench", "-m", str(sdar), "--prompts", str(p), "-p", "quality", "--reps", "1",
                             "-n", "16", "--format", "md"])
    assert "the baselines keep the model's exact prefix KV cache" in md.stdout


def test_long_toy_tasks_default_to_a_256_slot_canvas():
    """--tasks long (answers of 41-95 tokens) runs on GSM8K's 256 slots unless -n says otherwise, on
    dlm-demo-long (trained on canvases of up to 256 slots) when no model is named. The 64-slot dlm-demo
    refuses 256 in one line that names its range and the long model."""
    most = json.loads((DEMO_DIR / EMBEDDED["dlm-demo-long"][0] / "config.json").read_text())["dlm_max_new_tokens"]
    assert most == 256
    r = runner.invoke(app, ["bench", "--tasks", "long", "--per-task", "1", "-p", "speedy", "--reps", "1", "--json"])
    assert r.exit_code == 0, r.stderr
    out = json.loads(r.stdout)
    plain, eotp, speedy = out["rows"]
    assert out["model"] == "dlm-demo-long" and plain["nfe"] == 256
    assert set(speedy["task_scores"]) == {"copy-long", "sort-long", "story-long", "json"}
    assert eotp["nfe"] < 128 and speedy["nfe"] < eotp["nfe"]  # the end token stops it; parallel commits cut more
    r = runner.invoke(app, ["bench", "-m", "dlm-demo", "--tasks", "long", "--per-task", "1"])
    assert r.exit_code == 2
    assert "with -n 256 it answers with nothing; use -n 64 or less, or -m dlm-demo-long (trained on up to 256 " \
        "slots)" in r.stderr
    r = runner.invoke(app, ["bench", "-m", "dlm-demo", "--tasks", "copy,lng", "--per-task", "1"])
    assert r.exit_code == 2 and "unknown task 'lng'" in r.stderr and "groups: default, long, all" in r.stderr
