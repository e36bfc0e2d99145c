"""Hidden Transfer (learned pseudo-state maps inside the target): the split forward, its masks and cache, the
training loss, greedy identity with ar (chain and tree), exact sampling, the draft offsets, the CLI."""

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
from dlm_cli.decode.events import Done, Draft
from dlm_cli.errors import DlmError
from dlm_cli.models.drafter import fingerprint, save_drafter
from dlm_cli.models.hidden_transfer import TransferNet, split_forward
from dlm_cli.models.loading import load
from dlm_cli.train.drafter import DrafterRecipe, train
from dlm_cli.train.hidden_transfer import head, transfer_loss

PROMPTS = ["the quick brown fox jumps", "hello world, how are you", "one two three four", "a b c d e f"]
METHOD = "hidden-transfer"


def settings(profile: str, n: int = 40, seed: int = 1, **sets: object):
    return profiles.load(profile, sets=[f"{k}={json.dumps(v)}" for k, v in sets.items()],
                         flags={"max_new_tokens": n, "seed": seed})


def events(model, prompt: str, profile: str, draft=None, n: int = 40, seed: int = 1, **sets) -> list:
    return list(run(model, model.tokenizer.encode(prompt), settings(profile, n, seed, **sets), draft=draft))


def decode(*a, **k) -> Done:
    return events(*a, **k)[-1]


def recipe(target_path: Path, **over) -> DrafterRecipe:
    base = dict(method=METHOD, model=str(target_path), steps=100, rows_per_step=4, anchors=16, lr=3e-3, block=4)
    return DrafterRecipe(**{**base, **over})


@pytest.fixture(scope="module")
def world(tmp_path_factory) -> dict:
    root = tmp_path_factory.mktemp("ht")
    target_path = make_llama(root / "target", seed=0, layers=3)
    other_path = make_llama(root / "other", seed=5, hidden=48, layers=3)
    target = load(str(target_path))
    words = target.tokenizer.decode(list(range(10, 200)))
    prompts = PROMPTS + [" ".join(words.split()[i: i + 5]) for i in range(0, 60, 3)]
    rows = []
    for p in prompts:
        ids = target.tokenizer.encode(p)
        if ids:
            rows.append({"prompt_ids": ids, "answer_ids": list(decode(target, p, "ar", n=48).tokens), "kind": "prompt"})
    net, step = train(target, rows, recipe(target_path), root / "work")
    out = save_drafter(root / "ht", METHOD, net, fingerprint(target, str(target_path)), {"step": step})
    return {"root": root, "target_path": target_path, "target": target, "other_path": other_path, "rows": rows,
            "drafter_path": out, "drafter": load(str(out)), "log": root / "work" / "log.jsonl"}


def noisy_net(d: int = 32, k: int = 3, layer: int = 1, seed: int = 0) -> TransferNet:
    net = TransferNet({"slots": k, "layer": layer, "hidden_size": d})
    with torch.no_grad():
        net.maps.add_(torch.randn(net.maps.shape, generator=torch.Generator().manual_seed(seed)) * 0.2)
    return net


def test_dir_format_and_defaults(world):
    cfg = json.loads((world["drafter_path"] / "config.json").read_text())
    assert cfg["method"] == METHOD and cfg["drafter"]["slots"] == 3 and cfg["drafter"]["hidden_size"] == 32
    assert cfg["drafter"]["layer"] == 1  # about 2/3 of 3 layers, below the last
    d = world["drafter"]
    assert d.kind == "drafter" and tuple(d.net.maps.shape) == (3, 32, 32)


def test_split_forward_real_logits_equal_the_plain_forward(world):
    t = world["target"]
    net = noisy_net()
    ids = torch.tensor(t.tokenizer.encode("the quick brown fox jumps over the lazy dog"))
    plain, split = t.new_cache(), t.new_cache()
    a = t.forward(ids[:6], plain, keep=6)
    b, pseudo = t.forward_transfer(ids[:6], split, net, torch.tensor([5]), keep=6)
    assert torch.allclose(a, b, atol=1e-5) and torch.equal(a.argmax(-1), b.argmax(-1))
    assert tuple(pseudo.shape) == (1, 3, 32)
    # A tree step: several anchors, a 4-D mask; the cache ends as the plain forward leaves it.
    from dlm_cli.decode import tree as trees

    tree = trees.trie([[int(ids[6]), int(ids[7])], [int(ids[6]), 5], [9]])
    mask, pos = trees.attention(tree, 6, 0, t.net.dtype, t.device)
    feed = torch.tensor(tree.tokens)
    a = t.forward(feed, plain, keep=len(tree), mask=mask, positions=pos)
    b, pseudo = t.forward_transfer(feed, split, net, torch.arange(len(tree)), keep=len(tree), mask=mask, positions=pos)
    assert torch.allclose(a, b, atol=1e-5) and torch.equal(a.argmax(-1), b.argmax(-1))
    assert [layer.get_seq_length() for layer in split.layers] == [6 + len(tree)] * 3
    for x, y in zip(plain.layers, split.layers):
        assert torch.allclose(x.keys, y.keys, atol=1e-5) and torch.allclose(x.values, y.values, atol=1e-5)


def _pseudo(t, net, ids, anchors):
    T = ids.shape[0]
    with torch.no_grad():
        return split_forward(t.net, net, torch.tensor(anchors), torch.ones(T, T, dtype=torch.bool).tril(),
                             torch.arange(T), ids=ids)


def test_a_slot_sees_its_anchor_prefix_and_earlier_slots_only(world):
    t = world["target"]
    ids = torch.tensor(t.tokenizer.encode("the quick brown fox jumps over the lazy dog"))
    net = noisy_net()
    real, both = _pseudo(t, net, ids, [3, 7])
    _, alone = _pseudo(t, net, ids, [3])
    assert torch.allclose(both[0], alone[0], atol=1e-5)  # another anchor's group is invisible
    other = ids.clone()
    other[4:] = (other[4:] + 17) % 200  # the real tokens after the anchor
    _, moved = _pseudo(t, net, other, [3, 7])
    assert torch.allclose(moved[0], both[0], atol=1e-5) and not torch.allclose(moved[1], both[1], atol=1e-3)
    later = TransferNet(net.spec)
    later.load_state_dict(net.state_dict())
    with torch.no_grad():
        later.maps[2] += 0.5  # the last slot's map
    _, changed = _pseudo(t, later, ids, [3, 7])
    assert torch.allclose(changed[:, :2], both[:, :2], atol=1e-5)  # slots 0 and 1 never see slot 2
    assert not torch.allclose(changed[:, 2], both[:, 2], atol=1e-3)
    with torch.no_grad():
        later.maps[0] += 0.5
    _, changed = _pseudo(t, later, ids, [3, 7])
    assert not torch.allclose(changed[:, 1], both[:, 1], atol=1e-3)  # slot 1 sees slot 0
    ref = t.forward(ids, t.new_cache(), keep=ids.shape[0])
    assert torch.allclose(t.early_logits(real), ref, atol=1e-5)  # no real row sees a pseudo row
    from dlm_cli.train.drafter import Features

    h = Features(t, [net.layer])(0, ids)  # what training reads: the same layer's output (float16)
    with torch.no_grad():
        _, trained = split_forward(t.net, net, torch.tensor([3, 7]), torch.ones(len(ids), len(ids), dtype=torch.bool).tril(),
                                   torch.arange(len(ids)), hidden=h)
    assert torch.allclose(trained, both, atol=2e-2)
    with torch.no_grad():
        _, shifted = split_forward(t.net, net, torch.tensor([3, 7]), torch.ones(len(ids), len(ids), dtype=torch.bool).tril(),
                                   torch.arange(len(ids)), hidden=Features(t, [net.layer - 1])(0, ids))
    assert not torch.allclose(shifted, both, atol=2e-2)


@pytest.mark.parametrize("kind", ["kl", "ce"])
def test_loss_equals_a_hand_computation(world, kind):
    """Every anchor of one sequence; each slot recomputed as a plain causal pass over [h_0..h_a, W_0 h_a .. W_j h_a]
    through the upper layers, against the plain forward's distribution at a + 1 + j (KL) or its token (CE)."""
    from dlm_cli.models.hidden_transfer import _layers, additive, body

    t = world["target"]
    net = noisy_net()
    row = max(world["rows"], key=lambda r: len(r["answer_ids"]))
    ids = torch.tensor(row["prompt_ids"] + row["answer_ids"])
    T, start, k, gamma = ids.shape[0], len(row["prompt_ids"]), 3, 2.0
    with torch.no_grad():
        out = t.net(input_ids=ids[None], output_hidden_states=True)
    h, full = out.hidden_states[2][0], out.logits[0].float()  # layer 1's output; the plain logits
    r = recipe(world["target_path"], anchors=10_000, gamma=gamma)
    r.spec = {**net.spec, "loss": kind}
    with torch.no_grad():
        got, accept, scored = transfer_loss(net, t, None, h, ids, start, r, torch.Generator().manual_seed(0))
    layers, rotary, _ = body(t.net)
    num = den = 0.0
    hits = []
    for a in range(start - 1, T - 2):
        x = torch.cat([h[: a + 1], net(h[a: a + 1])[0]])[None]
        pos = torch.arange(a + 1 + k)[None]
        see = torch.ones(a + 1 + k, a + 1 + k, dtype=torch.bool).tril()
        with torch.no_grad():
            y = _layers(layers[2:], x, rotary(x, pos), pos, additive(see, x.dtype, x.device), None)
            q = head(t, y[0, a + 1:])
        run = True
        for j in range(k):
            if a + 2 + j >= T:
                run = False
                continue
            p = full[a + 1 + j].log_softmax(-1)
            lq = q[j].log_softmax(-1)
            term = float((p.exp() * (p - lq)).sum()) if kind == "kl" else float(-lq[ids[a + 2 + j]])
            w = float(torch.exp(torch.tensor(-j / gamma)))
            num, den = num + w * term, den + w
            run = run and int(q[j].argmax()) == int(ids[a + 2 + j])
            hits.append(run)
    assert float(got) == pytest.approx(num / den, rel=1e-4)
    assert scored == len(hits)
    assert accept == pytest.approx(1 + sum(hits) / (T - 2 - (start - 1)), rel=1e-5)


def test_loss_falls(world):
    log = [json.loads(line) for line in world["log"].read_text().splitlines()]
    assert len(log) == 100
    first = sum(r["loss"] for r in log[:10]) / 10
    last = sum(r["loss"] for r in log[-10:]) / 10
    assert last < 0.6 * first, (first, last)
    assert sum(r["accept"] for r in log[-10:]) > sum(r["accept"] for r in log[:10])


@pytest.mark.parametrize("prompt", PROMPTS[1:])
def test_greedy_identical_to_ar(world, prompt):
    t, d = world["target"], world["drafter"]
    ref = decode(t, prompt, "ar", n=48)
    chain = decode(t, prompt, METHOD, draft=d, n=48)
    assert chain.tokens == ref.tokens and chain.nfe <= ref.nfe
    for width in (2, 4):
        assert decode(t, prompt, METHOD, draft=d, n=48, tree_width=width).tokens == ref.tokens
    assert decode(t, prompt, METHOD, draft=d, n=48, draft_length=1).tokens == ref.tokens


def test_drafts_are_accepted_and_counted(world):
    t, d = world["target"], world["drafter"]
    ar = sum(decode(t, p, "ar", n=48).nfe for p in PROMPTS)
    done = [decode(t, p, METHOD, draft=d, n=48) for p in PROMPTS]
    assert sum(x.accepted for x in done) > 0 and sum(x.nfe for x in done) < ar
    assert all(x.draft_nfe == 0 and x.draft_source == METHOD for x in done)
    assert all(x.drafted >= x.accepted for x in done)
    tree = [decode(t, p, METHOD, draft=d, n=48, tree_width=4) for p in PROMPTS]
    assert sum(x.nfe for x in tree) < ar


def test_each_draft_comes_from_the_last_accepted_rows_slots(world):
    """The offsets: the draft at a step is the argmax of the slots of the row before the last committed token,
    recomputed without a cache from the committed sequence alone."""
    t, d = world["target"], world["drafter"]
    prompt = PROMPTS[3]
    evs = events(t, prompt, METHOD, draft=d, n=48)
    ids = t.tokenizer.encode(prompt)
    out = evs[-1].tokens
    drafts = [e for e in evs if isinstance(e, Draft)]
    assert len(drafts) >= 3
    for e in drafts:
        seq = ids + out[: e.position]
        _, pseudo = _pseudo(t, d.net, torch.tensor(seq[:-1]), [len(seq) - 2])
        want = t.early_logits(pseudo[0]).argmax(-1).tolist()
        assert e.tokens == want[: len(e.tokens)]


def _marginal(t, ids, temp):
    with torch.no_grad():  # the exact marginal of the second token: sum over t1 of p(t1) p(t2 | t1)
        p1 = torch.softmax(t.net(input_ids=torch.tensor([ids])).logits[0, -1].double() / temp, -1)
        firsts = [int(x) for x in torch.nonzero(p1 > 1e-6).flatten()]
        p2 = torch.softmax(t.net(input_ids=torch.tensor([ids + [x] for x in firsts])).logits[:, -1].double() / temp, -1)
        return (p1[firsts, None] * p2).sum(0)


@pytest.mark.parametrize("width", [1, 3])
def test_sampling_is_exact(world, width):
    """Chi-square: the second token (the first one a draft is verified for) follows the target's marginal."""

    t, d = world["target"], world["drafter"]
    prompt, temp, n = PROMPTS[2], 0.5, 400
    marginal = _marginal(t, t.tokenizer.encode(prompt), temp)
    got, accepted = Counter(), 0
    for seed in range(n):
        done = decode(t, prompt, METHOD, draft=d, n=4, seed=seed, temperature=temp, tree_width=width)
        got[done.tokens[1]] += 1
        accepted += done.accepted
    assert accepted > n // 10
    chi, dof, p = chi_square(got, marginal, n)
    assert dof >= 2 and p > 1e-3, (chi, dof)


def cli(*args: str):
    return CliRunner().invoke(app, list(args))


def test_drafter_of_another_target_is_refused(world):
    other = load(str(world["other_path"]))
    with pytest.raises(DlmError, match="was trained for"):
        decode(other, PROMPTS[0], METHOD, draft=world["drafter"], n=8)
    d = str(world["drafter_path"])
    res = cli("generate", "-m", str(world["other_path"]), "-p", METHOD, "--draft", d, "-n", "8", "hello")
    lines = res.output.strip().splitlines()
    assert res.exit_code == 1 and len(lines) == 1 and lines[0].startswith("dlm: the drafter"), res.output
    res = cli("generate", "-m", str(world["target_path"]), "-p", METHOD, "-n", "8", "hello")
    assert res.exit_code == 2 and res.output.strip().startswith(f"dlm: the {METHOD} strategy drafts with a learned")


def test_cli_train_then_generate(world, tmp_path):
    m = str(world["target_path"])
    prompts = tmp_path / "prompts.jsonl"
    prompts.write_text("".join(json.dumps({"prompt": p}) + "\n" for p in PROMPTS))
    out, work = tmp_path / "out", tmp_path / "work"
    res = cli("drafter", "train", "-m", m, "--method", METHOD, "--prompts", str(prompts), "--out", str(out),
              "--work", str(work), "-n", "16", "--steps", "4", "--block", "3", "--anchors", "4", "--rows-per-step", "1")
    assert res.exit_code == 0, res.output
    cfg = json.loads((out / "config.json").read_text())
    assert cfg["method"] == METHOD and cfg["drafter"]["slots"] == 2 and cfg["training"]["step"] == 4
    ar = cli("generate", "-m", m, "-p", "ar", "-n", "24", "--view", "plain", "--seed", "1", PROMPTS[1])
    for extra in ([], ["-p", METHOD], ["-p", METHOD, "--set", "tree_width=3"]):
        got = cli("generate", "-m", m, "--draft", str(out), *extra, "-n", "24", "--view", "plain", "--seed", "1", PROMPTS[1])
        assert got.exit_code == 0, got.output
        assert got.stdout == ar.stdout
    res = cli("drafter", "train", "-m", m, "--method", METHOD, "--prompts", str(prompts), "--out", str(tmp_path / "o"),
              "--work", str(tmp_path / "w2"), "-n", "4", "--target-layers", "2")
    assert res.exit_code == 2 and res.output.strip().splitlines()[-1].startswith("dlm: --target-layers 2")
    assert "Traceback" not in res.output


def test_resume_reproduces_the_next_steps(world, tmp_path):
    t, rows = world["target"], world["rows"]
    full, part = tmp_path / "full", tmp_path / "part"
    net_full, _ = train(t, rows, recipe(world["target_path"], steps=6), full)
    train(t, rows, recipe(world["target_path"], steps=6), part, stop_step=3)
    net_part, step = train(t, rows, recipe(world["target_path"], steps=6), part)
    assert step == 6
    a = [json.loads(x)["loss"] for x in (full / "log.jsonl").read_text().splitlines()]
    b = [json.loads(x)["loss"] for x in (part / "log.jsonl").read_text().splitlines()]
    assert b[3:] == pytest.approx(a[3:], rel=1e-4)
    assert torch.allclose(net_full.maps, net_part.maps, atol=1e-5)
    assert not torch.allclose(net_full.maps, torch.eye(32).repeat(3, 1, 1), atol=1e-4)  # the maps did train
