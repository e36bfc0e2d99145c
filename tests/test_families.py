"""Each dLLM family, from a tiny checkpoint in its published layout: detection, decoding, shift, masks, caches."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from checkpoints import make_diffusion_gemma, make_dream, make_fast_dllm_v2, make_sdar
from dlm_cli import profiles
from dlm_cli.decode import run
from dlm_cli.decode.canvas import BlockCanvas
from dlm_cli.decode.events import Done, Step
from dlm_cli.models.loading import load

BUILDERS = {"dream": make_dream, "sdar": make_sdar, "fast-dllm-v2": make_fast_dllm_v2,
            "diffusion-gemma": make_diffusion_gemma}


@pytest.fixture(scope="module")
def ckpt(tmp_path_factory):
    """Family name -> tiny checkpoint directory (built once per module)."""
    root = tmp_path_factory.mktemp("families")
    out = {}
    for name, build in BUILDERS.items():
        out[name] = build(root / name, sharpen=4.0)
    return out


@pytest.fixture(scope="module")
def models(ckpt, tiny_llada):
    out = {name: load(str(path)) for name, path in ckpt.items()}
    out["llada"] = load(str(tiny_llada))
    return out


def decode(model, ids, profile, max_new_tokens=20, **sets):
    s = profiles.load(profile, sets=[f"{k}={v}" for k, v in sets.items()], flags={"seed": 0,
                                                                               "max_new_tokens": max_new_tokens})
    return list(run(model, ids, s))


def canvas(model, prompt, free):
    x = torch.full((1, len(prompt) + free), model.mask_id)
    x[0, : len(prompt)] = torch.tensor(prompt)
    return x


def test_each_family_is_detected_with_its_conventions(models):
    m = models
    assert (m["llada"].shift, m["llada"].block_size) == (False, None)
    assert (m["dream"].info.family, m["dream"].shift, m["dream"].block_size) == ("dream", True, None)
    assert (m["sdar"].info.family, m["sdar"].shift, m["sdar"].block_size) == ("sdar", False, 4)
    assert (m["fast-dllm-v2"].info.family, m["fast-dllm-v2"].shift, m["fast-dllm-v2"].block_size) == (
        "fast-dllm-v2", True, 8)
    assert m["diffusion-gemma"].info.family == "diffusion-gemma" and m["diffusion-gemma"].canvas_length == 16
    vocab = m["dream"].tokenizer.get_vocab()
    # mask ids: from config.json (Dream, SDAR), from the tokenizer's |<MASK>| (Fast-dLLM v2, as published)
    assert m["dream"].mask_id == m["sdar"].mask_id == vocab["<|mdm_mask|>"]
    assert m["fast-dllm-v2"].mask_id == m["fast-dllm-v2"].tokenizer.get_vocab()["|<MASK>|"]
    # DiffusionGemma has no mask token: a sentinel outside its vocabulary stands for "undecided"
    assert m["diffusion-gemma"].mask_id == m["diffusion-gemma"].vocab_size


@pytest.mark.parametrize("family", ["llada", "dream", "sdar", "fast-dllm-v2", "diffusion-gemma"])
@pytest.mark.parametrize("profile", ["baseline", "speedy"])
def test_every_family_decodes_every_slot_with_baseline_and_threshold(models, family, profile):
    model = models[family]
    ids = model.tokenizer.encode("sort these numbers: 3 1 2")
    events = decode(model, ids, profile, max_new_tokens=20, block_length=8, eotp="false")
    done = events[-1]
    steps = [e for e in events if isinstance(e, Step)]
    committed = [p for e in steps for p in e.positions]
    assert isinstance(done, Done) and sorted(committed) == list(range(20))  # each slot exactly once
    assert done.nfe == len(steps) and model.mask_id not in done.tokens
    if profile == "baseline":
        assert all(len(e.positions) == 1 for e in steps)
    grid_end = model.block_end
    for e in steps:  # no step commits across a model block: blocks only condition on final blocks
        absolute = [p + len(ids) for p in e.positions]
        if grid_end(len(ids)) is not None:
            assert len({grid_end(p) for p in absolute}) == 1


def decode_blocks(model, start: int, length: int, block_length: int) -> list[tuple[int, int]]:
    from types import SimpleNamespace

    from dlm_cli.decode.events import Clock

    cfg = SimpleNamespace(max_new_tokens=length - start, block_length=block_length, eotp=False)
    return BlockCanvas(model, [1] * start, cfg, Clock()).blocks()


def test_decode_blocks_never_straddle_the_model_grid(models):
    sdar = models["sdar"]  # block_size 4
    assert decode_blocks(sdar, 5, 23, 8) == [(5, 8), (8, 12), (12, 16), (16, 20), (20, 23)]
    assert decode_blocks(sdar, 8, 14, 2) == [(8, 10), (10, 12), (12, 14)]
    assert decode_blocks(models["llada"], 5, 23, 8) == [(5, 13), (13, 21), (21, 23)]
    gemma = models["diffusion-gemma"]  # canvases of 16 start where the answer starts
    gemma.begin(5)
    assert decode_blocks(gemma, 5, 45, 12) == [(5, 17), (17, 21), (21, 33), (33, 37), (37, 45)]


# --- the shift convention -------------------------------------------------------------------------------

def _identity_net(model, basis_ids):
    """Make each layer a no-op and the head predict "input token + 1": ``logits[j]`` then names
    ``x[j] + 1`` exactly, so which position's output a row reads is visible in the answer."""
    net = model.net
    d = net.config.hidden_size
    with torch.no_grad():
        for name, p in net.named_parameters():
            if name.endswith(("o_proj.weight", "down_proj.weight", "o_proj.bias", "down_proj.bias")):
                p.zero_()
            elif "norm" in name:
                p.fill_(1.0)
        emb = net.model.embed_tokens.weight
        emb.mul_(0.01)
        for k, t in enumerate(basis_ids):
            emb[t] = 0.0
            emb[t, k] = 1.0
        net.lm_head.weight.copy_(torch.roll(emb, 1, dims=0) * 20.0)


@pytest.mark.parametrize("family,shift", [("llada", False), ("dream", True), ("sdar", False),
                                          ("fast-dllm-v2", True)])
def test_the_row_for_position_i_reads_the_output_at_i_or_i_minus_1(ckpt, tiny_llada, family, shift):
    model = load(str(tiny_llada if family == "llada" else ckpt[family]))
    prompt = [10, 11, 12, 13, 14]
    _identity_net(model, prompt + [15, model.mask_id])
    x = canvas(model, prompt, 11)
    P = len(prompt)
    want = prompt[-1] + 1 if shift else model.mask_id + 1
    assert int(model.logits(x, rows=(P, P + 1))[0, 0].argmax()) == want
    # The same through a prefix cache whose window starts at the row: the predictor lies before it.
    cache = model.new_cache()
    model.logits(x, 0, x.shape[1], cache=cache)
    cache.truncate(P)
    assert int(model.logits(x, P, x.shape[1], cache=cache, rows=(P, P + 2))[0, 0].argmax()) == want
    # ...and a committed token is then what predicts the slot after it (shifted) or itself (in place).
    x[0, P] = 15 if shift else x[0, P]
    got = int(model.logits(x, rows=(P + 1, P + 2))[0, 0].argmax())
    assert got == (16 if shift else model.mask_id + 1)


# --- block-causal attention -----------------------------------------------------------------------------

@pytest.mark.parametrize("family", ["sdar", "fast-dllm-v2"])
def test_block_causal_attention(models, family):
    model = models[family]
    B = model.block_size
    x = torch.randint(20, 200, (1, 4 * B))
    rows = (0, 4 * B)
    base = model.logits(x, rows=rows)[0]
    later = x.clone()
    later[0, 2 * B + 1] = 7  # a change in block 2...
    out = model.logits(later, rows=rows)[0]
    # ...leaves every row of blocks 0-1 alone, for both conventions (a shifted row reads one position earlier)
    upto = 2 * B + (1 if model.shift else 0)
    assert torch.equal(base[:upto], out[:upto]) or torch.allclose(base[:upto], out[:upto], atol=1e-6)
    # ...and reaches back to the start of its own block: attention inside a block is bidirectional.
    first_row = 2 * B + (1 if model.shift else 0)
    assert not torch.allclose(base[first_row], out[first_row], atol=1e-4)
    assert not torch.allclose(base[3 * B :], out[3 * B :], atol=1e-4)


@pytest.mark.parametrize("family", ["llada", "dream"])
def test_bidirectional_families_see_the_whole_canvas(models, family):
    model = models[family]
    x = torch.randint(20, 200, (1, 12))
    a = model.logits(x, rows=(1, 2))
    x[0, 11] = 7
    assert not torch.allclose(a, model.logits(x, rows=(1, 2)), atol=1e-4)


# --- exact caches ---------------------------------------------------------------------------------------

class Recorder:
    """Wraps a model's ``logits`` and keeps every result, to compare runs forward by forward."""

    def __init__(self, model):
        self.model, self.seen, self.inner = model, [], model.logits

    def __enter__(self):
        def rec(*args, **kwargs):
            out = self.inner(*args, **kwargs)
            self.seen.append(out.clone())
            return out

        self.model.logits = rec
        return self

    def __exit__(self, *exc):
        del self.model.logits


@pytest.mark.parametrize("family", ["sdar", "fast-dllm-v2", "diffusion-gemma"])
@pytest.mark.parametrize("block_length", [3, 16])
def test_the_block_cache_is_exact(models, family, block_length):
    """Same logits at every forward with and without the cache: a prompt ending inside a model
    block, sub-blocks smaller than the model's, and blocks longer than it (cut at its grid)."""
    model = models[family]
    ids = model.tokenizer.encode("sort these numbers: 3 1 2")
    assert len(ids) % (model.block_size or 1) != 0 or family == "diffusion-gemma"
    runs = {}
    for cache in ("none", "prefix", "dual"):
        with Recorder(model) as rec:
            done = decode(model, ids, "speedy", 22, cache=cache, block_length=block_length, eotp="false")[-1]
        runs[cache] = (rec.seen, done.tokens)
    ref, tokens = runs["none"]
    for cache in ("prefix", "dual"):
        seen, toks = runs[cache]
        assert toks == tokens and len(seen) == len(ref)
        for a, b in zip(ref, seen):
            assert torch.allclose(a, b, rtol=1e-5, atol=1e-4), (a - b).abs().max()


def test_a_cached_window_is_widened_to_its_model_block(models):
    """Asking for rows mid-block with a cache recomputes the whole block (its keys are stale until final)."""
    model = models["sdar"]  # block 4
    x = torch.randint(20, 200, (1, 16))
    full = model.logits(x, rows=(9, 11))
    cache = model.new_cache()
    model.logits(x, 0, 16, cache=cache)
    cache.truncate(10)
    x2 = x.clone()
    x2[0, 8] = 5  # a change inside the block, before the window: stale in the cache
    fresh = model.logits(x2, rows=(9, 11))
    assert not torch.allclose(full, fresh, atol=1e-4)
    assert torch.allclose(model.logits(x2, 10, 12, cache=cache, rows=(9, 11)), fresh, atol=1e-5)


def test_gemma_native_equals_transformers_generate(models):
    """The gemma-native strategy is DiffusionGemma's own sampler: same seed, same tokens as model.generate."""
    model = models["diffusion-gemma"]
    ids = model.tokenizer.encode("hello world")
    s = profiles.load(str(Path(__file__).parent.parent / "profiles" / "gemma-native.toml"),
                      sets=["max_denoising_steps=5"], flags={"seed": 11, "max_new_tokens": 40})
    events = list(run(model, ids, s))
    done = events[-1]
    torch.manual_seed(11)
    ref = model.net.generate(torch.tensor([ids]), max_new_tokens=40, max_denoising_steps=5,
                             eos_token_id=list(model.eos_ids)).sequences[0, len(ids):].tolist()
    assert done.tokens == ref[: len(done.tokens)] and len(done.tokens) > 0
    steps = [e for e in events if isinstance(e, Step)]
    assert done.nfe == len(steps) and sorted(p for e in steps for p in e.positions) == list(
        range(min(40, 16 * done.blocks)))


def test_gemma_native_refuses_other_families(models):
    from dlm_cli.errors import DlmError

    s = profiles.load(str(Path(__file__).parent.parent / "profiles" / "gemma-native.toml"), flags={"seed": 0})
    with pytest.raises(DlmError, match=r"'gemma-native' needs a model that has a sampler of its own \(DiffusionGemma\); \S+ is not one"):
        run(models["dream"], [1, 2, 3], s)


def test_freedave_on_diffusion_gemma_is_one_clear_error_not_a_crash(models):
    from dlm_cli.errors import DlmError

    s = profiles.load("freedave", flags={"seed": 0, "max_new_tokens": 16})
    with pytest.raises(DlmError, match="'freedave' needs a model that can run a batch of canvases in one forward.*gemma-native"):
        list(run(models["diffusion-gemma"], [1, 2, 3], s))
