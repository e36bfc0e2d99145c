"""The MoE dLLM families (LLaDA2.x, LLaDA-MoE) from tiny checkpoints in their published layouts.

Detection, loading by the published names (per-expert weights fused at load), the routed layer
against a hand-written loop over the published tensors, attention patterns, LLaDA2's exact
block cache, LLaDA2.1's S and Q profiles, the CLI, and the one-line refusals. The comparison with
the families' own modeling code needs it downloaded: ``benchmarks/equivalence.py``.
"""

from __future__ import annotations

import json
import shutil

import pytest
import torch
from safetensors.torch import load_file, save_file
from typer.testing import CliRunner

from checkpoints import make_llada2, make_llada_moe
from dlm_cli import profiles
from dlm_cli.cli import app
from dlm_cli.decode import run
from dlm_cli.decode.events import Done, Step
from dlm_cli.errors import DlmError
from dlm_cli.models.loading import load


@pytest.fixture(scope="module")
def ckpt(tmp_path_factory):
    root = tmp_path_factory.mktemp("moe")
    return {"llada2": make_llada2(root / "llada2", sharpen=6.0), "llada-moe": make_llada_moe(root / "llada-moe",
                                                                                               sharpen=6.0)}


@pytest.fixture(scope="module")
def models(ckpt):
    return {name: load(str(path)) for name, path in ckpt.items()}


def decode(model, ids, profile, max_new_tokens, **sets):
    s = profiles.load(profile, sets=[f"{k}={v}" for k, v in sets.items()],
                      flags={"seed": 0, "max_new_tokens": max_new_tokens})
    return list(run(model, ids, s))


def copy(src, dst):
    shutil.copytree(src, dst)
    return dst


def test_each_family_is_detected_with_its_conventions(models, ckpt):
    l2, lm = models["llada2"], models["llada-moe"]
    assert (l2.info.family, l2.shift, l2.block_size) == ("llada2", False, 32)
    assert (lm.info.family, lm.shift, lm.block_size) == ("llada-moe", False, None)
    # config.json names no mask id (as published): the tokenizer's <|mask|> is it
    for m in (l2, lm):
        assert m.mask_id == m.tokenizer.get_vocab()["<|mask|>"]
    # LLaDA-MoE is published with model_type "llada"; dllm's instructions rename it "lladamoe"
    assert json.loads((ckpt["llada-moe"] / "config.json").read_text())["model_type"] == "llada"


def test_lladamoe_model_type_and_llada21_configs_load(ckpt, tmp_path):
    d = copy(ckpt["llada-moe"], tmp_path / "m")
    cfg = json.loads((d / "config.json").read_text())
    (d / "config.json").write_text(json.dumps({**cfg, "model_type": "lladamoe"}))
    assert load(str(d)).info.family == "llada-moe"


def test_published_names_load_and_the_experts_are_fused_in_order(models, ckpt):
    """Expert e's gate/up/down land in slot e of the fused tensors, the expert bias in the router."""
    for name, layer in (("llada2", 1), ("llada-moe", 0)):
        state = load_file(str(ckpt[name] / "model.safetensors"))
        mlp = models[name].net.model.layers[layer].mlp
        p = f"model.layers.{layer}.mlp.experts"
        for e in (0, 5):
            gate, up = mlp.experts.gate_up_proj[e].chunk(2, dim=0)
            assert torch.equal(gate, state[f"{p}.{e}.gate_proj.weight"])
            assert torch.equal(up, state[f"{p}.{e}.up_proj.weight"])
            assert torch.equal(mlp.experts.down_proj[e], state[f"{p}.{e}.down_proj.weight"])
    bias = models["llada2"].net.model.layers[1].mlp.gate.e_score_correction_bias
    assert torch.equal(bias, load_file(str(ckpt["llada2"] / "model.safetensors"))["model.layers.1.mlp.gate.expert_bias"])
    assert bias.abs().sum() > 0


def _mlp(w, prefix, x):
    return torch.nn.functional.linear(
        torch.nn.functional.silu(x @ w[f"{prefix}.gate_proj.weight"].T) * (x @ w[f"{prefix}.up_proj.weight"].T),
        w[f"{prefix}.down_proj.weight"])


def _llada2_moe(w, cfg, p, x):
    """LLaDA2's routed layer, token by token, from its published tensors (sigmoid scores + expert bias,
    the topk_group best groups by their two best scores, renormalised, scaled) plus the shared expert."""
    scores = torch.sigmoid(x @ w[f"{p}.gate.weight"].T)
    choice = scores + w[f"{p}.gate.expert_bias"]
    E, G = cfg["num_experts"], cfg["n_group"]
    out = torch.zeros_like(x)
    for t in range(x.shape[0]):
        groups = choice[t].view(G, E // G).topk(2).values.sum(-1).topk(cfg["topk_group"]).indices
        allowed = torch.full((E,), float("-inf"))
        for g in groups.tolist():
            allowed[g * (E // G) : (g + 1) * (E // G)] = 0.0
        top = (choice[t] + allowed).topk(cfg["num_experts_per_tok"]).indices
        weights = scores[t, top] / scores[t, top].sum() * cfg["routed_scaling_factor"]
        for e, wt in zip(top.tolist(), weights):
            out[t] += wt * _mlp(w, f"{p}.experts.{e}", x[t])
    return out + _mlp(w, f"{p}.shared_experts", x)


def _llada_moe(w, cfg, p, x):
    """LLaDA-MoE's routed layer: softmax over every expert, the top ones kept without renormalising."""
    probs = torch.softmax(x @ w[f"{p}.gate.weight"].T, dim=-1)
    out = torch.zeros_like(x)
    for t in range(x.shape[0]):
        top = probs[t].topk(cfg["num_experts_per_tok"])
        for e, wt in zip(top.indices.tolist(), top.values):
            out[t] += wt * _mlp(w, f"{p}.experts.{e}", x[t])
    return out


@pytest.mark.parametrize("family,layer,reference", [("llada2", 1, _llada2_moe), ("llada-moe", 1, _llada_moe)])
def test_the_routed_layer_matches_a_loop_over_the_published_experts(models, ckpt, family, layer, reference):
    w = load_file(str(ckpt[family] / "model.safetensors"))
    cfg = json.loads((ckpt[family] / "config.json").read_text())
    x = torch.randn(12, cfg["hidden_size"], generator=torch.Generator().manual_seed(3))
    with torch.no_grad():
        got = models[family].net.model.layers[layer].mlp(x[None])[0]
        want = reference(w, cfg, f"model.layers.{layer}.mlp", x)
    assert got.abs().max() > 1e-3 and torch.allclose(got, want, atol=1e-5), (got - want).abs().max()


def test_llada2_attends_block_causally_and_llada_moe_everywhere(models):
    l2 = models["llada2"]
    B = l2.block_size
    x = torch.randint(20, 200, (1, 3 * B), generator=torch.Generator().manual_seed(0))
    later = x.clone()
    later[0, B + 3] = 7  # a change in block 1 ...
    a, b = l2.logits(x)[0], l2.logits(later)[0]
    assert torch.allclose(a[:B], b[:B], atol=1e-6)  # ... leaves block 0 alone
    assert not torch.allclose(a[B], b[B], atol=1e-4)  # ... reaches back to the start of its own block
    assert not torch.allclose(a[2 * B :], b[2 * B :], atol=1e-4)
    lm = models["llada-moe"]
    y = torch.randint(20, 200, (1, 12), generator=torch.Generator().manual_seed(1))
    first = lm.logits(y, rows=(1, 2))
    y[0, 11] = 7
    assert not torch.allclose(first, lm.logits(y, rows=(1, 2)), atol=1e-4)


def test_llada2_block_cache_is_exact(models):
    """Same logits at every forward and the same tokens with the prefix and dual caches as without."""
    model = models["llada2"]
    ids = model.tokenizer.encode("sort these numbers: 3 1 2")
    assert len(ids) % model.block_size != 0
    runs = {}
    for cache in ("none", "prefix", "dual"):
        seen, inner = [], model.logits

        def rec(*args, **kwargs):
            out = inner(*args, **kwargs)
            seen.append(out.clone())
            return out

        model.logits = rec
        try:
            done = decode(model, ids, "speedy", 40, cache=cache, block_length=12, eotp="false")[-1]
        finally:
            del model.logits
        runs[cache] = (seen, done.tokens)
    ref, tokens = runs["none"]
    for cache in ("prefix", "dual"):
        seen, toks = runs[cache]
        assert toks == tokens and len(seen) == len(ref)
        for a, b in zip(ref, seen):
            assert torch.allclose(a, b, rtol=1e-5, atol=1e-4), (a - b).abs().max()


@pytest.mark.parametrize("family", ["llada2", "llada-moe"])
@pytest.mark.parametrize("profile", ["baseline", "speedy"])
def test_both_families_decode_every_slot(models, family, profile):
    model = models[family]
    ids = model.tokenizer.encode("hello world")
    events = decode(model, ids, profile, 20, block_length=8, eotp="false")
    done, steps = events[-1], [e for e in events if isinstance(e, Step)]
    assert isinstance(done, Done) and sorted(p for e in steps for p in e.positions) == list(range(20))
    assert model.mask_id not in done.tokens and done.nfe == len(steps)


@pytest.mark.parametrize("profile", ["llada21-s", "llada21-q"])
def test_llada21_s_and_q_modes_run_on_llada2(models, profile):
    """The S and Q modes on their own family: every slot decoded, edits only of committed answer slots."""
    model = models["llada2"]
    ids = model.tokenizer.encode("fix the typos in this text please")
    events = decode(model, ids, profile, 48)
    done, steps = events[-1], [e for e in events if isinstance(e, Step)]
    assert isinstance(done, Done) and model.mask_id not in done.tokens and len(done.tokens) == 48
    committed = set()
    for e in steps:
        assert set(e.edited) <= committed  # a rewrite only ever touches an already committed slot
        committed |= set(e.positions) | set(e.filled)
    assert committed == set(range(48))


def test_s_mode_commits_more_per_step_and_both_modes_edit(tmp_path):
    """Same first forward, so S's threshold 0.5 commits a superset of Q's 0.7; later both rewrite tokens."""
    model = load(str(make_llada2(tmp_path / "soft", sharpen=2.0)))  # confidences spread around 0.5-0.7
    ids = model.tokenizer.encode("fix the typos")
    runs = {p: [e for e in decode(model, ids, p, 64) if isinstance(e, Step)] for p in ("llada21-s", "llada21-q")}
    s, q = runs["llada21-s"], runs["llada21-q"]
    assert set(q[0].positions) < set(s[0].positions)
    assert len(s) < len(q)
    assert all(any(e.edited for e in steps) for steps in (s, q))


@pytest.mark.parametrize("family", ["llada2", "llada-moe"])
def test_cli_generates_with_each_family(ckpt, family):
    r = CliRunner().invoke(app, ["generate", "-m", str(ckpt[family]), "sort: 3 1 2", "-n", "12", "--seed", "0",
                                 "--json"])
    assert r.exit_code == 0, r.stderr
    out = json.loads(r.stdout)
    assert out["family"] == family and out["nfe"] >= 1


def test_models_lists_the_moe_families():
    out = json.loads(CliRunner().invoke(app, ["models", "--json"]).stdout)
    fams = [f["family"] for f in out["families"]]
    assert {"llada2", "llada-moe"} <= set(fams)
    assert fams.index("llada-moe") < fams.index("llada")  # LLaDA-MoE ships model_type "llada"


def _one_line(result, *fragments):
    assert result.exit_code == 1, (result.exit_code, result.stdout, result.stderr)
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("dlm: ") and "Traceback" not in result.stderr, result.stderr
    for f in fragments:
        assert f in lines[0], lines[0]


@pytest.mark.parametrize("family,change,fragment", [
    ("llada2", {"norm_head": True}, "norm_head=true"),
    ("llada2", {"score_function": "softmax"}, "score_function='softmax'"),
    ("llada-moe", {"moe_router_enable_expert_bias": True}, "moe_router_enable_expert_bias=true"),
    ("llada-moe", {"shared_expert_intermediate_size": 16}, "shared expert"),
    ("llada-moe", {"moe_layer_freq": [1]}, "moe_layer_freq must list"),
    ("llada2", {"n_group": "8"}, "n_group = '8' must be an integer"),
    ("llada2", {"num_experts_per_tok": 7}, "routes to 7 of 8 experts in 2 of 4 groups, which is impossible"),
    ("llada2", {"rope_theta": "high"}, "LLaDA2 config.json is not valid"),
])
def test_options_dlm_does_not_implement_are_refused_in_one_line(ckpt, tmp_path, family, change, fragment):
    d = copy(ckpt[family], tmp_path / "m")
    cfg = json.loads((d / "config.json").read_text())
    (d / "config.json").write_text(json.dumps({**cfg, **change}))
    result = CliRunner().invoke(app, ["generate", "-m", str(d), "hi", "-n", "4"])
    _one_line(result, fragment)
    assert result.exit_code == 1 and result.stdout == ""  # refused before anything is generated
    assert result.stderr.startswith("dlm: ") and fragment in result.stderr


def test_a_missing_expert_is_refused(ckpt, tmp_path):
    d = copy(ckpt["llada2"], tmp_path / "m")
    state = load_file(str(d / "model.safetensors"))
    state.pop("model.layers.2.mlp.experts.3.up_proj.weight")
    save_file(state, str(d / "model.safetensors"), metadata={"format": "pt"})
    with pytest.raises(DlmError, match="lacks weights model.layers.2.mlp.experts.3.up_proj.weight; the checkpoint is incomplete"):
        load(str(d))


def test_a_multi_device_map_keeps_layers_whole_and_the_fusion_exact(models, ckpt, tmp_path):
    """--device-map auto for the 100B flash model, in miniature: accelerate's map over two (fake) GPUs
    places whole decoder layers (experts never split from their router), and a load sharded over
    devices with a layer offloaded to disk fuses the experts the same way (same logits)."""
    from accelerate import infer_auto_device_map, init_empty_weights

    from dlm_cli.models import moe

    cfg = json.loads((ckpt["llada2"] / "config.json").read_text())
    spec = moe.llada2_spec(cfg)
    with init_empty_weights():
        net = moe.LLaDA2Denoiser(spec.config)
    layer = sum(p.numel() * 4 for p in net.model.layers[1].parameters())
    device_map = infer_auto_device_map(net, max_memory={0: int(1.6 * layer), 1: int(1.6 * layer), "cpu": 10**9},
                                       no_split_module_classes=net._no_split_modules)
    assert {0, 1} <= set(device_map.values())
    assert all(not k.startswith("model.layers.") or k.count(".") == 2 for k in device_map), device_map
    placed = {"model.embed_tokens": "cpu", "model.layers.0": "cpu", "model.layers.1": "disk", "model.layers.2": "cpu",
              "model.norm": "cpu", "model.rotary_emb": "cpu", "lm_head": "cpu"}
    from dlm_cli.models.files import quiet_transformers

    with quiet_transformers():
        sharded = moe.LLaDA2Denoiser.from_pretrained(str(ckpt["llada2"]), config=spec.config,
                                                     key_mapping=spec.key_mapping, device_map=placed,
                                                     offload_folder=str(tmp_path / "offload"), dtype=torch.float32)
    x = torch.randint(20, 200, (1, 40), generator=torch.Generator().manual_seed(5))
    with torch.no_grad():
        assert torch.equal(sharded(x), models["llada2"].net(x))
