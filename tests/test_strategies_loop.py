"""Every strategy end to end on a tiny LLaDA: termination, no masks, true NFE, EoTP, FreeDave's
losslessness, cache refresh exactness, and the combinations validation refuses."""

from __future__ import annotations

import pytest
import torch

from dlm_cli import profiles
from dlm_cli.decode import run
from dlm_cli.decode.events import Step
from dlm_cli.errors import UsageError

from test_cli import dlm, assert_one_line_error
from test_diffusion_loop import CountingNet, ScriptedNet, _force_eos_at


def settings(strategy: str, sets=(), **flags):
    return profiles.build({"strategy": strategy}, "test", profile="test", sets=list(sets),
                          flags={"seed": 0, **flags})


def decode(model, ids, strategy, sets=(), **flags):
    return list(run(model, ids, settings(strategy, sets, **flags)))


@pytest.fixture
def counted(llada_model):
    original = llada_model.net
    llada_model.net = CountingNet(original)
    yield llada_model
    llada_model.net = original


CASES = [
    ("baseline", ["rank=margin", "steps=24"]), ("baseline", ["rank=entropy", "steps=24"]),
    ("threshold", ["rank=margin"]), ("eb", []), ("eb", ["cache=dual"]), ("prophet", ["steps=24"]),
    ("credit", []), ("credit", ["cache=prefix"]), ("localleap", ["cache=dual"]),
    ("adablock", ["adablock_max=40", "block_length=16"]), ("adablock", ["cache=dual", "delimiter_threshold=0.0"]),
    ("edit", ["threshold=0.5", "edit_threshold=0.3"]), ("edit", ["cache=dual", "threshold=0.5", "edit_threshold=0.3"]),
    ("freedave", []), ("threshold", ["cache=dual", "refresh=2"]),
    ("threshold", ["cache=prefix", "elastic_threshold=0.95"]),
    ("credit", ["temperature=0.8", "top_k=20"]), ("edit", ["temperature=0.8", "threshold=0.6", "edit_threshold=0.4"]),
    ("prophet", ["temperature=0.8", "steps=24"]), ("adablock", ["temperature=0.8", "top_p=0.9"]),
    ("eb", ["temperature=0.8"]), ("localleap", ["temperature=0.8"]),
    ("threshold", ["lookup=true"]), ("credit", ["lookup=true", "cache=dual"]), ("edit", ["lookup=true", "threshold=0.5"]),
]


@pytest.mark.parametrize("strategy,sets", CASES)
def test_each_strategy_terminates_without_masks_and_reports_true_nfe(counted, prompt_ids, strategy, sets):
    events = decode(counted, prompt_ids, strategy, sets, max_new_tokens=48, block_length=32)
    done = events[-1]
    steps = [e for e in events if isinstance(e, Step)]
    committed = {p for e in steps for p in e.positions + e.filled}
    assert committed == set(range(48))
    assert done.nfe == counted.net.calls
    assert counted.mask_id not in done.tokens
    assert steps[-1].nfe == done.nfe


@pytest.mark.parametrize("strategy,sets", [
    ("threshold", []), ("eb", []), ("prophet", []), ("credit", []), ("localleap", []), ("adablock", []),
    ("edit", ["threshold=0.5", "edit_threshold=0.0"]), ("freedave", []), ("baseline", ["rank=entropy"]),
    ("threshold", ["cache=dual", "refresh=2"]),
])
def test_eotp_never_decodes_or_edits_past_an_eos_with_any_rule(llada_model, prompt_ids, strategy, sets):
    forced = _force_eos_at(llada_model, 5, len(prompt_ids))
    original, llada_model.net = llada_model.net, forced
    try:
        events = decode(llada_model, prompt_ids, strategy, sets, max_new_tokens=64, eotp=True)
    finally:
        llada_model.net = original
    steps = [e for e in events if isinstance(e, Step)]
    eos_step = next(i for i, e in enumerate(steps) if 5 in e.positions)
    for e in steps[eos_step:]:
        assert all(p <= 5 for p in e.positions + e.edited), (strategy, e)
    assert sorted(p for e in steps for p in e.filled) == [p for p in range(6, 64)
                                                           if p not in {q for e in steps[:eos_step + 1]
                                                                        for q in e.positions}]
    assert len(events[-1].tokens) == 5


def test_prophet_commits_everything_once_the_gap_is_large(counted, prompt_ids):
    """A network certain of every slot: the gap passes 7.5 at the first step, so the block is filled from
    that step's logits and the rest of the canvas from one more forward."""
    inner = counted.net.inner

    class Certain(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.lm_head = inner.lm_head

        def forward(self, ids, **kw):
            out = inner(ids, **kw)
            out[..., 7] += 100.0
            return out

    counted.net.inner = Certain()
    try:
        events = decode(counted, prompt_ids, "prophet", max_new_tokens=64, block_length=16)
    finally:
        counted.net.inner = inner
    steps = [e for e in events if isinstance(e, Step)]
    assert events[-1].nfe == counted.net.calls == 2
    assert [len(e.positions) for e in steps] == [16, 48]


@pytest.mark.parametrize("sets", [[], ["eotp=true"], ["block_length=16"]])
def test_freedave_output_equals_the_one_token_per_step_baseline_with_fewer_nfe(llada_model, prompt_ids, sets):
    base = decode(llada_model, prompt_ids, "baseline", sets, max_new_tokens=64)[-1]
    fd = decode(llada_model, prompt_ids, "freedave", sets + ["draft_length=6"], max_new_tokens=64)[-1]
    assert fd.tokens == base.tokens
    assert fd.nfe < base.nfe == 64 or "eotp=true" in sets


@pytest.mark.parametrize("cache", ["prefix", "dual"])
@pytest.mark.parametrize("strategy", ["threshold", "credit", "edit"])
def test_refresh_every_step_equals_no_cache(llada_model, prompt_ids, cache, strategy):
    plain = decode(llada_model, prompt_ids, strategy, max_new_tokens=48, block_length=16)
    fresh = decode(llada_model, prompt_ids, strategy, [f"cache={cache}", "refresh=1"], max_new_tokens=48,
                   block_length=16)
    stale = decode(llada_model, prompt_ids, strategy, [f"cache={cache}"], max_new_tokens=48, block_length=16)
    assert fresh[-1].tokens == plain[-1].tokens and fresh[-1].nfe == plain[-1].nfe
    assert [e.positions for e in fresh if isinstance(e, Step)] == [e.positions for e in plain if isinstance(e, Step)]
    assert fresh[-1].refreshes == fresh[-1].nfe - 3  # every step but the three block starts
    assert stale[-1].refreshes == 0


def test_elastic_refresh_fires_on_drift_and_never_with_a_tiny_threshold(llada_model, prompt_ids):
    eager = decode(llada_model, prompt_ids, "threshold", ["cache=dual", "elastic_threshold=0.999999"],
                   max_new_tokens=48, block_length=16)[-1]
    never = decode(llada_model, prompt_ids, "threshold", ["cache=dual", "elastic_threshold=1e-9"],
                   max_new_tokens=48, block_length=16)[-1]
    dual = decode(llada_model, prompt_ids, "threshold", ["cache=dual"], max_new_tokens=48, block_length=16)[-1]
    assert eager.refreshes > 0
    assert never.refreshes == 0 and never.tokens == dual.tokens and never.nfe == dual.nfe


@pytest.mark.parametrize("sets,fragments", [
    (["strategy=threshold", "refresh=2"], ["refresh = 2", "cache = 'none'", "prefix"]),
    (["strategy=threshold", "elastic_threshold=0.9"], ["elastic_threshold", "cache = 'none'"]),
    (["strategy=freedave", "cache=dual"], ["'freedave' cannot be used with cache = 'dual'", "cache = \"none\""]),
    (["strategy=freedave", "temperature=0.7"], ["freedave", "temperature = 0"]),
    (["strategy=threshold", "rank=entropy"], ["rank = 'entropy'", "strategy = \"eb\""]),
    (["strategy=adablock", "adablock_min=40", "adablock_max=20"], ["adablock_min = 40", "adablock_max = 20"]),
    (["strategy=threshold", "credit_decay=0.5"], ["unknown key 'credit_decay' for strategy 'threshold'"]),
    (["strategy=prophet", "threshold=0.9"], ["unknown key 'threshold' for strategy 'prophet'"]),
    (["strategy=s2d2", "lookup=true"], ["lookup = true", "'s2d2' runs its own draft-and-verify loop"]),
])
def test_impossible_combinations_are_refused_with_one_line(tiny_llada, sets, fragments):
    with pytest.raises(UsageError) as info:
        profiles.load("quality", sets=sets)
    for f in fragments:
        assert f in str(info.value), str(info.value)
    args = ["generate", "-m", str(tiny_llada), "hi", "-n", "8", "-p", "quality"]
    for s in sets:
        args += ["--set", s]
    assert_one_line_error(dlm(*args), 2, *fragments)


@pytest.mark.parametrize("name", ["prophet", "credit", "localleap", "adablock", "llada21-s", "llada21-q", "freedave",
                                  "elastic", "eb", "fast-dllm", "speedy", "quality"])
def test_every_builtin_profile_decodes(llada_model, prompt_ids, name):
    s = profiles.load(name, flags={"seed": 0, "max_new_tokens": 24})
    done = list(run(llada_model, prompt_ids, s))[-1]
    assert done.nfe >= 1 and llada_model.mask_id not in done.tokens


def _forcing(model, slot_token: dict[int, int], prompt_len: int):
    """The network, but certain of ``token`` at generation slot ``slot`` for each item of ``slot_token``."""

    def edit(out, pos):
        for i in range(out.shape[1]):
            token = slot_token.get(pos(i) - prompt_len)
            if token is not None:
                out[0, i, :] = -1e4
                out[0, i, token] = 1e4

    return ScriptedNet(model, edit)


def test_adablock_ends_the_block_just_after_a_confident_delimiter(llada_model, prompt_ids):
    dot = llada_model.tokenizer.convert_tokens_to_ids(".")
    forced = _forcing(llada_model, {9: dot}, len(prompt_ids))
    original, llada_model.net = llada_model.net, forced
    try:
        events = decode(llada_model, prompt_ids, "adablock", ["adablock_min=4", "adablock_max=24", "eotp=false"],
                        max_new_tokens=48, block_length=16)
    finally:
        llada_model.net = original
    blocks: dict[int, set[int]] = {}
    for e in events:
        if isinstance(e, Step):
            blocks.setdefault(e.block, set()).update(e.positions)
    assert blocks[0] == set(range(10))  # the block ends right after the '.' at slot 9
    assert min(blocks[1]) == 10


@pytest.fixture(scope="module")
def block_model(tmp_path_factory):
    from checkpoints import make_fast_dllm_v2

    from dlm_cli.models.loading import load

    return load(str(make_fast_dllm_v2(tmp_path_factory.mktemp("bd") / "fdv2", sharpen=4.0, bd_size=8)))


@pytest.mark.parametrize("strategy,sets", [
    ("adablock", ["adablock_max=40", "delimiter_threshold=0.0", "delimiters=abcdefghijklmnopqrstuvwxyz.,"]),
    ("adablock", ["cache=dual", "delimiter_threshold=0.0", "delimiters=abcdefghijklmnopqrstuvwxyz.,"]),
    ("prophet", ["cache=prefix"]), ("edit", ["cache=dual", "threshold=0.5", "edit_threshold=0.2"]),
    ("threshold", ["cache=dual", "refresh=1", "elastic_threshold=0.9"]),
])
def test_block_diffusion_models_never_decode_across_their_block_grid(block_model, strategy, sets):
    from dlm_cli.prompting import encode

    ids = encode(block_model.tokenizer, "sort these numbers: 3 1 2")
    P = len(ids)
    events = decode(block_model, ids, strategy, sets, max_new_tokens=40, block_length=16)
    grid: dict[int, set[int]] = {}
    for e in events:
        if isinstance(e, Step):
            grid.setdefault(e.block, set()).update((P + p) // 8 for p in e.positions + e.edited)
    assert all(len(g) == 1 for g in grid.values()), grid
    assert block_model.mask_id not in events[-1].tokens


def test_prophet_on_a_block_diffusion_model_finishes_one_model_block_at_a_time(block_model):
    from dlm_cli.prompting import encode

    inner = block_model.net

    class Certain(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.lm_head = inner.lm_head

        def forward(self, ids, **kw):
            out = inner(ids, **kw).clone()
            out[..., 7] += 100.0
            return out

    ids = encode(block_model.tokenizer, "sort these numbers: 3 1 2")
    P = len(ids)
    block_model.net = Certain()
    try:
        # stop_repeats = 0: a model that always writes token 7 is a repetition the default stop would end.
        events = decode(block_model, ids, "prophet", ["cache=prefix", "stop_repeats=0"], max_new_tokens=40,
                        block_length=16)
    finally:
        block_model.net = inner
    steps = [e for e in events if isinstance(e, Step)]
    assert all(len({(P + p) // 8 for p in e.positions}) == 1 for e in steps)
    assert len(steps) == len({(P + p) // 8 for p in range(40)})  # one step per model block


@pytest.fixture(scope="module")
def dream_model(tmp_path_factory):
    from checkpoints import make_dream

    from dlm_cli.models.loading import load

    return load(str(make_dream(tmp_path_factory.mktemp("dream") / "dream", sharpen=4.0)))


@pytest.mark.parametrize("sets", [["cache=dual", "refresh=1"], ["cache=prefix", "refresh=1"]])
def test_refresh_every_step_equals_no_cache_on_a_shifted_family(dream_model, sets):
    from dlm_cli.prompting import encode

    ids = encode(dream_model.tokenizer, "sort these numbers: 3 1 2")
    plain = decode(dream_model, ids, "threshold", ["eotp=false"], max_new_tokens=32, block_length=16)[-1]
    fresh = decode(dream_model, ids, "threshold", sets + ["eotp=false"], max_new_tokens=32, block_length=16)[-1]
    eager = decode(dream_model, ids, "threshold", sets[:1] + ["eotp=false", "elastic_threshold=0.999999"],
                   max_new_tokens=32, block_length=16)[-1]
    assert fresh.tokens == plain.tokens and fresh.nfe == plain.nfe
    assert eager.refreshes > 0


@pytest.mark.parametrize("mode", ["dual", "prefix"])
def test_elastic_refresh_from_layer_0_equals_a_full_forward(llada_model, prompt_ids, mode):
    """Refreshing every layer from the stored layer-0 input (the embeddings) with the window's fresh
    rows spliced in is a full recompute: the logits match a forward without a cache."""
    from dlm_cli.decode.cache import ElasticLayers

    m = llada_model
    P = len(prompt_ids)
    L, bs, be = P + 32, P + 8, P + 16
    x = torch.full((1, L), m.mask_id)
    x[0, :P] = torch.tensor(prompt_ids)
    x[0, P:bs] = torch.arange(30, 30 + bs - P)
    cache, el = m.new_cache(), ElasticLayers(0)
    el.mode = "store"
    m.logits(x, 0, L, cache=cache, elastic=el)
    if mode == "prefix":
        cache.truncate(bs)
    x[0, bs:be:2] = 40  # the block changes: every cached key and value is stale now
    end = be if mode == "dual" else L
    stale = m.logits(x, bs, end, cache=cache, rows=(bs, be))
    el.mode = "partial"
    fresh = m.logits(x, bs, end, cache=cache, rows=(bs, be), elastic=el)
    full = m.logits(x, 0, L, rows=(bs, be))
    assert torch.allclose(fresh, full, atol=1e-5)
    assert not torch.allclose(stale, full, atol=1e-3)
    el.mode = None
    assert torch.allclose(m.logits(x, bs, end, cache=cache, rows=(bs, be)), full, atol=1e-5)  # the cache is fresh


@pytest.fixture(scope="module")
def sdar_model(tmp_path_factory):
    from checkpoints import make_sdar

    from dlm_cli.models.loading import load

    return load(str(make_sdar(tmp_path_factory.mktemp("sdar") / "sdar", sharpen=4.0, block_size=4)))


def greedy_ar(model, ids, n):
    """The model run as an AR model (block size 1), one greedy token at a time: S2D2's verifier alone."""
    P = len(ids)
    x = torch.full((1, P + n), model.mask_id)
    x[0, :P] = torch.tensor(ids)
    for p in range(P, P + n):
        x[0, p] = int(model.logits(x, 0, p + 1, rows=(p, p + 1), grid=1)[0, 0].argmax())
    out = x[0, P:].tolist()
    cut = next((i for i, t in enumerate(out) if t in model.eos_ids), n)
    return out[:cut]


@pytest.mark.parametrize("which,cache", [("sdar", "none"), ("fdv2", "none"), ("sdar", "prefix"), ("fdv2", "prefix")])
def test_s2d2_always_verifying_is_exactly_greedy_ar_decoding(sdar_model, block_model, which, cache):
    from dlm_cli.prompting import encode

    model = sdar_model if which == "sdar" else block_model
    ids = encode(model.tokenizer, "sort these numbers: 3 1 2")
    original = model.net
    model.net = CountingNet(original)
    try:
        events = decode(model, ids, "s2d2", ["s2d2_min_gain=0", "eotp=false", f"cache={cache}"], max_new_tokens=24,
                        block_length=8)
        calls = model.net.calls
    finally:
        model.net = original
    done = events[-1]
    assert done.tokens == greedy_ar(model, ids, 24)
    assert done.nfe == calls and done.verifies * 2 == done.nfe  # every step: draft + verify
    assert done.nfe < 2 * 24  # some drafts were accepted beyond the first token


def test_s2d2_policy_skips_verification_when_drafts_are_unsure_and_needs_a_block_model(block_model, llada_model,
                                                                                      prompt_ids):
    from dlm_cli.errors import DlmError
    from dlm_cli.prompting import encode

    ids = encode(block_model.tokenizer, "sort these numbers: 3 1 2")
    never = decode(block_model, ids, "s2d2", ["s2d2_min_gain=1000"], max_new_tokens=24, block_length=8)[-1]
    plain = decode(block_model, ids, "threshold", ["eotp=false"], max_new_tokens=24, block_length=8)[-1]
    assert never.verifies == 0 and never.tokens == plain.tokens and never.nfe == plain.nfe
    sampled = decode(block_model, ids, "s2d2", ["s2d2_min_gain=0", "temperature=0.9"], max_new_tokens=24)[-1]
    assert sampled.verifies > 0 and block_model.mask_id not in sampled.tokens
    with pytest.raises(DlmError, match="'s2d2' needs a model that is an AR model when run at block size 1"):
        decode(llada_model, prompt_ids, "s2d2", max_new_tokens=8)


def test_speculative_accept_greedy_and_sampled():
    from dlm_cli.decode.loops.s2d2 import expected_accepted, speculative_accept

    p = torch.tensor([[0.1, 0.9, 0.0], [0.8, 0.1, 0.1], [0.2, 0.2, 0.6]], dtype=torch.float64)
    assert speculative_accept(torch.tensor([1, 0, 2]), p, p, None, True) == (3, None)
    assert speculative_accept(torch.tensor([1, 2, 2]), p, p, None, True) == (1, 0)
    g = torch.Generator().manual_seed(0)
    assert speculative_accept(torch.tensor([1, 0, 2]), p, p, g, False) == (3, None)  # p = q: always accepted
    q = p.clone()
    q[0] = torch.tensor([0.0, 0.0, 1.0], dtype=torch.float64)  # a draft token the verifier never makes
    n, fix = speculative_accept(torch.tensor([2, 0, 2]), q, p, g, False)
    assert n == 0 and fix in (0, 1)  # resampled from max(0, p - q) = [0.1, 0.9, 0]: never the rejected 2
    fixes = [speculative_accept(torch.tensor([2, 0, 2]), q, p, g, False)[1] for _ in range(400)]
    assert 2 not in fixes and 0.8 < fixes.count(1) / 400 < 0.97  # drawn in proportion to the residual (0.9)
    assert expected_accepted(torch.tensor([0.5, 0.5])) == pytest.approx(0.5 + 0.25)


# --- input-guided commits (lookup = true) ---------------------------------------------------------

def _copier(model, source, prompt_len):
    """A network whose answer slot i proposes ``source[i]`` with confidence ~0.5, then end-of-text (certain)."""
    eos = model.eos_ids[0]

    def edit(out, pos):
        out.zero_()
        for i in range(out.shape[1]):
            slot = pos(i) - prompt_len
            if 0 <= slot < len(source):
                out[0, i, source[slot]] = 6.0 - 0.01 * slot  # p ~ 0.5 over a ~600-token vocabulary
            elif slot >= len(source):
                out[0, i, eos] = 30.0

    return ScriptedNet(model, edit)


@pytest.mark.parametrize("strategy,sets", [("threshold", []), ("baseline", []), ("threshold", ["cache=dual"])])
def test_lookup_commits_the_agreeing_copy_in_one_step(llada_model, strategy, sets):
    ids = list(range(40, 60))  # distinct tokens: the answer copies them
    net = _copier(llada_model, ids, len(ids))
    original, llada_model.net = llada_model.net, net
    try:
        plain = decode(llada_model, ids, strategy, sets + ["eotp=true"], max_new_tokens=32, block_length=32)
        net.calls = 0
        guided = decode(llada_model, ids, strategy, sets + ["eotp=true", "lookup=true", "draft_length=32"], max_new_tokens=32,
                        block_length=32)
    finally:
        llada_model.net = original
    assert plain[-1].tokens == guided[-1].tokens == ids
    assert plain[-1].nfe >= len(ids)  # no confidence reaches 0.9: one copied token per step
    assert guided[-1].nfe == net.calls <= 4  # the end, the first token, then the whole run from the prompt
    assert guided[-1].lookup_commits >= len(ids) - 2


def test_lookup_never_commits_what_the_model_does_not_propose(llada_model):
    from types import SimpleNamespace

    from dlm_cli.decode.guided import GuidedCommits

    g = GuidedCommits(SimpleNamespace(ngram_max=3, draft_length=16), [1, 2, 10, 11, 12, 13, 14, 3], torch.device("cpu"))
    none = torch.zeros(6, dtype=torch.bool)
    x0 = torch.tensor([0, 0, 12, 13, 99, 14])
    cand = torch.tensor([False, False, True, True, True, True])
    # answer so far 10 11: the prompt continues 12 13 14 3; the model disagrees at the third slot
    assert g.add(none, [10, 11], 2, x0, cand, torch.tensor([10, 11, 0, 0, 0, 0])).tolist() == [
        False, False, True, True, False, False]
    # a slot committed earlier to another token ends the run too
    cand2 = torch.tensor([False, False, True, False, True, True])
    assert g.add(none, [10, 11], 2, torch.tensor([0, 0, 12, 0, 14, 3]), cand2,
                    torch.tensor([10, 11, 0, 7, 0, 0])).tolist() == [False, False, True, False, False, False]
    # no n-gram of the answer's end occurs earlier: nothing is drafted
    assert not g.add(none[1:], [77], 1, x0[1:], cand[1:], torch.zeros(5, dtype=torch.long)).any()


def test_lookup_is_refused_with_a_strategy_that_runs_its_own_loop():
    with pytest.raises(UsageError, match="lookup"):
        settings("s2d2", ["lookup=true"])
