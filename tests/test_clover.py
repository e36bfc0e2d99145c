"""Clover's regressive draft heads: greedy identity with ar (chain and tree), exact sampling, the loss (falls;
equals a hand computation; never sees the future), the augmenting block's cache against a fresh forward, the CLI."""

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
from dlm_cli.errors import DlmError
from dlm_cli.models.drafter import fingerprint, save_drafter
from dlm_cli.models.loading import load
from dlm_cli.train.drafter import DrafterRecipe, train

PROMPTS = ["the quick brown fox jumps", "hello world, how are you", "one two three four", "a b c d e f"]


def settings(profile: str, n: int = 40, seed: int = 1, **sets: object):
    if profile == "clover":  # the profile's own tree of two with lookup, unless a test sets them: the heads alone
        sets = {"tree_width": 1, "with_lookup": False, **sets}
    return profiles.load(profile, sets=[f"{k}={json.dumps(v)}" for k, v in sets.items()],
                         flags={"max_new_tokens": n, "seed": seed})


def decode(model, prompt: str, profile: str, draft=None, n: int = 40, seed: int = 1, **sets):
    return list(run(model, model.tokenizer.encode(prompt), settings(profile, n, seed, **sets), draft=draft))[-1]


def recipe(target_path: Path, **over) -> DrafterRecipe:
    base = dict(method="clover", model=str(target_path), steps=150, rows_per_step=4, anchors=16, lr=3e-3, block=5,
                init="random")
    return DrafterRecipe(**{**base, **over})


@pytest.fixture(scope="module")
def world(tmp_path_factory) -> dict:
    root = tmp_path_factory.mktemp("clover")
    target_path = make_llama(root / "target", seed=0)
    other_path = make_llama(root / "other", seed=5, hidden=48)
    target = load(str(target_path))
    words = target.tokenizer.decode(list(range(10, 200)))
    prompts = PROMPTS + [" ".join(words.split()[i: i + 5]) for i in range(0, 60, 3)]
    rows = []
    for p in prompts:
        ids = target.tokenizer.encode(p)
        if ids:
            rows.append({"prompt_ids": ids, "answer_ids": list(decode(target, p, "ar", n=48).tokens), "kind": "p"})
    net, step = train(target, rows, recipe(target_path), root / "work")
    out = save_drafter(root / "clover", "clover", net, fingerprint(target, str(target_path)), {"step": step})
    return {"root": root, "target_path": target_path, "target": target, "other_path": other_path, "rows": rows,
            "drafter_path": out, "drafter": load(str(out)), "log": root / "work" / "log.jsonl"}


def test_loss_falls_and_acceptance_rises(world):
    log = [json.loads(line) for line in world["log"].read_text().splitlines()]
    assert len(log) == 150
    first = sum(r["loss"] for r in log[:10]) / 10
    last = sum(r["loss"] for r in log[-10:]) / 10
    assert last < 0.5 * first, (first, last)
    assert sum(r["accept"] for r in log[-10:]) / 10 > 1.5 + sum(r["accept"] for r in log[:10]) / 10


@pytest.mark.parametrize("prompt", PROMPTS)
def test_greedy_identical_to_ar_chain_and_tree(world, prompt):
    t, d = world["target"], world["drafter"]
    ref = decode(t, prompt, "ar", n=48)
    chain = decode(t, prompt, "clover", draft=d, n=48)
    tree = decode(t, prompt, "clover", draft=d, n=48, tree_width=4)
    short = decode(t, prompt, "clover", draft=d, n=48, draft_length=2)
    assert chain.tokens == ref.tokens and tree.tokens == ref.tokens and short.tokens == ref.tokens
    assert chain.nfe < ref.nfe and tree.nfe <= chain.nfe + 2  # the identity means something: drafts accepted
    assert max(len(v.accepted_tokens) for v in
               [e for e in run(t, t.tokenizer.encode(prompt), settings("clover", 48, draft_length=2), draft=d)
                if type(e).__name__ == "Verify"]) <= 2


def test_sampling_is_exact(world):
    """Chi-square: the second token (the first one a draft is verified for) follows the target's marginal."""
    t, d = world["target"], world["drafter"]
    prompt, temp = PROMPTS[2], 0.5
    ids = t.tokenizer.encode(prompt)
    with torch.no_grad():
        p1 = torch.softmax(t.net(input_ids=torch.tensor([ids])).logits[0, -1].double() / temp, -1)
        firsts = [int(x) for x in torch.nonzero(p1 > 1e-6).flatten()]
        p2 = torch.softmax(t.net(input_ids=torch.tensor([ids + [x] for x in firsts])).logits[:, -1].double() / temp, -1)
        marginal = (p1[firsts, None] * p2).sum(0)
    n = 400
    got, accepted = Counter(), 0
    for seed in range(n):
        done = decode(t, prompt, "clover", draft=d, n=4, seed=seed, temperature=temp)
        got[done.tokens[1]] += 1
        accepted += done.accepted
    assert accepted > n // 10
    chi, dof, p = chi_square(got, marginal, n)
    assert dof >= 2 and p > 1e-3, (chi, dof)


def _parts(world, r):
    from dlm_cli.train import drafter as T

    t = world["target"]
    net = T.make_net(t, r, world["rows"])
    aux = T.objective("clover").setup(net, t)
    row = max(world["rows"], key=lambda x: len(x["answer_ids"]))
    ids = torch.tensor(row["prompt_ids"] + row["answer_ids"], dtype=torch.long)
    feats = T.Features(t, r.spec["target_layers"])(0, ids)
    return net, aux, ids, feats, len(row["prompt_ids"])


def test_loss_equals_a_hand_computation(world):
    """Every anchor and head by hand: w_i (CE + SmoothL1 to the target state) summed, over the summed weights."""
    import torch.nn.functional as F

    from dlm_cli.train.clover import clover_loss

    r = recipe(world["target_path"], anchors=5, gamma=2.0, block=4)
    net, aux, ids, feats, start = _parts(world, r)
    loss, accept, scored = clover_loss(net, world["target"], aux, feats, ids, start, r, torch.Generator().manual_seed(3))
    gen = torch.Generator().manual_seed(3)
    T, k = len(ids), 3
    cand = torch.arange(start - 1, T - 2)
    picks = cand[torch.randperm(len(cand), generator=gen)[:5]].sort().values.tolist()
    e = aux["embed"](ids).float()
    num = den = 0.0
    hits = []
    with torch.no_grad():
        for p in picks:
            z = torch.stack([net.fuse(feats[q], e[q + 1]) for q in range(p + 1)])  # only positions <= p
            s, _ = net.block(z, torch.arange(p + 1))
            st, o = s[-1], net.first(s[-1])
            run_ok = True
            for i in range(k):
                if i:
                    st, o = net.next(st, e[p + 1 + i])
                if p + 2 + i >= T:
                    break
                w = float(torch.exp(torch.tensor(-i / 2.0)))
                ce = F.cross_entropy((o @ aux["head"].T)[None], ids[p + 2 + i][None])
                reg = F.smooth_l1_loss(o, feats[p + 1 + i])
                num += w * float(ce + reg)
                den += w
                run_ok = run_ok and int((o @ aux["head"].T).argmax()) == int(ids[p + 2 + i])
                hits.append(run_ok)
    assert scored == 5 * k
    assert float(loss.detach()) == pytest.approx(num / den, rel=1e-4)
    assert 1.0 <= accept <= 1.0 + k


def test_heads_never_see_the_future(world):
    """Head i at position p is unchanged when target states after p or tokens after x_{p+1+i} change."""
    r = recipe(world["target_path"], block=4)
    net, aux, ids, feats, start = _parts(world, r)
    p = start + 3

    def heads(f, x):
        with torch.no_grad():
            e = aux["embed"](x).float()
            s, _ = net.block(net.fuse(f[:-1], e[1:]), torch.arange(len(x) - 1))
            st, outs = s[p], [net.first(s[p])]
            for i in range(1, 3):
                st, o = net.next(st, e[p + 1 + i])
                outs.append(o)
            return outs

    base = heads(feats, ids)
    f2 = feats.clone()
    f2[p + 1:] += torch.randn_like(f2[p + 1:])
    assert all(torch.allclose(a, b, atol=1e-5) for a, b in zip(base, heads(f2, ids)))
    x2 = ids.clone()
    x2[p + 3:] = (x2[p + 3:] + 7) % 100
    got = heads(feats, x2)
    assert torch.allclose(got[0], base[0], atol=1e-5) and torch.allclose(got[1], base[1], atol=1e-5)
    assert not torch.allclose(got[2], base[2], atol=1e-5)  # head 2 reads x_{p+3}: the check can fail


def test_block_cache_equals_a_fresh_forward(world):
    """The source's augmenting-block keys after a run equal the block over the committed prefix's target states."""
    from dlm_cli.decode.events import Clock
    from dlm_cli.decode.learned import CloverDraft
    from dlm_cli.decode.loops.ar import run as ar_run

    t, d = world["target"], world["drafter"]
    s = settings("clover", 24).frozen()
    src = CloverDraft(d, t, s, t.vocab_size, tuple(t.eos_ids))
    ids = t.tokenizer.encode(PROMPTS[1])
    done = list(ar_run(t, ids, s, src, torch.Generator().manual_seed(0), Clock()))[-1]
    seq = ids + done.tokens
    m = src.fused
    assert m > len(ids)
    with torch.no_grad():
        out = t.net(input_ids=torch.tensor([seq[: m]]), output_hidden_states=True)
        f = torch.cat([out.hidden_states[i + 1][0] for i in src.features], -1)
        z = d.net.fuse(f, t.net.get_input_embeddings()(torch.tensor(seq[1: m + 1])))
        _, kvs = d.net.block(z, torch.arange(m))
    assert torch.allclose(src.past[0][0], kvs[0][0], atol=1e-4)


def test_drafter_of_another_target_is_refused(world):
    other = load(str(world["other_path"]))
    with pytest.raises(DlmError, match="was trained for"):
        decode(other, PROMPTS[0], "clover", draft=world["drafter"])


def cli(*args: str):
    return CliRunner().invoke(app, list(args), catch_exceptions=False)


def test_cli_train_and_generate(world, tmp_path):
    m = str(world["target_path"])
    prompts = tmp_path / "prompts.jsonl"
    prompts.write_text("".join(json.dumps({"prompt": p}) + "\n" for p in PROMPTS))
    out = tmp_path / "out"
    res = cli("drafter", "train", "-m", m, "--method", "clover", "--prompts", str(prompts), "--out", str(out),
              "--work", str(tmp_path / "work"), "-n", "16", "--steps", "4", "--block", "3", "--anchors", "4",
              "--rows-per-step", "1", "--teacher-batch", "2")
    assert res.exit_code == 0, res.output
    cfg = json.loads((out / "config.json").read_text())
    assert cfg["method"] == "clover" and cfg["drafter"]["heads"] == 2 and cfg["training"]["step"] == 4
    gen = cli("generate", "-m", m, "--draft", str(out), "-n", "12", "--view", "none", "--json", PROMPTS[0])
    assert gen.exit_code == 0, gen.output
    got = json.loads(gen.stdout)
    assert got["profile"] == "clover" and got["nfe"] <= 12, got
    wrong = cli("generate", "-m", m, "--draft", str(out), "-p", "dflash", "-n", "8", PROMPTS[0])
    assert wrong.exit_code == 2 and "is a clover drafter; use -p clover" in wrong.output


def test_tree_with_lookup_is_identical_and_uses_both(world, tmp_path):
    """with_lookup: prompt lookup's draft is a second branch of the learned tree; greedy output stays ar's, and with
    an untrained drafter (its drafts rarely accepted) the lookup branch is what cuts the target forwards."""
    from dlm_cli.train.drafter import make_net

    t = world["target"]
    raw = make_net(t, recipe(world["target_path"]), world["rows"])
    d = load(str(save_drafter(tmp_path / "raw", "clover", raw, fingerprint(t, str(world["target_path"])), {"step": 0})))
    flat = mixed = 0
    for prompt in PROMPTS:
        ref = decode(t, prompt, "ar", n=64)
        alone = decode(t, prompt, "clover", draft=d, n=64, tree_width=2)
        both = decode(t, prompt, "clover", draft=d, n=64, tree_width=2, with_lookup=True)
        assert both.tokens == ref.tokens and alone.tokens == ref.tokens
        flat, mixed = flat + alone.nfe, mixed + both.nfe
    assert mixed < flat, (mixed, flat)
    res = cli("generate", "-m", str(world["target_path"]), "--draft", str(world["drafter_path"]), "-p", "clover",
              "--set", "with_lookup=true", "--set", "tree_width=1", "-n", "8", PROMPTS[0])
    assert res.exit_code == 2 and "add --set tree_width=2" in res.output


def test_init_from_an_earlier_drafter_goes_on_from_its_weights(world, tmp_path):
    """--init DIR: a later stage starts from the exported drafter's weights (its hyper-parameters too); a drafter
    of another method is refused in one line."""
    from dlm_cli.errors import UsageError
    from dlm_cli.train.drafter import make_net

    t = world["target"]
    r = recipe(world["target_path"], init_from=str(world["drafter_path"]), block=9, steps=3)
    net = make_net(t, r, world["rows"])
    assert r.spec["heads"] == 4  # the drafter's own (block 5), not this recipe's block
    want = world["drafter"].net.state_dict()
    assert all(torch.equal(v.float(), want[k].float()) for k, v in net.state_dict().items() if not k.startswith("rotary"))
    assert r.key() != recipe(world["target_path"], block=9, steps=3).key()
    assert recipe(world["target_path"]).key() == DrafterRecipe(**{**recipe(world["target_path"]).__dict__}).key()
    with pytest.raises(UsageError, match="is a clover drafter; train it with --method clover"):
        make_net(t, recipe(world["target_path"], method="dflash", init_from=str(world["drafter_path"])), world["rows"])
    _, step = train(t, world["rows"], recipe(world["target_path"], init_from=str(world["drafter_path"]), steps=3),
                    tmp_path / "stage2")
    log = [json.loads(x) for x in (tmp_path / "stage2" / "log.jsonl").read_text().splitlines()]
    first = [json.loads(x) for x in world["log"].read_text().splitlines()][:3]
    assert step == 3 and log[0]["loss"] < first[0]["loss"] * 0.5  # starts trained, not from scratch
