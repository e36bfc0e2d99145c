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


def make_tokenizer(out: Path, vocab_size: int = 200) -> Path:
    """A real BPE tokenizer (HF fast format) with LLaDA's special tokens and a chat template."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import PreTrainedTokenizerFast

    tok = Tokenizer(models.BPE(unk_token=None))
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(vocab_size=vocab_size, special_tokens=SPECIALS,
                                  initial_alphabet=pre_tokenizers.ByteLevel.alphabet())
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
