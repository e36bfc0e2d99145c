"""The repetition stop (stop_repeats, stop_ngram): where it cuts, for AR and dLLM strategies, and in --json."""

from __future__ import annotations

import json
import random

import pytest
from typer.testing import CliRunner

from dlm_cli.decode.repetition import RepetitionStop, first_repeat

# The demo models copy a list exactly: "12 12 12 ..." is a real model writing a repetition.
REPEATING = "Copy: 12 12 12 12 12 12"


def brute_cut(tokens: list[int], n: int, r: int) -> int | None:
    """The definition, written plainly: the first token that completes an n-gram seen r times before."""
    for i in range(n - 1, len(tokens)):
        gram = tokens[i - n + 1 : i + 1]
        if sum(tokens[j - n + 1 : j + 1] == gram for j in range(n - 1, i)) >= r:
            return i + 1
    return None


def test_stop_triggers_at_the_token_that_completes_the_repeat_and_not_before():
    unit = [5, 6, 7, 8]
    # stop_ngram 4, stop_repeats 2: the third "5 6 7 8" ends at index 11.
    assert first_repeat(unit * 3 + [9], 4, 2) == 12
    assert first_repeat(unit * 3, 4, 2) == 12
    assert first_repeat(unit * 2 + unit[:3], 4, 2) is None  # one token short
    assert first_repeat(unit * 3, 4, 3) is None  # a fourth occurrence is asked for
    assert first_repeat([1, 1, 1, 1, 1], 1, 3) == 4  # a one-token loop: the fourth "1"
    assert first_repeat([1, 1, 1, 1, 1], 2, 2) == 4  # overlapping bigrams count: ends at 1, 2, 3
    assert first_repeat(list(range(50)), 1, 1) is None  # nothing repeats
    stop = RepetitionStop(4, 2)
    assert [stop.feed([t]) for t in unit * 3] == [None] * 11 + [1]


def test_stop_is_the_same_whatever_pieces_the_tokens_arrive_in():
    rng = random.Random(0)
    for _ in range(400):
        tokens = [rng.randrange(4) for _ in range(rng.randrange(60))]
        n, r = rng.randint(1, 5), rng.randint(1, 3)
        stop, pos, got = RepetitionStop(n, r), 0, None
        while pos < len(tokens):  # as a dLLM's final prefix grows: a few tokens per step
            piece = tokens[pos : pos + rng.randint(1, 12)]
            keep = stop.feed(piece)
            if keep is not None:
                got = pos + keep
                break
            pos += len(piece)
        assert got == brute_cut(tokens, n, r)


@pytest.fixture(scope="module")
def demo():
    from dlm_cli.models.loading import load

    return {name: load(name) for name in ("dlm-demo", "dlm-demo-ar", "dlm-demo-ar-draft")}


def decode(model, profile: str, sets: list[str], draft=None, n: int = 32):
    from dlm_cli import profiles
    from dlm_cli.decode import run
    from dlm_cli.prompting import encode

    s = profiles.load(profile, sets=sets, flags={"max_new_tokens": n, "seed": 0})
    return list(run(model, encode(model.tokenizer, REPEATING), s, draft=draft))[-1]


@pytest.mark.parametrize("model,profiles", [("dlm-demo-ar", ("ar", "speculative", "lookup")),
                                            ("dlm-demo", ("quality", "freedave", "speedy", "fast-dllm"))])
def test_every_strategy_gives_its_output_cut_where_the_stop_says(demo, model, profiles):
    m, draft = demo[model], demo["dlm-demo-ar-draft"] if model == "dlm-demo-ar" else None
    outputs = {}
    for profile in profiles:
        free = decode(m, profile, ["stop_repeats=0"], draft)
        assert free.finish_reason == "eos" and m.tokenizer.decode(free.tokens) == "12 12 12 12 12 12"
        cut = brute_cut(free.tokens, 2, 2)
        assert cut is not None and cut < len(free.tokens)
        stopped = decode(m, profile, ["stop_repeats=2", "stop_ngram=2"], draft)
        assert stopped.finish_reason == "repetition"
        assert stopped.tokens == free.tokens[:cut]
        assert stopped.nfe <= free.nfe
        never = decode(m, profile, ["stop_repeats=9", "stop_ngram=2"], draft)  # only 5 repeats exist
        assert never.finish_reason == "eos" and never.tokens == free.tokens and never.nfe == free.nfe
        outputs[profile] = stopped.tokens
    lossless = ("speculative", "lookup") if model == "dlm-demo-ar" else ("freedave",)
    for profile in lossless:  # still the baseline's output, with the same keys
        assert outputs[profile] == outputs[profiles[0]]


def test_one_token_per_step_stops_at_the_step_that_completes_the_repeat(demo):
    """The AR baseline writes one token per NFE: the stop's NFE is the cut's position."""
    free = decode(demo["dlm-demo-ar"], "ar", ["stop_repeats=0"])
    cut = brute_cut(free.tokens, 2, 2)
    stopped = decode(demo["dlm-demo-ar"], "ar", ["stop_repeats=2", "stop_ngram=2"])
    assert stopped.nfe == cut < free.nfe


@pytest.mark.parametrize("model", ["dlm-demo", "dlm-demo-ar"])
def test_json_reports_finish_reason_repetition(model):
    from dlm_cli.cli import app

    args = ["generate", "-m", model, REPEATING, "--json", "-n", "32", "--set", "stop_repeats=2", "--set",
            "stop_ngram=2"]
    res = CliRunner().invoke(app, args)
    assert res.exit_code == 0, res.output
    out = json.loads(res.stdout)
    assert out["finish_reason"] == "repetition" and out["text"] == "12 12 12 1"
    assert out["settings"]["stop_repeats"] == 2 and out["settings"]["stop_ngram"] == 2
    res = CliRunner().invoke(app, args[:-4] + ["--set", "stop_repeats=0"])
    assert json.loads(res.stdout)["finish_reason"] == "eos"
    res = CliRunner().invoke(app, [a for a in args if a != "--json"])  # the text, and the stats line says why
    assert res.exit_code == 0 and res.stdout == "12 12 12 1\n"
    assert "stopped: the text repeats" in res.stderr


def test_bad_stop_values_are_one_line_usage_errors():
    from dlm_cli.cli import app

    res = CliRunner().invoke(app, ["generate", "-m", "dlm-demo", "x", "--set", "stop_ngram=0"])
    assert res.exit_code == 2 and "stop_ngram" in res.output and "≥ 1" in res.output
    res = CliRunner().invoke(app, ["generate", "-m", "dlm-demo", "x", "--set", "stop_repeats=-1"])
    assert res.exit_code == 2 and "stop_repeats" in res.output
