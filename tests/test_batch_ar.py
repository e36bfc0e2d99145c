"""Batched AR decoding (decode/batch_ar.py): ``ar``, ``lookup`` and ``aded`` rows in one forward per step,
each row's events equal to its batch-1 run, ragged acceptance, rows joining and leaving."""

from __future__ import annotations

import pytest

from batching import TEXTS
from checkpoints import make_llama
from dlm_cli import profiles
from dlm_cli.decode import run
from dlm_cli.decode import batch_ar
from dlm_cli.decode.batch import check_batchable, new_engine, run_batch
from dlm_cli.decode.events import Done, Draft, Start, Step, Verify
from dlm_cli.errors import UsageError

# Prompts the toy AR model copies from (lookup accepts long runs) and others it answers (lookup misses).
DEMO_TEXTS = ["Copy: 4 8 15 16 23 42 7 9", "Reverse: 1 2 3 4 5", "Sort these numbers: 9 3 7 1", "Copy: 5 5 6 6 7 7",
              "Add: 12 + 30", "Tell me a story about a cat.", "Copy: 1 2 3 4 5 6 7 8 9 10 11 12", "hello"]


@pytest.fixture(scope="module")
def tiny(tmp_path_factory):
    from dlm_cli.models.loading import load
    from dlm_cli.prompting import encode

    model = load(str(make_llama(tmp_path_factory.mktemp("ar") / "llama")))
    return model, [encode(model.tokenizer, t) for t in TEXTS]


@pytest.fixture(scope="module")
def demo():
    from dlm_cli.models.loading import load
    from dlm_cli.prompting import encode

    model = load("dlm-demo-ar")
    return model, [encode(model.tokenizer, t) for t in DEMO_TEXTS]


def settings(profile, sets=(), **flags):
    return profiles.load(profile, sets=list(sets), flags={"seed": 0, "max_new_tokens": 32, **flags})


def view(events):
    """What a consumer sees of one AR run: every event's fields, then the output and its counts."""
    assert isinstance(events[0], Start) and isinstance(events[-1], Done)
    seen, confs = [], []
    for e in events[1:-1]:
        if isinstance(e, Step):
            seen.append(("step", e.step, e.nfe, e.positions, e.tokens))
            confs.extend(e.confidences)
        elif isinstance(e, Draft):
            seen.append(("draft", e.step, e.position, e.tokens))
        elif isinstance(e, Verify):
            seen.append(("verify", e.step, e.nfe, e.accepted_tokens, e.rejected, e.correction, e.bonus))
    d = events[-1]
    # The token's probability, for the view's colours: a batch's padding changes it by float rounding only.
    return (seen, d.tokens, d.nfe, d.steps, d.finish_reason, d.drafted, d.accepted), confs


def same(batched_events, alone_events, what):
    (a, ca), (b, cb) = view(batched_events), view(alone_events)
    assert a == b, what
    assert ca == pytest.approx(cb, abs=1e-4), what


def batched(model, ids, make, seeds=None):
    out: dict[int, list] = {}
    s = make()
    for row, ev in run_batch(model, ids, s) if seeds is None else _rows(model, ids, make, seeds):
        out.setdefault(row, []).append(ev)
    return out


def _rows(model, ids, make, seeds):
    engine = new_engine(model)
    for i, x in enumerate(ids):
        engine.add(i, x, make(), seed=seeds[i])
    while len(engine):
        yield from engine.step()


@pytest.mark.parametrize("profile,sets", [("ar", []), ("lookup", []), ("lookup", ["draft_length=3"]), ("aded", ["tree_width=1"]),
                                          ("ar", ["stop_repeats=2"])])
def test_batch_of_eight_equals_each_prompt_alone(tiny, profile, sets):
    model, ids = tiny
    got = batched(model, ids, lambda: settings(profile, sets))
    for i, x in enumerate(ids):
        (seen, confs), (want, want_confs) = view(got[i]), view(list(run(model, x, settings(profile, sets))))
        assert seen == want, f"{profile} {sets}: row {i}"  # every event, the output and its counts
        assert confs == pytest.approx(want_confs, abs=1e-4)  # the view's colours: padding moves them by rounding only
    # Telling only if the rows differ: different outputs, from prompts of different lengths (each row its own padding).
    assert len({tuple(got[i][-1].tokens) for i in got}) > 4 and len({len(x) for x in ids}) >= 6


def test_lookup_rows_accept_different_runs_in_one_forward_and_stay_exact(demo):
    model, ids = demo
    sizes: list[int] = []
    handle = model.net.register_forward_pre_hook(lambda m, a, kw: sizes.append(kw["input_ids"].shape[0]),
                                                 with_kwargs=True)
    try:
        got = batched(model, ids, lambda: settings("lookup", max_new_tokens=40))
    finally:
        handle.remove()
    accepted = []
    for i, x in enumerate(ids):
        alone = list(run(model, x, settings("lookup", max_new_tokens=40)))
        same(got[i], alone, f"row {i}")
        assert alone[-1].tokens == list(run(model, x, settings("ar", max_new_tokens=40)))[-1].tokens  # lossless
        accepted.append(got[i][-1].accepted)
    # Ragged acceptance: some rows copied long runs while others took none, in the same forwards.
    assert max(accepted) >= 5 and min(accepted) == 0
    # One forward per step: 8 first steps alone (batch 1), then batched steps of several rows.
    steps = max(got[i][-1].nfe for i in range(len(ids)))
    assert sizes[:8] == [1] * 8 and max(sizes) == len(ids)
    assert len(sizes) <= 8 + steps - 1


def test_squeezing_the_holes_every_step_changes_nothing(demo, monkeypatch):
    model, ids = demo
    plain = batched(model, ids, lambda: settings("lookup", max_new_tokens=40))
    monkeypatch.setattr(batch_ar, "SQUEEZE_MIN", 0)
    monkeypatch.setattr(batch_ar, "SQUEEZE_SHARE", 1e-9)
    widths = []
    real = batch_ar._Ragged.squeeze

    def spy(self):
        real(self)
        widths.append((self.valid.shape[1], int(self.valid.sum(1).max())))

    monkeypatch.setattr(batch_ar._Ragged, "squeeze", spy)
    squeezed = batched(model, ids, lambda: settings("lookup", max_new_tokens=40))
    assert widths and all(w == most for w, most in widths)  # no column that no row needs
    for i in range(len(ids)):
        same(squeezed[i], plain[i], f"row {i}")


@pytest.mark.parametrize("profile", ["ar", "lookup"])
def test_sampled_rows_equal_their_own_seed_alone(tiny, profile):
    model, ids = tiny
    make = lambda: settings(profile, ["temperature=0.8", "top_p=0.9"])  # noqa: E731
    got = batched(model, ids, make, seeds=[7 * i + 1 for i in range(len(ids))])
    outs = set()
    for i, x in enumerate(ids):
        s = make()
        s.values["seed"] = 7 * i + 1
        same(got[i], list(run(model, x, s)), f"row {i}")
        outs.add(tuple(got[i][-1].tokens))
    assert len(outs) > 1


def test_rows_join_and_leave_a_running_batch(demo):
    model, ids = demo
    engine = new_engine(model)
    schedule = {0: [0, 1], 2: [2], 3: [3, 4], 6: [5], 9: [6, 7]}
    lengths = {1: 12, 4: 20, 6: 8}
    events: dict[int, list] = {}
    sizes, n = [], 0
    while n <= max(schedule) or len(engine):
        for row in schedule.get(n, []):
            engine.add(row, ids[row], settings("lookup", max_new_tokens=lengths.get(row, 32)))
        if n == 7:
            assert engine.drop(3) is not None  # a client that left
        for row, ev in engine.step():
            events.setdefault(row, []).append(ev)
        sizes.append(len(engine.rows))
        n += 1
    for row in range(8):
        if row == 3:
            assert not isinstance(events[3][-1], Done)
            continue
        alone = list(run(model, ids[row], settings("lookup", max_new_tokens=lengths.get(row, 32))))
        same(events[row], alone, f"row {row}")
    assert max(sizes) >= 3 and any(b < a for a, b in zip(sizes, sizes[1:]))
    assert engine.drop(99) is None


@pytest.mark.parametrize("profile,sets,word", [
                                               ("lookup", ["tree_width=4"], "tree_width=1"),
                                               ("ar", ["compile=on"], "compile=off"), ("diffuspec", [], "diffuspec"),
                                               ("speculative", ["pearl=true"], "pearl=false")])
def test_what_ar_batching_does_not_do_is_refused_with_the_fix(tiny, profile, sets, word):
    model, _ = tiny
    with pytest.raises(UsageError, match=word):
        check_batchable(model, settings(profile, sets).frozen())


def test_bench_batch_rows_of_an_ar_model_agree_with_batch_1(tmp_path):
    import json
    import subprocess
    import sys

    prompts = tmp_path / "p.jsonl"
    prompts.write_text("".join(json.dumps({"prompt": t}) + "\n" for t in DEMO_TEXTS[:4]))

    def bench(batch):
        res = subprocess.run([sys.executable, "-m", "dlm_cli", "bench", "-m", "dlm-demo-ar", "-p", "ar,lookup",
                              "--prompts", str(prompts), "-n", "24", "--batch-size", str(batch), "--json",
                              "--threads", "1"], capture_output=True, text=True, timeout=300)
        assert res.returncode == 0, res.stderr
        return json.loads(res.stdout)

    one, four = bench(1), bench(4)
    rows1 = {r["profile"]: r for r in one["rows"]}
    rows4 = {r["profile"]: r for r in four["rows"]}
    assert rows4["lookup"]["batch_size"] == 4
    for p in ("ar", "lookup"):
        assert [a["answer"] for a in rows4[p]["answers"]] == [a["answer"] for a in rows1[p]["answers"]]
        assert rows4[p]["nfe"] == rows1[p]["nfe"] and rows4[p]["agreement"] == 1.0


def test_speculative_rows_with_a_draft_model_equal_each_prompt_alone(request):
    from dlm_cli.models.loading import load
    from dlm_cli.prompting import encode

    target, draft = load("dlm-demo-ar"), load("dlm-demo-ar-draft")
    ids = [encode(target.tokenizer, t) for t in DEMO_TEXTS]
    sizes: list[int] = []
    handle = draft.net.register_forward_pre_hook(lambda m, a, kw: sizes.append(kw["input_ids"].shape[0]),
                                                 with_kwargs=True)
    request.addfinalizer(handle.remove)
    # The defaults stop drafting at a token below draft_confidence = 0.6 and adapt the length; 0 drafts them all.
    cases = ([], ["temperature=0.7"], ["draft_confidence=0"], ["adaptive_draft=false", "temperature=0.7",
                                                              "draft_confidence=0"])
    for sets in cases:
        sizes.clear()
        make = lambda: settings("speculative", sets, max_new_tokens=40)  # noqa: E731
        engine = new_engine(target, draft=draft)
        for i, x in enumerate(ids):
            engine.add(i, x, make(), seed=i)
        got: dict[int, list] = {}
        while len(engine):
            for row, ev in engine.step():
                got.setdefault(row, []).append(ev)
        together = list(sizes)
        for i, x in enumerate(ids):
            s = make()
            s.values["seed"] = i
            same(got[i], list(run(target, x, s, draft=draft)), f"{sets} row {i}")
        assert sum(got[i][-1].accepted for i in range(len(ids))) > 20  # the draft really drafted
        assert len({got[i][-1].accepted for i in range(len(ids))}) > 2  # and rows accepted differently
        # The rows' draft forwards ran together: fewer forwards than the rows' own draft NFE, some of 8 rows.
        assert max(together) >= 6 and len(together) < sum(got[i][-1].draft_nfe for i in range(len(ids)))


def test_a_model_with_sliding_window_layers_is_refused_before_it_decodes(tiny):
    model, ids = tiny
    cfg = model.net.config
    old = (getattr(cfg, "sliding_window", None), getattr(cfg, "layer_types", None))
    cfg.sliding_window, cfg.layer_types = 8, ["sliding_attention", "full_attention"]
    try:
        with pytest.raises(UsageError, match="sliding-window"):
            check_batchable(model, settings("ar").frozen(), "--max-batch 8")
        engine = new_engine(model)
        with pytest.raises(UsageError, match="DynamicSlidingWindowLayer"):
            engine.add(0, ids[0], settings("ar"))
        assert len(engine) == 0
    finally:
        cfg.sliding_window, cfg.layer_types = old
