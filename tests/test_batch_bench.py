"""dlm bench --batch-size: the same rows over the same prompts, decoded N at a time; refusals name the row."""

from __future__ import annotations

import json

from typer.testing import CliRunner

from dlm_cli.cli import app

runner = CliRunner()
PROMPTS = ["hello world", "sort: 3 1 2", "reverse the list a b c please", "fix the typos in this text", "0 1 2"]


def bench(model, tmp_path, *args):
    p = tmp_path / "p.jsonl"
    p.write_text("".join(json.dumps({"prompt": t, "answer": "1 2 3", "task": "t"}) + "\n" for t in PROMPTS))
    return runner.invoke(app, ["bench", "-m", str(model), "--prompts", str(p), "-n", "32", "--reps", "1",
                               "--json", *args])


def test_batched_bench_rows_equal_batch_one_rows(tiny_llada, tmp_path):
    rows = {}
    for n in (1, 4):  # 5 prompts in batches of 4: a full batch and a batch of one
        r = bench(tiny_llada, tmp_path, "-p", "speedy", "--set", "cache=none", "--batch-size", str(n))
        assert r.exit_code == 0, r.stderr
        out = json.loads(r.stdout)
        assert out["batch_size"] == n and out["prompts"] == len(PROMPTS)
        rows[n] = {row["profile"]: row for row in out["rows"]}
    assert list(rows[4]) == ["baseline", "baseline+eotp", "speedy"] == list(rows[1])
    for name, one in rows[1].items():
        four = rows[4][name]
        assert four["batch_size"] == 4 and one["batch_size"] == 1
        for key in ("nfe", "generated_tokens", "tokens_per_nfe", "agreement", "score", "runs"):
            assert four[key] == one[key], (name, key)
    assert rows[4]["speedy"]["nfe"] < rows[4]["baseline"]["nfe"]


def test_a_block_diffusion_model_batches_with_its_exact_cache(tmp_path):
    from checkpoints import make_sdar

    sdar = make_sdar(tmp_path / "sdar", sharpen=6.0)
    rows = {}
    for n in (1, 3):
        r = bench(sdar, tmp_path, "-p", "speedy", "--batch-size", str(n))  # speedy's dual cache
        assert r.exit_code == 0, r.stderr
        rows[n] = json.loads(r.stdout)["rows"]
    assert [(row["profile"], row["cache"]) for row in rows[3]] == [("baseline", "prefix"), ("baseline+eotp", "prefix"),
                                                                    ("speedy", "dual")]
    for one, three in zip(rows[1], rows[3]):
        for key in ("nfe", "generated_tokens", "agreement", "score"):
            assert three[key] == one[key], (one["profile"], key)


def test_a_profile_batching_cannot_run_is_refused_naming_it(tiny_llada, tmp_path):
    r = bench(tiny_llada, tmp_path, "-p", "elastic", "--batch-size", "4")
    assert r.exit_code == 2
    lines = r.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("dlm: ")
    assert "'elastic'" in lines[0] and "elastic_threshold=0" in lines[0]
    r = bench(tiny_llada, tmp_path, "-p", "factor", "--set", "cache=none", "--batch-size", "2")
    assert r.exit_code == 2 and "'factor'" in r.stderr and "strategy" in r.stderr
