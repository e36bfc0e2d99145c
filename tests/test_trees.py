"""Token trees, ADED and PEARL: crafted-logits rules, greedy identity with ar, tree cache rollback, NFE counts."""

from __future__ import annotations

import dataclasses
import json
import random
from collections import Counter

import pytest
import torch
from checkpoints import make_llama

from dlm_cli import profiles
from dlm_cli.decode import run
from dlm_cli.decode.aded import AdedDraft, Trigrams, search
from dlm_cli.decode.drafts import LookupDraft
from dlm_cli.decode.events import Done, Verify
from dlm_cli.decode.loops.ar import verdict
from dlm_cli.decode.sampling import probabilities
from dlm_cli.decode.tree import attention, keep_branch, trie, verify
from dlm_cli.models.loading import load

PROMPTS = ["the quick brown fox jumps", "hello world, how are you"]


@pytest.fixture(scope="module")
def models(tmp_path_factory) -> dict[str, object]:
    root = tmp_path_factory.mktemp("trees")
    return {
        "target": load(str(make_llama(root / "target", seed=0))),
        "draft": load(str(make_llama(root / "draft", seed=0, noise=0.05))),
        "flat": load(str(make_llama(root / "flat", seed=3, sharpen=0.6))),
        "flat-draft": load(str(make_llama(root / "flat-draft", seed=3, sharpen=0.6, noise=0.5))),
    }


def settings(profile: str, n: int = 40, seed: int = 1, **sets: object):
    return profiles.load(profile, sets=[f"{k}={json.dumps(v)}" for k, v in sets.items()],
                         flags={"max_new_tokens": n, "seed": seed})


def decode(model, ids, profile: str, draft=None, n: int = 40, **sets) -> tuple[Done, list]:
    events = list(run(model, ids, settings(profile, n, **sets), draft=draft))
    return events[-1], events


def _chi_square_p(samples: list[int], probs: torch.Tensor) -> float:
    from scipy.stats import chisquare

    n = len(samples)
    counts = Counter(samples)
    expected = probs.double() * n
    big = (expected >= 5).nonzero().flatten().tolist()
    obs = [counts.get(i, 0) for i in big] + [n - sum(counts.get(i, 0) for i in big)]
    exp = [float(expected[i]) for i in big] + [n - float(expected[big].sum())]
    if exp[-1] < 5:
        assert obs[-1] <= max(10, 4 * exp[-1])
        obs, exp = obs[:-1], exp[:-1]
        exp = [e * sum(obs) / sum(exp) for e in exp]
    return float(chisquare(obs, exp).pvalue)


# --- the rules on crafted logits -------------------------------------------------------------

def _logits(rows: list[dict[int, float]], vocab: int = 10) -> torch.Tensor:
    out = torch.zeros(len(rows), vocab)
    for r, row in enumerate(rows):
        for t, v in row.items():
            out[r, t] = v
    return out


def test_trie_merges_shared_prefixes_and_orders_attempts():
    t = trie([[1, 2, 3], [1, 4], [5]])
    assert t.tokens == [1, 2, 3, 4, 5] and t.parents == [-1, 0, 1, 0, -1] and t.depths == [1, 2, 3, 2, 1]
    assert t.attempts == [[0, 4], [1, 3], [2], [], [], []]
    assert trie([[7, 1], [7, 2]], iid=True).attempts[0] == [0, 0]  # i.i.d.: one attempt per path, repeats kept
    assert t.branch([0, 3]) == [1, 4] and t.branch([0]) == [1, 2, 3]


def test_tree_greedy_follows_the_targets_argmax_through_the_second_branch():
    t = trie([[1, 2, 3], [1, 4, 6], [5]])  # nodes: 0:1 1:2 2:3 3:4 4:6 5:5
    s = settings("lookup", temperature=0.0)
    # rows: root, then node i at row i + 1; the target wants 1, then 4, then 6, then 9
    logits = _logits([{1: 5}, {4: 5}, {3: 5}, {9: 5}, {6: 5}, {9: 5}, {2: 5}])
    assert verify(logits, t, s, None) == ([0, 3, 4], 9)
    logits = _logits([{5: 5}, {}, {}, {}, {}, {}, {8: 5}])
    assert verify(logits, t, s, None) == ([5], 8)  # the root's argmax is the third branch
    logits = _logits([{7: 5}] + [{}] * 6)
    assert verify(logits, t, s, None) == ([], 7)  # no branch starts with the target's token: a correction


def test_tree_sampling_with_deterministic_branches_commits_the_targets_distribution():
    """Branches {2, 5} at the root: the committed first token is distributed as p (SpecInfer with one-hot q)."""
    torch.manual_seed(0)
    s = settings("lookup", temperature=1.0)
    t = trie([[2, 3], [5]])
    logits = torch.randn(len(t) + 1, 12) * 1.5
    p = probabilities(logits, s)[0]
    gen = torch.Generator().manual_seed(2)
    firsts = []
    for _ in range(4000):
        path, token = verify(logits, t, s, gen)
        firsts.append(t.tokens[path[0]] if path else token)
    assert _chi_square_p(firsts, p) > 1e-3
    assert 0.5 * p[2] < firsts.count(2) / 4000 < 1.5 * p[2] + 0.02  # the draft branch is taken as often as p says


@pytest.mark.parametrize("rule", ["specinfer", "no-residual"])
def test_tree_sampling_with_iid_branches_is_exact_only_with_the_residual_update(rule):
    """Three i.i.d. draws from q at the root; SpecInfer's rule commits p, a rule without ``p <- norm((p - q)+)`` does not."""
    torch.manual_seed(1)
    s = settings("speculative", temperature=1.0)
    vocab = 8
    p_logits = torch.randn(1, vocab) * 1.5
    q = probabilities(torch.randn(1, vocab) * 1.5, s)[0]
    p = probabilities(p_logits, s)[0]
    gen = torch.Generator().manual_seed(3)
    out = []
    for _ in range(3000):
        draws = torch.multinomial(q, 3, replacement=True, generator=gen).tolist()
        t = trie([[x] for x in draws], [[q]] * 3, iid=True)
        if rule == "no-residual":  # each attempt tested against the untouched p: biased towards q's tokens
            out.append(_naive(p, q, [t.tokens[c] for c in t.attempts[0]], gen))
            continue
        logits = torch.cat([p_logits, torch.zeros(len(t), vocab)])
        path, token = verify(logits, t, s, gen)
        out.append(t.tokens[path[0]] if path else token)
    pval = _chi_square_p(out, p)
    assert (pval > 1e-3) if rule == "specinfer" else (pval < 1e-6)


def _naive(p: torch.Tensor, q: torch.Tensor, xs: list[int], gen: torch.Generator) -> int:
    for x in xs:
        if float(torch.rand(1, generator=gen, dtype=torch.float64)) * float(q[x]) <= float(p[x]):
            return x
    return int(torch.multinomial(p, 1, generator=gen))


def test_verdict_without_a_bonus_row_checks_k_tokens_from_k_rows():
    s = settings("speculative", temperature=0.0)
    logits = _logits([{3: 5}, {4: 5}, {6: 5}])
    assert verdict(logits, torch.tensor([3, 4, 5]), None, s, None, bonus=False).tolist() == [2, 6]
    assert verdict(logits, torch.tensor([3, 4, 6]), None, s, None, bonus=False).tolist()[0] == 3
    assert verdict(logits[:1], torch.tensor([9]), None, s, None, bonus=False).tolist() == [0, 3]


def test_aded_table_update_and_search_follow_the_paper_constants():
    tab = Trigrams()
    tab.build([1, 2, 3, 1, 2, 4, 1, 2, 3])
    assert tab.table[(1, 2)] == pytest.approx({3: 2 / 3, 4: 1 / 3})
    tab.update([1, 2, 4])
    assert tab.table[(1, 2)][4] == pytest.approx(1 / 3 + 0.04)
    tab.update([7, 8, 9])
    assert tab.table[(7, 8)] == pytest.approx({9: 0.04})  # new keys are inserted
    for _ in range(200):
        tab.update([7, 8, 9])
    assert tab.table[(7, 8)][9] == pytest.approx(3.0)  # capped
    wide = Trigrams()
    wide.build([0, 1] + [t for c in range(20) for t in (c + 10, 0, 1)][:-2])
    assert len(wide.table[(0, 1)]) == 12  # the top 12 successors kept on load
    # A chain 1 2 3 4 5 6 with strong weights and a weak side branch at every step.
    chain = Trigrams()
    chain.table = {(a, b): {b + 1: 1.0, 50 + b: 0.05} for a, b in zip(range(0, 10), range(1, 11))}
    root = search(chain, 0, 1, 150, 4, 24, random.Random(0))
    best = max(root.children, key=lambda c: c.visits)
    assert best.tokens == (2,) and best.visits > 100
    src = AdedDraft(settings("aded", tree_width=1))
    src.table = chain
    src.rng = random.Random(0)
    src.table.update = lambda seq: None  # keep the crafted weights
    assert src.propose([0, 1], 10)[0].tolist() == [2, 3, 4, 5, 6]  # depth 4, plus ADED's greedy extension
    assert src.propose([0, 1], 3)[0].tolist() == [2, 3, 4]  # room caps it
    src.settings = settings("aded", tree_width=6, tree_nodes=64)
    tree = src.propose_tree([0, 1], 10)
    assert len(tree.paths) == 6 and tree.paths[0] == [2, 3]  # the most visited node (2), extended by one
    assert [2, 3, 4, 5, 6] in tree.paths and any(p[-1] >= 50 for p in tree.paths)  # a side branch too
    assert len(tree) == len({tuple(p[:i + 1]) for p in tree.paths for i in range(len(p))})
    src.settings = settings("aded", tree_width=6, tree_nodes=5)
    assert len(src.propose_tree([0, 1], 10)) <= 5


def test_lookup_tree_holds_the_continuations_of_several_matches():
    src = LookupDraft(settings("lookup", ngram_min=1, ngram_max=2, draft_length=3, tree_width=3))
    src.begin([], None)
    seq = [5, 6, 7, 8, 1, 5, 6, 9, 9, 2, 5, 6, 7, 3, 4, 5, 6]
    tree = src.propose_tree(seq, 10)
    assert tree.paths == [[7, 3, 4], [9, 9, 2], [7, 8, 1]]  # "5 6", latest match first
    assert tree.tokens[:3] == [7, 3, 4] and tree.attempts[0] == [0, 3]  # both 7-branches share the node
    assert LookupDraft(settings("lookup", tree_width=3, tree_depth=1)).propose_tree(seq, 10).paths == [[7], [9]]


# --- the target forward and the cache ---------------------------------------------------------

def test_tree_forward_gives_each_branch_the_logits_of_its_own_prefix_and_the_cache_keeps_one_branch(models):
    m = models["target"]
    seq = [5, 9, 17, 22, 40]
    t = trie([[11, 12, 13], [11, 30], [44, 45, 46, 47]])
    cache = m.new_cache()
    m.forward(torch.tensor(seq[:3]), cache)
    mask, pos = attention(t, 3, 2, m.net.dtype, m.device)
    logits = m.forward(torch.tensor(seq[3:] + t.tokens), cache, keep=len(t) + 1, mask=mask, positions=pos)
    for path in ([0, 1, 2], [0, 3], [4, 5, 6, 7]):
        toks = [t.tokens[i] for i in path]
        ref = m.forward(torch.tensor(seq + toks), m.new_cache(), keep=len(toks) + 1)
        assert torch.allclose(logits[[0] + [i + 1 for i in path]], ref, atol=1e-4)
    keep_branch(cache, len(seq), [4, 5, 6])
    ref = m.new_cache()
    m.forward(torch.tensor(seq + [44, 45, 46]), ref)
    assert cache.get_seq_length() == ref.get_seq_length() == 8
    for a, b in zip(cache.layers, ref.layers):
        assert torch.allclose(a.keys, b.keys, atol=1e-5) and torch.allclose(a.values, b.values, atol=1e-5)
    # And the next token after the kept branch reads the same from both caches.
    nxt = torch.tensor([46])
    assert torch.allclose(m.forward(nxt, cache), m.forward(nxt, ref), atol=1e-4)


# --- the loops: greedy identity with ar, NFE counts, exact sampling -------------------------------

METHODS = [
    ("speculative", "draft", {"tree_width": 3, "tree_depth": 4}),
    ("speculative", "draft", {"tree_width": 2}),
    ("speculative", "draft", {"pearl": True}),
    ("speculative", "draft", {"pearl": True, "draft_length": 1}),
    ("lookup", None, {"tree_width": 4}),
    ("aded", None, {"tree_width": 1}),
    ("aded", None, {}),
]
IDS = ["spec-tree-3x4", "spec-tree-2", "pearl", "pearl-gamma1", "lookup-tree", "aded-chain", "aded-tree"]


@pytest.mark.parametrize("method", METHODS, ids=IDS)
def test_greedy_output_is_ars_on_tiny_llamas(models, method):
    profile, draft_name, sets = method
    target = models["target"]
    for prompt in PROMPTS:
        ids = target.tokenizer.encode(prompt)
        base, _ = decode(target, ids, "ar")
        done, _ = decode(target, ids, profile, models.get(draft_name), **sets)
        assert done.tokens == base.tokens and done.nfe <= base.nfe + (0 if profile != "speculative" else 1)


@pytest.fixture(scope="module")
def demo_pair():
    return load("dlm-demo-ar"), load("dlm-demo-ar-draft")


@pytest.mark.parametrize("method", METHODS, ids=IDS)
def test_greedy_output_is_ars_on_the_demo_pair(demo_pair, method):
    from dlm_cli.prompting import encode

    target, draft = demo_pair
    profile, draft_name, sets = method
    accepted = 0
    for prompt in ["Copy: 36 71 89 12 5", "Reverse: 20 22 50 0 90 77"]:
        ids = encode(target.tokenizer, prompt)
        base, _ = decode(target, ids, "ar", n=32)
        done, _ = decode(target, ids, profile, draft if draft_name else None, n=32, **sets)
        assert done.tokens == base.tokens
        accepted += done.accepted
    assert accepted > 0


def test_tree_with_the_target_as_its_own_draft_commits_a_whole_branch_per_forward(models):
    target = dataclasses.replace(models["target"], eos_ids=(10**6,))  # no end token: the length is the limit
    ids = target.tokenizer.encode(PROMPTS[0])
    base, _ = decode(target, ids, "ar", n=20)
    done, events = decode(target, ids, "speculative", target, n=20, tree_width=2, tree_depth=4)
    assert done.tokens == base.tokens and done.nfe == 4  # 4 accepted + 1 bonus per forward
    verifies = [e for e in events if isinstance(e, Verify)]
    assert all(len(v.accepted_tokens) == 4 and v.bonus is not None and v.drafted == 8 for v in verifies)
    assert done.draft_nfe == 4 * 4  # one draft forward per tree level


def test_pearl_nfe_with_the_target_as_its_own_draft(models):
    """Pre-verify commits d1, then every post-verify forward commits the γ - 1 pending tokens and e1."""
    target = dataclasses.replace(models["target"], eos_ids=(10**6,))
    ids = target.tokenizer.encode(PROMPTS[1])
    base, _ = decode(target, ids, "ar", n=13)
    done, events = decode(target, ids, "speculative", target, n=13, pearl=True, draft_length=4)
    assert done.tokens == base.tokens
    assert done.nfe == 1 + 3  # 1 token, then 4 + 4 + 4
    assert done.extra == {"pre_verify_rounds": 1, "post_verify_rounds": 3}
    assert [len(e.accepted_tokens) for e in events if isinstance(e, Verify)] == [1, 4, 4, 4]


def test_pearl_falls_back_to_pre_verify_after_a_rejection(models):
    ids = models["target"].tokenizer.encode(PROMPTS[0])
    done, _ = decode(models["target"], ids, "speculative", models["draft"], n=40, pearl=True)
    base, _ = decode(models["target"], ids, "ar", n=40)
    assert done.tokens == base.tokens
    assert done.extra["pre_verify_rounds"] > 1 and done.extra["post_verify_rounds"] > 0
    assert done.accepted < done.drafted


@pytest.mark.parametrize("sets", [{"tree_width": 3}, {"pearl": True, "draft_length": 2}], ids=["tree", "pearl"])
def test_sampling_with_a_tree_or_pearl_keeps_the_targets_first_token_distribution(models, sets):
    target = dataclasses.replace(models["flat"], eos_ids=(10**6,))
    draft = models["flat-draft"]
    ids = target.tokenizer.encode(PROMPTS[0])
    s = settings("speculative", n=2, temperature=1.0, top_k=20, **sets)
    firsts, accepted = [], 0
    for seed in range(300):
        s.seed = seed
        done = list(run(target, ids, s, draft=draft))[-1]
        firsts.append(done.tokens[0])
        accepted += done.accepted
    assert 0 < accepted
    with torch.inference_mode():
        p1 = probabilities(target.net(torch.tensor([ids])).logits[0, -1:], s)[0]
    assert _chi_square_p(firsts, p1) > 1e-3


def test_seeded_sampling_is_reproducible(models):
    ids = models["flat"].tokenizer.encode(PROMPTS[1])
    for sets in ({}, {"tree_width": 3}, {"pearl": True}):
        a, _ = decode(models["flat"], ids, "speculative", models["flat-draft"], n=16, temperature=1.0, seed=5, **sets)
        b, _ = decode(models["flat"], ids, "speculative", models["flat-draft"], n=16, temperature=1.0, seed=5, **sets)
        assert a.tokens == b.tokens


def test_ar_steps_report_the_chosen_tokens_softmax_probability(models):
    target = models["target"]
    ids = target.tokenizer.encode(PROMPTS[0])
    _, events = decode(target, ids, "ar", n=3)
    from dlm_cli.decode.events import Step

    step = next(e for e in events if isinstance(e, Step))
    with torch.inference_mode():
        p = torch.softmax(target.net(torch.tensor([ids])).logits[0, -1].double(), -1)
    assert step.confidences[0] == pytest.approx(float(p[step.tokens[0]]), rel=1e-6)


def test_pearl_and_trees_refuse_what_they_cannot_do(models):
    from dlm_cli.errors import UsageError

    with pytest.raises(UsageError, match="tree_width"):
        settings("speculative", pearl=True, tree_width=2)


def test_cli_aded_profile_runs_and_matches_ar():
    from typer.testing import CliRunner

    from dlm_cli.cli import app

    runner = CliRunner()
    args = ["generate", "-m", "dlm-demo-ar", "Copy: 36 71 89 12 5", "-n", "24", "--json", "--seed", "0"]
    base = json.loads(runner.invoke(app, args).stdout)
    r = runner.invoke(app, args + ["-p", "aded"])
    assert r.exit_code == 0, r.stderr
    out = json.loads(r.stdout)
    assert out["text"] == base["text"] and out["strategy"] == "aded" and out["settings"]["tree_width"] == 24
    assert out["stats"]["draft_source"] == "aded" and out["nfe"] < base["nfe"]
