"""dlm distill: the methods' losses against hand computations, the masked rows' invariants, training on
tiny models (the loss falls, resuming is exact), the exported delta, and the command's contract."""

from __future__ import annotations

import json
import math
import subprocess
import sys
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F

from checkpoints import make_adapter, make_llada
from dlm_cli.errors import DlmError
from dlm_cli.models.loading import load
from dlm_cli.train import losses, rows as R
from dlm_cli.train.distill import Recipe, export, lora_state, train


# ------------------------------------------------------------------------------------------ losses
def test_dparallel_loss_matches_a_hand_computation():
    logits = torch.tensor([[2.0, 0.0, -1.0], [0.0, 1.0, 0.5], [0.3, 0.2, 2.5], [1.0, 1.0, -2.0]])
    targets = torch.tensor([0, 2, 2, 1])
    view = torch.tensor([0, 0, 1, 1])

    def nll(row, y):
        z = logits[row].tolist()
        return -(z[y] - math.log(sum(math.exp(v) for v in z)))

    def ent(row, t=0.5):
        z = [v / t for v in logits[row].tolist()]
        lse = math.log(sum(math.exp(v) for v in z))
        p = [math.exp(v - lse) for v in z]
        return -sum(q * math.log(q) for q in p)

    ce_m = (nll(0, 0) + nll(1, 2)) / 2
    ce_mb = (nll(2, 2) + nll(3, 1)) / 2
    # argmax right: row 0 (0), row 2 (2); row 1 predicts 1 (wrong), row 3 ties 0/1 -> argmax 0 (wrong)
    h_m, h_mb = ent(0), ent(2)
    loss, parts = losses.dparallel_loss(logits, targets, view, beta=2.0)
    assert loss.item() == pytest.approx(ce_m + ce_mb + 2.0 * (h_m + h_mb), rel=1e-5)
    assert parts["accuracy"] == pytest.approx(0.5)


def test_dparallel_entropy_has_no_gradient_where_the_argmax_is_wrong():
    logits = torch.tensor([[2.0, 0.0], [0.0, 3.0]], requires_grad=True)
    targets = torch.tensor([0, 0])  # row 1 is wrong
    loss_b, _ = losses.dparallel_loss(logits, targets, torch.tensor([0, 0]), beta=5.0)
    loss_0, _ = losses.dparallel_loss(logits, targets, torch.tensor([0, 0]), beta=0.0)
    g_b = torch.autograd.grad(loss_b, logits)[0]
    g_0 = torch.autograd.grad(loss_0, logits)[0]
    assert torch.allclose(g_b[1], g_0[1])  # the wrong row: the entropy term adds nothing
    assert not torch.allclose(g_b[0], g_0[0])  # the right row is pushed towards certainty


def test_dparallel_with_beta_0_and_one_view_is_the_masked_cross_entropy():
    g = torch.Generator().manual_seed(0)
    logits, targets = torch.randn(7, 11, generator=g), torch.randint(11, (7,), generator=g)
    loss, _ = losses.dparallel_loss(logits, targets, torch.zeros(7, dtype=torch.long), beta=0.0)
    assert loss.item() == pytest.approx(F.cross_entropy(logits, targets).item(), rel=1e-6)


def test_cd4lm_loss_hand_computation_and_its_limits():
    s = torch.tensor([[1.0, 0.0, -1.0], [0.5, 0.5, 2.0]])
    t = torch.tensor([[2.0, -1.0, 0.0], [0.0, 0.0, 1.0]])
    y = torch.tensor([0, 2])
    tau = 2.0
    kl = 0.0
    for i in range(2):
        ps = torch.softmax(s[i] / tau, -1)
        pt = torch.softmax(t[i] / tau, -1)
        kl += float((pt * (pt.log() - ps.log())).sum())
    kl = kl / 2 * tau * tau
    ce = float(F.cross_entropy(s, y))
    loss, parts = losses.cd4lm_loss(s, t, y, lam=0.7)
    assert loss.item() == pytest.approx(0.7 * kl + 0.3 * ce, rel=1e-5)
    assert parts["kl"] == pytest.approx(kl, rel=1e-5)
    assert losses.cd4lm_loss(s, s.clone(), y, lam=1.0)[0].item() == pytest.approx(0.0, abs=1e-6)
    assert losses.cd4lm_loss(s, t, y, lam=0.0)[0].item() == pytest.approx(ce, rel=1e-6)
    big = torch.tensor([[30.0, -30.0, 0.0]])
    assert losses.cd4lm_loss(big, big, torch.tensor([1]), lam=0.0)[0].item() == pytest.approx(5.0)  # clamped


def test_cd4lm_lambda_schedule():
    assert losses.cd4lm_lambda(0, 100) == 0.9
    assert losses.cd4lm_lambda(9, 100) == 0.9
    assert losses.cd4lm_lambda(55, 100) == pytest.approx(0.7)
    assert losses.cd4lm_lambda(100, 100) == pytest.approx(0.5)


# -------------------------------------------------------------------------------------------- rows
MASK, END = 99, 2
BLOCKY = R.Layout(mask_id=MASK, end_id=END, shift=True, grid=4)
FULL = R.Layout(mask_id=MASK, end_id=END, shift=False, grid=None, block=4)


@pytest.mark.parametrize("seed", range(5))
def test_dparallel_block_rows_mask_complementary_views_and_never_the_prompt(seed):
    prompt, answer = [10, 11, 12, 13, 14, 15], [20, 21, 22, 23, 24, 25, 26]
    row = R.dparallel_row(prompt, answer, BLOCKY, torch.Generator().manual_seed(seed))
    total = 16  # 13 tokens padded to whole blocks of 4
    s = 4  # the first block holding an answer slot
    clean, v0, v1 = row.ids[:total], row.ids[total:total + 12], row.ids[total + 12:]
    assert clean.tolist() == prompt + answer + [END] * 3
    m0, m1 = v0 == MASK, v1 == MASK
    assert not (m0 & m1).any()  # disjoint ...
    slots = torch.arange(s, total) >= len(prompt)
    assert torch.equal(m0 | m1, slots)  # ... and covering every answer slot, never a prompt token
    assert sorted(row.tgt.tolist()) == sorted(clean[len(prompt):].tolist())  # each target once
    assert set(row.view.tolist()) <= {0, 1}


def test_dparallel_full_attention_row_has_one_active_block():
    prompt, answer = [10, 11, 12], list(range(20, 30))
    row = R.dparallel_row(prompt, answer, FULL, torch.Generator().manual_seed(3))
    total = 3 + 12
    a, b = row.ids[:total], row.ids[total:]
    masked_a, masked_b = (a == MASK).nonzero().flatten(), (b == MASK).nonzero().flatten()
    both = sorted(set(masked_a.tolist()) & set(masked_b.tolist()))
    active = sorted(set(masked_a.tolist()) ^ set(masked_b.tolist()))  # masked in exactly one view
    assert active and active[-1] - active[0] < 4
    start = 3 + (active[0] - 3) // 4 * 4  # the active block: blocks of 4 counted from the answer's start
    assert all(start <= i < start + 4 for i in active) and len(active) == 4  # the two views cover it
    assert both == list(range(start + 4, total))  # every later slot is a mask in both views, unscored
    assert (a[:start] != MASK).all()  # the prompt and earlier blocks stay clean
    assert not row.mask[:total, total:].any() and not row.mask[total:, :total].any()  # two sequences
    assert sorted(row.tgt.tolist()) == list(range(20 + start - 3, 20 + start + 1))


@pytest.mark.parametrize("n", [1, 2, 5, 10, 11, 19, 40, 200])
def test_cd4lm_nested_sizes(n):
    for seed in range(20):
        s, t = R.nested_counts(n, torch.Generator().manual_seed(seed))
        assert 1 <= s <= n and 0 <= t < s or (n == 1 and (s, t) == (1, 0))
        if n > 10:
            assert s >= max(2, math.ceil(0.1 * n))
            assert t <= 0.6 * n


@pytest.mark.parametrize("lay", [BLOCKY, FULL, R.Layout(MASK, END, True, None, 4)], ids=["block", "full", "full-shift"])
def test_cd4lm_teacher_masks_a_subset_of_the_students(lay):
    for seed in range(10):
        row = R.cd4lm_row([10, 11, 12, 13, 14], list(range(20, 40)), lay, torch.Generator().manual_seed(seed))
        assert row.teacher_ids is not None and row.teacher_ids.shape == row.ids.shape
        ms, mt = row.ids == MASK, row.teacher_ids == MASK
        assert not (mt & ~ms).any()  # T ⊆ S
        assert mt.sum() < ms.sum()  # the teacher sees more
        assert len(row.tgt) == int(ms.sum())


def test_block_rows_give_the_logits_the_decoder_sees(tmp_path):
    """A noisy copy in the packed row is exactly the decoder's forward on a canvas whose earlier blocks are final."""
    model = load(str(make_adapter(tmp_path / "a", block_size=4)))
    lay = R.Layout(model.mask_id, model.eos_ids[0], True, 4)
    prompt, answer = list(range(30, 36)), list(range(40, 49))
    row = R.dparallel_row(prompt, answer, lay, torch.Generator().manual_seed(1))
    with torch.no_grad():
        packed = model.net(row.ids[None], mask=row.mask, positions=row.positions, rows=row.src)[0]
    total = 16
    clean = row.ids[:total]
    for v in (0, 1):
        copy = row.ids[total + v * 12: total + (v + 1) * 12]
        for b0 in range(4, total, 4):
            x = clean.clone()
            x[b0:b0 + 4] = copy[b0 - 4:b0]
            x[b0 + 4:] = model.mask_id
            want = model.logits(x[None], rows=(b0, b0 + 4))[0]
            sel = (row.view == v) & (row.src >= 0)
            for j in torch.nonzero(sel).flatten().tolist():
                src = int(row.src[j])
                pos = int(row.positions[src]) + 1  # the shift: row i - 1 predicts i
                if b0 <= pos < b0 + 4 and (src >= total or pos % 4 == 0):
                    got = packed[j][: model.token_count or None]
                    assert torch.allclose(got, want[pos - b0], atol=1e-4)


# ------------------------------------------------------------------------------------------ training
@pytest.fixture(scope="module")
def tiny_paths(tmp_path_factory):
    root = tmp_path_factory.mktemp("distill")
    # Soft outputs: CD4LM clamps each term at 5 (no gradient past it), which a sharp random model exceeds.
    return {"block": make_adapter(root / "blocky", block_size=4, sharpen=1.0), "full": make_llada(root / "llada", sharpen=4.0)}


def data_rows(model, n=3):
    """Prompts answered by the model itself, one token per step: the teacher's targets, as dlm distill makes them."""
    from dlm_cli import profiles
    from dlm_cli.decode import run
    from dlm_cli.decode.events import Done

    settings = profiles.load("quality", flags={"max_new_tokens": 8})
    g = torch.Generator().manual_seed(0)
    out = []
    for k in range(n):
        prompt = torch.randint(20, 100, (6,), generator=g).tolist()
        done = [e for e in run(model, prompt, settings) if isinstance(e, Done)][0]
        out.append({"prompt_ids": prompt, "answer_ids": list(done.tokens) + [model.eos_ids[0]], "kind": "copy"})
    return out


@pytest.mark.parametrize("family", ["block", "full"])
@pytest.mark.parametrize("method", ["dparallel", "cd4lm"])
def test_training_loss_is_finite_and_falls(tiny_paths, tmp_path, family, method):
    model = load(str(tiny_paths[family]))
    seen, ce = [], []
    recipe = Recipe(method=method, model="tiny", steps=40, rows_per_step=3, lr=1e-2, rank=4, alpha=4.0, block=4)
    train(model, data_rows(model), recipe, tmp_path, on_step=lambda r: (seen.append(r.loss), ce.append(r.parts["ce"])))
    assert len(seen) == 40 and all(math.isfinite(x) for x in seen)
    # The cross-entropy on the teacher's answers falls (CD4LM's total moves weight from KL to CE as λ falls).
    assert sum(ce[-8:]) / 8 < 0.8 * sum(ce[:8]) / 8


def test_resuming_reproduces_the_uninterrupted_run(tiny_paths, tmp_path):
    recipe = Recipe(method="dparallel", model="tiny", steps=4, rows_per_step=2, lr=1e-3, rank=4, alpha=4.0)
    one = load(str(tiny_paths["block"]))
    train(one, data_rows(one), recipe, tmp_path / "a")
    two = load(str(tiny_paths["block"]))
    assert train(two, data_rows(two), recipe, tmp_path / "b", stop_step=2) == 2
    three = load(str(tiny_paths["block"]))
    assert train(three, data_rows(three), recipe, tmp_path / "b") == 4
    a, b = lora_state(one.net), lora_state(three.net)
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)
    log = [json.loads(x) for x in (tmp_path / "b" / "log.jsonl").read_text().splitlines()]
    assert [r["step"] for r in log] == [1, 2, 3, 4]


def test_an_interrupted_run_keeps_its_finished_steps_and_resumes_exactly(tiny_paths, tmp_path):
    recipe = Recipe(method="cd4lm", model="tiny", steps=4, rows_per_step=2, lr=1e-3, rank=4, alpha=4.0)
    one = load(str(tiny_paths["block"]))
    train(one, data_rows(one), recipe, tmp_path / "a")

    def ctrl_c(rep):
        if rep.step == 3:
            raise KeyboardInterrupt

    two = load(str(tiny_paths["block"]))
    with pytest.raises(KeyboardInterrupt):
        train(two, data_rows(two), recipe, tmp_path / "b", on_step=ctrl_c)
    assert torch.load(tmp_path / "b" / "checkpoint.pt", weights_only=True)["step"] == 3
    three = load(str(tiny_paths["block"]))
    assert train(three, data_rows(three), recipe, tmp_path / "b") == 4
    a, b = lora_state(one.net), lora_state(three.net)
    assert all(torch.equal(a[k], b[k]) for k in a)


def test_the_exported_delta_loads_as_base_plus_lora_and_decodes(tiny_paths, tmp_path):
    from dlm_cli import profiles
    from dlm_cli.decode import run
    from dlm_cli.decode.events import Done

    model = load(str(tiny_paths["block"]))
    recipe = Recipe(method="dparallel", model=str(tiny_paths["block"]), steps=3, rows_per_step=2, lr=1e-2, rank=4,
                    alpha=4.0)
    train(model, data_rows(model), recipe, tmp_path / "w")
    out = export(model, recipe, tmp_path / "out", base=str(tiny_paths["block"]), step=3, extra={})
    assert not list(tmp_path.glob(".out.*"))  # nothing half-written beside it
    cfg = json.loads((out / "config.json").read_text())
    assert cfg["model_type"] == "dlm-lora" and cfg["profile"] == "dparallel"
    distilled = load(str(out))
    base = load(str(tiny_paths["block"]))
    state = lora_state(model.net)
    key = next(k for k in state if "q_proj.lora_A" in k and ".0." in k)
    a, b = state[key], state[key.replace("lora_A", "lora_B")]
    w0 = dict(base.net.named_parameters())["model.layers.0.self_attn.q_proj.weight"]
    w1 = dict(distilled.net.named_parameters())["model.layers.0.self_attn.q_proj.weight"]
    want = w0 + (b.to(torch.bfloat16).float() @ a.to(torch.bfloat16).float())
    assert torch.allclose(w1, want, atol=1e-5) and not torch.allclose(w1, w0)
    s = profiles.load("dparallel", flags={"max_new_tokens": 8})
    done = [e for e in run(distilled, [30, 31, 32], s) if isinstance(e, Done)][0]
    assert done.nfe >= 1 and len(done.tokens) <= 8


def test_a_damaged_checkpoint_is_one_clear_error(tiny_paths, tmp_path):
    model = load(str(tiny_paths["block"]))
    (tmp_path / "checkpoint.pt").write_bytes(b"PK\x03\x04 not a checkpoint")
    with pytest.raises(DlmError, match="checkpoint .* is damaged .* delete it"):
        train(model, data_rows(model), Recipe(method="dparallel", model="t", steps=2, rank=4), tmp_path)


def test_a_checkpoint_of_another_recipe_is_refused(tiny_paths, tmp_path):
    model = load(str(tiny_paths["block"]))
    train(model, data_rows(model), Recipe(method="dparallel", model="t", steps=1, rows_per_step=1, rank=4), tmp_path)
    other = load(str(tiny_paths["block"]))
    with pytest.raises(DlmError, match="another recipe"):
        train(other, data_rows(other), Recipe(method="dparallel", model="t", steps=1, rows_per_step=1, rank=8), tmp_path)


def test_init_starts_the_lora_from_an_exported_delta(tiny_paths, tmp_path):
    """--init: the run's LoRA starts as the delta's, so before any step the network is the delta's model."""
    from dlm_cli.train.distill import add_lora, init_lora

    base = str(tiny_paths["block"])
    model = load(base)
    recipe = Recipe(method="dparallel", model=base, steps=3, rows_per_step=2, lr=1e-2, rank=4, alpha=4.0)
    train(model, data_rows(model), recipe, tmp_path / "w")
    out = export(model, recipe, tmp_path / "out", base=base, step=3, extra={})
    fresh, warm = load(base), load(base)
    add_lora(warm.net, recipe)
    init_lora(warm.net, out)
    merged = load(str(out))
    x = torch.tensor([[30, 31, 32, 33, warm.mask_id, warm.mask_id, warm.mask_id, warm.mask_id]])
    with torch.no_grad():
        got, want, before = (m.logits(x, rows=(4, 8))[0] for m in (warm, merged, fresh))
    assert torch.allclose(got, want, atol=1e-4) and not torch.allclose(got, before, atol=1e-3)
    # A run from the delta is another recipe than a run from a fresh LoRA: neither resumes the other's checkpoint.
    assert Recipe(**{**recipe.__dict__, "init": str(out)}).key() != recipe.key()
    other = load(base)
    with pytest.raises(DlmError, match="pass the delta's --rank"):
        add_lora(other.net, Recipe(method="dparallel", model=base, rank=8, alpha=8.0))
        init_lora(other.net, out)


def test_init_is_refused_for_a_delta_of_another_model_or_rank(tiny_paths, tmp_path):
    from dlm_cli.errors import UsageError
    from dlm_cli.train.run import init_delta

    base = str(Path(tiny_paths["block"]).resolve())
    model = load(base)
    recipe = Recipe(method="dparallel", model=base, steps=1, rows_per_step=1, rank=4, alpha=4.0)
    train(model, data_rows(model), recipe, tmp_path / "w")
    out = export(model, recipe, tmp_path / "out", base=base, step=1, extra={})
    assert init_delta(str(out), base, 4, 4.0, None) == str(out.resolve())
    with pytest.raises(UsageError, match=r"has rank 4 \(alpha 4.0\).*pass --rank 4"):
        init_delta(str(out), base, 8, 8.0, None)
    with pytest.raises(UsageError, match="is a delta over .*not over"):
        init_delta(str(out), str(Path(tiny_paths["full"]).resolve()), 4, 4.0, None)
    with pytest.raises(UsageError, match="is not a LoRA delta"):
        init_delta(base, base, 4, 4.0, None)


# --------------------------------------------------------------------------------------------- CLI
def dlm(*args, cwd=None):
    return subprocess.run([sys.executable, "-m", "dlm_cli", *args], capture_output=True, text=True, cwd=cwd,
                          timeout=300)


def test_distill_help_documents_both_methods():
    from typer.testing import CliRunner

    from dlm_cli.cli import app

    res = CliRunner().invoke(app, ["distill", "--help"], env={"COLUMNS": "120"})
    assert res.exit_code == 0
    assert "dparallel" in res.output and "cd4lm" in res.output and "certainty" in res.output


def test_distill_end_to_end_and_bad_input(tiny_paths, tmp_path):
    prompts = tmp_path / "p.jsonl"
    prompts.write_text("\n".join(json.dumps({"prompt": f"sort these numbers: {i} 3 1"}) for i in range(3)) + "\n")
    out, work = tmp_path / "out", tmp_path / "work"
    args = ["distill", "-m", str(tiny_paths["full"]), "--method", "cd4lm", "--prompts", str(prompts), "-n", "8",
            "--steps", "2", "--rows-per-step", "1", "--rank", "4", "--out", str(out), "--work", str(work)]
    res = dlm(*args)
    assert res.returncode == 0, res.stderr
    assert (out / "adapter_model.safetensors").is_file() and (work / "answers.jsonl").is_file()
    assert len((work / "answers.jsonl").read_text().splitlines()) == 3
    gen = dlm("generate", "-m", str(out), "-p", "cad", "-n", "8", "--view", "none", "--json", "hello")
    assert gen.returncode == 0, gen.stderr
    assert json.loads(gen.stdout)["nfe"] >= 1
    own = dlm("generate", "-m", str(out), "-n", "8", "--view", "none", "--json", "hello")
    assert own.returncode == 0, own.stderr
    assert json.loads(own.stdout)["profile"] == "cad"  # the delta's own decoding is its default
    bad = dlm("distill", "--method", "medusa", "--prompts", str(prompts), "--out", str(tmp_path / "x"),
              "-m", str(tiny_paths["full"]))
    assert bad.returncode == 2 and bad.stderr.strip().startswith("dlm: --method 'medusa'")
    assert "Traceback" not in bad.stderr
    (work / "checkpoint.pt").write_bytes(b"garbage")
    broken = dlm(*args[:-4], "--steps", "3", "--out", str(tmp_path / "o2"), "--work", str(work))
    assert broken.returncode == 1 and "damaged" in broken.stderr and "Traceback" not in broken.stderr
    assert not (tmp_path / "o2").exists()


def test_teacher_answers_are_cached_checked_against_gold_and_a_damaged_cache_is_refused(tmp_path):
    from dlm_cli.train import data as D

    items = [D.Item("a", "x y", "typo"), D.Item("b", "p q", "typo"), D.Item("c", None, "chat")]
    calls = []
    answer_of = {"a": [1, 2], "b": [3], "c": [5, 6, 7]}
    words = {1: "x", 2: "y", 3: "wrong", 5: "c1", 6: "c2", 7: "c3"}

    def decode(prompts):
        for i, ids in reversed(list(enumerate(prompts))):  # any order, as a batched teacher finishes them
            calls.append(ids)
            yield i, answer_of[chr(ids[0])], True

    kw = dict(encode=lambda t: [ord(t)], decode=decode, end_id=0, tokenize=lambda t: [9],
              detokenize=lambda ids: " ".join(words[i] for i in ids), progress=lambda *a: None)
    rows = D.answers(items, tmp_path, targets="teacher", check=True, **kw)
    assert [r["answer_ids"] for r in rows] == [[1, 2, 0], [5, 6, 7, 0]]  # "b" differs from its gold answer: dropped
    assert len(calls) == 3
    gold = D.answers(items, tmp_path, targets="gold", check=False, **kw)
    assert len(calls) == 3  # cached: nothing decoded again
    assert [r["source"] for r in gold] == ["gold", "gold", "teacher"]
    lines = (tmp_path / "answers.jsonl").read_text().splitlines()
    (tmp_path / "answers.jsonl").write_text("\n".join([lines[0], "{broken", lines[2]]) + "\n")
    with pytest.raises(DlmError, match=r"answers.jsonl:2 is damaged"):
        D.answers(items, tmp_path, targets="teacher", check=False, **kw)
