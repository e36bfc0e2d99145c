"""Rows that join a running batch (FDFO, decode/batch.py's BatchEngine): each row's events equal its batch-1 run."""

from __future__ import annotations

import pytest

from batching import MAKERS, TEXTS, family, settings, view  # noqa: F401  (family: a fixture)
from dlm_cli import profiles
from dlm_cli.decode import run
from dlm_cli.decode.batch import BatchEngine
from dlm_cli.decode.events import Done, Start, Step
from dlm_cli.errors import UsageError

# (row, the engine step before which it is added, its settings' changes): rows of different prompt lengths,
# lengths to generate, rules and block lengths, joining while others decode (and some after others left).
SCHEDULE = [(0, 0, {}), (1, 0, {"max_new_tokens": 24}), (2, 1, {}), (3, 3, {"max_new_tokens": 17}),
            (4, 3, {"block_length": 4}), (5, 6, {}), (6, 9, {"max_new_tokens": 48}), (7, 14, {})]


def refill(model, ids, cache, make, schedule=SCHEDULE, drop=None):
    """Run ``schedule`` through one engine; each row's events, the step each joined and the batch sizes seen."""
    engine = BatchEngine(model, cache)
    events: dict[int, list] = {}
    joined, sizes, n = {}, [], 0
    pending = list(schedule)
    while pending or len(engine):
        for row, at, over in [p for p in pending if p[1] <= n]:
            engine.add(row, ids[row], make(**over))
            pending.remove((row, at, over))
        if drop is not None and n == drop[1]:
            assert engine.drop(drop[0]) is not None
        if not len(engine):
            n += 1
            continue
        for row, ev in engine.step():
            events.setdefault(row, []).append(ev)
            if isinstance(ev, Start):
                joined[row] = n
        sizes.append(len(engine.rows))
        n += 1
    return events, joined, sizes


@pytest.mark.parametrize("profile,sets", [("quality", []), ("speedy", ["cache=none"]), ("speedy", ["cache=prefix"]),
                                          ("speedy", ["cache=dual"])])
def test_rows_joining_a_running_batch_equal_each_prompt_alone(family, profile, sets):
    name, model, ids = family
    cache = sets[0].split("=")[1] if sets else "none"
    events, joined, sizes = refill(model, ids, cache, lambda **kw: settings(profile, sets, **kw))
    for row, _, over in SCHEDULE:
        alone = view(list(run(model, ids[row], settings(profile, sets, **over))))
        assert view(events[row]) == alone, f"{name} {profile} {sets}: row {row} differs from its batch-1 run"
    # The schedule is telling: rows joined at different steps, while others were decoding.
    assert len(set(joined.values())) >= 5 and max(sizes) >= 3
    assert any(b > a for a, b in zip(sizes, sizes[1:])) and any(b < a for a, b in zip(sizes, sizes[1:]))


def test_rows_of_different_rules_and_sampling_share_a_batch(llada_model):
    from dlm_cli.prompting import encode

    ids = [encode(llada_model.tokenizer, t) for t in TEXTS]
    rows = {0: ("quality", {}), 1: ("speedy", {"threshold": 0.5}), 2: ("speedy", {"temperature": 0.8, "seed": 5}),
            3: ("quality", {"steps": 8}), 4: ("speedy", {})}
    schedule = [(0, 0, {}), (1, 0, {}), (2, 2, {}), (3, 2, {}), (4, 5, {})]

    def make(row):
        profile, over = rows[row]
        return settings(profile, ["cache=none"], **over)

    engine = BatchEngine(llada_model, "none")
    events: dict[int, list] = {}
    n = 0
    while schedule or len(engine):
        for item in [s for s in schedule if s[1] <= n]:
            engine.add(item[0], ids[item[0]], make(item[0]))
            schedule.remove(item)
        for row, ev in engine.step():
            events.setdefault(row, []).append(ev)
        n += 1
    for row in rows:
        assert view(events[row]) == view(list(run(llada_model, ids[row], make(row)))), f"row {row}"


def test_a_dropped_row_leaves_the_others_untouched(family):
    name, model, ids = family
    make = lambda **kw: settings("quality", [], **kw)  # noqa: E731
    events, _, _ = refill(model, ids, "none", make, drop=(2, 4))
    assert not isinstance(events[2][-1], Done) and len([e for e in events[2] if isinstance(e, Step)]) == 3
    for row, _, over in SCHEDULE:
        if row != 2:
            assert view(events[row]) == view(list(run(model, ids[row], make(**over)))), f"{name}: row {row}"


def test_a_row_the_batch_cannot_take_is_refused_with_the_reason(llada_model, prompt_ids):
    engine = BatchEngine(llada_model, "none")
    with pytest.raises(UsageError, match="strategy 'factor'"):
        engine.add(0, prompt_ids, settings("factor", ["cache=none"]))
    assert "cache = 'prefix'" in engine.refusal(settings("speedy", ["cache=prefix"]).frozen())
    assert engine.refusal(settings("speedy", ["cache=none"]).frozen()) is None
    assert len(engine) == 0


def test_rows_join_dlm_demo_at_different_times():
    """The embedded demo dLLM: its real prompts joining a running batch give its batch-1 texts."""
    from dlm_cli.models.loading import load
    from dlm_cli.prompting import encode

    model = load("dlm-demo")
    texts = ["Sort these numbers: 4 7 1 9 3", "Reverse: 12 7 33 5", "Copy: 1 2", "Sort these numbers: 8 2 6",
             "Reverse: 1 2 3 4 5 6 7 8", "Copy: 5 5 3 1 9 9"]
    ids = [encode(model.tokenizer, t) for t in texts]
    schedule = [(0, 0, {}), (1, 0, {}), (2, 2, {"max_new_tokens": 16}), (3, 3, {}), (4, 5, {}), (5, 8, {})]
    for profile in ("quality", "speedy"):
        make = lambda **kw: profiles.load(profile, sets=["cache=none"], flags={"seed": 0, "max_new_tokens": 32,  # noqa
                                                                                  **kw})
        events, joined, _ = refill(model, ids, "none", make, schedule=schedule)
        for row, _, over in schedule:
            alone = list(run(model, ids[row], make(**over)))
            assert view(events[row]) == view(alone), f"{profile}: row {row}"
        assert len(set(joined.values())) >= 4
        texts_out = [model.tokenizer.decode(events[r][-1].tokens, skip_special_tokens=True) for r in range(2)]
        assert texts_out[0] == "1 3 4 7 9", texts_out


def test_batching_follows_the_declared_capability(llada_model, prompt_ids, monkeypatch):
    from dlm_cli.capabilities import RAGGED_BATCH

    assert RAGGED_BATCH in llada_model.capabilities
    monkeypatch.setattr(llada_model.net, "ragged_batch", False, raising=False)
    assert RAGGED_BATCH not in llada_model.capabilities
    with pytest.raises(UsageError, match="different lengths in one forward"):
        BatchEngine(llada_model, "none").add(0, prompt_ids, settings("quality", []))
