"""What the Qwen-shaped dLLM families share: config translation.

Dream, DiffuCoder, Fast-dLLM v2 (Qwen2 / Qwen2.5 layers, q/k/v biases) and SDAR (Qwen3 layers,
q/k norms) publish their weights under the transformers Qwen names (``model.embed_tokens``,
``model.layers.N.*``, ``model.norm``, ``lm_head``), so the network is a
:class:`~dlm_cli.models.stack.DenoiserStack` of transformers' own decoder layers, loaded with no
weight-name mapping; only the config needs translating.
"""

from __future__ import annotations

from typing import Any

from ..errors import DlmError

# The config.json keys the transformers Qwen layers read; everything else (auto_map, block sizes,
# mask ids, training flags) belongs to the family and is not passed on.
_KEYS = ("vocab_size", "hidden_size", "intermediate_size", "num_hidden_layers", "num_attention_heads",
         "num_key_value_heads", "head_dim", "hidden_act", "max_position_embeddings", "rms_norm_eps",
         "rope_theta", "rope_scaling", "rope_parameters", "attention_bias", "attention_dropout",
         "tie_word_embeddings")
_REQUIRED = ("vocab_size", "hidden_size", "intermediate_size", "num_hidden_layers", "num_attention_heads")


def hf_config(cls: type, cfg: dict[str, Any], family: str, extra: tuple[str, ...] = ()) -> Any:
    """A transformers config of class ``cls`` from a family's config.json (unrelated keys dropped).

    ``extra`` names further keys that ``cls`` reads (Llama's ``mlp_bias``)."""
    missing = [k for k in _REQUIRED if k not in cfg]
    if missing:
        raise DlmError(f"{family} config.json lacks {', '.join(missing)}; is the checkpoint complete?")
    if cfg.get("use_sliding_window"):
        raise DlmError(f"this {family} checkpoint uses sliding-window attention, which dlm does not implement "
                       "natively; rerun with --trust-remote-code to use the repository's own code")
    from huggingface_hub.errors import StrictDataclassError

    kwargs = {k: cfg[k] for k in _KEYS + extra if cfg.get(k) is not None}
    kwargs["use_sliding_window"] = False
    try:
        return cls(**kwargs)
    except (ValueError, TypeError, StrictDataclassError) as exc:
        why = " ".join(str(exc).split())
        raise DlmError(f"{family} config.json is not valid ({why}); re-download the model") from None


def max_length(cfg: dict[str, Any], default: int = 32768) -> int:
    return int(cfg.get("max_position_embeddings") or default)
