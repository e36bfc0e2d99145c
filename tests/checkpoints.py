"""Tiny, randomly initialised checkpoints in the exact on-disk layout of each real family.

Config keys and weight names are the published ones, so the loaders under test are the ones
that serve the real models.
"""

from __future__ import annotations

import json
from pathlib import Path

import torch
from safetensors.torch import save_file

SPECIALS = ["<|endoftext|>", "<|startoftext|>", "<|start_header_id|>", "<|end_header_id|>", "<|eot_id|>",
            "<|mdm_mask|>"]
CHAT_TEMPLATE = (
    "{% for m in messages %}{% if loop.first %}{{ bos_token }}{% endif %}"
    "{{ '<|start_header_id|>' + m['role'] + '<|end_header_id|>\n\n' + m['content'] | trim + '<|eot_id|>' }}"
    "{% endfor %}{% if add_generation_prompt %}{{ '<|start_header_id|>assistant<|end_header_id|>\n\n' }}{% endif %}"
)
CORPUS = [
    "the quick brown fox jumps over the lazy dog",
    "sort these numbers: 3 1 2 and reverse the list a b c",
    "fix the typos in this text please, it has many errors",
    "hello world, how are you today? I am fine, thank you.",
    "0 1 2 3 4 5 6 7 8 9 10 11 12 + - = . , : ; ! ?",
] * 4


def make_tokenizer(out: Path, vocab_size: int = 200, extra_specials: list[str] | None = None) -> Path:
    """A real BPE tokenizer (HF fast format) with LLaDA's special tokens and a chat template."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import PreTrainedTokenizerFast

    tok = Tokenizer(models.BPE(unk_token=None))
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(vocab_size=vocab_size, special_tokens=SPECIALS + (extra_specials or []),
                                  initial_alphabet=pre_tokenizers.ByteLevel.alphabet(), show_progress=False)
    tok.train_from_iterator(CORPUS, trainer)
    fast = PreTrainedTokenizerFast(tokenizer_object=tok, bos_token="<|startoftext|>", eos_token="<|endoftext|>",
                                   pad_token="<|endoftext|>", mask_token="<|mdm_mask|>")
    fast.chat_template = CHAT_TEMPLATE
    out.mkdir(parents=True, exist_ok=True)
    fast.save_pretrained(str(out))
    return out


def llada_config(tok_dir: Path, **over) -> dict:
    vocab = json.loads((tok_dir / "tokenizer.json").read_text())["model"]["vocab"]
    n = max(vocab.values()) + 1
    cfg = {
        "activation_type": "silu", "alibi": False, "alibi_bias_max": 8.0, "architectures": ["LLaDAModelLM"],
        "attention_dropout": 0.0, "attention_layer_norm": False, "attention_layer_norm_with_affine": True,
        "bias_for_layer_norm": False, "block_group_size": 1, "block_type": "llama", "d_model": 32,
        "embedding_dropout": 0.0, "embedding_size": n + 8, "eos_token_id": vocab["<|endoftext|>"],
        "flash_attention": False, "include_bias": False, "include_qkv_bias": False, "init_cutoff_factor": None,
        "init_device": "meta", "init_fn": "mitchell", "init_std": 0.02, "input_emb_norm": False,
        "layer_norm_type": "rms", "layer_norm_with_affine": True, "mask_token_id": vocab["<|mdm_mask|>"],
        "max_sequence_length": 256, "mlp_hidden_size": 64, "mlp_ratio": 4, "model_type": "llada",
        "multi_query_attention": None, "n_heads": 4, "n_kv_heads": 4, "n_layers": 2,
        "pad_token_id": vocab["<|endoftext|>"], "precision": "amp_bf16", "residual_dropout": 0.0,
        "rms_norm_eps": 1e-05, "rope": True, "rope_full_precision": True, "rope_theta": 500000.0,
        "scale_logits": False, "transformers_version": "4.46.3", "use_cache": False, "vocab_size": n,
        "weight_tying": False,
    }
    cfg.update(over)
    return cfg


def make_llada(out: Path, *, seed: int = 0, sharpen: float = 1.0, **over) -> Path:
    """A tiny LLaDA checkpoint: LLaDA config keys, ``model.transformer.blocks.N.*`` weights, a BPE tokenizer.

    ``sharpen`` scales the output layer so that confidences are far from uniform (random weights
    otherwise give every token about the same probability).
    """
    from dlm_cli.models import llada

    make_tokenizer(out)
    cfg = llada_config(out, **over)
    torch.manual_seed(seed)
    net = llada.build_net(cfg)
    with torch.no_grad():
        for name, p in net.named_parameters():
            if p.dim() > 1:
                p.normal_(0.0, 0.3)
        net.lm_head.weight.mul_(sharpen)
    state = {llada.to_llada(k): v.contiguous() for k, v in net.state_dict().items()}
    save_file(state, str(out / "model.safetensors"), metadata={"format": "pt"})
    (out / "config.json").write_text(json.dumps(cfg, indent=2))
    return out


def _vocab(tok_dir: Path) -> dict[str, int]:
    return json.loads((tok_dir / "tokenizer.json").read_text())["model"]["vocab"]


def _randomise(net, seed: int, sharpen: float) -> None:
    torch.manual_seed(seed)
    with torch.no_grad():
        for _, p in net.named_parameters():
            if p.dim() > 1:
                p.normal_(0.0, 0.3)
            elif p.dim() == 1 and p.numel() > 1:
                p.uniform_(0.5, 1.5) if (p >= 0.99).all() and (p <= 1.01).all() else p.normal_(0.0, 0.1)
        net.lm_head.weight.mul_(sharpen)


def _save_stack(out: Path, cfg: dict, net, state: dict | None = None) -> Path:
    """Save ``net`` (or ``state``, its weights under published names) as ``model.safetensors`` + config."""
    state = {k: v.contiguous() for k, v in (net.state_dict() if state is None else state).items()}
    if cfg.get("tie_word_embeddings"):
        state.pop("lm_head.weight")
    save_file(state, str(out / "model.safetensors"), metadata={"format": "pt"})
    (out / "config.json").write_text(json.dumps(cfg, indent=2))
    return out


def qwen_config(tok_dir: Path, **over) -> dict:
    """The Qwen2/Qwen3 config keys the published Dream, SDAR and Fast-dLLM v2 configs carry, tiny sizes."""
    vocab = _vocab(tok_dir)
    cfg = {
        "attention_dropout": 0.0, "bos_token_id": vocab["<|startoftext|>"], "eos_token_id": vocab["<|endoftext|>"],
        "hidden_act": "silu", "hidden_size": 32, "initializer_range": 0.02, "intermediate_size": 64,
        "max_position_embeddings": 512, "max_window_layers": 2, "num_attention_heads": 4, "num_hidden_layers": 2,
        "num_key_value_heads": 2, "pad_token_id": vocab["<|endoftext|>"], "rms_norm_eps": 1e-06,
        "rope_scaling": None, "rope_theta": 1000000.0, "sliding_window": None, "tie_word_embeddings": False,
        "torch_dtype": "bfloat16", "transformers_version": "4.46.2", "use_cache": False,
        "use_sliding_window": False, "vocab_size": max(vocab.values()) + 9,
    }
    cfg.update(over)
    return cfg


def make_dream(out: Path, *, seed: int = 0, sharpen: float = 1.0, **over) -> Path:
    """A tiny Dream checkpoint: Dream's config.json keys (model_type "Dream"), Qwen2 weight names."""
    from dlm_cli.models import dream

    make_tokenizer(out)
    cfg = qwen_config(out, architectures=["DreamModel"], model_type="Dream",
                      auto_map={"AutoConfig": "configuration_dream.DreamConfig",
                                "AutoModel": "modeling_dream.DreamModel"},
                      mask_token_id=_vocab(out)["<|mdm_mask|>"])
    cfg.update(over)
    net = dream.build_net(cfg)
    _randomise(net, seed, sharpen)
    return _save_stack(out, cfg, net)


def make_sdar(out: Path, *, seed: int = 0, sharpen: float = 1.0, block_size: int = 4, **over) -> Path:
    """A tiny SDAR checkpoint: SDAR's config keys (model_type "sdar", block_size, mask_token_id), Qwen3 names."""
    from dlm_cli.models import block_diffusion

    make_tokenizer(out)
    # head_dim 16 with 4 heads of a 32-wide model: as in SDAR-4B/8B, head_dim is not hidden / heads.
    cfg = qwen_config(out, architectures=["SDARForCausalLM"], model_type="sdar", attention_bias=False, head_dim=16,
                      auto_map={"AutoConfig": "configuration_sdar.SDARConfig",
                                "AutoModel": "modeling_sdar.SDARModel",
                                "AutoModelForCausalLM": "modeling_sdar.SDARForCausalLM"},
                      block_size=block_size, mask_token_id=_vocab(out)["<|mdm_mask|>"], fuse_cross_entropy=True,
                      attn_implementation="flex_attention", debug=False, micro_forward=False)
    cfg.update(over)
    net = block_diffusion.build_sdar(cfg)
    _randomise(net, seed, sharpen)
    return _save_stack(out, cfg, net)


def make_fast_dllm_v2(out: Path, *, seed: int = 0, sharpen: float = 1.0, bd_size: int = 8, **over) -> Path:
    """A tiny Fast-dLLM v2 checkpoint: its config keys (model_type "Fast_dLLM_Qwen", bd_size), Qwen2 names.

    The published tokenizer adds ``|<MASK>|``; the config has no mask_token_id, as published.
    """
    from dlm_cli.models import block_diffusion

    make_tokenizer(out, extra_specials=["|<MASK>|"])
    cfg = qwen_config(out, architectures=["Fast_dLLM_QwenForCausalLM"], model_type="Fast_dLLM_Qwen",
                      auto_map={"AutoConfig": "configuration.Fast_dLLM_QwenConfig",
                                "AutoModel": "modeling.Fast_dLLM_QwenModel",
                                "AutoModelForCausalLM": "modeling.Fast_dLLM_QwenForCausalLM"},
                      bd_size=bd_size)
    cfg.update(over)
    cfg["layer_types"] = ["full_attention"] * cfg["num_hidden_layers"]
    net = block_diffusion.build_fast_dllm_v2(cfg)
    _randomise(net, seed, sharpen)
    return _save_stack(out, cfg, net)


def _published_experts(state: dict, prefix: str = "") -> dict:
    """Split transformers' fused experts back into the per-expert weights the MoE checkpoints publish."""
    out = {}
    for k, v in state.items():
        if k.endswith("mlp.experts.gate_up_proj"):
            base = k[: -len("gate_up_proj")]
            gate, up = v.chunk(2, dim=1)
            for e in range(v.shape[0]):
                out[f"{base}{e}.gate_proj.weight"] = gate[e].contiguous()
                out[f"{base}{e}.up_proj.weight"] = up[e].contiguous()
        elif k.endswith("mlp.experts.down_proj"):
            for e in range(v.shape[0]):
                out[f"{k[: -len('down_proj')]}{e}.down_proj.weight"] = v[e].contiguous()
        else:
            out[k] = v.contiguous()
    return out


def _randomise_moe(net, seed: int, sharpen: float) -> None:
    """Random weights, experts included, and a random router bias so that it changes which experts win."""
    _randomise(net, seed, sharpen)
    g = torch.Generator().manual_seed(seed + 7)
    with torch.no_grad():
        for name, b in net.named_buffers():
            if name.endswith("e_score_correction_bias"):
                b.copy_(torch.randn(b.shape, generator=g) * 0.1)


# LLaDA2's published names for ours (the reverse of dlm_cli.models.moe.LLADA2_KEYS).
LLADA2_NAMES = [("model.embed_tokens.", "model.word_embeddings."), (".self_attn.o_proj.", ".attention.dense."),
                (".self_attn.query_key_value.", ".attention.query_key_value."),
                (".self_attn.q_norm.", ".attention.query_layernorm."),
                (".self_attn.k_norm.", ".attention.key_layernorm."),
                (".mlp.gate.e_score_correction_bias", ".mlp.gate.expert_bias")]


def llada2_config(tok_dir: Path, **over) -> dict:
    """LLaDA2.0/2.1's config.json keys (model_type "llada2_moe"), tiny sizes: GQA, QK-norm, partial rotary,
    one dense layer first, then shared + routed experts with group-limited sigmoid routing."""
    vocab = _vocab(tok_dir)
    cfg = {
        "architectures": ["LLaDA2MoeModelLM"],
        "auto_map": {"AutoConfig": "configuration_llada2_moe.LLaDA2MoeConfig",
                     "AutoModel": "modeling_llada2_moe.LLaDA2MoeModel",
                     "AutoModelForCausalLM": "modeling_llada2_moe.LLaDA2MoeModelLM"},
        "model_type": "llada2_moe", "attention_dropout": 0.0, "embedding_dropout": 0.0, "output_dropout": 0.0,
        "first_k_dense_replace": 1, "head_dim": 16, "hidden_act": "silu", "hidden_size": 32,
        "initializer_range": 0.006, "intermediate_size": 64, "max_position_embeddings": 512,
        "max_window_layers": 3, "moe_intermediate_size": 16, "moe_router_enable_expert_bias": True, "n_group": 4,
        "norm_head": False, "norm_softmax": False, "norm_topk_prob": True, "num_attention_heads": 4,
        "num_experts": 8, "num_experts_per_tok": 2, "num_hidden_layers": 3, "num_key_value_heads": 2,
        "num_shared_experts": 1, "output_router_logits": False, "pad_token_id": vocab["<|endoftext|>"],
        "eos_token_id": vocab["<|endoftext|>"], "partial_rotary_factor": 0.5, "rms_norm_eps": 1e-06,
        "rope_scaling": None, "rope_theta": 600000, "rotary_dim": 8, "routed_scaling_factor": 2.5,
        "router_dtype": "fp32", "score_function": "sigmoid", "sliding_window": 4096, "tie_word_embeddings": False,
        "topk_group": 2, "torch_dtype": "bfloat16", "transformers_version": "4.52.3", "use_bias": False,
        "use_cache": False, "use_qk_norm": True, "use_qkv_bias": False, "use_rmsnorm": True,
        "use_sliding_window": False, "vocab_size": max(vocab.values()) + 9,
    }
    cfg.update(over)
    return cfg


def make_llada2(out: Path, *, seed: int = 0, sharpen: float = 1.0, **over) -> Path:
    """A tiny LLaDA2.x checkpoint: LLaDA2's config keys, its weight names (``model.word_embeddings``,
    ``attention.query_key_value``, per-expert ``mlp.experts.E.*``, ``mlp.gate.expert_bias``) and a
    tokenizer with its ``<|mask|>`` token (config.json names no mask id, as published)."""
    from dlm_cli.models import moe

    make_tokenizer(out, extra_specials=["<|mask|>"])
    cfg = llada2_config(out, **over)
    net = moe.build_llada2(cfg)
    _randomise_moe(net, seed, sharpen)
    state = {}
    for k, v in _published_experts(net.state_dict()).items():
        for ours, theirs in LLADA2_NAMES:
            k = k.replace(ours, theirs)
        state[k] = v
    return _save_stack(out, cfg, net, state)


def llada_moe_config(tok_dir: Path, **over) -> dict:
    """LLaDA-MoE-7B-A1B's config.json keys (published with model_type "llada"), tiny sizes."""
    vocab = _vocab(tok_dir)
    cfg = {
        "architectures": ["LLaDAMoEModelLM"],
        "auto_map": {"AutoConfig": "configuration_lladamoe.LLaDAConfig",
                     "AutoModel": "modeling_lladamoe.LLaDAMoEModelLM",
                     "AutoModelForCausalLM": "modeling_lladamoe.LLaDAMoEModelLM"},
        "model_type": "llada", "attention_bias": False, "attention_dropout": 0.0, "clip_qkv": None,
        "dense_intermediate_size": 64, "eos_token_id": vocab["<|endoftext|>"], "expert_intermediate_size": 16,
        "hidden_act": "silu", "hidden_size": 32, "initializer_range": 0.02, "max_position_embeddings": 512,
        "moe_layer_freq": [1, 1], "moe_router_enable_expert_bias": False, "moe_router_score_function": "softmax",
        "norm_topk_prob": False, "num_attention_heads": 4, "num_experts": 8, "num_experts_per_tok": 2,
        "num_hidden_layers": 2, "num_key_value_heads": 4, "output_router_logits": False,
        "pad_token_id": vocab["<|endoftext|>"], "partial_rotary_factor": 1, "qk_layernorm": True,
        "rms_norm_eps": 1e-05, "rope_scaling": None, "rope_theta": 50000, "routed_scaling_factor": 1,
        "router_aux_loss_coef": 0.01, "router_num_group": None, "router_topk_group": None,
        "shared_expert_intermediate_size": None, "tie_word_embeddings": False, "torch_dtype": "bfloat16",
        "transformers_version": "4.48.3", "use_cache": False, "vocab_size": max(vocab.values()) + 9,
    }
    cfg.update(over)
    return cfg


def make_llada_moe(out: Path, *, seed: int = 0, sharpen: float = 1.0, **over) -> Path:
    """A tiny LLaDA-MoE checkpoint: its config keys, Qwen3-MoE-style names with per-expert weights."""
    from dlm_cli.models import moe

    make_tokenizer(out, extra_specials=["<|mask|>"])
    cfg = llada_moe_config(out, **over)
    net = moe.build_llada_moe(cfg)
    _randomise(net, seed, sharpen)
    state = _published_experts(net.state_dict())
    save_file(state, str(out / "model.safetensors"), metadata={"format": "pt"})
    (out / "config.json").write_text(json.dumps(cfg, indent=2))
    return out


def diffusion_gemma_config(vocab_size: int, canvas_length: int = 16, **text_over) -> dict:
    text = dict(vocab_size=vocab_size, hidden_size=32, intermediate_size=64, num_hidden_layers=2,
                num_attention_heads=2, num_key_value_heads=1, head_dim=16, global_head_dim=16, num_experts=4,
                top_k_experts=2, moe_intermediate_size=16, sliding_window=16, max_position_embeddings=1024,
                layer_types=["sliding_attention", "full_attention"], use_bidirectional_attention="vision",
                eos_token_id=1, pad_token_id=0, bos_token_id=2)
    text.update(text_over)
    vision = dict(model_type="gemma4_vision", hidden_size=16, intermediate_size=32, num_hidden_layers=1,
                  num_attention_heads=2, num_key_value_heads=2, head_dim=8)
    return dict(text_config=text, vision_config=vision, canvas_length=canvas_length,
                boi_token_id=vocab_size - 3, eoi_token_id=vocab_size - 2, image_token_id=vocab_size - 1)


def make_diffusion_gemma(out: Path, *, seed: int = 0, canvas_length: int = 16, sharpen: float = 1.0) -> Path:
    """A tiny DiffusionGemma checkpoint saved by transformers itself (its real on-disk layout)."""
    from transformers import DiffusionGemmaConfig, DiffusionGemmaForBlockDiffusion

    make_tokenizer(out)
    n = max(_vocab(out).values()) + 4
    torch.manual_seed(seed)
    net = DiffusionGemmaForBlockDiffusion(DiffusionGemmaConfig(**diffusion_gemma_config(n, canvas_length)))
    with torch.no_grad():
        net.lm_head.weight.mul_(sharpen)
    from transformers.utils import logging as hf_logging

    hf_logging.disable_progress_bar()
    net.save_pretrained(str(out))
    return out


REMOTE_CODE = '''
import torch
from torch import nn
from transformers import PretrainedConfig, PreTrainedModel
from transformers.modeling_outputs import MaskedLMOutput


class TinyConfig(PretrainedConfig):
    model_type = "tiny_remote_dllm"


class TinyModel(PreTrainedModel):
    config_class = TinyConfig

    def __init__(self, config):
        super().__init__(config)
        self.embed = nn.Embedding(config.vocab_size, config.hidden_size)
        self.head = nn.Linear(config.hidden_size, config.vocab_size, bias=False)
        self.post_init()

    def get_output_embeddings(self):
        return self.head

    def forward(self, input_ids=None, **kwargs):
        h = self.embed(input_ids)
        return MaskedLMOutput(logits=self.head(h + h.mean(dim=1, keepdim=True)))
'''


def make_remote(out: Path, *, seed: int = 0) -> Path:
    """A checkpoint of a family dlm does not know, whose repository ships its model code (auto_map)."""
    make_tokenizer(out)
    vocab = _vocab(out)
    (out / "modeling_tiny.py").write_text(REMOTE_CODE)
    cfg = {"architectures": ["TinyModel"], "model_type": "tiny_remote_dllm", "hidden_size": 16,
           "vocab_size": max(vocab.values()) + 1, "mask_token_id": vocab["<|mdm_mask|>"],
           "eos_token_id": vocab["<|endoftext|>"],
           "auto_map": {"AutoConfig": "modeling_tiny.TinyConfig", "AutoModel": "modeling_tiny.TinyModel"}}
    (out / "config.json").write_text(json.dumps(cfg, indent=2))
    torch.manual_seed(seed)
    state = {"embed.weight": torch.randn(cfg["vocab_size"], 16), "head.weight": torch.randn(cfg["vocab_size"], 16)}
    save_file(state, str(out / "model.safetensors"), metadata={"format": "pt"})
    return out


def make_llama(out: Path, *, seed: int = 0, sharpen: float = 4.0, noise: float = 0.0, noise_seed: int = 1,
               vocab_size: int = 300, hidden: int = 32, layers: int = 2,
               extra_specials: list[str] | None = None, **over) -> Path:
    """A tiny random Llama causal LM (transformers' own layout), for the AR strategies.

    ``noise`` perturbs every weight after the seeded init (with ``noise_seed``): two checkpoints
    with the same ``seed`` and a small ``noise`` agree on most argmaxes, like a draft and its target.
    """
    from transformers import LlamaConfig, LlamaForCausalLM

    make_tokenizer(out, vocab_size=vocab_size, extra_specials=extra_specials)
    vocab = _vocab(out)
    cfg = LlamaConfig(vocab_size=max(vocab.values()) + 1, hidden_size=hidden, intermediate_size=2 * hidden,
                      num_hidden_layers=layers, num_attention_heads=4, num_key_value_heads=2,
                      max_position_embeddings=512, bos_token_id=vocab["<|startoftext|>"],
                      eos_token_id=vocab["<|endoftext|>"], pad_token_id=vocab["<|endoftext|>"],
                      tie_word_embeddings=False, **over)
    net = LlamaForCausalLM(cfg)
    _randomise(net, seed, sharpen)
    if noise:
        g = torch.Generator().manual_seed(noise_seed)
        with torch.no_grad():
            for p in net.parameters():
                p.add_(torch.randn(p.shape, generator=g) * noise * p.std().clamp_min(1e-3))
    from transformers.utils import logging as hf_logging

    hf_logging.disable_progress_bar()
    net.save_pretrained(str(out))
    return out


def make_adapter(out: Path, *, seed: int = 0, sharpen: float = 4.0, block_size: int = 8, rank: int = 4,
                 lora_scale: float = 0.05, alpha: float = 8.0) -> Path:
    """A dlm block-diffusion adapter (LoRA delta + mask embedding) over a tiny random Llama base.

    The base lives in ``out.parent / (out.name + "-base")`` and is named by its path, in the layout
    ``dlm_cli.demo.adapt.export`` writes for ``smollm2-dlm``.
    """
    from transformers import LlamaConfig

    base = make_llama(out.parent / f"{out.name}-base", seed=seed, sharpen=sharpen)
    cfg = LlamaConfig.from_pretrained(str(base))
    g = torch.Generator().manual_seed(seed + 100)
    dims = {"q_proj": (cfg.hidden_size, cfg.num_attention_heads * cfg.head_dim),
            "k_proj": (cfg.hidden_size, cfg.num_key_value_heads * cfg.head_dim),
            "v_proj": (cfg.hidden_size, cfg.num_key_value_heads * cfg.head_dim),
            "o_proj": (cfg.num_attention_heads * cfg.head_dim, cfg.hidden_size),
            "gate_proj": (cfg.hidden_size, cfg.intermediate_size), "up_proj": (cfg.hidden_size, cfg.intermediate_size),
            "down_proj": (cfg.intermediate_size, cfg.hidden_size)}
    lora = {}
    for i in range(cfg.num_hidden_layers):
        for mod, (fan_in, fan_out) in dims.items():
            part = "self_attn" if mod.endswith(("q_proj", "k_proj", "v_proj", "o_proj")) else "mlp"
            key = f"model.layers.{i}.{part}.{mod}"
            lora[f"{key}.lora_A.weight"] = torch.randn(rank, fan_in, generator=g) * lora_scale
            lora[f"{key}.lora_B.weight"] = torch.randn(fan_out, rank, generator=g) * lora_scale
    out.mkdir(parents=True, exist_ok=True)
    save_file(lora, str(out / "adapter_model.safetensors"), metadata={"format": "pt"})
    save_file({"mask_embedding": torch.randn(cfg.hidden_size, generator=g) * 0.3},
              str(out / "mask_embedding.safetensors"), metadata={"format": "pt"})
    (out / "adapter_config.json").write_text(json.dumps({"peft_type": "LORA", "r": rank, "lora_alpha": alpha,
                                                         "target_modules": sorted(dims)}))
    (out / "config.json").write_text(json.dumps({"model_type": "dlm-block-diffusion", "base_model": str(base),
                                                 "layers": "llama", "block_size": block_size, "shift": True}))
    return out


def write_raw_safetensors(path: Path, header: object, data: bytes = b"") -> Path:
    """A safetensors file with an arbitrary (possibly hostile) JSON header and data section."""
    import struct

    raw = json.dumps(header).encode()
    path.write_bytes(struct.pack("<Q", len(raw)) + raw + data)
    return path


def make_hub_symlinked(home: Path, repo: str, src: Path, rev: str = "0" * 40) -> Path:
    """huggingface-hub's real cache layout: every snapshot file a relative symlink into ``blobs/``."""
    import hashlib
    import os

    root = home / "hub" / f"models--{repo.replace('/', '--')}"
    snap = root / "snapshots" / rev
    (root / "blobs").mkdir(parents=True, exist_ok=True)
    snap.mkdir(parents=True, exist_ok=True)
    for f in sorted(src.iterdir()):
        if f.is_file():
            data = f.read_bytes()
            blob = root / "blobs" / hashlib.sha256(data).hexdigest()
            blob.write_bytes(data)
            os.symlink(os.path.relpath(blob, snap), snap / f.name)
    (root / "refs").mkdir(exist_ok=True)
    (root / "refs" / "main").write_text(rev)
    return snap


def chi_square(got: "dict[int, int]", marginal: torch.Tensor, n: int) -> "tuple[float, int, float]":
    """Pearson's chi-square of ``n`` sampled tokens (counts ``got``) against the exact ``marginal``: tokens expected
    at least 5 times are cells, the rest one pooled cell (when it too is expected 5 times); ``(chi, dof, p)``."""
    from scipy.stats import chi2

    keep = [tok for tok in range(marginal.shape[0]) if marginal[tok] * n >= 5]
    rest = 1.0 - float(marginal[keep].sum())
    chi = sum((got[tok] - n * float(marginal[tok])) ** 2 / (n * float(marginal[tok])) for tok in keep)
    if rest * n >= 5:
        chi += (n - sum(got[tok] for tok in keep) - n * rest) ** 2 / (n * rest)
    dof = len(keep) - (0 if rest * n >= 5 else 1)
    return chi, dof, float(chi2.sf(chi, dof))
