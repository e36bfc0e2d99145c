"""AR strategies: greedy identity for every drafting method, exact sampling, cache rollback, stops, errors, CLI."""

from __future__ import annotations

import dataclasses
import json
from collections import Counter
from pathlib import Path

import pytest
import torch
from checkpoints import make_llama
from typer.testing import CliRunner

from dlm_cli import profiles
from dlm_cli.cli import app
from dlm_cli.decode import run
from dlm_cli.decode.drafts import LookupDraft, ModelDraft
from dlm_cli.decode.events import Done, Draft, Verify
from dlm_cli.decode.loops.ar import verify
from dlm_cli.decode.sampling import probabilities
from dlm_cli.models.loading import load

PROMPTS = ["the quick brown fox jumps", "hello world, how are you"]


@pytest.fixture(scope="module")
def ckpts(tmp_path_factory) -> dict[str, Path]:
    root = tmp_path_factory.mktemp("ar")
    out = {
        "target": make_llama(root / "target", seed=0),
        "draft": make_llama(root / "draft", seed=0, noise=0.05),  # agrees with the target most of the time
        "rival": make_llama(root / "rival", seed=7),  # an unrelated model: nearly every draft is rejected
        "flat": make_llama(root / "flat", seed=3, sharpen=0.6),  # spread-out distributions for sampling tests
        "flat-draft": make_llama(root / "flat-draft", seed=3, sharpen=0.6, noise=0.5),
    }
    # Same weights as the draft, but a tokenizer with one more token: another vocabulary.
    other = make_llama(root / "other", seed=0, noise=0.05)
    from transformers import AutoTokenizer

    tok = AutoTokenizer.from_pretrained(str(other))
    tok.add_tokens(["<|extra|>"])
    tok.save_pretrained(str(other))
    out["other"] = other
    return out


@pytest.fixture(scope="module")
def models(ckpts) -> dict[str, object]:
    return {name: load(str(path)) for name, path in ckpts.items()}


def settings(profile: str, n: int = 40, seed: int = 1, **sets: object):
    return profiles.load(profile, sets=[f"{k}={json.dumps(v)}" for k, v in sets.items()],
                         flags={"max_new_tokens": n, "seed": seed})


def decode(model, prompt: str, profile: str, draft=None, n: int = 40, **sets) -> tuple[Done, list]:
    events = list(run(model, model.tokenizer.encode(prompt), settings(profile, n, **sets), draft=draft))
    return events[-1], events


@pytest.mark.parametrize("method", [
    ("speculative", "draft", {"adaptive_draft": False, "draft_length": 4, "draft_confidence": 0.0}),
    ("speculative", "draft", {"adaptive_draft": True}),
    ("speculative", "draft", {"draft_confidence": 0.6}),
    ("speculative", "other", {"allow_different_tokenizers": True}),
    ("lookup", None, {"ngram_min": 1, "ngram_max": 2, "draft_length": 6}),
], ids=["fixed-gamma", "adaptive-gamma", "confidence-cutoff", "different-tokenizer", "lookup"])
def test_greedy_output_is_the_targets_own(models, method):
    profile, draft_name, sets = method
    target, draft = models["target"], models.get(draft_name)
    for prompt in PROMPTS:
        base, _ = decode(target, prompt, "ar")
        done, _ = decode(target, prompt, profile, draft, **sets)
        assert done.tokens == base.tokens
        assert done.drafted > 0
        assert done.nfe <= base.nfe
    if draft_name == "draft":
        assert done.accepted > 0 and done.nfe < base.nfe


def test_kv_rollback_across_many_rejections(models):
    """An unrelated draft gets nearly everything rejected: every verify crops the caches of both models."""
    target = models["target"]
    for prompt in PROMPTS:
        base, _ = decode(target, prompt, "ar", n=60)
        done, events = decode(target, prompt, "speculative", models["rival"], n=60, draft_length=4, adaptive_draft=False,
                              draft_confidence=0.0)
        assert done.tokens == base.tokens
        rejections = sum(1 for e in events if isinstance(e, Verify) and e.rejected)
        assert rejections >= 40 and done.acceptance_rate < 0.2


def test_adaptive_gamma_grows_after_full_accepts_shrinks_otherwise_and_resets(models):
    s = settings("speculative", draft_length=3, adaptive_draft=True)
    src = ModelDraft(models["draft"], s, 0)
    src.begin([1, 2], None)
    src.accepted([1, 2, 3, 4, 5, 6], 3, 3)
    assert src.length == 5
    src.accepted([1, 2, 3, 4, 5, 6, 7], 0, 5)
    assert src.length == 4
    for _ in range(10):
        src.accepted([1, 2, 3, 4, 5, 6, 7], 1, 2)
    assert src.length == 1
    src.begin([1, 2], None)
    assert src.length == 3


@pytest.mark.parametrize("realign", [False, True])
def test_lookup_proposes_what_followed_the_latest_longest_match(realign):
    src = LookupDraft(settings("lookup", ngram_min=1, ngram_max=3, draft_length=4, realign=realign))
    src.begin([], None)
    seq = [5, 6, 7, 8, 9, 1, 5, 6, 7, 2, 3, 9, 9, 5, 6]
    tokens, q = src.propose(seq, 10)
    assert q is None and tokens.tolist() == [7, 2, 3, 9]  # "5 6" last seen before "7 2 3 9"
    # 4 never occurred: with realign, 4 replaced the 7 after the latest earlier "5 6", and the draft resumes after it.
    assert src.propose(seq + [4], 10)[0].tolist() == ([2, 3, 9, 9] if realign else [])
    assert src.propose(seq + [7], 2)[0].tolist() == [2, 3]  # "5 6 7" (3-gram) wins; room caps the draft


def _chi_square_p(samples: list[int], probs: torch.Tensor) -> float:
    from scipy.stats import chisquare

    n = len(samples)
    counts = Counter(samples)
    expected = probs.double() * n
    big = (expected >= 5).nonzero().flatten().tolist()
    obs = [counts.get(i, 0) for i in big]
    exp = [float(expected[i]) for i in big]
    rest_obs, rest_exp = n - sum(obs), n - sum(exp)
    if rest_exp >= 5:
        obs.append(rest_obs)
        exp.append(rest_exp)
    else:
        assert rest_obs <= max(10, 4 * rest_exp), "tokens the target almost never picks came out often"
        scale = sum(obs) / sum(exp)
        exp = [e * scale for e in exp]
    return float(chisquare(obs, exp).pvalue)


@pytest.mark.parametrize("with_q", [True, False], ids=["draft-probabilities", "one-hot-proposal"])
def test_rejection_rule_reproduces_the_target_distribution(with_q):
    """verify() on crafted logits: whatever the draft proposes, the committed token is distributed as p."""
    torch.manual_seed(0)
    s = settings("speculative", temperature=0.8, top_k=12)
    p_logits = torch.randn(2, 30) * 2
    q_logits = torch.randn(1, 30) * 2
    p = probabilities(p_logits, s)[0]
    q = probabilities(q_logits, s)
    gen = torch.Generator().manual_seed(1)
    out = []
    for _ in range(6000):
        x = torch.multinomial(q[0], 1, generator=gen)
        n, token = verify(p_logits, x, q if with_q else None, s, gen)
        out.append(int(x) if n == 1 else token)
    assert set(out) <= set(p.nonzero().flatten().tolist())  # top-k holds on the target side too
    assert _chi_square_p(out, p) > 1e-3


def test_speculative_sampling_matches_the_target_over_many_seeds(models):
    """First and second sampled tokens of speculative decoding against the target's exact marginals."""
    target = _with_eos(models["flat"], 10**6)  # no end token: every run gives two tokens
    draft = models["flat-draft"]
    ids = target.tokenizer.encode(PROMPTS[0])
    s = settings("speculative", n=2, temperature=1.0, top_p=0.95, draft_length=2, adaptive_draft=False)
    firsts, seconds, accepted = [], [], 0
    for seed in range(700):
        s.seed = seed
        events = list(run(target, ids, s, draft=draft))
        done = events[-1]
        firsts.append(done.tokens[0])
        seconds.append(done.tokens[1])
        accepted += done.accepted
    assert 0 < accepted < 700  # both the accept and the residual paths ran
    with torch.inference_mode():
        logits = target.net(torch.tensor([ids])).logits[0, -1:]
        p1 = probabilities(logits, s)[0]
        support = p1.nonzero().flatten()
        batch = torch.cat([torch.tensor([ids]).expand(len(support), -1), support[:, None]], dim=1)
        p2_given = probabilities(target.net(batch).logits[:, -1], s)
        p2 = (p1[support][:, None] * p2_given).sum(0)
    assert _chi_square_p(firsts, p1) > 1e-3
    assert _chi_square_p(seconds, p2) > 1e-3


def _with_eos(model, eos: int):
    return dataclasses.replace(model, eos_ids=(eos,))


def test_stop_at_an_end_token_inside_a_draft(models):
    target = models["target"]
    base, _ = decode(target, PROMPTS[0], "ar", n=40)
    eos = next(t for i, t in enumerate(base.tokens) if i >= 6 and t not in base.tokens[:i])
    stop = base.tokens.index(eos)
    t2 = _with_eos(target, eos)
    ref, _ = decode(t2, PROMPTS[0], "ar", n=40)
    assert ref.tokens == base.tokens[:stop] and ref.finish_reason == "eos"
    # The target as its own draft: every draft is accepted, so the end token lands inside one.
    done, events = decode(t2, PROMPTS[0], "speculative", target, n=40, draft_length=16, adaptive_draft=False,
                          draft_confidence=0.0)
    assert done.tokens == ref.tokens and done.finish_reason == "eos"
    last = [e for e in events if isinstance(e, Verify)][-1]
    assert last.accepted_tokens[-1] == eos and last.bonus is None and last.correction is None
    assert done.acceptance_rate == 1.0
    # Drafting stopped at the end token: no draft forward or verified position was spent past it.
    drafts = [e.tokens for e in events if isinstance(e, Draft)]
    assert drafts[-1][-1] == eos and all(eos not in d[:-1] for d in drafts)
    bonuses = sum(e.bonus is not None for e in events if isinstance(e, Verify))
    assert done.drafted + bonuses == len(done.tokens) + 1


@pytest.mark.parametrize("n", [1, 5, 7])
def test_max_new_tokens_falls_inside_a_draft(models, n):
    target = models["target"]
    base, _ = decode(target, PROMPTS[1], "ar", n=n)
    done, events = decode(target, PROMPTS[1], "speculative", target, n=n, draft_length=16, adaptive_draft=False,
                          draft_confidence=0.0)
    assert done.tokens == base.tokens and len(done.tokens) == n and done.finish_reason == "length"
    assert done.nfe == 1  # n - 1 drafts and the bonus in one verify
    assert all(len(e.tokens) <= n - 1 for e in events if isinstance(e, Draft))


def test_draft_and_verify_events_describe_each_step(models):
    done, events = decode(models["target"], PROMPTS[0], "speculative", models["draft"], n=30, draft_length=4,
                          adaptive_draft=False)
    verifies = [e for e in events if isinstance(e, Verify)]
    drafts = [e for e in events if isinstance(e, Draft)]
    assert len(verifies) == len(drafts) == done.nfe
    out = []
    for d, v in zip(drafts, verifies):
        assert v.accepted_tokens == d.tokens[: len(v.accepted_tokens)] and v.rejected == d.tokens[len(v.accepted_tokens):]
        assert (v.correction is None) != (v.bonus is None)
        assert (v.bonus is not None) == (not v.rejected)
        out += v.accepted_tokens + [v.correction if v.correction is not None else v.bonus]
    assert out == done.tokens
    st = done.stats()
    assert st["accepted"] == sum(len(v.accepted_tokens) for v in verifies)
    assert st["mean_accepted_length"] == pytest.approx(1 + st["accepted"] / done.nfe)
    assert st["mean_accepted_length"] == pytest.approx(done.tokens_per_nfe)
    assert st["acceptance_per_position"][0] >= st["acceptance_per_position"][-1]


def test_strategies_refuse_models_and_drafts_that_do_not_fit(models, tiny_llada):
    from dlm_cli.errors import DlmError, UsageError

    with pytest.raises(UsageError, match="needs a draft model"):
        decode(models["target"], "hi", "speculative")
    with pytest.raises(DlmError, match="--allow-different-tokenizers"):
        decode(models["target"], "hi", "speculative", models["other"])
    with pytest.raises(DlmError, match="needs a diffusion LLM"):
        decode(models["target"], "hi", "speedy")
    from dlm_cli.models.loading import load

    with pytest.raises(DlmError, match="needs an autoregressive .*-p speedy-lookup"):  # -p lookup on a dLLM
        list(run(load(str(tiny_llada)), [1, 2, 3], settings("lookup")))
    with pytest.raises(UsageError, match="ngram_min"):
        settings("lookup", ngram_min=4, ngram_max=2)


runner = CliRunner()


def test_cli_json_reports_the_speculative_statistics(ckpts):
    r = runner.invoke(app, ["generate", "-m", str(ckpts["target"]), "--draft", str(ckpts["draft"]), "hello world",
                            "-n", "24", "--json", "--seed", "0"])
    assert r.exit_code == 0, r.stderr
    out = json.loads(r.stdout)
    assert out["profile"] == "speculative" and out["draft"] == str(ckpts["draft"]) and out["family"] == "causal"
    st = out["stats"]
    for key in ("drafted", "accepted", "acceptance_rate", "mean_accepted_length", "acceptance_per_position",
                "verifies", "draft_nfe", "draft_seconds", "verify_seconds"):
        assert key in st
    assert st["verifies"] == out["nfe"] and st["draft_nfe"] > 0
    assert st["acceptance_rate"] == pytest.approx(st["accepted"] / st["drafted"])


def test_cli_plain_text_and_stats_line_for_an_ar_model(ckpts):
    r = runner.invoke(app, ["generate", "-m", str(ckpts["target"]), "hello", "-n", "12", "-p", "lookup"])
    assert r.exit_code == 0, r.stderr
    assert r.stdout.strip() and "\x1b[" not in r.stdout + r.stderr
    assert "NFE" in r.stderr
    r = runner.invoke(app, ["generate", "-m", str(ckpts["target"]), "hello", "-n", "12", "--json"])
    assert json.loads(r.stdout)["profile"] == "ar"


def test_cli_different_tokenizers_need_the_flag(ckpts):
    args = ["generate", "-m", str(ckpts["target"]), "--draft", str(ckpts["other"]), "hello", "-n", "8"]
    r = runner.invoke(app, args)
    assert r.exit_code == 1
    lines = r.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("dlm: ") and "--allow-different-tokenizers" in lines[0]
    r = runner.invoke(app, args + ["--allow-different-tokenizers", "--json"])
    assert r.exit_code == 0, r.stderr
    assert json.loads(r.stdout)["stats"]["draft_source"] == "text"


def test_cli_speculative_without_a_draft_is_a_usage_error(ckpts):
    r = runner.invoke(app, ["generate", "-m", str(ckpts["target"]), "-p", "speculative", "hello"])
    assert r.exit_code == 2 and r.stderr.startswith("dlm: ") and "--draft" in r.stderr


def test_live_view_colours_tokens_by_origin_and_previews_the_draft(models):
    from dlm_cli.decode.events import Start
    from dlm_cli.view.canvas import Canvas
    from dlm_cli.view.live import ORIGIN_STYLES, counter, render_canvas

    c = Canvas(models["target"].tokenizer, (0,))
    c.apply(Start("autoregressive", 3, 10))
    c.apply(Draft(0, 0, [40, 41, 42]))
    assert [str(s.style) for s in render_canvas(c).spans] == ["grey50 italic"] * 3
    c.apply(Verify(0, 1, 0, accepted_tokens=[40, 41], drafted=3, rejected=[42], correction=43))
    c.apply(Draft(1, 3, [44]))
    c.apply(Verify(1, 2, 3, accepted_tokens=[44], drafted=1, bonus=45))
    assert c.tokens == [40, 41, 43, 44, 45] and c.origin == ["draft", "draft", "correction", "draft", "bonus"]
    styles = [str(s.style) for s in render_canvas(c, final=True).spans]
    assert styles == [ORIGIN_STYLES[o] for o in c.origin]
    assert "accept 75%" in counter(c).plain and "correction" in counter(c).plain


def test_bench_compares_speculative_and_lookup_with_the_ar_baseline(ckpts, tmp_path):
    prompts = tmp_path / "p.jsonl"
    prompts.write_text("\n".join(json.dumps({"prompt": p}) for p in PROMPTS) + "\n")
    base = ["bench", "-m", str(ckpts["target"]), "--prompts", str(prompts), "--reps", "1", "-n", "16"]
    r = runner.invoke(app, base + ["--draft", str(ckpts["draft"]), "--json"])
    assert r.exit_code == 0, r.stderr
    rows = {row["profile"]: row for row in json.loads(r.stdout)["rows"]}
    assert list(rows) == ["ar", "speculative", "lookup"]
    assert all(row["agreement"] == 1.0 for row in rows.values())  # greedy: identical to the baseline
    assert rows["speculative"]["acceptance_rate"] > 0 and rows["speculative"]["draft_nfe"] > 0
    assert rows["speculative"]["nfe"] < rows["ar"]["nfe"]
    r = runner.invoke(app, base + ["--json"])  # no draft: the default comparison is lookup alone
    assert [row["profile"] for row in json.loads(r.stdout)["rows"]] == ["ar", "lookup"]
    r = runner.invoke(app, base + ["-p", "speculative"])
    assert r.exit_code == 2 and "--draft" in r.stderr


def test_causal_family_refuses_pickle_weights_unless_allowed(tmp_path):
    from safetensors.torch import load_file

    from dlm_cli.errors import DlmError
    from dlm_cli.models.loading import LoadOptions

    ckpt = make_llama(tmp_path / "pickled", seed=0)
    weights = ckpt / "model.safetensors"
    torch.save(load_file(str(weights)), ckpt / "pytorch_model.bin")
    weights.unlink()
    with pytest.raises(DlmError, match="pickle"):
        load(str(ckpt))
    model = load(str(ckpt), LoadOptions(allow_pickle=True))
    assert model.kind == "autoregressive" and model.info.family == "causal"


def test_previews_never_show_raw_control_tokens(models):
    from dlm_cli.decode.events import Start
    from dlm_cli.view.canvas import Canvas
    from dlm_cli.view.live import render_canvas

    tok = models["target"].tokenizer
    specials = [i for i in tok.all_special_ids]
    assert specials
    c = Canvas(tok, (0,))
    c.apply(Start("autoregressive", 3, 10))
    c.apply(Draft(0, 0, [40, *specials, 41]))
    shown = render_canvas(c).plain
    assert not any(tok.decode([i]) and tok.decode([i]) in shown for i in specials if tok.decode([i]).strip())
    assert shown.count("·") == len(specials) and tok.decode([40]) in shown
