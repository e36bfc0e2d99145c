"""ETE (dlm's reading): threshold commits, plus the highest-entropy masks when too few pass."""

from __future__ import annotations

import torch
from typer.testing import CliRunner

from dlm_cli.cli import app
from dlm_cli.decode.rules.base import StepState
from dlm_cli.decode.rules.ete import ete_select


def state(logits, cand):
    logits, cand = torch.tensor(logits), torch.tensor(cand)
    p = torch.softmax(logits, -1)
    prob, x0 = p.max(-1)
    return StepState(logits=logits, x0=x0, confidence=torch.where(cand, prob, torch.tensor(-torch.inf)),
                     candidates=cand, quota=1, step=0, steps=1, block=0, probability=prob)


ROWS = [[9.0, 0.0, 0.0, 0.0],  # confident: p ≈ 0.9996
        [0.1, 0.0, 0.0, 0.05],  # nearly flat: the highest entropy
        [2.0, 0.0, 0.0, 0.0],  # p ≈ 0.71, lower entropy than row 1
        [0.0, 0.0, 0.0, 0.0]]  # flat but already committed


def test_explore_adds_the_highest_entropy_mask_when_too_few_pass():
    s = state(ROWS, [True, True, True, False])
    assert ete_select(s, 0.9, 2, 1).tolist() == [True, True, False, False]
    assert ete_select(s, 0.9, 2, 2).tolist() == [True, True, True, False]
    assert ete_select(s, 0.9, 2, 0).tolist() == [True, False, False, False]  # no exploring: the threshold rule
    assert ete_select(s, 0.5, 2, 1).tolist() == [True, False, True, False]  # two pass: no exploring


def test_ete_runs_across_the_whole_canvas_on_the_demo_model():
    r = CliRunner().invoke(app, ["generate", "-m", "dlm-demo", "-p", "ete", "Sort these numbers: 4 7 1 9 3", "--json"])
    assert r.exit_code == 0, r.stderr
    import json

    out = json.loads(r.stdout)
    assert out["text"] == "1 3 4 7 9" and out["settings"]["block_length"] == 256 and out["stats"]["blocks"] == 1
