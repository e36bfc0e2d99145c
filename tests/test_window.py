"""Window-Diffusion: the token classes on crafted canvases, the pruned forward at true rotary positions,
the loop's sliding window, refresh period and forward counts, its exactness at refresh = 1, and the CLI."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch

from dlm_cli import profiles
from dlm_cli.decode import run
from dlm_cli.decode.events import Done, Step
from dlm_cli.decode.loops.window import WindowPlan

from checkpoints import make_adapter, make_dream
from test_cli import assert_one_line_error, dlm

M = 99  # the mask id of the crafted canvases


def canvas(text: str) -> np.ndarray:
    """``"pp.x..x"``: p = prompt token, x = committed token, . = mask."""
    return np.array([M if ch == "." else 7 for ch in text], dtype=np.int64)


def at(text: str, ch: str = ".") -> list[int]:
    return [i for i, c in enumerate(text) if c == ch]


def test_plan_classes_slide_and_refresh_on_a_crafted_canvas():
    #          0123456789012345
    before = "ppp.x....x......"  # masks ranked 1.. at 3, 5, 6, 7, 8, 10, 11, ...
    plan = WindowPlan(len(before), M, active=2, window=4, refresh=3, whole=True, shift=False)
    st = plan.sets(canvas(before), len(before), 0)
    assert st.refresh and st.computed.tolist() == list(range(16)) and st.targets.tolist() == at(before)
    # The refresh step commits slot 5; the window is then the decoded tokens and the first 4 masks left.
    after = "ppp.xx...x......"
    plan.update(canvas(after), len(after), np.array([5]), True)
    assert np.flatnonzero(plan.window).tolist() == [0, 1, 2, 3, 4, 5, 6, 7, 8, 9]  # masks 3, 6, 7, 8; far field 10..
    # First pruned step: the first A = 2 masks plus the refresh step's commit.
    st = plan.sets(canvas(after), len(after), 1)
    assert not st.refresh
    assert st.computed.tolist() == [3, 5, 6] and st.targets.tolist() == [3, 6]
    assert st.keys.tolist() == list(range(10))  # the far-field masks 10..15 are neither queries nor keys
    # It commits 3: the active set slides right to the next masks, and 3 stays active (post-decode
    # transient) while the refresh step's own commit (5) leaves it.
    after2 = "pppxxx...x......"
    plan.update(canvas(after2), len(after2), np.array([3]), False)
    st = plan.sets(canvas(after2), len(after2), 2)
    assert st.computed.tolist() == [3, 6, 7] and st.targets.tolist() == [6, 7]
    assert st.keys.tolist() == list(range(10))
    plan.update(canvas("pppxxxx..x......"), 16, np.array([6]), False)
    plan.update(canvas("pppxxxxx.x......"), 16, np.array([7]), False)
    # Past the window the active masks are computed (and read) though they were far field at the refresh.
    st = plan.sets(canvas("pppxxxxx.x......"), 16, 4)
    assert st.computed.tolist() == [3, 6, 7, 8, 10] and 10 in st.keys.tolist() and 11 not in st.keys.tolist()
    # Every refresh (step 3, 6, ...) is a full forward again.
    assert plan.sets(canvas("pppxxxxx.x......"), 16, 3).refresh and plan.sets(canvas("pppxxxxx.x......"), 16, 6).refresh


def test_window_refresh_prunes_the_far_field_and_the_eotp_tail_and_shift_computes_predictors():
    text = "pp..x.....eeee"  # slots 10.. are an EoTP tail (final filler), end = 10
    plan = WindowPlan(len(text), M, active=2, window=3, refresh=4, whole=False, shift=True)
    st = plan.sets(canvas(text), 10, 0)
    assert st.computed.tolist() == [0, 1, 2, 3, 4, 5] and st.targets.tolist() == [2, 3, 5]
    plan.update(canvas("pp.xx.....eeee"), 10, np.array([3]), True)
    st = plan.sets(canvas("pp.xx.....eeee"), 10, 1)
    # Targets 2 and 5; a next-token family reads their logits at 1 and 4, which are computed too.
    assert st.targets.tolist() == [2, 5] and st.computed.tolist() == [1, 2, 3, 4, 5]
    assert st.keys.tolist() == [0, 1, 2, 3, 4, 5, 6]  # window: decoded + masks 2, 5, 6; no far field, no tail


@pytest.fixture(scope="module")
def tiny_dream(tmp_path_factory):
    from dlm_cli.models.loading import load

    return load(str(make_dream(tmp_path_factory.mktemp("dream") / "tiny-dream", sharpen=8.0)))


def masked_canvas(model, ids, slots=20, committed=(2, 5, 6, 11)):
    x = torch.full((1, len(ids) + slots), model.mask_id, dtype=torch.long)
    x[0, : len(ids)] = torch.tensor(ids)
    for j in committed:
        x[0, len(ids) + j] = 3 + j
    return x


@pytest.mark.parametrize("family", ["llada", "dream"])
def test_pruned_forward_over_a_fresh_cache_gives_the_full_forwards_logits(family, llada_model, tiny_dream, prompt_ids):
    model = llada_model if family == "llada" else tiny_dream
    x = masked_canvas(model, prompt_ids)
    P, L = len(prompt_ids), x.shape[1]
    full = model.logits(x, 0, L, rows=(P, L))[0]
    cache = model.new_cache()
    everything = torch.arange(L)
    masks = torch.nonzero(x[0] == model.mask_id).squeeze(-1)
    refreshed = model.logits_at(x, masks, everything, everything, cache)[0]
    # float32 rounding: a forward over fewer rows sums in another order (3e-5 on logits of about 20 on an
    # AVX-512 CPU); a wrong position or mask moves them by O(1).
    assert torch.allclose(refreshed, full[masks - P], atol=1e-4)
    # Non-contiguous queries, each at its own position, over the cache: the same logits (a wrong rotary
    # position for a query would change every attention score it makes).
    targets = masks[[1, 4, 9]]
    computed = torch.unique(torch.cat([targets, targets - 1])) if model.shift else targets
    pruned = model.logits_at(x, targets, computed, everything, cache)[0]
    assert torch.allclose(pruned, full[targets - P], atol=1e-4)


def test_pruned_positions_have_no_influence_and_window_keys_do(llada_model, prompt_ids):
    model = llada_model
    x = masked_canvas(model, prompt_ids)
    P = len(prompt_ids)
    targets = torch.tensor([P, P + 1])
    keys = torch.arange(P + 8)  # the window; P + 8 .. is the far field

    def pruned(far: int, near: int) -> torch.Tensor:
        y = x.clone()
        y[0, P + 15], y[0, P + 5] = far, near
        cache = model.new_cache()
        model.logits_at(y, targets, keys, keys, cache)  # a window refresh: the far field is never run
        return model.logits_at(y, targets, targets, keys, cache)[0]

    assert torch.equal(pruned(5, 5), pruned(40, 5))  # a far-field token cannot reach the step
    assert not torch.allclose(pruned(5, 5), pruned(5, 40), atol=1e-4)  # a buffer key does


def settings(sets=(), **flags):
    return profiles.load("window", sets=list(sets), flags={"seed": 0, **flags})


def spied(model, ids, s):
    """Decode, recording each forward's (targets, computed, keys) and the canvas before it."""
    calls = []
    original = model.logits_at

    def spy(x, targets, computed, keys, cache):
        calls.append((x[0].clone(), targets.tolist(), computed.tolist(), keys.tolist()))
        return original(x, targets, computed, keys, cache)

    model.logits_at = spy
    try:
        events = list(run(model, ids, s))
    finally:
        del model.logits_at
    return events, calls


def test_the_loop_slides_the_window_and_refreshes_on_its_period(llada_model, prompt_ids):
    A, W, R, G = 3, 6, 5, 24
    s = settings([f"active_tokens={A}", f"window_tokens={W}", f"refresh={R}"], max_new_tokens=G)
    events, calls = spied(llada_model, prompt_ids, s)
    done = events[-1]
    steps = [e for e in events if isinstance(e, Step)]
    P, L, mask = len(prompt_ids), len(prompt_ids) + G, llada_model.mask_id
    assert isinstance(done, Done) and done.nfe == len(calls) == len(steps) == G  # one token per step
    assert done.refreshes == -(-G // R) - 1 and done.extra["pruned_steps"] == G - -(-G // R)
    assert done.extra["computed_rows"] == sum(len(c) for _, _, c, _ in calls)
    window: set[int] = set()
    since: set[int] = set()  # committed at pruned steps since the last refresh
    fresh: set[int] = set()
    saw_far = False
    for i, ((x, targets, computed, keys), step) in enumerate(zip(calls, steps)):
        masks = [p for p in range(L) if x[p] == mask]
        if i % R == 0:
            assert computed == keys == list(range(L)) and targets == masks
        else:
            active = set(masks[:A]) | since | fresh
            assert computed == sorted(active) and targets == sorted(active & set(masks))
            assert keys == sorted(window | active)
            far = set(masks) - window - active
            assert far.isdisjoint(keys)  # far field: neither query nor key
            saw_far = saw_far or bool(far)
        committed = {P + p for p in step.positions}
        assert committed <= set(targets) and len(committed) == 1
        left = [p for p in masks if p not in committed]
        if i % R == 0:
            window = {p for p in range(L) if p not in left} | set(left[:W])
            since, fresh = set(), committed
        else:
            since |= committed
            fresh = set()
    assert saw_far


@pytest.mark.parametrize("family", ["llada", "dream"])
@pytest.mark.parametrize("extra", [[], ["eotp=true"], ["steps=12"]])
def test_refresh_every_step_gives_the_baselines_output_with_one_block(family, extra, llada_model, tiny_dream,
                                                                       prompt_ids):
    model = llada_model if family == "llada" else tiny_dream
    G = 24
    window = list(run(model, prompt_ids, settings(["refresh=1", *extra], max_new_tokens=G)))
    base = list(run(model, prompt_ids, profiles.load("baseline", sets=[f"block_length={G}", *extra],
                                                    flags={"seed": 0, "max_new_tokens": G})))
    assert [(e.positions, e.tokens) for e in window if isinstance(e, Step)] == \
           [(e.positions, e.tokens) for e in base if isinstance(e, Step)]
    assert window[-1].tokens == base[-1].tokens and window[-1].nfe == base[-1].nfe
    assert window[-1].extra["pruned_steps"] == 0


def test_a_pruned_window_changes_the_output_but_finishes(llada_model, prompt_ids):
    """Stale buffer and pruned far field are approximations: some output differs from refresh = 1."""
    G = 32
    outs = {}
    for r in (1, 16):
        events = list(run(llada_model, prompt_ids, settings([f"refresh={r}", "active_tokens=2", "window_tokens=4"],
                                                            max_new_tokens=G)))
        steps = [e for e in events if isinstance(e, Step)]
        assert sorted(p for e in steps for p in e.positions) == list(range(G))
        outs[r] = [t for e in steps for t in e.tokens]
    assert outs[1] != outs[16]


def test_dream_pruned_steps_compute_each_masks_predictor(tiny_dream, prompt_ids):
    events, calls = spied(tiny_dream, prompt_ids, settings(["active_tokens=2", "window_tokens=4", "refresh=8"],
                                                           max_new_tokens=16))
    pruned = [(t, c) for i, (_, t, c, _) in enumerate(calls) if i % 8]
    assert pruned and all(set(p - 1 for p in t) <= set(c) for t, c in pruned)


def test_window_generates_on_the_demo_model_via_the_cli():
    r = dlm("generate", "-m", "dlm-demo", "-p", "window", "Sort these numbers: 4 7 1 9 3", "--json")
    assert r.exit_code == 0, r.stderr
    out = json.loads(r.stdout)
    assert out["text"] == "1 3 4 7 9" and out["nfe"] == 64
    stats = out["stats"]
    assert stats["cache"] == "window" and stats["refreshes"] == 1 and stats["pruned_steps"] == 62
    assert out["settings"]["active_tokens"] == 16 and out["settings"]["window_tokens"] == 64


@pytest.mark.parametrize("sets,fragment", [
    (["active_tokens=80"], "active_tokens = 80 is above window_tokens = 64"),
    (["block_length=32"], "no semi-autoregressive blocks"),
    (["cache=prefix"], "cache"),
    (["lookup=true"], "lookup"),
    (["refresh=0"], "refresh"),
])
def test_window_refuses_what_cannot_work(tiny_llada, sets, fragment):
    args = ["generate", "-m", str(tiny_llada), "-p", "window", "hi", "-n", "8"]
    for item in sets:
        args += ["--set", item]
    assert_one_line_error(dlm(*args), 2, fragment)


def test_window_refuses_a_block_diffusion_model(tmp_path):
    adapter = make_adapter(tmp_path / "tiny-dlm", block_size=8)
    assert_one_line_error(dlm("generate", "-m", str(adapter), "-p", "window", "hi", "-n", "8"), 2,
                          "'window' needs a model that is fully bidirectional")
