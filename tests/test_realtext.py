"""The real-language prompt suite (demo/realtext.py): held-out split, typo injection and scoring, bench wiring."""

from __future__ import annotations

import json
import random

import pytest

from dlm_cli.demo import realtext as R


def test_typo_scores_count_fixed_typos_and_changed_words():
    original = "The quick brown fox jumps over the lazy dog near the river bank today."
    noisy, typos = R.inject_typos(original, random.Random(3), rate=0.3)
    assert noisy != original and typos
    assert R.typo_scores(original, noisy, typos, original) == (1.0, 0.0)
    fixed, changed = R.typo_scores(original, noisy, typos, noisy)
    assert fixed == 0.0 and changed == 0.0  # copying the typos fixes none and changes nothing else
    words = original.split()
    other = next(i for i in range(len(words)) if i not in typos)
    words[other] = "zebra"
    fixed, changed = R.typo_scores(original, noisy, typos, " ".join(words))
    assert fixed == 1.0 and changed == pytest.approx(1 / (len(words) - len(typos)))


def test_each_typo_is_one_edit_of_the_word():
    rng = random.Random(0)
    for _ in range(300):
        w = rng.choice(["function", "module", "exception", "Python", "returns", "string", "(lists),", "2026"])
        t = R._typo(w, rng)
        assert t != w and abs(len(t) - len(w)) <= 1
        if len(t) == len(w):  # a swap of neighbours or one replaced letter
            assert len([i for i in range(len(w)) if t[i] != w[i]]) in (1, 2)


def test_the_eval_set_is_held_out_from_training_sources():
    from dlm_cli.demo.adapt import training_prompts

    paras = R.paragraphs()
    held = {p.text for p in paras if p.held_out}
    train = {p.text for p in paras if not p.held_out}
    assert held and train and not held & train
    evals = R.eval_prompts()
    kinds = [p.kind for p in evals]
    assert len(evals) >= 30 and {k: kinds.count(k) for k in set(kinds)} == {"typo": 14, "chat": 10, "continue": 6,
                                                                              "reformat": 6}
    for p in evals:
        if p.kind == "typo":
            assert p.original in held and 60 <= len(p.original.split()) <= 150 and p.prompt.startswith("fix the typos\n\n")
        if p.kind in ("continue", "reformat"):
            assert p.material in held
    chat = {p.prompt for p in evals if p.kind == "chat"}
    assert not chat & {p.prompt for p in training_prompts(0, 300, 0) if p.kind == "chat"}


def test_bench_on_a_real_model_uses_the_real_suite_and_scores_typos(tmp_path):
    from typer.testing import CliRunner

    from checkpoints import make_adapter
    from dlm_cli.cli import app

    d = make_adapter(tmp_path / "tiny-dlm")
    r = CliRunner().invoke(app, ["bench", "-m", str(d), "--tasks", "typo,reformat", "--per-task", "1", "--reps", "1",
                                 "-p", "speedy", "-n", "8", "--json"])
    assert r.exit_code == 0, r.output
    out = json.loads(r.stdout)
    assert out["prompts"] == 2
    for row in out["rows"]:
        assert set(row["task_scores"]) == {"typo", "reformat"}
        assert 0.0 <= row["task_scores"]["typo"] <= 1.0
    default = CliRunner().invoke(app, ["bench", "-m", str(d), "--reps", "1", "-p", "speedy", "-n", "8", "--json"])
    assert default.exit_code == 0 and json.loads(default.stdout)["prompts"] == 2  # one typo fix, one chat answer
    bad = CliRunner().invoke(app, ["bench", "-m", str(d), "--tasks", "copy"])
    assert bad.exit_code == 2 and "the toy tasks need -m dlm-demo" in bad.stderr
