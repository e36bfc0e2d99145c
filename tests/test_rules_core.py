"""The foundation's commit rules on crafted confidences: baseline top-k, threshold, factor."""

from __future__ import annotations

import pytest
from types import SimpleNamespace

import torch

from dlm_cli.decode.rules.baseline import schedule
from dlm_cli.decode.rules.base import StepState
from dlm_cli.decode.rules.baseline import Baseline
from dlm_cli.decode.rules.threshold import Factor, Threshold


def state(conf: list[float], quota: int = 1) -> StepState:
    c = torch.tensor(conf, dtype=torch.float64)
    cand = torch.isfinite(c)
    n = len(conf)
    return StepState(logits=torch.zeros(n, 4), x0=torch.zeros(n, dtype=torch.long), confidence=c,
                     candidates=cand, quota=quota, step=0, steps=1, block=0)


def settings(**values) -> SimpleNamespace:
    """Every declared key at its default (any strategy), with ``values`` on top: what a rule reads."""
    from dlm_cli.decode.keys import STRATEGIES, keys_for

    defaults = {k: key.default for name in STRATEGIES for k, key in keys_for(name).items()}
    return SimpleNamespace(**{**defaults, **values})


def picked(mask: torch.Tensor) -> list[int]:
    return mask.nonzero().squeeze(-1).tolist()


NEG = float("-inf")


def test_threshold_commits_exactly_those_at_or_above_tau():
    rule = Threshold(settings(threshold=0.9))
    assert picked(rule.select(state([0.95, 0.5, 0.9, NEG, 0.89999]))) == [0, 2]


def test_threshold_always_commits_the_top1_even_below_tau():
    rule = Threshold(settings(threshold=0.9))
    assert picked(rule.select(state([0.3, 0.6, NEG, 0.2]))) == [1]


def test_threshold_never_commits_non_candidates():
    rule = Threshold(settings(threshold=0.0))
    assert picked(rule.select(state([0.3, NEG, 0.2]))) == [0, 2]


@pytest.mark.parametrize(
    "conf,f,expected",
    [
        # sorted: .99 .98 .7 ; n=1: 2*.01=.02<1 ; n=2: 3*.02=.06<1 ; n=3: 4*.3=1.2 ≥ 1 -> n=2
        ([0.7, 0.99, 0.98], 1.0, [1, 2]),
        # every c is low: still commit the single most confident
        ([0.2, 0.3, 0.1], 1.0, [1]),
        # a generous factor takes all three
        ([0.7, 0.99, 0.98], 2.0, [0, 1, 2]),
    ],
)
def test_factor_rule(conf, f, expected):
    rule = Factor(settings(factor=f))
    assert sorted(picked(rule.select(state(conf)))) == expected


def test_baseline_commits_quota_most_confident():
    rule = Baseline(settings(remasking="low_confidence"))
    assert sorted(picked(rule.select(state([0.1, 0.9, NEG, 0.5, 0.7], quota=2)))) == [1, 4]


def test_random_remasking_ignores_confidence_but_respects_candidates():
    rule = Baseline(settings(remasking="random"))
    seen = set()
    for seed in range(40):
        g = torch.Generator().manual_seed(seed)
        s = state([0.99, NEG, 0.01, 0.02], quota=1)
        s.generator = g
        got = picked(rule.select(s))
        assert len(got) == 1 and got[0] != 1
        seen.add(got[0])
    assert seen == {0, 2, 3}  # low-confidence positions get picked too


@pytest.mark.parametrize("masked,steps,expected", [(32, 32, [1] * 32), (10, 4, [3, 3, 2, 2]), (3, 5, [1, 1, 1, 0, 0])])
def test_llada_schedule_spreads_evenly_remainder_first(masked, steps, expected):
    assert schedule(masked, steps) == expected
