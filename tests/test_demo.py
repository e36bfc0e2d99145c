"""The demo task suite, tokenizer, training script and the shipped demo weights."""

from __future__ import annotations

import json
import math
import random

import pytest
import torch
from typer.testing import CliRunner

from dlm_cli.cli import app
from dlm_cli.demo import tasks as T
from dlm_cli.models.loading import DEMO_DIR, EMBEDDED

runner = CliRunner()
DEMO_DLLM = DEMO_DIR / EMBEDDED["dlm-demo"][0]


# --- tasks -----------------------------------------------------------------------------------------

def test_examples_are_pure_functions_of_the_seed():
    for name, task in T.TASKS.items():
        assert task.example(7) == task.example(7)
        assert len({task.example(s).prompt for s in range(20)}) > 10, name


@pytest.mark.parametrize("name", [n for n, t in T.TASKS.items() if t.deterministic])
def test_deterministic_tasks_score_by_exact_match(name):
    task = T.TASKS[name]
    ex = task.example(3)
    assert task.score(ex, ex.answer)
    assert task.score(ex, f"  {ex.answer}\n")  # whitespace around the answer is not an error
    assert not task.score(ex, ex.answer + " 1")
    assert not task.score(ex, "")


def test_answers_are_right():
    xs = [41, 7, 93, 12]
    assert T.TASKS["sort"].score(T.Example("sort", "", "7 12 41 93"), " ".join(map(str, sorted(xs))))
    for seed in range(50):
        ex = T.TASKS["add"].example(seed)
        a, b = ex.prompt.removeprefix("Add: ").split(" + ")
        assert int(ex.answer) == int(a) + int(b) and len(a) == len(b) >= 2
        ex = T.TASKS["reverse"].example(seed)
        assert ex.answer.split() == ex.prompt.removeprefix("Reverse: ").split()[::-1]
        ex = T.TASKS["sort"].example(seed)
        assert [int(v) for v in ex.answer.split()] == sorted(int(v) for v in ex.prompt.split(":")[1].split())
        ex = T.TASKS["lookup"].example(seed)
        pairs = dict(p.split("=") for p in ex.prompt.removeprefix("Keys: ").split(".")[0].split())
        assert pairs[ex.prompt.split("What is ")[1].rstrip("?")] == ex.answer


def test_long_tasks_answers_are_right_and_40_to_200_tokens(demo_tokenizer):
    for seed in range(40):
        ex = T.TASKS["copy-long"].example(seed)
        assert ex.answer == ex.prompt.removeprefix("Copy: ") and 24 <= len(ex.answer.split()) <= 48
        ex = T.TASKS["sort-long"].example(seed)
        xs = [int(v) for v in ex.prompt.removeprefix("Sort with commas: ").split()]
        assert len(xs) == 30 and [int(v) for v in ex.answer.split(", ")] == sorted(xs)
        ex = T.TASKS["json"].example(seed)
        pairs = dict(p.split("=") for p in ex.prompt.removeprefix("Write as JSON: ").split())
        assert json.loads(ex.answer) == {k: int(v) for k, v in pairs.items()} and 6 <= len(pairs) <= 10
        ex = T.TASKS["story-long"].example(seed)
        slots = dict(p.split(": ") for p in ex.prompt.split("story: ")[1].split(", "))
        assert all(v in ex.answer for v in slots.values()) and ex.answer.count(".") == 5
    for name in T.LONG_TASKS:
        lens = [len(demo_tokenizer.encode(T.TASKS[name].example(s).answer, add_special_tokens=False))
                for s in range(300)]
        assert 40 <= min(lens) and max(lens) <= 200, (name, min(lens), max(lens))


def test_task_groups():
    assert T.task_names(None) == T.DEFAULT_TASKS == T.task_names(["default"])
    assert T.task_names(["long"]) == T.LONG_TASKS and T.task_names(["all"]) == list(T.TASKS)
    assert T.task_names(["copy", "long", "copy-long"]) == ["copy", *T.LONG_TASKS]
    with pytest.raises(ValueError, match="unknown task 'longg'"):
        T.task_names(["longg"])
    assert {e.task for e in T.suite(2, ["long"])} == set(T.LONG_TASKS)
    # the default training stream is the default suite's (the shipped 64-slot stage's data is unchanged)
    stream = T.training_stream(0)
    assert {next(stream).task for _ in range(500)} == set(T.DEFAULT_TASKS)
    stream = T.training_stream(0, ["all"])
    assert {next(stream).task for _ in range(500)} == set(T.TASKS)


def test_story_fill_is_deterministic_given_the_prompt():
    ex = T.TASKS["story"].example(11)
    again = [T.TASKS["story"].example(s) for s in range(400)]
    assert all(e.answer == ex.answer for e in again if e.prompt == ex.prompt)


def test_pick_is_scored_by_validity():
    task = T.TASKS["pick"]
    ex = T.Example("pick", "Pick 3 different words at random from: a b c d e", None, ("a", "b", "c", "d", "e"), 3)
    assert task.score(ex, "e a c") and task.score(ex, "b c d")
    assert not task.score(ex, "a a c")  # a repeat
    assert not task.score(ex, "a b z")  # not from the list
    assert not task.score(ex, "a b")  # too few
    assert not task.score(ex, "a b c d")  # too many
    rng = random.Random(0)
    for s in range(30):
        ex = task.example(s)
        assert ex.answer is None and task.score(ex, ex.target(rng))


def test_held_out_split_is_disjoint_from_training():
    held = T.suite(20)
    assert len(held) == 20 * len(T.DEFAULT_TASKS)
    assert all(T.held_out(e.prompt) for e in held)
    assert T.suite(20) == held  # the same examples on every call
    held_prompts = {e.prompt for e in held}
    stream = T.training_stream(0)
    trained = [next(stream).prompt for _ in range(3000)]
    assert not any(T.held_out(p) for p in trained)
    assert not held_prompts & set(trained)
    held_long = {e.prompt for e in T.suite(20, ["long"])}
    stream = T.training_stream(0, ["long"])
    trained = [next(stream).prompt for _ in range(1000)]
    assert len(held_long) == 80 and not any(T.held_out(p) for p in trained) and not held_long & set(trained)
    assert 0.02 < sum(T.held_out(T.TASKS["copy"].example(s).prompt) for s in range(2000)) / 2000 < 0.09


# --- tokenizer -------------------------------------------------------------------------------------

@pytest.fixture(scope="module")
def demo_tokenizer(tmp_path_factory):
    from dlm_cli.demo import tokenizer

    return tokenizer.build(tmp_path_factory.mktemp("tok"))


def test_tokenizer_round_trip_and_specials(demo_tokenizer):
    from dlm_cli.demo.tokenizer import SPECIALS
    from dlm_cli.prompting import encode

    tok = demo_tokenizer
    assert len(tok) <= 1024
    for ex in T.suite(3):
        ids = tok.encode(ex.target(random.Random(0)), add_special_tokens=False)
        assert tok.decode(ids) == ex.target(random.Random(0))
    pieces = tok.convert_ids_to_tokens(tok.encode("1234 + 56", add_special_tokens=False))
    assert [p.lstrip("Ġ") for p in pieces if p.lstrip("Ġ").isdigit()] == list("123456")  # one token per digit
    vocab = tok.get_vocab()
    assert [vocab[s] for s in SPECIALS] == list(range(len(SPECIALS)))
    assert tok.mask_token == "<|mdm_mask|>" and tok.bos_token == "<|startoftext|>"
    rendered = tok.apply_chat_template([{"role": "user", "content": " hi "}], add_generation_prompt=True,
                                       tokenize=False)
    assert rendered == ("<|startoftext|><|start_header_id|>user<|end_header_id|>\n\nhi<|eot_id|>"
                        "<|start_header_id|>assistant<|end_header_id|>\n\n")
    assert encode(tok, "hi")[0] == vocab["<|startoftext|>"]
    words = T.WORDS + T.NAMES + T.ANIMALS + T.PLACES
    assert all(len(tok.encode(" " + w, add_special_tokens=False)) == 1 for w in words)  # whole-word tokens


# --- training --------------------------------------------------------------------------------------

def _falls(losses: list[float]) -> bool:
    k = max(2, len(losses) // 4)
    return all(math.isfinite(x) for x in losses) and sum(losses[-k:]) / k < 0.8 * sum(losses[:k]) / k


def test_dllm_training_smoke(tmp_path):
    from dlm_cli.decode import run
    from dlm_cli.demo.train import SIZES, train
    from dlm_cli.models.loading import load
    from dlm_cli.profiles import load as load_profile
    from dlm_cli.prompting import encode

    out = tmp_path / "dllm"
    losses = train("dllm", seed=0, steps=25, out=out, batch=8, lr=3e-3, warmup=3, size=SIZES["tiny"], log=lambda s: None)
    assert _falls(losses), losses
    cfg = json.loads((out / "config.json").read_text())
    assert cfg["model_type"] == "llada" and cfg["mask_token_id"] == 5
    model = load(str(out))  # dlm's own LLaDA loader reads what the script saved
    assert model.info.family == "llada" and model.mask_id == 5
    assert set(model.eos_ids) >= {0, 4}  # <|endoftext|> and <|eot_id|>
    settings = load_profile("quality", flags={"max_new_tokens": 8})
    done = list(run(model, encode(model.tokenizer, "Copy: 1 2"), settings))[-1]
    assert done.nfe == 8


def test_dllm_masks_only_the_answer(monkeypatch):
    import torch

    from dlm_cli.demo import tokenizer
    from dlm_cli.demo import train as train_mod
    from dlm_cli.demo.train import GEN_LENGTH, Encoder, dllm_batch

    # A random subset of examples of different prompt lengths, left-padded into one batch.
    tok = tokenizer.build(__import__("pathlib").Path(__import__("tempfile").mkdtemp()))
    enc = Encoder(tok)
    exs = [T.TASKS["copy"].example(1), T.TASKS["story"].example(2)]
    ids, keep, pos, region, maskable = dllm_batch(enc, exs, random.Random(0))
    for i, ex in enumerate(exs):
        p = enc.prompt(ex.prompt)
        assert int(region[i].sum()) == GEN_LENGTH and int(keep[i].sum()) == len(p) + GEN_LENGTH
        assert ids[i, keep[i]].tolist()[: len(p)] == p and pos[i, keep[i]].tolist() == list(range(len(p) + GEN_LENGTH))
        tail = ids[i, region[i]].tolist()
        answer = enc.answer(ex.answer)
        assert tail[: len(answer) + 1] == answer + [enc.eot] and set(tail[len(answer) + 1:]) == {enc.pad}
    assert torch.equal(region & ~keep, torch.zeros_like(region)) and torch.equal(maskable, region)

    # Per-row canvases, and semi-autoregressive rows: a clean answer prefix, only the rest maskable.
    ids, keep, pos, region, maskable = dllm_batch(enc, exs * 20, random.Random(1), [12, 40] * 20, suffix_share=1.0)
    assert [int(r.sum()) for r in region[:2]] == [12, 40]
    assert torch.equal(maskable & ~region, torch.zeros_like(region))
    cuts = (region & ~maskable).sum(1)
    assert cuts.max() > 0
    for i in range(len(cuts)):  # the clean part is a prefix of the answer region
        r = region[i].nonzero().flatten().tolist()
        assert maskable[i, r].tolist() == [False] * int(cuts[i]) + [True] * (len(r) - int(cuts[i]))

    seen = {}

    def spy(net, x, keep_, pos_):  # records what the loss feeds the network
        seen["x"] = x
        return torch.zeros(*x.shape, len(tok), requires_grad=True)

    monkeypatch.setattr(train_mod, "dllm_forward", spy)
    train_mod.dllm_loss(None, (ids, keep, pos, region, maskable), 5, torch.Generator().manual_seed(0))
    masked = seen["x"] == 5
    assert masked.any() and not (masked & ~maskable).any()  # never a prompt or clean-prefix token


def test_canvas_lengths():
    from dlm_cli.demo.train import GEN_LENGTHS, canvas_lengths

    rng = random.Random(0)
    short = canvas_lengths([10] * 200, rng, full_share=0.0)
    assert set(short) <= set(range(11, 20)) and len(set(short)) == 9  # answer + eot + 0..8 pads
    full = canvas_lengths([10] * 200, rng, full_share=1.0)
    assert set(full) == set(GEN_LENGTHS)
    assert canvas_lengths([50], rng, full_share=1.0)[0] >= 51
    # a 256-slot model: full canvases of 32, 64, ... 256 slots; short ones are the answer and 0..8 pads
    full = canvas_lengths([10] * 400, rng, full_share=1.0, gen_length=256)
    assert set(full) == set(range(32, 257, 32))
    assert set(canvas_lengths([90] * 100, rng, full_share=0.0, gen_length=256)) == set(range(91, 100))


def test_training_resumes_from_its_checkpoint(tmp_path):
    from dlm_cli.demo.train import SIZES, train

    kw = dict(seed=0, steps=10, batch=4, lr=3e-3, warmup=2, size=SIZES["tiny"], log=lambda s: None,
              tasks=["all"], gen_length=96, full_share=0.3)
    straight = train("dllm", out=tmp_path / "a", **kw)
    ckpt = tmp_path / "state.pt"
    first = train("dllm", out=tmp_path / "b", save_every=5, ckpt=ckpt, stop_after=7, **kw)  # killed after step 6
    assert len(first) == 7 and ckpt.is_file()
    again = train("dllm", out=tmp_path / "b", save_every=5, ckpt=ckpt, **kw)
    assert again == straight  # the same losses, step for step
    a, b = (json.loads((tmp_path / d / "config.json").read_text()) for d in "ab")
    assert a == b and a["dlm_max_new_tokens"] == 96
    assert (tmp_path / "a" / "model.safetensors").read_bytes() == (tmp_path / "b" / "model.safetensors").read_bytes()


def test_length_groups_split_short_and_full_canvases():
    from dlm_cli.demo.train import GEN_LENGTHS, length_groups

    lens = [12, 64, 19, 32, 40, 31]
    groups = length_groups(lens)
    assert groups == [[0, 2, 5], [1, 3, 4]]
    assert all(lens[i] < GEN_LENGTHS[0] for i in groups[0]) and all(lens[i] >= GEN_LENGTHS[0] for i in groups[1])
    assert length_groups([12, 13]) == [[0, 1]] and length_groups([]) == []
    assert length_groups([300, 40, 100, 50, 170, 230], (48, 96, 160, 224)) == [[1], [3], [2], [4], [0, 5]]


def test_a_rows_logits_do_not_depend_on_the_batch_width(tmp_path):
    """Why grouped training is the same objective: a short row padded to a 64-slot row's width (keys
    masked, positions explicit) gets the logits it gets alone, and its loss terms add up."""
    import torch

    from dlm_cli.demo import tokenizer
    from dlm_cli.demo.train import SIZES, Encoder, build_dllm, dllm_batch, dllm_forward, dllm_loss, dllm_loss_terms

    tok = tokenizer.build(tmp_path)
    enc = Encoder(tok)
    net, cfg = build_dllm(tok, SIZES["tiny"])
    short, long_ = T.TASKS["copy"].example(1), T.TASKS["story"].example(2)
    both = dllm_batch(enc, [short, long_], random.Random(0), [12, 64])
    alone = dllm_batch(enc, [short], random.Random(0), [12])
    with torch.no_grad():
        wide = dllm_forward(net, *both[:3])[0, both[1][0]]
        narrow = dllm_forward(net, *alone[:3])[0, alone[1][0]]
    assert wide.shape == narrow.shape and torch.allclose(wide, narrow, atol=1e-5)
    total, slots = dllm_loss_terms(net, alone, cfg["mask_token_id"], torch.Generator().manual_seed(3))
    assert int(slots) == 12
    again = dllm_loss(net, alone, cfg["mask_token_id"], torch.Generator().manual_seed(3))
    assert torch.allclose(again, total / slots)


def test_dllm_starts_from_the_ar_target(tmp_path):
    from safetensors.torch import load_file

    from dlm_cli.demo.train import SIZES, train
    from dlm_cli.models import llada

    train("ar", seed=0, steps=2, out=tmp_path / "ar", batch=4, warmup=1, size=SIZES["tiny"], log=lambda s: None)
    ar = load_file(str(tmp_path / "ar" / "model.safetensors"))
    # lr 0: the saved dLLM is exactly the AR target's weights under LLaDA's names
    train("dllm", seed=0, steps=1, out=tmp_path / "dllm", batch=4, lr=0.0, warmup=1, size=SIZES["tiny"],
          init=tmp_path / "ar", log=lambda s: None)
    dllm = load_file(str(tmp_path / "dllm" / "model.safetensors"))
    assert len(dllm) == len(ar)
    for name, w in dllm.items():
        ours = llada.to_ours(name)
        assert (ar[ours] == w).all(), name


def test_reproduce_runs_the_recipes_in_order(tmp_path, monkeypatch):
    from dlm_cli.demo import train as train_mod

    calls = []
    monkeypatch.setattr(train_mod, "train", lambda kind, **kw: calls.append((kind, kw)))
    assert train_mod.main(["all", "--out", str(tmp_path), "--threads", "1"]) == 0
    assert [k for k, _ in calls] == ["ar", "dllm", "ar-draft"]
    by = dict(calls)
    assert by["dllm"]["init"] == by["ar"]["out"] == tmp_path / "dlm-demo-ar"
    assert by["ar"]["init"] is None and by["dllm"]["out"] == tmp_path / "dlm-demo-dllm"
    assert by["dllm"]["seed"] == 0 and by["dllm"]["steps"] == train_mod.RECIPES["dllm"]["steps"]
    # the draft is distilled from the target trained just before it
    assert by["ar-draft"]["teacher"] == by["ar"]["out"] and by["ar-draft"]["distill"] > 0


def test_focus_steps_train_the_binding_tasks_first():
    from dlm_cli.demo.train import batches

    it = batches(0, 16, focus_steps=3)
    first = [next(it) for _ in range(3)]
    assert {ex.task for b in first for ex in b} == set(T.FOCUS_TASKS) == {"lookup", "recall"}
    after = {ex.task for _ in range(5) for ex in next(it)}
    assert {"copy", "add", "lookup"} <= after <= set(T.TASKS)  # then the suite's mix, without recall
    # recall is training-only: never in the held-out suite
    assert "recall" not in T.TASKS and all(e.task != "recall" for e in T.suite(2))
    # a focus share below 1 mixes them into the usual stream for those steps
    mixed = next(batches(0, 200, focus_steps=1, focus_share=0.5))
    n_focus = sum(ex.task == "recall" for ex in mixed)
    assert 50 < n_focus + sum(ex.task == "lookup" for ex in mixed) < 150 and n_focus > 20
    assert {"copy", "add"} <= {ex.task for ex in mixed}


def test_ar_training_smoke(tmp_path):
    from transformers import AutoTokenizer, LlamaForCausalLM

    from dlm_cli.demo.train import SIZES, train

    out = tmp_path / "ar"
    losses = train("ar", seed=0, steps=25, out=out, batch=8, lr=1e-2, warmup=3, size=SIZES["tiny"], log=lambda s: None)
    assert _falls(losses), losses
    net = LlamaForCausalLM.from_pretrained(str(out))
    tok = AutoTokenizer.from_pretrained(str(out))
    assert net.config.num_hidden_layers == 1 and tok.chat_template
    assert set(net.generation_config.eos_token_id) == {0, 4}


def test_bf16_training_autocasts_and_saves_float32(tmp_path):
    from safetensors.torch import load_file

    from dlm_cli.demo.train import RECIPES, SIZES, train

    kw = dict(seed=0, steps=25, batch=8, lr=1e-2, warmup=3, size=SIZES["tiny"], log=lambda s: None)
    full = train("dllm", out=tmp_path / "fp32", **kw)
    half = train("dllm", out=tmp_path / "bf16", bf16=True, **kw)
    # the same seed and data: bfloat16 arithmetic changes every loss after the first steps, yet it learns
    assert _falls(half), half
    assert half[5:] != full[5:]
    assert all(w.dtype == torch.float32 for w in load_file(str(tmp_path / "bf16" / "model.safetensors")).values())
    assert all(r.get("bf16") for r in RECIPES.values())  # the shipped weights were trained this way


def test_draft_distillation_loss_and_training(tmp_path):
    import torch
    from transformers import AutoTokenizer

    from dlm_cli.demo.train import SIZES, Encoder, ar_batch, distill_loss, load_teacher, train

    teacher_dir = tmp_path / "target"
    train("ar", seed=0, steps=25, out=teacher_dir, batch=8, lr=1e-2, warmup=3, size=SIZES["tiny"], log=lambda s: None)
    teacher = load_teacher(teacher_dir)
    enc = Encoder(AutoTokenizer.from_pretrained(str(teacher_dir)))
    ids, att, lab = ar_batch(enc, [T.TASKS["copy"].example(i) for i in range(4)], random.Random(0))
    with torch.no_grad():
        ce = teacher(input_ids=ids, attention_mask=att, labels=lab).loss
        # weight 0: plain cross-entropy on the answer; a student equal to its teacher has KL 0
        assert torch.allclose(distill_loss(teacher, teacher, ids, att, lab, 0.0), ce, atol=1e-5)
        assert distill_loss(teacher, teacher, ids, att, lab, 1.0).abs() < 1e-5
    # A draft trained on the KL alone moves towards the teacher's distribution.
    losses = train("ar-draft", seed=1, steps=20, out=tmp_path / "draft", batch=8, lr=1e-2, warmup=2,
                   size=SIZES["tiny"], teacher=teacher_dir, distill=1.0, log=lambda s: None)
    assert _falls(losses), losses


# --- the shipped weights ---------------------------------------------------------------------------

needs_weights = pytest.mark.skipif(not (DEMO_DLLM / "model.safetensors").is_file(),
                                   reason="the demo weights are not in this checkout")


@pytest.fixture(scope="module")
def demo_model():
    from dlm_cli.models.loading import load

    return load("dlm-demo")


@needs_weights
def test_demo_weights_are_small_llada_checkpoints():
    for name, (sub, _) in EMBEDDED.items():
        if name.startswith("smollm2"):  # deltas over smollm2, not checkpoints (test_adapter.py, the next test)
            continue
        d = DEMO_DIR / sub
        assert (d / "model.safetensors").stat().st_size <= 20 * 1024 * 1024
        for f in ("config.json", "generation_config.json", "tokenizer.json", "tokenizer_config.json", "README.md"):
            assert (d / f).is_file(), d / f
    assert json.loads((DEMO_DLLM / "config.json").read_text())["model_type"] == "llada"


def test_the_distilled_delta_is_small_and_names_its_base_and_decoding():
    d = DEMO_DIR / EMBEDDED["smollm2-dlm-dp"][0]
    assert (d / "adapter_model.safetensors").stat().st_size <= 30 * 1024 * 1024
    cfg = json.loads((d / "config.json").read_text())
    assert (cfg["model_type"], cfg["base_model"], cfg["profile"]) == ("dlm-lora", "smollm2-dlm", "dparallel")
    assert (d / "README.md").is_file() and (d / "adapter_config.json").is_file()


@needs_weights
@pytest.mark.parametrize("task", ["copy", "reverse", "sort", "add", "story"])
def test_demo_dllm_answers_held_out_prompts(demo_model, task):
    from dlm_cli.demo.evaluate import eval_dllm

    # 98-100% on 50 held-out prompts per task (its model card), at least 7 of the first 8; untrained: 0
    assert demo_model.info.family == "llada"
    assert eval_dllm(None, 8, "quality", [task], model=demo_model)[task] >= 7 / 8


@needs_weights
@pytest.mark.xfail(strict=True, reason="key lookup is the one deterministic task below issue 3's 95% bar (at "
                   "chance, see the dlm-demo model card); remove this marker when retrained weights pass it")
def test_demo_dllm_meets_the_quality_bar_on_lookup(demo_model):
    from dlm_cli.demo.evaluate import eval_dllm

    assert eval_dllm(None, 8, "quality", ["lookup"], model=demo_model) == {"lookup": 1.0}


@needs_weights
def test_shipped_draft_agrees_with_its_target():
    from dlm_cli.demo.evaluate import eval_ar

    # The draft is distilled from the target: 90% agreement on 50 prompts per task (its card); the
    # same draft trained on the answers alone agreed on 72%, a random one on almost nothing.
    res = eval_ar(DEMO_DIR / EMBEDDED["dlm-demo-ar"][0], DEMO_DIR / EMBEDDED["dlm-demo-ar-draft"][0], 3)
    assert res["agreement"] >= 0.85, res
    assert res["target"]["copy"] == 1.0 and res["target"]["sort"] == 1.0


@needs_weights
def test_demo_bench_builtin_suite():
    r = runner.invoke(app, ["bench", "--tasks", "copy,pick", "--per-task", "1", "-p", "speedy", "--reps", "1",
                            "--json"])
    assert r.exit_code == 0, r.stderr
    rows = {row["profile"]: row for row in json.loads(r.stdout)["rows"]}
    assert set(rows) == {"baseline", "baseline+eotp", "speedy"}
    for row in rows.values():
        assert set(row["task_scores"]) == {"copy", "pick"}
        assert all(0.0 <= v <= 1.0 for v in row["task_scores"].values()) and row["nfe"] > 0
    assert rows["baseline"]["nfe"] == 64  # one token per step over dlm's default 64 slots


def test_bench_unknown_task():
    r = runner.invoke(app, ["bench", "--tasks", "copy,nope"])
    assert r.exit_code == 2 and "nope" in r.stderr


def test_bench_asks_for_more_prompts_than_a_task_has():
    # story has 3,600 prompts in all, 198 held out: a clear usage error instead of a hang
    r = runner.invoke(app, ["bench", "--tasks", "story", "--per-task", "400"])
    assert r.exit_code == 2
    assert "--per-task 400" in r.stderr and "'story' has only" in r.stderr and "held-out prompts" in r.stderr
    assert len(T.suite(150, ["story"])) == 150


def test_dlm_demo_long_answers_held_out_long_prompts_in_few_steps():
    """The shipped dlm-demo-long fills 256 slots: on the first held-out prompt of each long task,
    `speedy` (τ 0.9, EoTP) answers exactly in a handful of forwards, and one token per step (`quality`,
    EoTP) answers exactly too, but for sort-long, its weak task (24% on 50 prompts, the card)."""
    from dlm_cli import profiles
    from dlm_cli.decode import run
    from dlm_cli.models.loading import load
    from dlm_cli.prompting import encode

    model = load("dlm-demo-long")

    def decode(profile, ex):
        done = None
        for done in run(model, encode(model.tokenizer, ex.prompt),
                        profiles.load(profile, sets=["eotp=true"], flags={"max_new_tokens": 256, "seed": 0})):
            pass
        return model.tokenizer.decode(done.tokens, skip_special_tokens=True), done.nfe

    for ex in T.suite(1, T.LONG_TASKS):
        answer_tokens = len(model.tokenizer(ex.answer, add_special_tokens=False)["input_ids"])
        text, nfe = decode("speedy", ex)
        assert text == ex.answer, (ex.task, text)
        assert nfe <= 10 < answer_tokens  # 41-95 answer tokens, committed many per forward
        if ex.task != "sort-long":
            text, nfe = decode("quality", ex)
            assert text == ex.answer and nfe >= answer_tokens, (ex.task, text, nfe)
