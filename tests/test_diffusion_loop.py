"""The dLLM loop on a tiny LLaDA checkpoint: NFE accounting, schedule, EOS handling, caches, seeds."""

from __future__ import annotations

import pytest
import torch

from dlm_cli import profiles
from dlm_cli.decode import run
from dlm_cli.decode.events import Done, Start, Step


class CountingNet(torch.nn.Module):
    """Wraps the network and counts forward calls: the NFE a decoder reports must equal this."""

    def __init__(self, net):
        super().__init__()
        self.inner = net
        self.calls = 0
        self.lm_head = net.lm_head

    def forward(self, *args, **kwargs):
        self.calls += 1
        return self.inner(*args, **kwargs)


@pytest.fixture
def counted(llada_model):
    original = llada_model.net
    llada_model.net = CountingNet(original)
    yield llada_model
    llada_model.net = original


def decode(model, ids, profile="quality", **flags):
    sets = flags.pop("sets", [])
    s = profiles.load(profile, sets=sets, flags={"seed": 0, **flags})
    return list(run(model, ids, s))


def test_quality_commits_one_token_per_step_and_counts_every_forward(counted, prompt_ids):
    events = decode(counted, prompt_ids, "quality", max_new_tokens=32)
    steps = [e for e in events if isinstance(e, Step)]
    done = events[-1]
    assert isinstance(events[0], Start) and isinstance(done, Done)
    assert all(len(s.positions) == 1 for s in steps)
    assert done.nfe == counted.net.calls == 32 == len(steps)
    assert sorted(p for s in steps for p in s.positions) == list(range(32))


@pytest.mark.parametrize("profile,sets", [
    ("speedy", []), ("fast-dllm", []), ("speedy", ["cache=prefix"]), ("speedy", ["cache=none"]),
    ("quality", ["steps=8"]), ("quality", ["remasking=random"]), ("speedy", ["strategy=factor", "factor=2.0"]),
])
def test_every_profile_terminates_without_masks_and_reports_true_nfe(counted, prompt_ids, profile, sets):
    events = decode(counted, prompt_ids, profile, max_new_tokens=48, sets=sets)
    done = events[-1]
    committed = {p for e in events if isinstance(e, Step) for p in e.positions + e.filled}
    assert committed == set(range(48))
    assert done.nfe == counted.net.calls
    assert counted.mask_id not in done.tokens


def test_fewer_steps_commit_several_tokens_per_step(counted, prompt_ids):
    done = decode(counted, prompt_ids, "quality", max_new_tokens=32, sets=["steps=8"])[-1]
    assert done.nfe == 8  # 32 slots in 8 steps: 4 per step


def test_blocks_are_decoded_left_to_right(counted, prompt_ids):
    events = decode(counted, prompt_ids, "speedy", max_new_tokens=64, sets=["eotp=false", "block_length=16"])
    blocks = [max(e.positions) // 16 for e in events if isinstance(e, Step)]
    assert blocks == sorted(blocks) and set(blocks) == {0, 1, 2, 3}
    for e in events:
        if isinstance(e, Step):
            assert {p // 16 for p in e.positions} == {e.block}


class ScriptedNet(torch.nn.Module):
    """Wraps a model's network; ``edit(out, slot_of_row)`` rewrites its logits in place. Counts calls."""

    def __init__(self, model, edit):
        super().__init__()
        self.inner, self.edit = model.net, edit
        self.lm_head = model.net.lm_head
        self.calls = 0

    def forward(self, ids, *, start=0, cache=None, mask=None, rows=None):
        self.calls += 1
        out = self.inner(ids, start=start, cache=cache, mask=mask, rows=rows).clone()
        r0 = start + (rows[0] if rows else 0)
        self.edit(out, lambda i: r0 + i)
        return out


def _force_eos_at(model, position, prompt_len):
    """Make the network predict end-of-text at one slot with certainty (and nowhere else)."""
    eos = model.eos_ids[0]

    def edit(out, pos):
        out[..., eos] = -1e4
        for i in range(out.shape[1]):
            if pos(i) == prompt_len + position:
                out[0, i, :] = -1e4
                out[0, i, eos] = 1e4

    return ScriptedNet(model, edit)


def test_generated_tokens_stop_at_the_first_eos(llada_model, prompt_ids):
    forced = _force_eos_at(llada_model, 5, len(prompt_ids))
    original, llada_model.net = llada_model.net, forced
    try:
        done = decode(llada_model, prompt_ids, "quality", max_new_tokens=32)[-1]
    finally:
        llada_model.net = original
    assert len(done.tokens) == 5 and done.finish_reason == "eos"
    assert forced.calls == 32  # without EoTP the baseline still decodes every slot


def test_eotp_never_decodes_past_an_eos(llada_model, prompt_ids):
    forced = _force_eos_at(llada_model, 5, len(prompt_ids))
    original, llada_model.net = llada_model.net, forced
    try:
        events = decode(llada_model, prompt_ids, "speedy", max_new_tokens=64, sets=["threshold=1.0"])
    finally:
        llada_model.net = original
    done = events[-1]
    decoded = [p for e in events if isinstance(e, Step) for p in e.positions]
    filled = [p for e in events if isinstance(e, Step) for p in e.filled]
    assert max(decoded) == 5 and sorted(filled) == list(range(6, 64))
    assert len(done.tokens) == 5
    assert done.nfe == 6 == forced.calls  # one token per step (τ = 1) up to and including the EOS


def test_same_seed_same_sample_different_seed_different_sample(llada_model, prompt_ids):
    a = decode(llada_model, prompt_ids, "quality", max_new_tokens=24, temperature=1.0, seed=7)[-1]
    b = decode(llada_model, prompt_ids, "quality", max_new_tokens=24, temperature=1.0, seed=7)[-1]
    c = decode(llada_model, prompt_ids, "quality", max_new_tokens=24, temperature=1.0, seed=8)[-1]
    assert a.tokens == b.tokens
    assert a.tokens != c.tokens


def test_cache_matches_a_full_forward_when_the_canvas_has_not_changed(llada_model, prompt_ids):
    m = llada_model
    L = len(prompt_ids) + 32
    x = torch.full((1, L), m.mask_id)
    x[0, : len(prompt_ids)] = torch.tensor(prompt_ids)
    x[0, len(prompt_ids) : len(prompt_ids) + 7] = torch.tensor([30, 31, 32, 33, 34, 35, 36])
    bs, be = len(prompt_ids) + 8, len(prompt_ids) + 16
    full = m.logits(x, 0, L, rows=(bs, be))
    dual = m.new_cache()
    m.logits(x, 0, L, cache=dual)
    assert torch.allclose(m.logits(x, bs, be, cache=dual, rows=(bs, be)), full, atol=1e-5)
    prefix = m.new_cache()
    m.logits(x, 0, L, cache=prefix)
    prefix.truncate(bs)
    assert prefix.length == bs
    assert torch.allclose(m.logits(x, bs, L, cache=prefix, rows=(bs, be)), full, atol=1e-5)


def test_decode_time_excludes_the_consumer(llada_model, prompt_ids):
    import time

    s = profiles.load("quality", flags={"seed": 0, "max_new_tokens": 8})
    done = None
    for ev in run(llada_model, prompt_ids, s):
        if isinstance(ev, Step):
            time.sleep(0.05)  # a slow view
        done = ev
    assert done.seconds < 8 * 0.05


@pytest.mark.parametrize("profile,sets", [
    ("quality", []), ("speedy", []), ("freedave", []), ("speedy", ["temperature=0.8"]), ("prophet", []),
])
def test_a_model_that_prefers_the_mask_token_still_fills_every_slot(llada_model, prompt_ids, profile, sets):
    # Committing the mask token would leave its slot masked: the loop would spin forever. It is
    # never proposed; the next most likely token is, and every slot gets a real token.
    mask = llada_model.mask_id

    def edit(out, pos):
        out[..., mask] = out.max() + 10.0

    original = llada_model.net
    llada_model.net = ScriptedNet(llada_model, edit)
    try:
        events = decode(llada_model, prompt_ids, profile, max_new_tokens=24, sets=sets)
    finally:
        llada_model.net = original
    committed = [t for e in events if isinstance(e, Step) for t in e.tokens]
    assert len(committed) >= 1 and mask not in committed
    assert {p for e in events if isinstance(e, Step) for p in e.positions + e.filled} == set(range(24))
