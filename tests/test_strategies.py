"""The parallel-decoding rules on crafted logits: ranking, entropy bound, Prophet, credit, LocalLeap,
AdaBlock boundaries, editing."""

from __future__ import annotations

import math

import pytest
from types import SimpleNamespace

import torch

from dlm_cli.decode.rules.adablock import boundary
from dlm_cli.decode.rules.base import StepState, rank_scores
from dlm_cli.decode.rules.baseline import Baseline
from dlm_cli.decode.rules.credit import Credit, credit_update, fuse
from dlm_cli.decode.rules.edit import Edit, edit_select
from dlm_cli.decode.rules.entropy import entropy_bounded_select
from dlm_cli.decode.rules.localleap import localleap_select
from dlm_cli.decode.rules.prophet import Prophet, bar
from dlm_cli.decode.rules.threshold import Threshold

NEG = float("-inf")


def settings(**values) -> SimpleNamespace:
    """Every declared key at its default (any strategy), with ``values`` on top: what a rule reads."""
    from dlm_cli.decode.keys import STRATEGIES, keys_for

    defaults = {k: key.default for name in STRATEGIES for k, key in keys_for(name).items()}
    return SimpleNamespace(**{**defaults, **values})


def picked(mask: torch.Tensor) -> list[int]:
    return mask.nonzero().squeeze(-1).tolist()


def from_probs(rows: list[list[float]], candidates: list[bool] | None = None, progress: float = 0.0) -> StepState:
    """A step whose logits are log-probabilities ``rows`` (so softmax gives them back)."""
    probs = torch.tensor(rows, dtype=torch.float64)
    logits = torch.log(probs)
    cand = torch.tensor(candidates if candidates is not None else [True] * len(rows))
    c, x0 = probs.max(-1)
    conf = torch.where(cand, c, torch.full_like(c, NEG))
    return StepState(logits=logits, x0=x0, confidence=conf, candidates=cand, quota=1, step=0, steps=1, block=0,
                     probability=c, tokens=torch.zeros(len(rows), dtype=torch.long), progress=progress)


def test_rank_scores_margin_and_entropy_follow_their_definitions():
    rows = [[0.5, 0.48, 0.01, 0.01], [0.3, 0.25, 0.25, 0.2], [0.7, 0.1, 0.1, 0.1]]
    st = from_probs(rows, [True, True, False])
    margin = rank_scores(st, "margin")
    assert margin[0].item() == pytest.approx(0.02) and margin[1].item() == pytest.approx(0.05)
    assert margin[2].item() == NEG
    ent = rank_scores(st, "entropy")
    assert ent[1].item() == pytest.approx(sum(p * math.log(p) for p in rows[1]))


def test_baseline_ranked_by_margin_or_entropy_picks_a_different_row_than_by_confidence():
    rows = [[0.5, 0.48, 0.01, 0.01], [0.45, 0.05, 0.05, 0.45], [0.4, 0.2, 0.2, 0.2]]
    st = from_probs(rows)
    assert picked(Baseline(settings(remasking="low_confidence", rank="confidence")).select(st)) == [0]
    assert picked(Baseline(settings(remasking="low_confidence", rank="margin")).select(st)) == [2]
    # entropies: row0 ≈ 0.79, row1 ≈ 1.00, row2 ≈ 1.33 -> row 0; make row 0 flatter to move it
    st2 = from_probs([[0.26, 0.25, 0.25, 0.24], [0.4, 0.3, 0.2, 0.1], [0.4, 0.2, 0.2, 0.2]])
    assert picked(Baseline(settings(remasking="low_confidence", rank="entropy")).select(st2)) == [1]


def test_threshold_on_margin_commits_rows_whose_margin_reaches_tau():
    st = from_probs([[0.5, 0.48, 0.01, 0.01], [0.9, 0.05, 0.03, 0.02], [0.62, 0.1, 0.2, 0.08]])
    rule = Threshold(settings(threshold=0.4, rank="margin"))
    assert picked(rule.select(st)) == [1, 2]  # margins .02, .85, .42


def test_entropy_bound_commits_the_largest_low_entropy_set_within_the_budget():
    rows = [[0.97, 0.01, 0.01, 0.01], [0.25, 0.25, 0.25, 0.25], [0.9, 0.05, 0.03, 0.02], [0.99, 0.0033, 0.0033, 0.0034]]
    h = [-sum(p * math.log(p) for p in r) for r in rows]
    st = from_probs(rows)
    order = sorted(range(4), key=lambda i: h[i])  # 3, 0, 2, 1
    budget = h[3] + h[0] + h[2] - 1e-6  # just short of the third
    assert sorted(picked(entropy_bounded_select(st.logits, st.candidates, budget))) == sorted(order[:2])
    assert sorted(picked(entropy_bounded_select(st.logits, st.candidates, budget + 2e-6))) == sorted(order[:3])
    # a zero budget still commits the single lowest-entropy row; non-candidates never count
    assert picked(entropy_bounded_select(st.logits, st.candidates, 0.0)) == [3]
    st.candidates[3] = False
    assert picked(entropy_bounded_select(st.logits, st.candidates, 0.0)) == [0]


def gap_state(gap: float, progress: float, n: int = 6) -> StepState:
    logits = torch.zeros(n, 5)
    logits[:, 0] = gap  # top-1 minus top-2 logit = gap at every row
    cand = torch.ones(n, dtype=torch.bool)
    conf = torch.softmax(logits.double(), -1).max(-1).values
    return StepState(logits=logits, x0=torch.zeros(n, dtype=torch.long), confidence=conf, candidates=cand,
                     quota=1, step=0, steps=n, block=0, progress=progress)


def test_prophet_bars_by_thirds():
    assert [bar(t) for t in (0.0, 0.32, 0.34, 0.66, 0.67, 0.99)] == [7.5, 7.5, 5.0, 5.0, 2.5, 2.5]


@pytest.mark.parametrize("gaps,progress,stop_at", [
    ([3.0, 6.0, 7.4, 7.6, 9.0], 0.1, 3),  # first third: needs 7.5
    ([3.0, 4.9, 5.1, 9.0], 0.5, 2),        # second third: needs 5.0
    ([1.0, 2.4, 2.6], 0.9, 2),             # last third: needs 2.5
])
def test_prophet_stops_at_the_first_step_whose_gap_passes_the_bar(gaps, progress, stop_at):
    rule = Prophet(settings(remasking="low_confidence", rank="confidence", prophet_window=4))
    stopped = None
    for i, g in enumerate(gaps):
        st = gap_state(g, progress)
        if rule.settled(st, rule.select(st)):
            stopped = i
            break
    assert stopped == stop_at


def test_prophet_gap_is_averaged_over_the_next_window_of_masked_rows():
    rule = Prophet(settings(remasking="low_confidence", rank="confidence", prophet_window=2))
    st = gap_state(1.0, 0.9)
    st.logits[1, 0] = 10.0  # row 1 would be committed (quota 1, most confident); rows 2, 3 are next
    st.confidence = torch.softmax(st.logits.double(), -1).max(-1).values
    st.logits[2, 0] = 4.5
    sel = rule.select(st)  # mean gap over rows 0, 2 = (1 + 4.5) / 2 = 2.75 ≥ 2.5
    assert sel.tolist() == [False, True, False, False, False, False] and rule.settled(st, sel)
    also = torch.tensor([False, False, True, False, False, False])
    assert not rule.settled(st, sel | also)  # the next rows are then 0 and 3: mean gap 1 < 2.5


def test_credit_decays_accumulates_and_fuses_by_the_formula():
    beta, gamma, alpha = 0.8, 0.2, 0.7
    logits = torch.log(torch.tensor([[0.6, 0.3, 0.1], [0.2, 0.5, 0.3]]))
    cand = torch.tensor([True, False])
    c = torch.zeros(2, 3)
    credit_update(c, logits, cand, beta, gamma)
    assert c[0, 0].item() == pytest.approx(0.6 ** gamma, rel=1e-5) and c.sum().item() == pytest.approx(0.6 ** gamma)
    credit_update(c, logits, cand, beta, gamma)
    assert c[0, 0].item() == pytest.approx(beta * 0.6 ** gamma + 0.6 ** gamma, rel=1e-5)
    fused = fuse(logits, c, alpha)
    assert fused[0, 0].item() == pytest.approx(logits[0, 0].item() + alpha * math.log1p(c[0, 0].item()), rel=1e-5)
    assert torch.equal(fused[1], logits[1])  # no credit, no change


def test_credit_rule_resets_at_each_block_and_raises_a_persistent_guess_over_threshold():
    rule = Credit(settings(threshold=0.9, rank="confidence", credit_decay=0.8, credit_gamma=0.2, credit_alpha=0.7))
    logits = torch.log(torch.tensor([[0.85, 0.1, 0.05]]))
    cand = torch.tensor([True])
    p = [torch.softmax(rule.adjust_logits(logits, cand, 0), -1)[0, 0].item() for _ in range(3)]
    assert p[0] < p[1] < p[2] and p[0] > 0.85  # the trace keeps adding belief
    assert torch.softmax(rule.adjust_logits(logits, cand, 1), -1)[0, 0].item() == pytest.approx(p[0])


def test_localleap_commits_anchor_neighbours_within_the_radius_only():
    conf = torch.full((14,), 0.1, dtype=torch.float64)
    conf[5] = 0.95  # the anchor
    conf[2] = conf[9] = 0.8  # within ±4: commit
    conf[10] = 0.8  # 5 away: not a neighbour
    conf[6] = 0.7  # adjacent but below the leap threshold
    cand = torch.ones(14, dtype=torch.bool)
    cand[4] = False
    conf[4] = NEG
    assert picked(localleap_select(conf, cand, 0.9, 0.75, 4)) == [2, 5, 9]
    # no anchor: only the top-1
    conf[5] = 0.85
    assert picked(localleap_select(conf, cand, 0.9, 0.75, 4)) == [5]


def test_adablock_boundary_is_the_most_confident_delimiter_past_the_minimum():
    is_delim = torch.tensor([False, True, False, True])  # tokens 1 and 3 are delimiters
    x0 = torch.tensor([0, 1, 0, 3, 0, 1, 0, 3])
    prob = torch.tensor([0.9, 0.95, 0.9, 0.5, 0.9, 0.6, 0.9, 0.1], dtype=torch.float64)
    assert boundary(x0, prob, is_delim, 2, 0.3) == 5  # row 1 is before the minimum; rows 3, 5 pass; 5 wins
    assert boundary(x0, prob, is_delim, 0, 0.3) == 1
    assert boundary(x0, prob, is_delim, 6, 0.3) is None  # row 7 is below the threshold


def test_edit_rewrites_committed_rows_whose_new_prediction_passes_tau_edit():
    x0 = torch.tensor([4, 5, 6, 7, 8])
    prob = torch.tensor([0.95, 0.95, 0.5, 0.95, 0.99], dtype=torch.float64)
    tokens = torch.tensor([1, 5, 2, 3, 9])
    editable = torch.tensor([True, True, True, True, False])
    assert picked(edit_select(x0, prob, tokens, editable, 0.9)) == [0, 3]  # 1: same token; 2: unsure; 4: final
    assert picked(edit_select(x0, prob, tokens, editable, 0.4)) == [0, 2, 3]


def test_edit_post_steps_run_while_edits_happen_up_to_the_cap():
    rule = Edit(settings(threshold=0.9, rank="confidence", edit_threshold=0.5, edit_post_steps=2))
    st = from_probs([[0.9, 0.1], [0.9, 0.1], [0.9, 0.1]], [False, False, False])
    st.tokens = torch.tensor([1, 1, 0])
    st.editable = torch.ones(3, dtype=torch.bool)
    assert picked(rule.edit(st)) == [0, 1]
    assert [rule.post_step(0, True), rule.post_step(0, True), rule.post_step(0, True)] == [True, True, False]
    st.tokens = torch.tensor([0, 0, 0])
    assert not rule.edit(st).any()
    assert rule.post_step(2, False) is False  # nothing edited: the block is done
    assert rule.post_step(2, True) is True  # a new block starts with a fresh cap
