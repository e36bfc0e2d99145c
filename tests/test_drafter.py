"""Learned drafters (DFlash): the directory format and its refusals, greedy identity with ar (chain and tree),
exact sampling, the hidden states from the verify forward, the training loss, resume, the CLI."""

from __future__ import annotations

import json
from collections import Counter
from pathlib import Path

import pytest
import torch
from checkpoints import chi_square, make_llama
from typer.testing import CliRunner

from dlm_cli import profiles
from dlm_cli.cli import app
from dlm_cli.decode import run
from dlm_cli.decode.events import Done
from dlm_cli.errors import DlmError
from dlm_cli.models.drafter import fingerprint, save_drafter
from dlm_cli.models.loading import load
from dlm_cli.train.drafter import DrafterRecipe, train

PROMPTS = ["the quick brown fox jumps", "hello world, how are you", "one two three four", "a b c d e f"]


def settings(profile: str, n: int = 40, seed: int = 1, **sets: object):
    return profiles.load(profile, sets=[f"{k}={json.dumps(v)}" for k, v in sets.items()],
                         flags={"max_new_tokens": n, "seed": seed})


def decode(model, prompt: str, profile: str, draft=None, n: int = 40, seed: int = 1, **sets) -> Done:
    events = list(run(model, model.tokenizer.encode(prompt), settings(profile, n, seed, **sets), draft=draft))
    return events[-1]


def greedy_rows(target, prompts: list[str], n: int = 48) -> list[dict]:
    rows = []
    for p in prompts:
        ids = target.tokenizer.encode(p)
        if not ids:
            continue
        rows.append({"prompt_ids": ids, "answer_ids": list(decode(target, p, "ar", n=n).tokens), "kind": "prompt"})
    return rows


def recipe(target_path: Path, **over) -> DrafterRecipe:
    # A random init: on a random tiny target the copied last layer is no head start.
    base = dict(method="dflash", model=str(target_path), steps=200, rows_per_step=4, anchors=16, lr=3e-3, block=6,
                init="random")
    return DrafterRecipe(**{**base, **over})


@pytest.fixture(scope="module")
def world(tmp_path_factory) -> dict:
    root = tmp_path_factory.mktemp("drafter")
    target_path = make_llama(root / "target", seed=0)
    other_path = make_llama(root / "other", seed=5, hidden=48)  # another target: another shape
    target = load(str(target_path))
    words = target.tokenizer.decode(list(range(10, 200)))
    prompts = PROMPTS + [" ".join(words.split()[i: i + 5]) for i in range(0, 60, 3)]
    rows = greedy_rows(target, prompts)
    r = recipe(target_path)
    net, step = train(target, rows, r, root / "work")
    out = save_drafter(root / "dflash", "dflash", net, fingerprint(target, str(target_path)), {"step": step})
    return {"root": root, "target_path": target_path, "target": target, "other_path": other_path, "rows": rows,
            "drafter_path": out, "drafter": load(str(out)), "log": root / "work" / "log.jsonl"}


def test_drafter_dir_format(world):
    cfg = json.loads((world["drafter_path"] / "config.json").read_text())
    assert cfg["model_type"] == "dlm-drafter" and cfg["method"] == "dflash"
    assert cfg["target"]["vocab_size"] == world["target"].vocab_size
    assert cfg["target"]["hidden_size"] == 32 and cfg["target"]["num_hidden_layers"] == 2
    assert cfg["drafter"]["block_size"] == 6 and cfg["drafter"]["layers"] == 1
    assert (world["drafter_path"] / "model.safetensors").is_file()
    assert world["drafter"].kind == "drafter" and world["drafter"].method == "dflash"


def test_loss_falls(world):
    log = [json.loads(line) for line in world["log"].read_text().splitlines()]
    assert len(log) == 200
    first = sum(r["loss"] for r in log[:10]) / 10
    last = sum(r["loss"] for r in log[-10:]) / 10
    assert last < 0.7 * first, (first, last)
    assert sum(r["accept"] for r in log[-10:]) / 10 > sum(r["accept"] for r in log[:10]) / 10


@pytest.mark.parametrize("prompt", PROMPTS)
def test_greedy_identical_to_ar_chain(world, prompt):
    t, d = world["target"], world["drafter"]
    ref = decode(t, prompt, "ar", n=48)
    got = decode(t, prompt, "dflash", draft=d, n=48)
    assert got.tokens == ref.tokens
    assert got.nfe <= ref.nfe


@pytest.mark.parametrize("prompt", PROMPTS)
def test_greedy_identical_to_ar_tree(world, prompt):
    t, d = world["target"], world["drafter"]
    ref = decode(t, prompt, "ar", n=48)
    got = decode(t, prompt, "dflash", draft=d, n=48, tree_width=4)
    assert got.tokens == ref.tokens


def test_drafts_are_accepted(world):
    """The identity tests mean something: the trained drafter's tokens are accepted, so fewer target forwards."""
    t, d = world["target"], world["drafter"]
    ar = sum(decode(t, p, "ar", n=48).nfe for p in PROMPTS)
    done = [decode(t, p, "dflash", draft=d, n=48) for p in PROMPTS]
    assert sum(x.accepted for x in done) > 0
    assert sum(x.nfe for x in done) < ar
    tree = [decode(t, p, "dflash", draft=d, n=48, tree_width=4) for p in PROMPTS]
    assert sum(x.accepted for x in tree) >= sum(x.accepted for x in done)


def test_features_come_from_the_verify_forward(world):
    """No extra target forward: the drafter's context equals the target's features of the committed prefix."""
    from dlm_cli.decode.learned import DFlashDraft

    t, d = world["target"], world["drafter"]
    s = settings("dflash", 24).frozen()
    src = DFlashDraft(d, t, s, t.vocab_size, tuple(t.eos_ids))
    calls = []
    orig = t.forward

    def counting(*a, **k):
        calls.append(k.get("hidden"))
        return orig(*a, **k)

    t.forward = counting
    try:
        from dlm_cli.decode.events import Clock
        from dlm_cli.decode.loops.ar import run as ar_run

        ids = t.tokenizer.encode(PROMPTS[0])
        events = list(ar_run(t, ids, s, src, torch.Generator().manual_seed(0), Clock()))
    finally:
        del t.forward
    done = events[-1]
    assert len(calls) == done.nfe and all(c == src.features for c in calls)
    seq = ids + done.tokens
    assert src.ctx == len(seq) - 1 or done.finish_reason == "eos"
    with torch.no_grad():
        out = t.net(input_ids=torch.tensor([seq[: src.ctx]]), output_hidden_states=True)
        feats = torch.cat([out.hidden_states[i + 1][0] for i in src.features], -1)
        want = d.net.context(feats, torch.arange(src.ctx))
    assert torch.allclose(src.kvs[0][0], want[0][0], atol=1e-4)


def test_sampling_is_exact(world):
    """Chi-square: the second token (the first one a draft is verified for) follows the target's marginal."""
    t, d = world["target"], world["drafter"]
    prompt, temp = PROMPTS[2], 0.5
    ids = t.tokenizer.encode(prompt)
    with torch.no_grad():  # the exact marginal of the second token: sum over t1 of p(t1) p(t2 | t1)
        p1 = torch.softmax(t.net(input_ids=torch.tensor([ids])).logits[0, -1].double() / temp, -1)
        firsts = [int(x) for x in torch.nonzero(p1 > 1e-6).flatten()]
        batch = torch.tensor([ids + [x] for x in firsts])
        p2 = torch.softmax(t.net(input_ids=batch).logits[:, -1].double() / temp, -1)
        marginal = (p1[firsts, None] * p2).sum(0)
    n = 500
    got = Counter()
    accepted = 0
    for seed in range(n):
        done = decode(t, prompt, "dflash", draft=d, n=4, seed=seed, temperature=temp)
        got[done.tokens[1]] += 1
        accepted += done.accepted
    assert accepted > n // 10  # the second token is often a verified draft token, not only a plain step
    chi, dof, p = chi_square(got, marginal, n)
    assert dof >= 2 and p > 1e-3, (chi, dof)


def test_resume_reproduces_the_next_steps(world, tmp_path):
    t, rows = world["target"], world["rows"]
    full = tmp_path / "full"
    part = tmp_path / "part"
    net_full, _ = train(t, rows, recipe(world["target_path"], steps=8), full)
    train(t, rows, recipe(world["target_path"], steps=8), part, stop_step=4)
    assert (part / "checkpoint.safetensors").is_file()
    net_part, step = train(t, rows, recipe(world["target_path"], steps=8), part)
    assert step == 8
    a = [json.loads(x)["loss"] for x in (full / "log.jsonl").read_text().splitlines()]
    b = [json.loads(x)["loss"] for x in (part / "log.jsonl").read_text().splitlines()]
    assert len(b) == 8 and b[4:] == pytest.approx(a[4:], rel=1e-4)
    for (k, v), (_, w) in zip(net_full.state_dict().items(), net_part.state_dict().items()):
        assert torch.allclose(v, w, atol=1e-5), k


def test_checkpoint_of_another_recipe_is_refused(world, tmp_path):
    from dlm_cli.errors import UsageError

    t, rows = world["target"], world["rows"]
    train(t, rows, recipe(world["target_path"], steps=2), tmp_path)
    with pytest.raises(UsageError, match="another recipe"):
        train(t, rows, recipe(world["target_path"], steps=2, lr=1e-2), tmp_path)


def test_drafter_of_another_target_is_refused(world):
    other = load(str(world["other_path"]))
    with pytest.raises(DlmError, match="was trained for"):
        decode(other, PROMPTS[0], "dflash", draft=world["drafter"], n=8)


def cli(*args: str):
    return CliRunner().invoke(app, list(args))


def test_cli_refusals_are_one_line(world):
    d = str(world["drafter_path"])
    res = cli("generate", "-m", str(world["other_path"]), "-p", "dflash", "--draft", d, "-n", "8", "hello")
    assert res.exit_code == 1
    lines = res.output.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("dlm: the drafter") and "Traceback" not in res.output
    res = cli("generate", "-m", str(world["target_path"]), "-p", "dflash", "-n", "8", "hello")
    assert res.exit_code == 2 and res.output.strip().startswith("dlm: the dflash strategy drafts with a learned drafter")
    res = cli("generate", "-m", d, "-n", "8", "hello")
    assert res.exit_code == 2 and "is a learned drafter" in res.output and len(res.output.strip().splitlines()) == 1


def test_cli_generate_with_the_drafter(world):
    d, m = str(world["drafter_path"]), str(world["target_path"])
    ar = cli("generate", "-m", m, "-p", "ar", "-n", "24", "--view", "plain", "--seed", "1", PROMPTS[0])
    got = cli("generate", "-m", m, "--draft", d, "-n", "24", "--view", "plain", "--seed", "1", PROMPTS[0])  # the drafter's profile
    assert ar.exit_code == 0 and got.exit_code == 0, got.output
    assert got.stdout == ar.stdout


def test_damaged_drafter_is_one_line(world, tmp_path):
    bad = tmp_path / "bad"
    bad.mkdir()
    (bad / "config.json").write_text((world["drafter_path"] / "config.json").read_text())
    (bad / "model.safetensors").write_bytes(b"not safetensors")
    with pytest.raises(DlmError, match="cannot load the drafter"):
        load(str(bad))


def test_cli_drafter_train_resumes_and_exports(world, tmp_path):
    m = str(world["target_path"])
    prompts = tmp_path / "prompts.jsonl"
    prompts.write_text("".join(json.dumps({"prompt": p}) + "\n" for p in PROMPTS))
    out, work = tmp_path / "out", tmp_path / "work"
    args = ["drafter", "train", "-m", m, "--prompts", str(prompts), "--out", str(out), "--work", str(work),
            "-n", "16", "--steps", "6", "--block", "4", "--anchors", "4", "--rows-per-step", "1"]
    first = cli(*args, "--stop-minutes", "0")  # stops after its first step, resumably, without exporting
    assert first.exit_code == 0, first.output
    assert "stopped at step 1/6" in first.output and not out.exists()
    assert len((work / "answers.jsonl").read_text().splitlines()) == len(PROMPTS)
    again = cli(*args)
    assert again.exit_code == 0, again.output
    log = [json.loads(x) for x in (work / "log.jsonl").read_text().splitlines()]
    assert [r["step"] for r in log] == [1, 2, 3, 4, 5, 6]
    cfg = json.loads((out / "config.json").read_text())
    assert cfg["training"]["step"] == 6 and cfg["drafter"]["block_size"] == 4 and cfg["target"]["name"] == m
    res = cli("generate", "-m", m, "--draft", str(out), "-n", "12", "--view", "plain", PROMPTS[0])
    assert res.exit_code == 0, res.output


def test_cli_drafter_train_refusals(world, tmp_path):
    res = cli("drafter", "train", "-m", str(world["target_path"]), "--method", "medusa", "--tasks", "realtext",
              "--out", str(tmp_path / "o"))
    assert res.exit_code == 2 and res.output.strip().splitlines() == ["dlm: --method 'medusa': use one of dflash, clover, hidden-transfer, ppd"]
    res = cli("drafter", "train", "-m", str(world["target_path"]), "--out", str(tmp_path / "o"), "--target-layers", "x")
    assert res.exit_code == 2 and res.output.strip().startswith("dlm: --target-layers 'x'")
    prompts = tmp_path / "p.jsonl"
    prompts.write_text(json.dumps({"prompt": "hello"}) + "\n")
    res = cli("drafter", "train", "-m", str(world["target_path"]), "--prompts", str(prompts), "--out",
              str(tmp_path / "o"), "--target-layers", "7", "-n", "4", "--work", str(tmp_path / "w"))
    assert res.exit_code == 2 and "has layers 0..1" in res.output and "Traceback" not in res.output


def test_reduced_draft_vocabulary(world, tmp_path):
    """A drafter over the 40 most frequent answer tokens proposes only those, and greedy output stays ar's."""
    t, rows = world["target"], world["rows"]
    net, step = train(t, rows, recipe(world["target_path"], draft_vocab=40, steps=120), tmp_path / "w")
    vocab = set(net.vocab.tolist())
    assert len(vocab) == 40 and set(t.eos_ids) <= vocab
    out = save_drafter(tmp_path / "d", "dflash", net, fingerprint(t, str(world["target_path"])), {"step": step})
    d = load(str(out))
    assert d.net.vocab.dtype == torch.long and set(d.net.vocab.tolist()) == vocab
    from dlm_cli.decode.events import Draft

    for p in PROMPTS:
        ref = decode(t, p, "ar", n=48)
        events = list(run(t, t.tokenizer.encode(p), settings("dflash", 48), draft=d))
        assert events[-1].tokens == ref.tokens
        drafted = [tok for e in events if isinstance(e, Draft) for tok in e.tokens]
        assert drafted and set(drafted) <= vocab


def test_cli_bench_rows_with_the_drafter(world, tmp_path):
    prompts = tmp_path / "p.jsonl"
    prompts.write_text("".join(json.dumps({"prompt": p}) + "\n" for p in PROMPTS[:2]))
    res = cli("bench", "-m", str(world["target_path"]), "--draft", str(world["drafter_path"]), "-p",
              "ar,dflash", "--prompts", str(prompts), "-n", "24", "--format", "json")
    assert res.exit_code == 0, res.output
    rows = {r["profile"]: r for r in json.loads(res.stdout)["rows"]}
    assert {"ar", "dflash"} <= set(rows)
    assert rows["dflash"]["nfe"] < rows["ar"]["nfe"]


def test_init_from_the_targets_last_layer(world):
    from dlm_cli.train.drafter import make_net

    t = world["target"]
    net = make_net(t, recipe(world["target_path"], init="target"))
    last = t.net.model.layers[-1]
    assert torch.equal(net.layers[0].q_proj.weight, last.self_attn.q_proj.weight.float())
    assert torch.equal(net.layers[0].mlp.down_proj.weight, last.mlp.down_proj.weight.float())
    assert torch.equal(net.norm.weight, t.net.model.norm.weight.float())
    rand = make_net(t, recipe(world["target_path"], init="random"))
    assert not torch.equal(rand.layers[0].q_proj.weight, last.self_attn.q_proj.weight.float())


def test_interrupt_keeps_the_finished_steps(world, tmp_path):
    """Ctrl-C during training saves a checkpoint of the finished steps; the rerun goes on from there."""
    t, rows = world["target"], world["rows"]

    def interrupt(rep):
        if rep.step == 3:
            raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        train(t, rows, recipe(world["target_path"], steps=6), tmp_path, on_step=interrupt)
    from safetensors import safe_open

    with safe_open(str(tmp_path / "checkpoint.safetensors"), "pt") as f:
        assert f.metadata()["step"] == "3"
    _, step = train(t, rows, recipe(world["target_path"], steps=6), tmp_path)
    assert step == 6
    assert [json.loads(x)["step"] for x in (tmp_path / "log.jsonl").read_text().splitlines()] == [1, 2, 3, 4, 5, 6]


def test_dflash_loss_hides_the_future_and_normalises_its_weights(world, monkeypatch):
    """METHODS-TRAINED.md §7: a block at anchor ``a`` sees no target feature at a position ``≥ a``, position 0
    carries no weight, and the loss is ``Σ w_k·CE / Σ w_k`` (with ``γ`` huge every weight is 1: the plain mean)."""
    import torch.nn.functional as F

    from dlm_cli.models.drafter import draft_head
    from dlm_cli.train import drafter as T

    target = world["target"]
    r = recipe(world["target_path"], anchors=4)
    net = T.make_net(target, r, world["rows"])
    embed = target.net.get_input_embeddings()
    head, _ = draft_head(net, target.net.get_output_embeddings(), target.token_count or target.vocab_size)
    head = head.detach().float()
    row = max(world["rows"], key=lambda x: len(x["answer_ids"]))
    ids = torch.tensor(row["prompt_ids"] + row["answer_ids"], dtype=torch.long)
    feats = T.Features(target, r.spec["target_layers"])(0, ids)
    start = len(row["prompt_ids"])

    def loss(f, rec=r):
        with torch.no_grad():
            return T.dflash_loss(net, embed, head, f, ids, start, rec, torch.Generator().manual_seed(3))[0]

    base = loss(feats)
    cand = torch.arange(start, len(ids) - 1)  # the anchors dflash_loss draws first from the same generator
    picks = cand[torch.randperm(cand.numel(), generator=torch.Generator().manual_seed(3))[: r.anchors]]
    last = feats.clone()
    last[int(picks.max()):] += 100.0  # at or after every anchor: no block may see it
    assert torch.equal(loss(last), base)
    first = feats.clone()
    first[start] += 100.0  # before every anchor but the first: seen
    assert not torch.allclose(loss(first), base)

    seen = []
    real = F.cross_entropy

    def spy(logits, labels, **kw):
        out = real(logits, labels, **kw)
        seen.append((out.detach(), labels.detach()))
        return out

    monkeypatch.setattr(torch.nn.functional, "cross_entropy", spy)
    flat = loss(feats, recipe(world["target_path"], anchors=4, gamma=1e9))
    ce, labels = seen[-1]
    assert len(ce) <= 4 * (r.block - 1)  # position 0 of each block is never a target
    assert torch.allclose(flat, ce.mean(), atol=1e-6)
    steep = loss(feats, recipe(world["target_path"], anchors=4, gamma=0.5))
    ce2, _ = seen[-1]
    assert torch.allclose(ce2, ce) and not torch.allclose(steep, ce.mean())


def test_batched_teacher_answers_equal_one_at_a_time(world, tmp_path):
    """--teacher-batch decodes the target's answers together; every cached answer is batch one's."""
    from rich.console import Console
    from rich.progress import Progress

    from dlm_cli.train import data as D
    from dlm_cli.train.common import teacher_rows

    t = world["target"]
    words = " ".join(PROMPTS).split()
    items = [D.Item(" ".join(words[i % 7: i % 7 + 2 + i % 5]) + f" {i}", None, "chat") for i in range(10)]
    s = settings("ar", n=24)
    got = {}
    for batch in (1, 4):
        (tmp_path / str(batch)).mkdir()
        with Progress(disable=True) as bar:
            rows = teacher_rows(items, tmp_path / str(batch), student=t, teacher=t, settings=s, bar=bar,
                                err=Console(file=open("/dev/null", "w")), label="target", targets="teacher",
                                check=False, end_id=t.eos_ids[0], skip_special=False, batch=batch)
        got[batch] = [r["answer_ids"] for r in rows]
    assert len(got[1]) == len(items) and got[4] == got[1]
    assert len({tuple(a) for a in got[1]}) > 1  # the answers differ: the comparison means something
    cached = (tmp_path / "4" / "answers.jsonl").read_text().splitlines()
    assert len(cached) == len(items)
