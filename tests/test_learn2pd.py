"""Learn2PD: the filter rule on crafted confidences, the oracle's labels, dlm filter train, and -p learn2pd."""

from __future__ import annotations

import json
from types import SimpleNamespace

import pytest
import torch
from typer.testing import CliRunner

from dlm_cli.cli import app
from dlm_cli.decode.rules.base import StepState
from dlm_cli.decode.rules.learn2pd import Filter, Learn2PD, load_filter
from dlm_cli.errors import UsageError

runner = CliRunner()
SORT = "Sort these numbers: 4 7 1 9 3"


def crafted_filter() -> Filter:
    """score = sigmoid(100 c - 90): above 0.96 exactly when c > 0.9318 (the identity through the ReLU)."""
    f = Filter(8)
    with torch.no_grad():
        f.l1.weight.copy_(torch.eye(8))
        f.l1.bias.zero_()
        f.l2.weight.copy_(100 * torch.eye(8))
        f.l2.bias.fill_(-90.0)
    return f


def state(prob, cand):
    prob, cand = torch.tensor(prob), torch.tensor(cand)
    conf = torch.where(cand, prob, torch.tensor(-torch.inf))
    return StepState(logits=torch.zeros(len(prob), 3), x0=torch.zeros(len(prob), dtype=torch.long), confidence=conf,
                     candidates=cand, quota=1, step=0, steps=1, block=0, probability=prob)


def rule(threshold=0.96) -> Learn2PD:
    r = Learn2PD(SimpleNamespace(filter_threshold=threshold, filter=""))
    r.net = crafted_filter()
    return r


def test_the_filter_commits_masked_rows_it_scores_above_the_threshold_plus_the_top1():
    sel = rule().select(state([0.95, 0.50, 0.94, 0.99, 0.93], [True, True, True, False, True]))
    assert sel.tolist() == [True, False, True, False, False]  # 0.99 is committed already; 0.93 scores < 0.96
    sel = rule().select(state([0.40, 0.50, 0.30], [True, True, True]))
    assert sel.tolist() == [False, True, False]  # nothing passes: the most confident alone
    sel = rule(threshold=0.0).select(state([0.40, 0.50, 0.30], [True, False, True]))
    assert sel.tolist() == [True, False, True]


def test_a_block_wider_than_the_filter_is_refused():
    with pytest.raises(UsageError, match="at most 8 slots"):
        rule().select(state([0.9] * 9, [True] * 9))


def test_a_bad_filter_file_is_one_clear_error(tmp_path):
    bad = tmp_path / "f.safetensors"
    bad.write_bytes(b"not a safetensors file")
    with pytest.raises(UsageError, match="is not a Learn2PD filter file"):
        load_filter(bad, "cpu")
    r = runner.invoke(app, ["generate", "-m", "dlm-demo", "-p", "learn2pd", "--set", f"filter={tmp_path / 'none'}", SORT])
    assert r.exit_code == 2 and "no such file; train one with dlm filter train" in r.stderr


def test_learn2pd_that_never_trusts_its_filter_is_the_one_token_per_step_baseline():
    """At filter_threshold 1 nothing passes the filter: only the top-1 per step, as LLaDA's baseline with EoTP."""
    args = ["generate", "-m", "dlm-demo", SORT, "-n", "32", "--json"]
    a = json.loads(runner.invoke(app, args + ["-p", "learn2pd", "--set", "filter_threshold=1.0"]).stdout)
    b = json.loads(runner.invoke(app, args + ["-p", "baseline", "--set", "eotp=true"]).stdout)
    assert a["text"] == b["text"] == "1 3 4 7 9" and a["nfe"] == b["nfe"] > 5
    fast = json.loads(runner.invoke(app, args + ["-p", "learn2pd"]).stdout)  # the shipped filter
    assert fast["text"] == "1 3 4 7 9" and fast["nfe"] < a["nfe"]


def test_filter_train_writes_a_filter_that_learn2pd_reads(tmp_path):
    out = tmp_path / "f.safetensors"
    r = runner.invoke(app, ["filter", "train", "-m", "dlm-demo", "--count", "3", "--epochs", "30", "-n", "32",
                            "--out", str(out)])
    assert r.exit_code == 0, r.stderr
    report = json.loads(r.stdout)
    assert report["prompts"] == 3 and report["samples"] >= 3 and 0 <= report["test_recall"] <= 1
    net, meta = load_filter(out, "cpu")
    assert net.width == 32 and meta["model"] == "dlm-demo" and meta["prompts"] == "3"
    g = runner.invoke(app, ["generate", "-m", "dlm-demo", "-p", "learn2pd", "--set", f"filter={out}", SORT, "-n", "32"])
    assert g.exit_code == 0 and g.stdout.strip() == "1 3 4 7 9"
    ar = runner.invoke(app, ["filter", "train", "-m", "dlm-demo-ar", "--count", "1"])
    assert ar.exit_code == 2 and "is for a diffusion LLM" in ar.stderr


def test_the_oracle_reaches_the_reference_answer():
    from dlm_cli import profiles
    from dlm_cli.filter import collect
    from dlm_cli.models.loading import LoadOptions, load
    from dlm_cli.prompting import encode

    model = load("dlm-demo", LoadOptions())
    ids = encode(model.tokenizer, SORT, chat_template=True)
    settings = profiles.load("baseline", flags={"max_new_tokens": 32, "seed": 0})
    samples, nfe = collect(model, ids, settings)
    assert 1 <= nfe < 32 and len(samples) == nfe  # one sample per oracle forward, far fewer than 32
    conf, labels, rows = samples[0]
    assert conf.shape == labels.shape == (32,) and rows == 32 and set(labels.tolist()) <= {0.0, 1.0}
    assert labels.sum() > 0


def test_a_filter_of_another_model_is_a_note_on_start_not_a_print(capsys):
    """The decoder prints nothing: a mismatched filter reaches the user through the run's Start event."""
    from types import SimpleNamespace

    import torch

    from dlm_cli.decode.rules.learn2pd import SHIPPED, Learn2PD

    rule = Learn2PD(SimpleNamespace(filter=str(SHIPPED / "dlm-demo.safetensors"), filter_threshold=0.96))
    notes = rule.bind(SimpleNamespace(info=SimpleNamespace(name="someone-else"), device=torch.device("cpu")))
    assert len(notes) == 1 and "trained on dlm-demo, not someone-else" in notes[0]
    assert capsys.readouterr().err == ""
    same = Learn2PD(SimpleNamespace(filter=str(SHIPPED / "dlm-demo.safetensors"), filter_threshold=0.96))
    assert same.bind(SimpleNamespace(info=SimpleNamespace(name="dlm-demo"), device=torch.device("cpu"))) == []
