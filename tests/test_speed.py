"""Compiled steps over a static cache and int8 weights: outputs, NFE and reports a user relies on.

Most tests compile with torch's ``aot_eager`` backend (``DLM_COMPILE_BACKEND``): the same traced
graphs, static cache, padding and cache crops as inductor, without its minute of C++ generation
on a 2-core CI machine. One test runs inductor itself on a one-layer model.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

import pytest
import torch
from checkpoints import make_llama
from typer.testing import CliRunner

from dlm_cli import profiles
from dlm_cli.cli import app
from dlm_cli.decode import run
from dlm_cli.models import speed
from dlm_cli.models.loading import LoadOptions, load

PROMPTS = ["the quick brown fox jumps over", "hello world, how are you today"]


@pytest.fixture(scope="module")
def ckpts(tmp_path_factory) -> dict[str, Path]:
    root = tmp_path_factory.mktemp("speed")
    return {
        "target": make_llama(root / "target", seed=0),
        "draft": make_llama(root / "draft", seed=0, noise=0.05),
        "one": make_llama(root / "one", seed=1, layers=1),
    }


@pytest.fixture()
def aot(monkeypatch):
    monkeypatch.setenv("DLM_COMPILE_BACKEND", "aot_eager")


def decode(model, prompt: str, profile: str, draft=None, **sets):
    ids = model.tokenizer(prompt)["input_ids"]
    s = profiles.load(profile, sets=[f"{k}={v}" for k, v in sets.items()], flags={"max_new_tokens": 24, "seed": 0})
    return list(run(model, ids, s, draft=draft))[-1]


def test_auto_compiles_only_on_cuda():
    assert speed.want_compile("auto", torch.device("cuda")) is True
    assert speed.want_compile("auto", torch.device("cpu")) is False
    assert speed.want_compile("on", torch.device("cpu")) is True
    assert speed.want_compile("off", torch.device("cuda")) is False
    assert [speed.bucket(n) for n in (1, 2, 3, 5, 16, 17)] == [1, 2, 4, 8, 16, 32]


@pytest.mark.parametrize("profile,with_draft", [("ar", False), ("lookup", False), ("speculative", True)])
def test_compiled_outputs_equal_eager(ckpts, aot, profile, with_draft):
    target = load(str(ckpts["target"]))
    draft = load(str(ckpts["draft"])) if with_draft else None
    for prompt in PROMPTS:
        eager = decode(target, prompt, profile, draft, compile="off")
        compiled = decode(target, prompt, profile, draft, compile="on")
        assert compiled.tokens == eager.tokens
        assert compiled.nfe == eager.nfe
        assert compiled.draft_nfe == eager.draft_nfe
        assert eager.compile_seconds is None
    # The compiled lossless strategies still give plain AR's output.
    plain = decode(target, PROMPTS[0], "ar", compile="off")
    assert decode(target, PROMPTS[0], profile, draft, compile="on").tokens == plain.tokens


def test_warm_up_reported_apart_once(ckpts, aot):
    target = load(str(ckpts["target"]))
    first = decode(target, PROMPTS[0], "lookup", compile="on")
    second = decode(target, PROMPTS[1], "lookup", compile="on")
    assert first.compile_seconds and first.compile_seconds > 0
    assert second.compile_seconds is None  # same cache size, same widths: nothing left to compile
    assert target.speed.widths == (1, 16)  # lookup's draft_length 15 + the last token
    assert first.seconds < first.compile_seconds + 60  # the warm-up is not in the decode seconds


def test_static_cache_rollback_keeps_prefix(ckpts, aot):
    """A padded verify of 3 tokens into a width-8 graph, then a rollback: the cache is the prefix's."""
    model = load(str(ckpts["target"]))
    s = profiles.load("ar", sets=["compile=on"])
    speed.prepare(model, s, 40, widths=(1, 8))
    ids = torch.tensor(model.tokenizer(PROMPTS[0])["input_ids"])
    cache = model.new_cache()
    assert hasattr(cache, "dlm_filled")
    model.forward(ids[:-1], cache)
    out = model.forward(torch.tensor([ids[-1], 5, 7]), cache, keep=3)
    assert out.shape[0] == 3 and cache.dlm_filled == len(ids) + 2
    assert int(cache.get_seq_length()) == len(ids) + 2  # the padding was cropped at once
    from dlm_cli.models.causal import rollback

    rollback(cache, len(ids))
    nxt = model.forward(torch.tensor([9]), cache)
    plain = model.net(input_ids=torch.cat([ids, torch.tensor([9])])[None]).logits[0, -1]
    assert torch.allclose(nxt[0], plain, atol=1e-4)


def test_inductor_matches_eager(ckpts):
    """The real backend once, on a one-layer model (its C++ build is the slow part)."""
    model = load(str(ckpts["one"]))
    eager = decode(model, PROMPTS[0], "ar", compile="off")
    compiled = decode(model, PROMPTS[0], "ar", compile="on")
    assert compiled.tokens == eager.tokens and compiled.compile_seconds > 0


def test_int8_weights_and_lossless_identity(ckpts):
    pytest.importorskip("torchao")
    target = load(str(ckpts["target"]))
    draft = load(str(ckpts["draft"]))
    float_out = decode(target, PROMPTS[0], "ar")
    q_ar = decode(target, PROMPTS[0], "ar", quantize="int8")
    # Lossless methods stay identical to their own baseline at the same weights.
    assert decode(target, PROMPTS[0], "lookup", quantize="int8").tokens == q_ar.tokens
    assert decode(target, PROMPTS[0], "speculative", draft, quantize="int8").tokens == q_ar.tokens
    weight = target.net.model.layers[0].self_attn.q_proj.weight
    assert type(weight).__name__ == "Int8Tensor"  # torchao's int8 weight-only tensor
    # The float weights were kept aside for rows that want them (dlm bench compares both).
    assert decode(target, PROMPTS[0], "ar", quantize="none").tokens == float_out.tokens
    assert type(target.net.model.layers[0].self_attn.q_proj.weight) is torch.nn.Parameter


def test_int4_weights_in_bfloat16_and_lossless_identity(ckpts):
    pytest.importorskip("torchao")
    target = load(str(ckpts["target"]), LoadOptions(dtype="bfloat16"))
    draft = load(str(ckpts["draft"]), LoadOptions(dtype="bfloat16"))
    q_ar = decode(target, PROMPTS[0], "ar", quantize="int4")
    assert len(q_ar.tokens) == 24
    assert decode(target, PROMPTS[0], "lookup", quantize="int4").tokens == q_ar.tokens
    assert decode(target, PROMPTS[0], "speculative", draft, quantize="int4").tokens == q_ar.tokens
    weight = target.net.model.layers[0].mlp.down_proj.weight
    assert type(weight).__name__ == "Int4OpaqueTensor"  # torchao's group-wise int4 tensor (CPU tinygemm)


def test_int4_in_float32_says_to_use_bfloat16(ckpts):
    pytest.importorskip("torchao")
    res = CliRunner().invoke(app, ["generate", "-m", str(ckpts["target"]), "-p", "ar", "--set", "quantize=int4",
                                   "--view", "none", "-n", "4", "hello"])
    assert res.exit_code == 2, res.output
    assert res.output.strip().splitlines()[-1] == "dlm: quantize = 'int4' computes in bfloat16: add --dtype bfloat16"


def test_int8_without_torchao_says_how(ckpts, monkeypatch):
    target = load(str(ckpts["target"]))
    monkeypatch.setitem(sys.modules, "torchao", None)
    monkeypatch.setitem(sys.modules, "torchao.quantization", None)
    res = CliRunner().invoke(app, ["generate", "-m", str(ckpts["target"]), "-p", "ar", "--set", "quantize=int8",
                                   "--view", "none", "-n", "4", "hello"])
    assert res.exit_code == 1
    assert "dlm: quantize = 'int8' needs torchao" in res.output and "pip install" in res.output
    assert "Traceback" not in res.output
    del target


def test_cli_compile_flag(ckpts, aot):
    runner = CliRunner()
    bad = runner.invoke(app, ["generate", "-m", str(ckpts["target"]), "--compile", "maybe", "hello"])
    assert bad.exit_code == 2 and "maybe" in bad.output
    res = runner.invoke(app, ["generate", "-m", str(ckpts["target"]), "-p", "ar", "--compile", "on",
                              "--view", "none", "-n", "6", "--json", "hello"])
    assert res.exit_code == 0, res.output
    stats = json.loads(res.stdout)["stats"]
    assert stats["compile_seconds"] > 0
    bad_key = runner.invoke(app, ["generate", "-m", str(ckpts["target"]), "-p", "ar", "--set", "quantize=int2",
                                  "--view", "none", "hello"])
    assert bad_key.exit_code == 2 and "quantize" in bad_key.output and "int8" in bad_key.output


@pytest.mark.parametrize("profile", ["quality", "speedy"])
def test_compiled_dllm_outputs_equal_eager(aot, profile):
    model = load("dlm-demo")
    for prompt in ("Sort these numbers: 41 7 93 12 58 3", "Copy this list: 4 8 15 16 23 42 7"):
        ids = model.tokenizer.apply_chat_template([{"role": "user", "content": prompt}], add_generation_prompt=True)
        ids = list(ids["input_ids"] if hasattr(ids, "keys") else ids)
        runs = {}
        for comp in ("off", "on"):
            s = profiles.load(profile, sets=[f"compile={comp}"], flags={"max_new_tokens": 32, "seed": 0})
            runs[comp] = list(run(model, ids, s))[-1]
        assert runs["on"].tokens == runs["off"].tokens and runs["on"].nfe == runs["off"].nfe
    assert model.speed.compiled  # the network really went through torch.compile


def test_each_weight_variant_compiles_its_own_graphs(ckpts, aot):
    pytest.importorskip("torchao")
    model = load(str(ckpts["target"]))
    f_on = decode(model, PROMPTS[0], "ar", compile="on")
    q_off = decode(model, PROMPTS[0], "ar", quantize="int8", compile="off")
    q_on = decode(model, PROMPTS[0], "ar", quantize="int8", compile="on")
    assert f_on.compile_seconds > 0 and q_on.compile_seconds > 0  # int8 weights are another graph
    assert q_on.tokens == q_off.tokens
    again = decode(model, PROMPTS[0], "ar", compile="on")  # back to float: its graphs are still there
    assert again.compile_seconds is None and again.tokens == f_on.tokens


def test_int4_pads_a_dllm_head_so_every_linear_layer_is_int4(tmp_path):
    """smollm2-dlm's head has 49153 rows (the base vocabulary and the mask row): not whole 16-row int4 tiles.
    It is padded with zero rows and cut back, so it is int4 too, and callers see the same shapes."""
    pytest.importorskip("torchao")
    from checkpoints import make_adapter

    model = load(str(make_adapter(tmp_path / "adapter")), LoadOptions(dtype="bfloat16"))
    head = model.net.lm_head
    assert head.weight.shape[0] % speed.INT4_ROWS != 0  # the case this is for
    h = torch.randn(3, head.weight.shape[1], dtype=torch.bfloat16)
    padded = speed.PaddedLinear(head)
    assert padded.inner.weight.shape[0] % speed.INT4_ROWS == 0 and torch.equal(padded(h), head(h))
    vocab, x = model.vocab_size, torch.randint(0, 100, (1, 16))
    before = model.logits(x)
    speed.use_quantized(model, "int4", keep_float=True)
    linears = [m for m in model.net.modules() if isinstance(m, torch.nn.Linear)]
    assert len(linears) == 1 + 7 * model.net.config.num_hidden_layers
    assert all(type(m.weight).__name__ == "Int4OpaqueTensor" for m in linears)
    assert isinstance(model.net.lm_head, speed.PaddedLinear) and model.vocab_size == vocab
    assert model.logits(x).shape == before.shape
    done = decode(model, PROMPTS[0], "speedy", quantize="int4")
    assert len(done.tokens) > 0


def compiled_against_eager(model, sets: list[str], monkeypatch):
    """``speedy`` with ``sets`` over 192 tokens, eager and then compiled (the warm-up apart, dynamo's counters
    cleared before it): (eager Done, compiled Done, warm-up seconds, graphs after the warm-up, graphs after the
    run, (width, rows) of every compiled call, the number of forwards on the fixed-shape path)."""
    from torch._dynamo.utils import counters

    ids = model.tokenizer.encode("hello world, again and again")
    flags = {"max_new_tokens": 192, "seed": 0}
    eager = list(run(model, ids, profiles.load("speedy", sets=sets + ["compile=off"], flags=flags)))[-1]
    compiled_calls, every = [], []
    real, real_step = speed.compiled_whole, speed.whole_step

    def counting(m):
        step = real(m)
        return lambda *a: (compiled_calls.append((a[0].shape[1], a[4].shape[0])), step(*a))[1]

    monkeypatch.setattr(speed, "compiled_whole", counting)
    monkeypatch.setattr(speed, "whole_step", lambda *a: (every.append(1), real_step(*a))[1])
    counters.clear()
    s = profiles.load("speedy", sets=sets + ["compile=on"], flags=flags)
    warm = speed.prepare(model, s, len(ids) + 193)
    graphs = counters["stats"]["unique_graphs"]
    done = list(run(model, ids, s))[-1]
    return eager, done, warm, graphs, counters["stats"]["unique_graphs"], compiled_calls, len(every)


@pytest.mark.parametrize("family", ["adapter", "sdar"])
def test_a_compiled_block_step_is_one_graph_per_width_with_no_recompile_over_a_run(tmp_path, aot, monkeypatch, family):
    """compile = on for a block-diffusion model: the warm-up compiles one graph per block width, before the
    decode clock; a 192-token run then compiles nothing, runs nearly every forward compiled, and writes the
    eager run's tokens."""
    from checkpoints import make_adapter, make_sdar

    build = make_adapter if family == "adapter" else make_sdar
    model = load(str(build(tmp_path / family)))
    eager, done, warm, graphs, after, calls, _ = compiled_against_eager(model, ["cache=prefix", "eotp=false"],
                                                                        monkeypatch)
    widths = speed.block_widths(model)
    assert warm > 0 and graphs == len(widths) == 2  # the warm-up, out of the run
    assert not done.compile_seconds and after == 2  # no recompile in the run
    assert done.tokens == eager.tokens and done.nfe == eager.nfe and len(done.tokens) > 40
    assert set(calls) == set(widths) and len(calls) >= done.nfe - 2


@pytest.mark.parametrize("family", ["llada", "dream"])
def test_a_compiled_dual_cache_step_is_one_graph_with_no_recompile_over_a_run(tmp_path, aot, monkeypatch, family):
    """compile = on for a bidirectional dLLM under the dual cache: the warm-up compiles the window step once
    (LLaDA: the block; Dream: the block and the row before it), a 192-token run compiles nothing more, runs
    every step but the blocks' full forwards compiled, and writes the eager run's tokens with its NFE."""
    from checkpoints import make_dream, make_llada

    build = make_llada if family == "llada" else make_dream
    model = load(str(build(tmp_path / family, sharpen=4.0)))
    sets = ["cache=dual", "eotp=false", "block_length=16", "threshold=0.5"]
    eager, done, warm, graphs, after, calls, every = compiled_against_eager(model, sets, monkeypatch)
    widths = speed.dual_widths(model, 16)
    assert widths == ((17 if family == "dream" else 16, 16),)
    assert warm > 0 and graphs == 1  # the warm-up, out of the run
    assert not done.compile_seconds and after == 1  # no recompile in the run
    assert done.tokens == eager.tokens and done.nfe == eager.nfe and len(done.tokens) > 40
    # Every forward of the run took the fixed-shape path (3: the warm-up's), and all but each block's full
    # forward ran compiled (2: the warm-up's).
    assert every == 3 + done.nfe
    assert set(calls) == set(widths) and len(calls) >= 2 + done.nfe - -(-192 // 16)


def test_max_autotune_compiles_with_inductors_tuning_over_torchs_own_products(ckpts, tmp_path, aot, monkeypatch):
    """compile = max-autotune: a dLLM's steps compile with inductor's freezing and max-autotune (mode max-autotune
    on CUDA), over torch's own products (dlm's packed ones are opaque to the tuner) even where kernels asks for
    packed ones, with the eager run's tokens; an AR model compiles as with on (its packed products stay)."""
    from checkpoints import make_adapter

    dllm = load(str(make_adapter(tmp_path / "adapter")))
    eager = decode(dllm, PROMPTS[0], "speedy", compile="off", kernels="onednn")
    assert dllm.speed.kernels == "onednn"  # packed where asked ...
    tuned = decode(dllm, PROMPTS[0], "speedy", compile="max-autotune", kernels="onednn")
    assert dllm.speed.kernels == "torch" and dllm.speed.autotune  # ... but not under max-autotune
    assert tuned.tokens == eager.tokens and tuned.nfe == eager.nfe and tuned.compile_seconds > 0
    plain = decode(dllm, PROMPTS[0], "speedy", compile="on", kernels="onednn")
    assert plain.compile_seconds > 0 and not dllm.speed.autotune  # another graph than max-autotune's
    ar = load(str(ckpts["target"]))
    ar_eager = decode(ar, PROMPTS[0], "ar", compile="off", kernels="onednn")
    ar_tuned = decode(ar, PROMPTS[0], "ar", compile="max-autotune", kernels="onednn")
    assert ar.speed.kernels == "onednn" and not ar.speed.autotune and ar_tuned.tokens == ar_eager.tokens

    import torch._inductor.config as inductor_config

    seen = []
    monkeypatch.setenv("DLM_COMPILE_BACKEND", "inductor")
    monkeypatch.setattr(speed.torch, "compile", lambda fn, **kw: seen.append(kw) or fn)
    during = lambda: (inductor_config.freezing, inductor_config.max_autotune)  # noqa: E731
    assert speed._compile(during, torch.device("cpu"), True)() == (True, True)  # inductor's config while it runs
    assert during() == (False, False)  # and only then
    assert speed._compile(during, torch.device("cpu"), False)() == (False, False)
    speed._compile(during, torch.device("cuda"), True)
    assert seen == [{"dynamic": False}, {"dynamic": False}, {"mode": "max-autotune", "dynamic": False}]


@pytest.mark.slow  # about a minute: inductor benchmarks every product shape
def test_max_autotune_with_inductor_matches_eager(tmp_path):
    """The real thing on a tiny block-diffusion model: inductor freezes the weights (not the cache, which
    every step writes) and tunes each product; the same tokens as eager. And an AR model's tokens, which
    compile as with on (freezing would fold transformers' static-address cache into constants)."""
    from checkpoints import make_adapter

    dllm = load(str(make_adapter(tmp_path / "adapter")))
    eager = decode(dllm, PROMPTS[1], "speedy", compile="off")
    tuned = decode(dllm, PROMPTS[1], "speedy", compile="max-autotune")
    assert tuned.tokens == eager.tokens and tuned.compile_seconds > 0 and len(eager.tokens) > 8
    ar = load(str(make_llama(tmp_path / "one", seed=1, layers=1)))
    assert decode(ar, PROMPTS[1], "ar", compile="max-autotune").tokens == decode(ar, PROMPTS[1], "ar").tokens
