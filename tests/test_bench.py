"""dlm bench: one run, the baseline first, speedups as ratios, agreement and scores per profile."""

from __future__ import annotations

import json

from typer.testing import CliRunner

from dlm_cli.cli import app

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
    assert list(rows) == ["baseline", "speedy"] and out["prompts"] == 2
    assert "quality decodes exactly as the baseline (baseline)" in r.stderr
    base, speedy = rows["baseline"], rows["speedy"]
    assert base["speedup"] == 1.0 and base["agreement"] == 1.0 and base["nfe"] == 32
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
        if len(calls) == 2 + 2 * 3 + 1:  # warm-up (2), three prompts for both profiles, then Ctrl-C
            raise Interrupted()  # what dlm's SIGINT handler raises
        return real(*args, **kwargs)

    monkeypatch.setattr(decode, "run", interrupted_later)
    r = CliRunner().invoke(app, ["bench", "-m", "dlm-demo", "-p", "speedy", "-n", "16", "--per-task", "2", "--json"])
    assert r.exit_code == 130 and "Traceback" not in r.stderr, (r.exit_code, r.stderr, r.exception)
    out = _json.loads(r.stdout)
    assert out["interrupted"] and out["prompts"] == 3 and out["reps"] == 1
    assert [row["profile"] for row in out["rows"]] == ["baseline", "speedy"]
    assert all(row["runs"] == 3 for row in out["rows"])
    assert r.stderr.strip().splitlines()[-1] == "dlm: interrupted", r.stderr
