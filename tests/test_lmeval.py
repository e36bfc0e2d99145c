"""The lm-evaluation-harness adapter: dlm registered as lm-eval's ``dlm`` model, run on local tasks
(tests/lmeval/*.yaml over local JSONL files, never the hub) with the tiny demo models."""

from __future__ import annotations

import glob
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

pytest.importorskip("lm_eval")

from lm_eval.api.instance import Instance  # noqa: E402

from dlm_cli.errors import DlmError, UsageError  # noqa: E402

TASKS = Path(__file__).parent / "lmeval"
ROOT = Path(__file__).resolve().parent.parent


@pytest.fixture(scope="module")
def ar():
    from dlm_cli.evals.lmeval import DlmLM

    return DlmLM(model="dlm-demo-ar", profile="lookup")


@pytest.fixture(scope="module")
def dllm():
    from dlm_cli.evals.lmeval import DlmLM

    return DlmLM(model="dlm-demo", profile="speedy", threshold=0.8)


def gen(context, **kw):
    return Instance("generate_until", {}, (context, kw), 0)


def chat(lm, text):
    return lm.apply_chat_template([{"role": "user", "content": text}])


def test_registered_as_dlm_in_lm_evals_registry():
    from lm_eval.api.registry import get_model

    from dlm_cli.evals.lmeval import DlmLM

    assert get_model("dlm") is DlmLM


def test_profile_keys_in_model_args_reach_the_settings(dllm):
    assert dllm.profile == "speedy" and dllm.sets == ["threshold=0.8"]
    from dlm_cli.evals.lmeval import DlmLM

    with pytest.raises(UsageError, match="unknown key 'no_such_key'"):
        DlmLM(model="dlm-demo", profile="speedy", no_such_key=1)


def test_generate_until_matches_dlm_decoding_and_cuts_at_until(ar):
    from dlm_cli import decode, profiles
    from dlm_cli.prompting import encode

    lm_ctx = chat(ar, "Copy: 36 71 89")
    full = ar.generate_until([gen(lm_ctx, until=["<none>"], max_gen_toks=16)])[0]
    # the same prompt through dlm itself (its own chat-template encoding), same profile and seed
    s = profiles.load("lookup", flags={"max_new_tokens": 16, "temperature": 0.0, "seed": 0})
    done = list(decode.run(ar.model, encode(ar.model.tokenizer, "Copy: 36 71 89"), s))[-1]
    assert full == ar.model.tokenizer.decode(done.tokens, skip_special_tokens=True)
    assert full.startswith("36 71 89")
    cut = ar.generate_until([gen(lm_ctx, until=[" 71", "zzz"], max_gen_toks=16)])[0]
    assert cut == "36"
    short = ar.generate_until([gen(lm_ctx, until=[], max_gen_toks=2)])[0]
    assert len(ar.model.tokenizer.encode(short, add_special_tokens=False)) <= 2 and full.startswith(short)


def test_generate_until_works_for_a_dllm(dllm):
    ctx = chat(dllm, "Sort these numbers: 1 7 0 2")
    out = dllm.generate_until([gen(ctx, until=["\n"], max_gen_toks=16)])[0]
    assert out == "0 1 2 7"  # the toy dLLM sorts; and nothing after the stop string
    cut = dllm.generate_until([gen(ctx, until=[" 2"], max_gen_toks=16)])[0]
    assert cut == "0 1"


def reference_logprob(lm, ctx, cont):
    """log p(cont | ctx) from transformers' forward over the whole sequence, outside the adapter."""
    import torch

    ids = torch.tensor([ctx + cont])
    with torch.inference_mode():
        logits = lm.model.net(input_ids=ids).logits[0].float()
    logp = torch.log_softmax(logits[:-1], dim=-1)
    rows = range(len(ctx) - 1, len(ctx) + len(cont) - 1)
    return sum(logp[r, t].item() for r, t in zip(rows, cont)), [int(logp[r].argmax()) for r in rows]


def test_loglikelihood_is_the_models_token_logprob(ar):
    # lm-eval's convention: the word-boundary space belongs to the continuation
    ctx_text = chat(ar, "Sort these numbers: 3 1 2") + "1"
    conts = [" 2 3", " 3 2"]
    reqs = [Instance("loglikelihood", {}, (ctx_text, c), i) for i, c in enumerate(conts)]
    (ll_good, greedy_good), (ll_bad, greedy_bad) = ar.loglikelihood(reqs)
    for (ll, greedy), c in zip(((ll_good, greedy_good), (ll_bad, greedy_bad)), conts):
        ctx, cont = ar.encode_pair(ctx_text, c)
        assert ctx + cont == ar.encode(ctx_text + c) and cont
        want, argmax = reference_logprob(ar, ctx, cont)
        assert ll == pytest.approx(want, abs=1e-4)
        assert greedy == (argmax == cont)
    assert ll_good > ll_bad and greedy_good and not greedy_bad  # the toy AR model sorts


def test_trailing_context_whitespace_moves_to_the_continuation(ar):
    ctx, cont = ar.encode_pair("Copy: 5 9 4\n\n", "5 9 4")
    assert ar.model.tokenizer.decode(cont).startswith("\n\n") and ctx == ar.encode("Copy: 5 9 4")


def test_loglikelihood_rolling_sums_every_token(ar):
    text = "Copy: 5 9 4"
    (total,) = ar.loglikelihood_rolling([Instance("loglikelihood_rolling", {}, (text,), 0)])
    tokens = ar._plain(text, add_special_tokens=False)
    want, _ = reference_logprob(ar, [ar.prefix_token], tokens)
    assert total == pytest.approx(want, abs=1e-4) and total < 0


def test_a_dllms_loglikelihood_is_llada_monte_carlo_estimate(dllm):
    import torch

    ctx_text = chat(dllm, "Sort these numbers: 1 7 0 2")
    reqs = [Instance("loglikelihood", {}, (ctx_text + "0", c), i) for i, c in enumerate([" 1 2 7", " 7 2 1"])]
    (good, good_greedy), (bad, bad_greedy) = dllm.loglikelihood(reqs)
    assert good > bad and good_greedy and not bad_greedy  # the toy dLLM sorts
    assert dllm.loglikelihood(reqs[:1]) == [(good, good_greedy)]  # seeded: the same estimate again
    # one continuation token: every draw masks it alone, so the estimate is its exact log-probability
    for c in (" 7", " 9"):
        ctx, cont = dllm.encode_pair(ctx_text + "0 1 2", c)
        assert len(cont) == 1
        x = torch.tensor([ctx + [dllm.model.mask_id]])
        with torch.inference_mode():
            exact = torch.log_softmax(dllm.model.logits(x, rows=(len(ctx), len(ctx) + 1)).float(), -1)[0, 0, cont[0]]
        (ll, _), = dllm.loglikelihood([Instance("loglikelihood", {}, (ctx_text + "0 1 2", c), 0)])
        assert ll == pytest.approx(float(exact), abs=1e-4)


def test_what_a_dllm_cannot_score_says_why_not(dllm, tmp_path):
    from checkpoints import make_sdar

    from dlm_cli.evals.lmeval import DlmLM

    with pytest.raises(DlmError, match="loglikelihood_rolling needs an autoregressive model.*dlm-demo is a diffusion"):
        dllm.loglikelihood_rolling([Instance("loglikelihood_rolling", {}, ("a b c",), 0)])
    block = DlmLM(model=str(make_sdar(tmp_path / "sdar")), profile="speedy")
    with pytest.raises(DlmError, match="loglikelihood needs an autoregressive model.*only for fully bidirectional dLLMs"):
        block.loglikelihood([Instance("loglikelihood", {}, ("a", " b"), 0)])


def evaluate(model_args, tasks):
    """lm-eval's own evaluator over the local tasks only (its bundled tasks are not indexed: fast)."""
    import lm_eval
    from lm_eval.tasks import TaskManager

    import dlm_cli.evals.lmeval  # noqa: F401  (registers "dlm")

    return lm_eval.simple_evaluate(model="dlm", model_args=model_args, tasks=tasks, apply_chat_template=True,
                                   task_manager=TaskManager(include_path=str(TASKS), include_defaults=False),
                                   log_samples=True)


def test_simple_evaluate_on_local_tasks_with_a_dllm(tmp_path, monkeypatch):
    monkeypatch.setenv("HF_DATASETS_OFFLINE", "1")
    monkeypatch.chdir(TASKS)  # the YAMLs name their JSONL relative to the working directory
    out = evaluate("model=dlm-demo,profile=speedy", ["dlm_toy_gen"])
    res = out["results"]["dlm_toy_gen"]
    samples = out["samples"]["dlm_toy_gen"]
    assert len(samples) == 6
    hits = [s["filtered_resps"][0] == s["target"] for s in samples]
    assert res["exact_match,none"] == pytest.approx(sum(hits) / 6)
    assert all("\n" not in s["filtered_resps"][0] for s in samples)


def lm_eval_env(tmp_path):
    return dict(os.environ, HF_HUB_OFFLINE="1", HF_DATASETS_OFFLINE="1", PYTHONPATH=str(ROOT),
                HF_HOME=str(tmp_path / "hf"), HF_DATASETS_CACHE=str(tmp_path / "ds"))


def test_a_fresh_interpreter_finds_dlm_in_lm_evals_registry_without_importing_dlm(tmp_path):
    """The installed dlm-cli-lmeval.pth hooks lm-eval's model registry: `get_model("dlm")` works in a
    process that never imported dlm, and the hook itself imports neither lm-eval nor torch."""
    code = ("import sys; assert 'lm_eval' not in sys.modules and 'torch' not in sys.modules, sorted(sys.modules); "
            "from lm_eval.api.registry import get_model; print(get_model('dlm').__module__, get_model('hf').__name__)")
    r = subprocess.run([sys.executable, "-c", code], env=lm_eval_env(tmp_path), capture_output=True, text=True,
                       timeout=300)
    assert r.returncode == 0, r.stderr[-3000:]
    assert r.stdout.split() == ["dlm_cli.evals.lmeval", "HFLM"]  # lm-eval's own models are all still there


def test_the_lm_eval_command_line_runs_the_local_tasks(tmp_path, ar):
    """lm-eval's own command line (`lm_eval`, here `python -m lm_eval`) finds `--model dlm`; no hub is reached.
    Its answers are dlm's: each sample's response and log-likelihood is what the adapter gives here."""
    env = lm_eval_env(tmp_path)
    cmd = [sys.executable, "-m", "lm_eval", "--model", "dlm",
           "--model_args", "model=dlm-demo-ar,profile=lookup,threads=1",
           "--tasks", "dlm_toy_gen,dlm_toy_choice", "--include_path", str(TASKS), "--apply_chat_template",
           "--output_path", str(tmp_path / "out"), "--log_samples"]
    r = subprocess.run(cmd, cwd=TASKS, env=env, capture_output=True, text=True, timeout=600)
    assert r.returncode == 0, r.stderr[-3000:]
    (results,) = glob.glob(str(tmp_path / "out" / "*" / "results_*.json"))
    got = json.loads(Path(results).read_text())["results"]
    assert set(got) == {"dlm_toy_gen", "dlm_toy_choice"}
    assert "|dlm_toy_gen" in r.stdout  # lm-eval's own results table

    def samples(task):
        (path,) = glob.glob(str(tmp_path / "out" / "*" / f"samples_{task}_*.jsonl"))
        return [json.loads(line) for line in Path(path).read_text().splitlines()]

    ar.templated = True  # the contexts below were rendered by --apply_chat_template
    gen_samples = samples("dlm_toy_gen")
    assert len(gen_samples) == 6
    for s in gen_samples:
        args = s["arguments"]["gen_args_0"]
        assert s["resps"][0][0] == ar.generate(args["arg_0"], dict(args["arg_1"]))
    hits = [s["filtered_resps"][0] == s["target"] for s in gen_samples]
    assert got["dlm_toy_gen"]["exact_match,none"] == pytest.approx(sum(hits) / len(hits))
    right = 0
    for s in samples("dlm_toy_choice"):
        lls = [float(resp[0][0]) for resp in s["resps"]]  # the samples file keeps them as text
        args = [s["arguments"][f"gen_args_{i}"] for i in range(len(lls))]
        want = ar.loglikelihood([Instance("loglikelihood", {}, (a["arg_0"], a["arg_1"]), 0) for a in args])
        assert lls == pytest.approx([w[0] for w in want], abs=1e-4)
        right += max(range(len(lls)), key=lls.__getitem__) == int(s["target"])
    assert got["dlm_toy_choice"]["acc,none"] == pytest.approx(right / 3)


def test_the_wrapper_turns_a_dlm_error_into_one_line_and_its_exit_code(tmp_path):
    """`python -m dlm_cli.evals.lmeval` is the same command line, with dlm's own error contract."""
    cmd = [sys.executable, "-m", "dlm_cli.evals.lmeval", "--model", "dlm",
           "--model_args", "model=dlm-demo-ar,no_such_key=1", "--tasks", "dlm_toy_gen", "--include_path", str(TASKS)]
    r = subprocess.run(cmd, cwd=TASKS, env=lm_eval_env(tmp_path), capture_output=True, text=True, timeout=300)
    assert r.returncode == 2, r.stderr[-3000:]
    last = r.stderr.strip().splitlines()[-1]
    assert last.startswith("dlm: ") and "unknown key 'no_such_key'" in last
    assert "Traceback" not in r.stderr


@pytest.mark.parametrize("profile,keys", [("quality", {}), ("speedy", {"cache": "none", "threshold": 0.8})])
def test_generate_until_with_a_batch_size_gives_batch_1s_texts(profile, keys):
    """lm-eval's batch_size: the requests decode as rows of one batch, rows joining as others finish."""
    from dlm_cli.evals.lmeval import DlmLM

    one = DlmLM(model="dlm-demo", profile=profile, **keys)
    eight = DlmLM(model="dlm-demo", profile=profile, batch_size="8", **keys)
    assert one.batch_size == 1 and eight.batch_size == 8 and eight.batchable
    tasks = ["Sort these numbers: 1 7 0 2", "Reverse: 12 7 33 5", "Copy: 8 41 3 77", "Sort these numbers: 9 3 5",
             "Reverse: 1 2 3 4 5 6", "Copy: 5 5 3", "Add: 35 + 47", "Sort these numbers: 4 7 1 9 3", "Copy: 1 2",
             "Reverse: 4 4 1"]
    chat(eight, tasks[0])  # contexts hold the chat template's markup, for both
    reqs = [gen(chat(one, t), until=["\n"] if k % 3 else [" 7", "\n"], max_gen_toks=16 + 8 * (k % 3))
            for k, t in enumerate(tasks)]
    forwards = []
    hook = eight.model.net.register_forward_pre_hook(lambda m, args: forwards.append(args[0].shape[0]))
    try:
        together = eight.generate_until(reqs)
    finally:
        hook.remove()
    alone = one.generate_until(reqs)
    assert together == alone and together[0] == "0 1 2" and len(set(alone)) >= 8
    assert max(forwards) == 8  # eight rows decoded together; the last two joined as others finished


def test_a_profile_the_batch_cannot_run_decodes_one_request_at_a_time():
    from dlm_cli.evals.lmeval import DlmLM

    lm = DlmLM(model="dlm-demo", profile="elastic", batch_size=4)  # Elastic-Cache refreshes inside a block
    assert lm.batch_size == 4 and not lm.batchable
    forwards = []
    hook = lm.model.net.register_forward_pre_hook(lambda m, args: forwards.append(args[0].shape[0]))
    try:
        out = lm.generate_until([gen(chat(lm, "Sort these numbers: 1 7 0 2"), until=["\n"], max_gen_toks=16)] * 2)
    finally:
        hook.remove()
    assert out == ["0 1 2 7"] * 2 and set(forwards) == {1}
    with pytest.raises(UsageError, match="batch_size 'x'"):
        DlmLM(model="dlm-demo", batch_size="x")
