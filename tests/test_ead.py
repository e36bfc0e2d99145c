"""EAD: the small model writes while the rolling entropy is low, the large one while it is high."""

from __future__ import annotations

import pytest
from typer.testing import CliRunner

from dlm_cli import profiles
from dlm_cli.cli import app
from dlm_cli.decode import run
from dlm_cli.models.loading import load
from dlm_cli.prompting import encode

PROMPT = "Copy this list: 5 12 9 33 2 8 41 7"


@pytest.fixture(scope="module")
def pair():
    return load("dlm-demo-ar"), load("dlm-demo-ar-draft")


def decode(model, ids, profile, draft=None, **sets):
    s = profiles.load(profile, sets=[f"{k}={v}" for k, v in sets.items()], flags={"max_new_tokens": 24, "seed": 0})
    return list(run(model, ids, s, draft=draft))[-1]


def test_a_threshold_never_reached_is_the_small_models_own_output(pair):
    large, small = pair
    ids = encode(large.tokenizer, PROMPT, chat_template=True)
    done = decode(large, ids, "ead", small, ead_threshold=1000.0)
    assert done.tokens == decode(small, ids, "ar").tokens
    assert done.nfe == 0 and done.extra["large_share"] == 0.0 and done.draft_nfe == len(done.tokens) + 1


def test_a_zero_threshold_hands_over_after_the_first_token(pair):
    large, small = pair
    ids = encode(large.tokenizer, PROMPT, chat_template=True)
    done = decode(large, ids, "ead", small, ead_threshold=0.0, ead_min_run=1)
    first = decode(small, ids, "ar").tokens[0]
    assert done.tokens[0] == first
    rest = decode(large, ids + [first], "ar")
    assert done.tokens[1:] == rest.tokens  # the large model's own continuation of that prefix
    assert done.extra["switches"] == 1 and done.draft_nfe == 1 and done.nfe == len(rest.tokens) + 1


def test_ead_needs_a_small_ar_model():
    r = CliRunner().invoke(app, ["generate", "-m", "dlm-demo-ar", "-p", "ead", "hi"])
    assert r.exit_code == 2 and "pass the small one as --draft" in r.stderr
