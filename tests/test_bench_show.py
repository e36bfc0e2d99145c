"""`dlm bench --show`: each prompt's answer with its score, so a user sees which prompt failed and why;
`--format jsonl` (and json) carry the same answers."""

from __future__ import annotations

import json

from typer.testing import CliRunner

from dlm_cli.cli import app

PROMPTS = [{"prompt": "Sort these numbers: 4 7 1 9 3", "answer": "1 3 4 7 9", "task": "sort"},
           {"prompt": "Sort these numbers: 8 2 5", "answer": "not what it says", "task": "sort"}]


def bench(tmp_path, *args: str):
    mine = tmp_path / "mine.jsonl"
    mine.write_text("".join(json.dumps(p) + "\n" for p in PROMPTS))
    r = CliRunner().invoke(app, ["bench", "-m", "dlm-demo", "-p", "speedy", "--prompts", str(mine), "--reps", "1",
                                 "--threads", "1", *args])
    assert r.exit_code == 0, r.stderr
    return r.stdout


def test_show_prints_every_prompts_answer_with_its_score(tmp_path):
    out = bench(tmp_path, "--show")
    after = out[out.index("answers ("):].splitlines()
    assert after[1] == "[1] sort · Sort these numbers: 4 7 1 9 3 → expected: 1 3 4 7 9"
    assert [line.split() for line in after[2:5]] == [["✓", "1.00", name, "1", "3", "4", "7", "9"]
                                                     for name in ("baseline", "baseline+eotp", "speedy")]
    assert after[5] == "[2] sort · Sort these numbers: 8 2 5 → expected: not what it says"
    assert all(line.split()[:2] == ["✗", "0.00"] and line.split()[3:] == ["2", "5", "8"] for line in after[6:9])
    assert "answers (" not in bench(tmp_path)  # only when asked


def test_jsonl_carries_the_answers_and_their_scores(tmp_path):
    rows = [json.loads(line) for line in bench(tmp_path, "--format", "jsonl").splitlines()]
    assert [r["profile"] for r in rows] == ["baseline", "baseline+eotp", "speedy"]
    for r in rows:
        assert [(a["prompt"], a["answer"].strip(), a["score"]) for a in r["answers"]] == [
            (PROMPTS[0]["prompt"], "1 3 4 7 9", 1.0), (PROMPTS[1]["prompt"], "2 5 8", 0.0)]
        assert r["score"] == 0.5
