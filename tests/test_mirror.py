"""Mirror-SD's schedule on one device (decode/mirror.py): the output is speculative decoding's (greedy: ar's), the
early exit's branch-reuse test is right where it can be checked by hand, and what cannot run is refused."""

from __future__ import annotations

import pytest

from checkpoints import make_llama
from dlm_cli import profiles
from dlm_cli.decode import run
from dlm_cli.decode.events import Done
from dlm_cli.errors import DlmError, UsageError

TEXTS = ["Copy: 4 8 15 16 23 42 7 9", "Sort these numbers: 9 3 7 1", "Add: 12 + 30", "Tell me a story about a cat."]


@pytest.fixture(scope="module")
def pair():
    from dlm_cli.models.loading import load
    from dlm_cli.prompting import encode

    target, draft = load("dlm-demo-ar"), load("dlm-demo-ar-draft")
    return target, draft, [encode(target.tokenizer, t) for t in TEXTS]


def done(model, ids, profile, sets=(), draft=None, **flags):
    s = profiles.load(profile, sets=list(sets), flags={"seed": 3, "max_new_tokens": 40, **flags})
    return [e for e in run(model, ids, s, draft=draft) if isinstance(e, Done)][0]


def test_greedy_output_is_ar_and_the_window_is_fixed(pair):
    target, draft, ids = pair
    for x in ids:
        got = done(target, x, "mirror", draft=draft)
        assert got.tokens == done(target, x, "ar").tokens
        assert got.extra["mean_draft_length"] == 4.0 or got.verifies <= 2  # no adaptive length (last windows cut)
        assert got.extra["branch_reuses"] + got.extra["fallbacks"] == got.verifies - 1  # every verdict but the last


@pytest.mark.parametrize("temperature", [0.0, 0.8])
def test_the_token_stream_is_speculative_decodings_with_the_same_fixed_window(pair, temperature):
    target, draft, ids = pair
    spec = ["draft_confidence=0", "adaptive_draft=false", "draft_length=3"]
    for x in ids:
        a = done(target, x, "mirror", ["draft_length=3"], draft=draft, temperature=temperature)
        b = done(target, x, "speculative", spec, draft=draft, temperature=temperature)
        assert (a.tokens, a.nfe, a.drafted, a.accepted) == (b.tokens, b.nfe, b.drafted, b.accepted)


def test_an_exit_at_the_last_layer_reuses_every_branch_and_an_early_one_not(pair):
    """At the last layer the early exit is the target's own output: its top-1 is the greedy correction, always."""
    target, draft, ids = pair
    depth = target.depth
    last = [done(target, x, "mirror", [f"mirror_exit_layer={depth}", "mirror_topk=1"], draft=draft) for x in ids]
    assert all(d.extra["fallbacks"] == 0 and d.extra["branch_reuses"] == d.verifies - 1 for d in last)
    assert sum(d.extra["branch_reuses"] for d in last) >= 5
    first = [done(target, x, "mirror", ["mirror_exit_layer=1", "mirror_topk=1"], draft=draft) for x in ids]
    assert sum(d.extra["fallbacks"] for d in first) > 0
    # The projection never exceeds the serial time it rearranges.
    assert all(d.extra["projected_two_device_seconds"] <= d.extra["serial_seconds"] + 1e-6 for d in last + first)


def test_what_mirror_cannot_run_is_refused(pair, tmp_path):
    from dlm_cli.models.loading import load

    target, draft, ids = pair
    with pytest.raises(UsageError, match="needs a draft model"):
        done(target, ids[0], "mirror")
    with pytest.raises(UsageError, match="deeper than"):
        done(target, ids[0], "mirror", ["mirror_exit_layer=99"], draft=draft)
    other = load(str(make_llama(tmp_path / "other", vocab_size=120)))
    with pytest.raises(DlmError, match="different tokenizer"):
        done(target, ids[0], "mirror", draft=other)
