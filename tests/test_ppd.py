"""PPD (parallel prompt decoding): greedy identity with ar, exact sampling, the loss (falls; equals a hand
computation), the slot masks (training and decoding), the hardware-aware tree, the CLI and its refusals."""

from __future__ import annotations

import json
import math
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
from dlm_cli.models.drafter import fingerprint, save_drafter
from dlm_cli.models.loading import load
from dlm_cli.train import ppd as P
from dlm_cli.train.drafter import DrafterRecipe, train

PROMPTS = ["the quick brown fox jumps", "hello world, how are you", "one two three four", "a b c d e f"]


def settings(profile: str, n: int = 40, seed: int = 1, **sets: object):
    return profiles.load(profile, sets=[f"{k}={json.dumps(v)}" for k, v in sets.items()],
                         flags={"max_new_tokens": n, "seed": seed})


def decode(model, prompt: str, profile: str, draft=None, n: int = 40, seed: int = 1, **sets) -> Done:
    return list(run(model, model.tokenizer.encode(prompt), settings(profile, n, seed, **sets), draft=draft))[-1]


def recipe(target_path: Path, **over) -> DrafterRecipe:
    base = dict(method="ppd", model=str(target_path), steps=80, rows_per_step=2, anchors=12, lr=0.1, block=4)
    return DrafterRecipe(**{**base, **over})


@pytest.fixture(scope="module")
def world(tmp_path_factory) -> dict:
    root = tmp_path_factory.mktemp("ppd")
    target_path = make_llama(root / "target", seed=0)
    other_path = make_llama(root / "other", seed=5, hidden=48)
    target = load(str(target_path))
    words = target.tokenizer.decode(list(range(10, 200)))
    prompts = PROMPTS + [" ".join(words.split()[i: i + 5]) for i in range(0, 60, 3)]
    rows = [{"prompt_ids": target.tokenizer.encode(p), "answer_ids": list(decode(target, p, "ar", n=48).tokens),
             "kind": "prompt"} for p in prompts if target.tokenizer.encode(p)]
    net, step = train(target, rows, recipe(target_path), root / "work")
    out = save_drafter(root / "ppd", "ppd", net, fingerprint(target, str(target_path)), {"step": step})
    return {"root": root, "target_path": target_path, "target": target, "other_path": other_path, "rows": rows,
            "net": net, "drafter_path": out, "drafter": load(str(out)), "log": root / "work" / "log.jsonl"}


def test_drafter_holds_only_the_prompts(world):
    cfg = json.loads((world["drafter_path"] / "config.json").read_text())
    assert cfg["method"] == "ppd" and cfg["drafter"]["prompts"] == 3 and cfg["drafter"]["hidden_size"] == 32
    d = world["drafter"]
    assert [n for n, _ in d.net.named_parameters()] == ["prompts"] and d.net.prompts.shape == (3, 32)


def test_loss_falls(world):
    log = [json.loads(line) for line in world["log"].read_text().splitlines()]
    assert len(log) == 80
    first = sum(r["loss"] for r in log[:10]) / 10
    last = sum(r["loss"] for r in log[-10:]) / 10
    assert last < 0.9 * first, (first, last)


@pytest.mark.parametrize("prompt", PROMPTS)
def test_greedy_identical_to_ar(world, prompt):
    t, d = world["target"], world["drafter"]
    ref = decode(t, prompt, "ar", n=48)
    for sets in ({}, {"tree_nodes": 0}, {"tree_nodes": 3, "tree_width": 2}, {"tree_nodes": 40}):
        got = decode(t, prompt, "ppd", draft=d, n=48, **sets)
        assert got.tokens == ref.tokens, sets
        assert got.nfe <= ref.nfe and got.nfe == got.steps


def test_drafts_are_accepted(world):
    """The identity tests mean something: candidates are accepted, so fewer target forwards than ar."""
    t, d = world["target"], world["drafter"]
    ar = sum(decode(t, p, "ar", n=48).nfe for p in PROMPTS)
    done = [decode(t, p, "ppd", draft=d, n=48, tree_nodes=40, tree_width=20) for p in PROMPTS]
    assert sum(x.accepted for x in done) > 0 and sum(x.drafted for x in done) > 0
    assert sum(x.nfe for x in done) < ar
    assert all(x.draft_source == "ppd" and x.verify_seconds > 0 for x in done)


def test_sampling_is_exact(world, tmp_path):
    """Chi-square: the second token (the first one verified against a candidate) follows the target's marginal.
    The drafter's hit rates are set so that its tree holds prompt 1's top 64 guesses: candidates get accepted."""
    import copy

    t = world["target"]
    net = copy.deepcopy(world["net"])
    net.spec["hit_rates"] = [[1.0] * 64, [1e-3] * 64, [1e-3] * 64]
    d = load(str(save_drafter(tmp_path / "wide", "ppd", net, fingerprint(t, str(world["target_path"])), {})))
    prompt, temp = PROMPTS[2], 0.7
    ids = t.tokenizer.encode(prompt)
    with torch.no_grad():
        p1 = torch.softmax(t.net(input_ids=torch.tensor([ids])).logits[0, -1].double() / temp, -1)
        firsts = [int(x) for x in torch.nonzero(p1 > 1e-6).flatten()]
        batch = torch.tensor([ids + [x] for x in firsts])
        p2 = torch.softmax(t.net(input_ids=batch).logits[:, -1].double() / temp, -1)
        marginal = (p1[firsts, None] * p2).sum(0)
    n = 400
    got = Counter()
    accepted = 0
    for seed in range(n):
        done = decode(t, prompt, "ppd", draft=d, n=3, seed=seed, temperature=temp, tree_nodes=64, tree_width=64)
        got[done.tokens[1]] += 1
        accepted += done.accepted
    assert accepted > n // 10
    chi, dof, p = chi_square(got, marginal, n)
    assert dof >= 2 and p > 1e-3, (chi, dof)


def test_loss_equals_a_hand_computation(world):
    """Each cut alone: the target over ``ids[:c+1]`` and the k prompts (plain causal, positions c+1..c+k);
    ``Σ 0.8^(i-1) KL(target at c+i || prompt i) / Σ 0.8^(i-1)`` over the slots whose row exists."""
    t, net = world["target"], world["net"]
    row = max(world["rows"], key=lambda r: len(r["answer_ids"]))
    ids = torch.tensor(row["prompt_ids"] + row["answer_ids"])
    start, T = len(row["prompt_ids"]), ids.shape[0]
    r = recipe(world["target_path"], anchors=5, gamma=1 / math.log(1.25))
    with torch.no_grad():
        got, accept, scored = P.ppd_loss(net, t, None, None, ids, start, r, torch.Generator().manual_seed(7))
        cuts = P.pick_cuts(T, start, 5, torch.Generator().manual_seed(7))
        got2 = P.ppd_loss(net, t, None, None, ids, start, recipe(world["target_path"], anchors=10 ** 6,
                                                                  gamma=1 / math.log(1.25)),
                          torch.Generator().manual_seed(7))[0]
        teacher = t.net(input_ids=ids[None]).logits[0].double()
        embed = t.net.get_input_embeddings()

        def hand(cs):
            num = den = 0.0
            for c in cs.tolist():
                x = torch.cat([embed(ids[: c + 1]), net.prompts])[None]
                out = t.net(inputs_embeds=x).logits[0].double()
                for i in range(1, 4):
                    if c + i > T - 2:
                        continue
                    p = torch.log_softmax(teacher[c + i], -1)
                    q = torch.log_softmax(out[c + i], -1)
                    w = 0.8 ** (i - 1)
                    num += w * float((p.exp() * (p - q)).sum())
                    den += w
            return num / den

        assert float(got) == pytest.approx(hand(cuts), rel=1e-4)
        every = torch.arange(max(start - 1, 0), T - 2)
        assert float(got2) == pytest.approx(hand(every), rel=1e-4)
    assert scored == sum(min(3, T - 2 - c) for c in cuts.tolist())
    assert 1.0 <= accept <= 4.0


def test_training_mask_isolates_slots_and_cuts(world):
    t, net = world["target"], world["net"]
    ids = torch.tensor(world["rows"][0]["prompt_ids"] + world["rows"][0]["answer_ids"])[:20]
    cuts = torch.tensor([6, 11])
    mask = P.slot_mask(20, cuts, 3, torch.float32)
    pos = torch.cat([torch.arange(20), (cuts[:, None] + torch.arange(1, 4)).reshape(-1)])[None]
    extra = net.prompts.detach().repeat(2, 1)
    keep = torch.arange(26)
    with torch.no_grad():
        base = t.forward_embeds(ids, extra, None, mask, pos, keep)
        bent = extra.clone()
        bent[2] += 5.0  # cut 6's third slot
        bent[3:] -= 5.0  # every slot of cut 11
        moved = t.forward_embeds(ids, bent, None, mask, pos, keep)
    assert torch.allclose(moved[:22], base[:22], atol=1e-5)  # real rows, cut 6's slots 1 and 2
    assert not torch.allclose(moved[22], base[22], atol=1e-3) and not torch.allclose(moved[23], base[23], atol=1e-3)


def test_decode_mask_matches_a_plain_forward_per_node(world):
    """A tree node's slots see exactly the prefix, the node's ancestors, the node and their earlier slots:
    their logits equal a plain causal forward over that sequence, whatever the other nodes' slots hold."""
    from dlm_cli.decode.ppd import slot_attention
    from dlm_cli.decode.tree import trie

    t, net = world["target"], world["net"]
    ids = t.tokenizer.encode(PROMPTS[0])
    tree = trie([[7, 8, 9], [7, 10], [11]])  # nodes: 7, 8, 9, 10, 11
    k, N, m = 3, len(tree), len(ids)
    mask, pos = slot_attention(tree, 0, m, k, torch.float32, torch.device("cpu"))
    feed = torch.tensor(ids + tree.tokens)
    extra = net.prompts.detach().repeat(N + 1, 1)
    keep = torch.arange(m + N + k * (N + 1))
    with torch.no_grad():
        base = t.forward_embeds(feed, extra, None, mask, pos, keep)
        bent = extra.clone()
        bent[k * 2:] += 3.0  # the slots of node 1 (token 8) onward
        moved = t.forward_embeds(feed, bent, None, mask, pos, keep)
        embed = t.net.get_input_embeddings()
        for node, branch in ((0, [7]), (3, [7, 10]), (4, [11])):
            x = torch.cat([embed(torch.tensor(ids + branch)), net.prompts.detach()])[None]
            plain = t.net(inputs_embeds=x).logits[0, -k:]
            rows = m + N + (node + 1) * k + torch.arange(k)
            assert torch.allclose(base[rows], plain, atol=1e-4), node
        plain = t.net(input_ids=torch.tensor([ids + [7, 8, 9]])).logits[0, -3:]
        assert torch.allclose(base[[m, m + 1, m + 2]], plain, atol=1e-4)  # the nodes see their ancestors only
    assert torch.allclose(moved[: m + N + 2 * k], base[: m + N + 2 * k], atol=1e-5)  # root's and node 0's slots
    assert not torch.allclose(moved[m + N + 2 * k:], base[m + N + 2 * k:], atol=1e-3)


def test_tree_maximises_tokens_per_second():
    from dlm_cli.models.ppd import best_tree, input_length, rank_paths

    rates = [[0.6, 0.2, 0.1], [0.5, 0.2, 0.1], [0.4, 0.1, 0.05]]
    ranked = rank_paths(rates, 12)
    seen = set()
    for p, score in ranked:
        assert len(p) == 1 or tuple(p[:-1]) in seen  # the parent first
        seen.add(tuple(p))
        assert score == pytest.approx(math.prod(rates[d][r] for d, r in enumerate(p)))
    assert [p for p, _ in ranked[:3]] == [[0], [0, 0], [1]]
    flat = [[1, 0.01], [400, 0.01]]  # latency that does not grow: the largest tree wins
    tree, expected, _ = best_tree(rates, flat, 3, max_nodes=12)
    assert len(tree) == 12 and expected == pytest.approx(1 + sum(s for _, s in ranked))
    steep = [[1, 0.01], [2, 1.0]]  # one more row costs 100x: no tree
    assert best_tree(rates, steep, 3, max_nodes=12)[0] == []
    linear = [[n, 0.01 * n] for n in (1, 400)]  # seconds ∝ rows: the size that maximises E / rows
    tree, expected, rate = best_tree(rates, linear, 3, max_nodes=12)
    totals = [1 + sum(s for _, s in ranked[:n]) for n in range(13)]
    best = max(range(13), key=lambda n: totals[n] / input_length(n, 3))
    assert len(tree) == best


def cli(*args: str):
    return CliRunner().invoke(app, list(args))


def test_cli_train_then_generate(world, tmp_path):
    m = str(world["target_path"])
    prompts = tmp_path / "prompts.jsonl"
    prompts.write_text("".join(json.dumps({"prompt": f"{p} {i}"}) + "\n" for i in range(3) for p in PROMPTS))
    out, work = tmp_path / "out", tmp_path / "work"
    res = cli("drafter", "train", "-m", m, "--method", "ppd", "--prompts", str(prompts), "--out", str(out),
              "--work", str(work), "-n", "16", "--steps", "4", "--block", "3", "--anchors", "4", "--rows-per-step",
              "1", "--lr", "0.05")
    assert res.exit_code == 0, res.output
    assert "tree of" in res.output and "held-out" in res.output
    cfg = json.loads((out / "config.json").read_text())
    spec = cfg["drafter"]
    assert cfg["method"] == "ppd" and spec["prompts"] == 2 and len(spec["hit_rates"]) == 2
    assert all(len(p) <= 2 for p in spec["tree"]) and len(spec["latency"]) >= 3
    assert cfg["training"]["step"] == 4
    ar = cli("generate", "-m", m, "-p", "ar", "-n", "24", "--view", "plain", PROMPTS[0])
    got = cli("generate", "-m", m, "--draft", str(out), "-n", "24", "--view", "plain", PROMPTS[0])  # ppd's profile
    assert ar.exit_code == 0 and got.exit_code == 0, got.output
    assert got.stdout == ar.stdout
    js = cli("generate", "-m", m, "-p", "ppd", "--draft", str(out), "-n", "12", "--json", PROMPTS[1])
    assert js.exit_code == 0, js.output
    assert "ppd" in js.stdout


def test_refusals_are_one_line(world):
    d = str(world["drafter_path"])
    res = cli("generate", "-m", str(world["other_path"]), "-p", "ppd", "--draft", d, "-n", "8", "hello")
    assert res.exit_code == 1
    lines = res.output.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("dlm: the drafter") and "Traceback" not in res.output
    res = cli("generate", "-m", str(world["target_path"]), "-p", "ppd", "-n", "8", "hello")
    assert res.exit_code == 2 and res.output.strip().startswith("dlm: the ppd strategy decodes with trained prompt")
    res = cli("generate", "-m", str(world["target_path"]), "-p", "dflash", "--draft", d, "-n", "8", "hello")
    out = res.output.strip()
    assert res.exit_code == 2 and len(out.splitlines()) == 1 and out.endswith("is a ppd drafter; use -p ppd with it")


def test_cli_bench_rows(world, tmp_path):
    prompts = tmp_path / "p.jsonl"
    prompts.write_text("".join(json.dumps({"prompt": p}) + "\n" for p in PROMPTS[:2]))
    res = cli("bench", "-m", str(world["target_path"]), "--draft", str(world["drafter_path"]), "-p",
              "ar,ppd", "--prompts", str(prompts), "-n", "24", "--format", "json")
    assert res.exit_code == 0, res.output
    rows = {r["profile"]: r for r in json.loads(res.stdout)["rows"]}
    assert {"ar", "ppd"} <= set(rows)
    assert rows["ppd"]["nfe"] <= rows["ar"]["nfe"] and rows["ppd"]["agreement"] == 1.0
    assert rows["ppd"]["acceptance_rate"] is not None
