"""Batched dLLM decoding (decode/batch.py): every row's events equal its batch-1 events, on every family."""

from __future__ import annotations

import pytest
import torch

from batching import MAKERS, TEXTS, Forwards, family, settings, view  # noqa: F401  (family: a fixture)
from dlm_cli.decode import run
from dlm_cli.decode.batch import batch_logits, run_batch
from dlm_cli.decode.events import Done
from dlm_cli.errors import UsageError

CASES = [("quality", []), ("speedy", ["cache=none"]), ("quality", ["steps=8"]), ("speedy", ["cache=prefix"]),
         ("speedy", [])]  # a cache: exact on block-diffusion models, Fast-dLLM's approximate one on LLaDA and Dream


@pytest.mark.parametrize("profile,sets", CASES)
def test_batch_of_eight_equals_each_prompt_alone(family, profile, sets):
    name, model, ids = family
    alone = [view(list(run(model, i, settings(profile, sets)))) for i in ids]
    count = Forwards(model)
    try:
        pairs = list(run_batch(model, ids, settings(profile, sets)))
    finally:
        count.close()
    together = [view([e for r, e in pairs if r == k]) for k in range(len(ids))]
    for k in range(len(ids)):
        assert together[k] == alone[k], f"{name} {profile} {sets}: row {k} differs from its batch-1 run"
    nfe = [a[2] for a in alone]
    # One forward per step of the batch: as many as the slowest row's, each over the rows still decoding.
    assert len(count.sizes) == max(nfe)
    assert count.sizes == [sum(n > s for n in nfe) for s in range(max(nfe))]


def test_rows_really_move_apart(family):
    """The exactness test above is only telling if rows take different step counts, blocks and stops."""
    name, model, ids = family
    dones = [e for _, e in run_batch(model, ids, settings("speedy", ["cache=none"])) if isinstance(e, Done)]
    assert len({d.nfe for d in dones}) > 1, name
    assert len({len(i) for i in ids}) >= 6  # prompts of different lengths: different padding per row


def test_sampled_rows_equal_their_own_seed_alone(family):
    name, model, ids = family
    flags = {"temperature": 0.8}
    pairs = list(run_batch(model, ids[:4], settings("speedy", ["cache=none"], seed=7, **flags)))
    for k in range(4):
        alone = view(list(run(model, ids[k], settings("speedy", ["cache=none"], seed=7 + k, **flags))))
        assert view([e for r, e in pairs if r == k]) == alone


def test_padding_changes_no_row_logits_beyond_rounding(family):
    """batch_logits over left-padded rows against Denoiser.logits over each row alone (a whole canvas)."""
    name, model, ids = family
    G = 16
    top = max(map(len, ids))
    W = top + G
    X = torch.full((len(ids), W + 1), model.mask_id, dtype=torch.long)
    for k, i in enumerate(ids):
        X[k, top - len(i) : top] = torch.tensor(i)
    offs = torch.tensor([top - len(i) for i in ids])
    cols = torch.arange(top, W)[None, :].expand(len(ids), -1).contiguous()
    end = -(-W // model.block_size) * model.block_size + max(offs).item() if model.block_size else W
    got = batch_logits(model, X, W, end, offs, cols)
    for k, i in enumerate(ids):
        x = X[k : k + 1, offs[k] : W]
        want = model.logits(x, 0, x.shape[1], rows=(len(i), len(i) + G))[0]
        torch.testing.assert_close(got[k], want, rtol=1e-4, atol=1e-4)
        assert torch.equal(got[k].argmax(-1), want.argmax(-1))


@pytest.mark.parametrize("profile,sets,word", [
    ("speedy", ["refresh=2"], "refresh=0"), ("speedy", ["elastic_threshold=0.5"], "elastic_threshold=0"),
    ("speedy", ["cache=none", "rank=margin"], "rank"), ("factor", ["cache=none"], "strategy"),
    ("quality", ["remasking=random"], "remasking"), ("speedy-lookup", ["cache=none"], "lookup"),
])
def test_what_batching_does_not_do_is_refused_with_the_fix(llada_model, prompt_ids, profile, sets, word):
    with pytest.raises(UsageError, match=word):
        list(run_batch(llada_model, [prompt_ids, prompt_ids], settings(profile, sets)))


@pytest.mark.parametrize("flags", [
    {"stop_repeats": 1, "stop_ngram": 2},  # the repetition stop cuts rows at different steps
    {"max_new_tokens": 21, "block_length": 8},  # a last block narrower than the others
])
def test_stops_and_ragged_blocks_stay_exact(llada_model, flags):
    from dlm_cli.prompting import encode

    ids = [encode(llada_model.tokenizer, t) for t in TEXTS[:5]] + [encode(llada_model.tokenizer, TEXTS[0])]
    alone = [view(list(run(llada_model, i, settings("speedy", ["cache=none"], **flags)))) for i in ids]
    pairs = list(run_batch(llada_model, ids, settings("speedy", ["cache=none"], **flags)))
    assert [view([e for r, e in pairs if r == k]) for k in range(len(ids))] == alone
    if "stop_repeats" in flags:
        assert "repetition" in {a[-1] for a in alone}


def test_one_prompt_is_a_batch_too(llada_model, prompt_ids):
    alone = view(list(run(llada_model, prompt_ids, settings("quality", []))))
    assert view([e for _, e in run_batch(llada_model, [prompt_ids], settings("quality", []))]) == alone
