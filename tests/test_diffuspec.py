"""DiffuSpec: a dLLM drafts for an AR target; the path search on crafted lattices; greedy identity with ar."""

from __future__ import annotations

from types import SimpleNamespace

import pytest
import torch
from typer.testing import CliRunner

from dlm_cli import profiles
from dlm_cli.cli import app
from dlm_cli.decode import run
from dlm_cli.decode.drafts import ContextNGram, DiffusionDraft
from dlm_cli.models.loading import load
from dlm_cli.prompting import encode

EOS = 0


def cfg(**over):
    base = dict(draft_length=30, draft_min=20, draft_step=10, cps_mass=0.8, cps_candidates=15, cps_beam=3,
                cps_lambda=0.5)
    return SimpleNamespace(**{**base, **over})


def source(**over) -> DiffusionDraft:
    d = DiffusionDraft(SimpleNamespace(), cfg(**over), width=10, stop=(EOS,))
    d.proxy = ContextNGram(10)
    return d


def lattice(rows):
    out = torch.full((len(rows), 10), 1e-6)
    for i, row in enumerate(rows):
        for t, p in row.items():
            out[i, t] = p
    return out


def test_the_path_search_takes_each_rows_best_when_the_proxy_knows_nothing():
    d = source()
    probs = lattice([{3: 0.9, 4: 0.1}, {5: 0.6, 6: 0.4}, {7: 0.95}])
    assert d.search([1, 2], probs) == [3, 5, 7]


def test_the_proxy_breaks_a_near_tie_towards_what_the_context_continues():
    d = source()
    d.proxy.grow([1, 2, 3, 6, 9, 1, 2, 3, 6])  # after "2 3" the context always wrote 6
    probs = lattice([{3: 0.9, 4: 0.1}, {5: 0.52, 6: 0.48}])
    assert d.search([1, 2], probs) == [3, 6]
    assert source(cps_lambda=1.0).search([1, 2], probs) == [3, 5]  # the drafter alone


def test_the_lattice_stops_after_the_first_row_that_proposes_an_end():
    d = source()
    probs = lattice([{3: 0.9}, {EOS: 0.5, 4: 0.45}, {5: 0.9}, {6: 0.9}])
    path = d.search([1], probs)
    assert path in ([3, EOS], [3, 4]) and len(path) == 2  # nothing after the row that can end
    assert source(cps_mass=0.01).search([1], probs) == [3, EOS]  # sets of one: the row's top token


def test_the_adaptive_draft_length_follows_the_emas():
    d = source(draft_length=30, draft_min=4, draft_step=10)
    d.last_gen = 12
    d.accepted([], 3, 12)  # gen EMA (30 + 12) / 2 = 21, acc EMA 16.5 < 21: no step
    assert d.k == 21
    d.last_gen = 2
    d.accepted([], 2, 2)  # gen 11.5, acc 9.25: k = 11
    assert d.k == 11
    d.last_gen = 4
    d.accepted([], 12, 12)  # gen 7.75, acc 10.6 >= gen: k = 7 + 10
    assert d.k == 17


@pytest.fixture(scope="module")
def pair():
    return load("dlm-demo-ar"), load("dlm-demo")


@pytest.mark.parametrize("prompt", ["Sort these numbers: 4 7 1 9 3", "Copy this list: 5 12 9 33 2 8 41 7",
                                    "Reverse this list: 3 8 1 6"])
def test_greedy_diffuspec_is_the_targets_own_output(pair, prompt):
    target, drafter = pair
    ids = encode(target.tokenizer, prompt, chat_template=True)
    s = lambda p: profiles.load(p, flags={"max_new_tokens": 24, "seed": 0})  # noqa: E731
    base = list(run(target, ids, s("ar")))[-1]
    done = list(run(target, ids, s("diffuspec"), draft=drafter))[-1]
    assert done.tokens == base.tokens and done.draft_source == "diffusion"
    assert done.drafted > 0 and done.draft_nfe == done.verifies and done.nfe <= base.nfe


def test_diffuspec_needs_a_diffusion_drafter():
    r = CliRunner().invoke(app, ["generate", "-m", "dlm-demo-ar", "-p", "diffuspec", "hi"])
    assert r.exit_code == 2 and "--draft DLLM" in r.stderr
    r = CliRunner().invoke(app, ["generate", "-m", "dlm-demo-ar", "--draft", "dlm-demo-ar-draft", "-p", "diffuspec", "hi"])
    assert r.exit_code == 2 and "is autoregressive" in r.stderr
