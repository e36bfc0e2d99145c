"""The decoding rules of the distilled methods on crafted logits: dParallel's entropy threshold, CD4LM's CAD."""

from __future__ import annotations

import math
from types import SimpleNamespace

import pytest
import torch

from dlm_cli.decode.rules.base import StepState
from dlm_cli.decode.rules.cad import ConfidenceAdaptive
from dlm_cli.decode.rules.dparallel import EntropyThreshold

EOS = 7


def settings(**values) -> SimpleNamespace:
    from dlm_cli.decode.keys import STRATEGIES, keys_for

    defaults = {k: key.default for name in STRATEGIES for k, key in keys_for(name).items()}
    return SimpleNamespace(**{**defaults, **values})


def logits_with_entropy(entropies_like: list[float], vocab: int = 8) -> torch.Tensor:
    """Rows whose entropy grows with the given sharpness order (lower value = sharper = lower entropy)."""
    rows = []
    for k in entropies_like:
        z = torch.zeros(vocab)
        z[0] = 10.0 / (1 + k)
        rows.append(z)
    return torch.stack(rows)


def state(logits: torch.Tensor, candidates: list[bool], *, x0=None, step=0, progress=0.0) -> StepState:
    probs = torch.softmax(logits.double(), -1)
    conf, top = probs.max(-1)
    cand = torch.tensor(candidates)
    return StepState(logits=logits, x0=top if x0 is None else torch.tensor(x0), confidence=torch.where(cand, conf, -math.inf),
                     candidates=cand, quota=1, step=step, steps=1, block=0, progress=progress)


def entropy(logits: torch.Tensor) -> torch.Tensor:
    p = torch.softmax(logits.double(), -1)
    return -(p * p.log()).sum(-1)


def test_entropy_threshold_zero_commits_one_lowest_entropy_slot_per_step():
    lg = logits_with_entropy([3.0, 0.5, 2.0, 0.1])
    s = state(lg, [True, True, True, False])  # the sharpest row (3) is not a candidate
    out = EntropyThreshold(settings(entropy_threshold=0.0)).select(s)
    assert out.tolist() == [False, True, False, False]


def test_entropy_threshold_commits_every_candidate_under_the_bound():
    lg = logits_with_entropy([3.0, 0.5, 2.0, 0.1, 0.2])
    h = entropy(lg)
    bound = float(h[2]) + 1e-9
    s = state(lg, [True, True, True, False, True])
    out = EntropyThreshold(settings(entropy_threshold=bound)).select(s)
    assert out.tolist() == [bool(h[i] <= bound) and i != 3 for i in range(5)]
    assert not out[3]  # never a non-candidate, however sure


def cad(**kw) -> ConfidenceAdaptive:
    rule = ConfidenceAdaptive(settings(**{"threshold": 0.9, "cad_max_commits": 32, "cad_eos_progress": 0.3,
                                          "cad_max_steps": 0, **kw}))
    rule.bind(SimpleNamespace(eos_ids=(EOS,)))
    return rule


def sure(n: int, conf: list[float]) -> torch.Tensor:
    """Logits whose top-1 probability is ``conf[i]`` (over 8 tokens)."""
    rows = []
    for c in conf:
        rest = (1 - c) / 7
        rows.append(torch.tensor([math.log(c)] + [math.log(rest)] * 7))
    return torch.stack(rows)


def test_cad_caps_commits_per_step():
    lg = sure(6, [0.99, 0.98, 0.97, 0.96, 0.5, 0.95])
    out = cad(cad_max_commits=2).select(state(lg, [True] * 6, x0=[1, 2, 3, 4, 5, 6]))
    assert out.tolist() == [True, True, False, False, False, False]
    out = cad().select(state(lg, [True] * 6, x0=[1, 2, 3, 4, 5, 6]))
    assert out.tolist() == [True, True, True, True, False, True]


def test_cad_commits_at_least_one():
    lg = sure(3, [0.4, 0.6, 0.5])
    assert cad().select(state(lg, [True] * 3, x0=[1, 2, 3])).tolist() == [False, True, False]


def test_cad_holds_end_tokens_back_before_progress_rho():
    lg = sure(3, [0.99, 0.95, 0.5])
    early = cad().select(state(lg, [True] * 3, x0=[EOS, 2, 3], progress=0.1))
    assert early.tolist() == [False, True, False]
    late = cad().select(state(lg, [True] * 3, x0=[EOS, 2, 3], progress=0.5))
    assert late.tolist() == [True, True, False]


def test_cad_commits_an_end_token_when_it_is_the_only_candidate():
    lg = sure(3, [0.99, 0.95, 0.5])
    out = cad().select(state(lg, [True, False, False], x0=[EOS, 2, 3], progress=0.0))
    assert out.tolist() == [True, False, False]


def test_cad_commits_everything_left_at_the_step_cap():
    lg = sure(4, [0.2, 0.3, 0.4, 0.5])
    assert cad(cad_max_steps=3).select(state(lg, [True, False, True, True], x0=[1, 2, 3, 4], step=2)).tolist() == \
        [True, False, True, True]
    assert cad(cad_max_steps=3).select(state(lg, [True, False, True, True], x0=[1, 2, 3, 4], step=1)).sum() == 1


@pytest.mark.parametrize("profile", ["dparallel", "cad"])
def test_the_profiles_decode_the_tiny_llada(llada_model, prompt_ids, profile):
    from dlm_cli import profiles
    from dlm_cli.decode import run
    from dlm_cli.decode.events import Done, Step

    s = profiles.load(profile, flags={"max_new_tokens": 16})
    events = list(run(llada_model, prompt_ids, s))
    done = [e for e in events if isinstance(e, Done)][0]
    steps = [e for e in events if isinstance(e, Step)]
    assert done.nfe == len(steps) and all(len(e.positions) >= 1 for e in steps)
