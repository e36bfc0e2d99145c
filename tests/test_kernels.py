"""kernels = auto|onednn|torch: linear layers on oneDNN's prepacked weights give torch's products (to float32
rounding), repack when their weights change, turn back, and leave lossless methods lossless."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from checkpoints import make_adapter, make_llama

from dlm_cli import profiles
from dlm_cli.decode import run
from dlm_cli.models import kernels as K, speed
from dlm_cli.models.loading import LoadOptions, load

pytestmark = pytest.mark.skipif(not K.available(torch.float32), reason="this torch has no oneDNN")


@pytest.fixture()
def threads():
    before = torch.get_num_threads()
    yield
    torch.set_num_threads(before)


def net_of(*layers: torch.nn.Module) -> torch.nn.Module:
    return torch.nn.Sequential(*layers)


@pytest.mark.parametrize("n_threads", [1, 2])
def test_a_packed_layer_gives_torchs_product_for_every_row_count(threads, n_threads):
    torch.set_num_threads(n_threads)
    torch.manual_seed(0)
    small, head = torch.nn.Linear(64, 48, bias=True), torch.nn.Linear(64, K.WIDE_ROWS + 16, bias=False)
    want = {}
    xs = [torch.randn(1, 64), torch.randn(1, 1, 64), torch.randn(9, 64), torch.randn(2, 9, 64), torch.randn(0, 64)]
    for layer in (small, head):
        want[id(layer)] = [F.linear(x, layer.weight, layer.bias) for x in xs]
    net = net_of(small, head)
    assert K.pack(net) == 2
    assert type(small) is K.PackedLinear and isinstance(small, torch.nn.Linear)
    # One row on one thread: the head through MKL's packed copy, the small layer through torch.
    assert (head.dlm_mkl is not None) == (n_threads == 1 and torch._C.has_mkl)
    assert small.dlm_mkl is None and small.dlm_one == (n_threads > 1)
    with torch.no_grad():
        for layer in (small, head):
            for x, w in zip(xs, want[id(layer)]):
                got = layer(x)
                assert got.shape == w.shape
                assert torch.allclose(got, w, atol=1e-5, rtol=1e-5)


def test_a_changed_weight_is_packed_again_and_unpack_restores_plain_layers(threads):
    torch.set_num_threads(1)
    layer = torch.nn.Linear(32, 24, bias=False)
    net = net_of(layer)
    K.pack(net)
    x = torch.randn(5, 32)
    with torch.no_grad():
        layer.weight += 1.0  # a merged delta, in place
        stale = layer(x)
        K.pack(net)  # the next run's prepare
        fresh = layer(x)
    assert not torch.allclose(stale, F.linear(x, layer.weight), atol=1e-3)  # the pack was the old weight's
    assert torch.allclose(fresh, F.linear(x, layer.weight), atol=1e-5)
    import copy

    twin = copy.deepcopy(net)  # a bench row's quantized copy starts from a plain layer with its own weight
    assert type(twin[0]) is torch.nn.Linear and twin[0].weight is not layer.weight
    assert torch.equal(twin[0].weight, layer.weight) and type(layer) is K.PackedLinear
    assert K.unpack(net) == 1 and type(layer) is torch.nn.Linear and "dlm_packed" not in layer.__dict__


def test_a_layer_in_training_or_another_dtype_uses_torchs_product(threads):
    layer = torch.nn.Linear(16, 8)
    K.pack(net_of(layer))
    x = torch.randn(3, 16, requires_grad=True)
    layer.weight.requires_grad_(False)  # a frozen base layer under a LoRA: the input's gradient still flows
    layer(x).sum().backward()  # through torch's own product: the packed op has no backward
    assert x.grad is not None and torch.allclose(x.grad, layer.weight.sum(0).expand(3, 16))
    with torch.no_grad():
        assert torch.allclose(layer(x.double().float()), F.linear(x, layer.weight, layer.bias), atol=1e-5)


def test_auto_packs_float32_on_the_cpu_only():
    f32 = net_of(torch.nn.Linear(8, 8))
    assert K.want("auto", f32) and K.want("onednn", f32) and not K.want("torch", f32)
    bf16 = net_of(torch.nn.Linear(8, 8)).to(torch.bfloat16)
    assert not K.want("auto", bf16)  # bfloat16 stays torch's unless asked for (unmeasured here)
    assert K.want("onednn", bf16) == K.available(torch.bfloat16)
    with pytest.raises(ValueError):
        K.want("fast", f32)


def test_auto_does_not_pack_when_the_copies_would_not_fit(monkeypatch):
    from dlm_cli.models import memory

    net = net_of(torch.nn.Linear(64, 64))  # 16 KiB of weights
    monkeypatch.setattr(memory, "available_ram", lambda: 20_000)  # not twice the weights
    assert not K.want("auto", net) and K.want("onednn", net)
    monkeypatch.setattr(memory, "available_ram", lambda: 10**9)
    assert K.want("auto", net)
    monkeypatch.setattr(K, "AUTO_MAX_BYTES", 1000)
    assert not K.want("auto", net)


def test_a_quantized_layer_is_never_packed(tmp_path):
    pytest.importorskip("torchao")
    model = load(str(make_llama(tmp_path / "t", seed=0)))
    s = profiles.load("ar", sets=["quantize=int8", "kernels=onednn"], flags={"max_new_tokens": 8})
    speed.prepare(model, s, 32)
    assert not any(isinstance(m, K.PackedLinear) for m in model.net.modules())
    assert model.speed.kernels == "torch"


def decode(model, ids, profile, draft=None, **sets):
    s = profiles.load(profile, sets=[f"{k}={v}" for k, v in sets.items()], flags={"max_new_tokens": 24, "seed": 0})
    return list(run(model, ids, s, draft=draft))[-1]


@pytest.mark.parametrize("n_threads", [1, 2])
def test_lossless_methods_stay_lossless_on_packed_layers(tmp_path, threads, n_threads):
    torch.set_num_threads(n_threads)
    target = load(str(make_llama(tmp_path / "target", seed=0)))
    draft = load(str(make_llama(tmp_path / "draft", seed=0, noise=0.05)))
    ids = target.tokenizer("the quick brown fox jumps over")["input_ids"]
    plain = decode(target, ids, "ar", kernels="torch")
    assert not any(isinstance(m, K.PackedLinear) for m in target.net.modules())
    packed = decode(target, ids, "ar", kernels="onednn")
    assert target.speed.kernels == "onednn"
    assert any(isinstance(m, K.PackedLinear) for m in target.net.modules())
    assert packed.tokens == plain.tokens  # a random model's margins are far above float32 rounding
    for profile, d in (("lookup", None), ("speculative", draft)):
        assert decode(target, ids, profile, d, kernels="onednn").tokens == packed.tokens


def test_a_block_diffusion_step_on_packed_layers_gives_the_same_logits(tmp_path):
    model = load(str(make_adapter(tmp_path / "a", block_size=4)))
    x = torch.tensor([[30, 31, 32, 33, 34, 35, model.mask_id, model.mask_id]])
    with torch.no_grad():
        want = model.logits(x, rows=(4, 8))[0]
        K.use(model, "onednn")
        got = model.logits(x, rows=(4, 8))[0]
    assert model.speed.kernels == "onednn"
    assert torch.allclose(got, want, atol=1e-4)


def test_json_names_the_products_used(tmp_path):
    import json
    import subprocess
    import sys

    path = make_llama(tmp_path / "j", seed=0)
    for value, want in (("auto", "onednn"), ("torch", "torch")):
        res = subprocess.run([sys.executable, "-m", "dlm_cli", "generate", "-m", str(path), "-p", "ar", "-n", "4",
                              "--set", f"kernels={value}", "--view", "none", "--json", "hello"],
                             capture_output=True, text=True, timeout=300)
        assert res.returncode == 0, res.stderr
        out = json.loads(res.stdout)
        assert out["kernels"] == want and out["settings"]["kernels"] == value


def test_bfloat16_model_loads_with_auto_unpacked(tmp_path):
    model = load(str(make_llama(tmp_path / "b", seed=0)), LoadOptions(dtype="bfloat16"))
    ids = model.tokenizer("hello world")["input_ids"]
    decode(model, ids, "ar")
    assert model.speed.kernels == "torch"


def test_inductor_compiles_a_block_step_over_packed_layers(tmp_path):
    """The real backend (its C++ build is the slow part): the packed products are opaque kernels to inductor,
    whose own oneDNN lowering would want frozen weights, and the compiled run writes the eager run's tokens."""
    model = load(str(make_adapter(tmp_path / "a", block_size=4)))
    ids = model.tokenizer.encode("hello world")
    sets = ["cache=prefix", "eotp=false", "kernels=onednn"]
    flags = {"max_new_tokens": 16, "seed": 0}
    eager = list(run(model, ids, profiles.load("speedy", sets=sets + ["compile=off"], flags=flags)))[-1]
    done = list(run(model, ids, profiles.load("speedy", sets=sets + ["compile=on"], flags=flags)))[-1]
    assert model.speed.kernels == "onednn" and done.compile_seconds > 0
    assert done.tokens == eager.tokens and done.nfe == eager.nfe


def test_a_cpu_whose_onednn_cannot_prepack_falls_back_or_says_so(tmp_path, monkeypatch):
    from dlm_cli.errors import UsageError

    model = load(str(make_llama(tmp_path / "t", seed=0)))

    def broken(w, rows):
        raise RuntimeError("mkldnn_reorder_linear_weight: unsupported on this CPU")

    monkeypatch.setattr(K, "_reorder", broken)
    assert K.use(model, "auto") is False and model.speed.kernels == "torch"
    assert not K.is_packed(model.net)
    with pytest.raises(UsageError, match="cannot prepack .* use kernels = auto or torch"):
        K.use(model, "onednn")
