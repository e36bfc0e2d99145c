"""Learned drafters of an AR target (``dlm drafter train``): the directory format, its loader, the networks.

A drafter directory holds ``config.json`` and ``model.safetensors``::

    {"model_type": "dlm-drafter", "method": "dflash",
     "target": {"name": "smollm2", "vocab_size": 49152, "hidden_size": 576, "num_hidden_layers": 30,
                "embedding_norm": 23.41},
     "drafter": {...the method's hyper-parameters...}, "training": {...}}

The weights are the drafter's own only: it borrows the target's embedding and LM head (frozen), so
it is loaded on its own (``--draft DIR``, family ``drafter``) and bound to the target by the
strategy, which first checks the target's fingerprint (:func:`check_target`): a drafter trained on
another model is refused in one line. Never pickle: safetensors only.

**DFlash** (Chen et al. 2026, z-lab/dflash ``DFlashDraftModel``): ``layers`` Llama-style decoder
layers at the target's width. Context feature per committed position: the target's hidden states
after ``target_layers`` (concatenated) -> ``fc`` -> RMSNorm. KV injection: in every layer the keys
and values are ``[proj(context) ; proj(block)]``, the queries come from the block only, and the
block attends to all of it (non-causal). The block is ``[last committed token, MASK x (B - 1)]`` at
its absolute positions; the output at block position ``k`` predicts the token at ``k`` (no shift),
through the drafter's final norm and the target's LM head.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from torch import nn

from .detect import is_drafter_config, DRAFTER_TYPE  # noqa: F401  (re-exported)
from ..errors import DlmError
from .info import ModelInfo, SpeedState

MODEL_TYPE = DRAFTER_TYPE
WEIGHTS = "model.safetensors"
FAMILY = "drafter"
# Each method's network class, imported when a drafter of it is built or loaded (``module:attr``).
NET_IMPLS = {
    "dflash": "dlm_cli.models.drafter:DFlashNet",
    "clover": "dlm_cli.models.clover:CloverNet",
    "hidden-transfer": "dlm_cli.models.hidden_transfer:TransferNet",
    "ppd": "dlm_cli.models.ppd:PromptNet",
}
METHODS = tuple(NET_IMPLS)


def target_config(target: Any) -> Any:
    cfg = target.net.config
    return cfg.get_text_config() if hasattr(cfg, "get_text_config") else cfg


@torch.no_grad()
def fingerprint(target: Any, name: str | None = None) -> dict[str, Any]:
    """What identifies the target a drafter was trained on: its shape and the norm of its first embedding rows."""
    c = target_config(target)
    emb = target.net.get_input_embeddings().weight
    return {"name": name or target.info.name, "vocab_size": int(emb.shape[0]), "hidden_size": int(c.hidden_size),
            "num_hidden_layers": int(c.num_hidden_layers),
            "embedding_norm": round(float(emb[:256].float().norm()), 4)}


def check_target(drafter: Any, target: Any) -> None:
    """Refuse ``drafter`` for ``target`` unless the target's fingerprint is the one the drafter names."""
    want = drafter.target
    have = fingerprint(target)
    shape = ("vocab_size", "hidden_size", "num_hidden_layers")
    same = all(want.get(k) == have[k] for k in shape)
    norm = want.get("embedding_norm")
    if same and isinstance(norm, (int, float)):
        same = abs(norm - have["embedding_norm"]) <= 1e-2 * max(1.0, abs(norm))
    if not same:
        raise DlmError(f"the drafter {drafter.info.name} was trained for {want.get('name')} "
                       f"({', '.join(f'{k} {want.get(k)}' for k in shape)}), not for {target.info.name} "
                       f"({', '.join(f'{k} {have[k]}' for k in shape)}); train one for this model with "
                       f"`dlm drafter train -m {target.info.name}`")


def bound_drafter(method: str, model: Any, draft: Any, what: str = "drafts with a learned drafter") -> Any:
    """``draft`` checked as a ``method`` drafter of ``model`` (refused in one line otherwise), on the model's device."""
    from ..errors import UsageError

    if draft is None or getattr(draft, "kind", None) != "drafter":
        got = "no --draft" if draft is None else f"--draft {draft.info.name}, which is not a learned drafter"
        raise UsageError(f"the {method} strategy {what}, but the run has {got}; train one with "
                         f"`dlm drafter train -m {model.info.name} --method {method} --out DIR` and pass --draft DIR")
    if draft.method != method:
        raise UsageError(f"the drafter {draft.info.name} is a {draft.method} drafter; use -p {draft.method} with it")
    check_target(draft, model)
    if draft.device != model.device:
        draft.net.to(model.device)
    return draft


def llama_config(spec: dict[str, Any]) -> Any:
    from transformers import LlamaConfig

    return LlamaConfig(hidden_size=spec["hidden_size"], intermediate_size=spec["intermediate_size"],
                       num_attention_heads=spec["num_attention_heads"],
                       num_key_value_heads=spec["num_key_value_heads"], head_dim=spec["head_dim"],
                       rms_norm_eps=spec["rms_norm_eps"], rope_theta=spec["rope_theta"],
                       max_position_embeddings=spec.get("max_position_embeddings", 8192),
                       num_hidden_layers=spec["layers"], hidden_act="silu", vocab_size=2,
                       bos_token_id=None, eos_token_id=None, pad_token_id=None)


def dflash_spec(target: Any, *, layers: int = 1, block_size: int = 8, target_layers: list[int] | None = None,
                intermediate_size: int | None = None) -> dict[str, Any]:
    """The DFlash hyper-parameters for ``target``: width, heads and rope from its config (so the same code
    serves an 8B target); ``target_layers`` spread over the depth as DFlash's ``build_target_layer_ids``."""
    c = target_config(target)
    n = int(c.num_hidden_layers)
    if target_layers is None:
        count = max(1, min(layers + 1, n))
        # Spread from layer 1 to L - 3 (DFlash's choice); one feature layer sits at L/2.
        lo, hi = min(1, n - 1), max(min(1, n - 1), n - 3)
        target_layers = ([n // 2] if count == 1 else
                         sorted({round(lo + (hi - lo) * i / (count - 1)) for i in range(count)}))
    heads = int(c.num_attention_heads)
    rope = getattr(c, "rope_theta", None)
    if rope is None:
        rope = (getattr(c, "rope_parameters", None) or {}).get("rope_theta", 10000.0)
    return {"layers": layers, "block_size": block_size, "target_layers": list(target_layers),
            "hidden_size": int(c.hidden_size), "intermediate_size": int(intermediate_size or c.intermediate_size),
            "num_attention_heads": heads, "num_key_value_heads": int(getattr(c, "num_key_value_heads", heads)),
            "head_dim": int(getattr(c, "head_dim", None) or c.hidden_size // heads),
            "rms_norm_eps": float(getattr(c, "rms_norm_eps", 1e-6)), "rope_theta": float(rope)}


def _rope(x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor) -> torch.Tensor:
    """Rotary embedding of ``x`` ``[heads, n, d]`` with ``cos``/``sin`` ``[n, d]`` (Llama's rotate-half layout)."""
    half = x.shape[-1] // 2
    rot = torch.cat([-x[..., half:], x[..., :half]], -1)
    return x * cos + rot * sin


class DFlashLayer(nn.Module):
    """One drafter layer: Llama's norms and MLP, attention whose keys and values also cover the context."""

    def __init__(self, c: Any) -> None:
        super().__init__()
        from transformers.models.llama.modeling_llama import LlamaMLP, LlamaRMSNorm

        d, self.heads, self.kv_heads, self.head_dim = c.hidden_size, c.num_attention_heads, c.num_key_value_heads, c.head_dim
        self.q_proj = nn.Linear(d, self.heads * self.head_dim, bias=False)
        self.k_proj = nn.Linear(d, self.kv_heads * self.head_dim, bias=False)
        self.v_proj = nn.Linear(d, self.kv_heads * self.head_dim, bias=False)
        self.o_proj = nn.Linear(self.heads * self.head_dim, d, bias=False)
        self.input_layernorm = LlamaRMSNorm(d, eps=c.rms_norm_eps)
        self.post_attention_layernorm = LlamaRMSNorm(d, eps=c.rms_norm_eps)
        self.mlp = LlamaMLP(c)

    def kv(self, x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Keys (rotated) and values ``[kv_heads, n, head_dim]`` of rows ``x`` ``[n, d]``."""
        n = x.shape[0]
        k = self.k_proj(x).view(n, self.kv_heads, self.head_dim).transpose(0, 1)
        v = self.v_proj(x).view(n, self.kv_heads, self.head_dim).transpose(0, 1)
        return _rope(k, cos, sin), v

    def forward(self, x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor, ctx_k: torch.Tensor,
                ctx_v: torch.Tensor, mask: torch.Tensor | None) -> torch.Tensor:
        n = x.shape[0]
        h = self.input_layernorm(x)
        q = _rope(self.q_proj(h).view(n, self.heads, self.head_dim).transpose(0, 1), cos, sin)
        k, v = self.kv(h, cos, sin)
        k, v = torch.cat([ctx_k, k], 1), torch.cat([ctx_v, v], 1)
        if self.kv_heads != self.heads:
            k = k.repeat_interleave(self.heads // self.kv_heads, 0)
            v = v.repeat_interleave(self.heads // self.kv_heads, 0)
        o = torch.nn.functional.scaled_dot_product_attention(q, k, v, attn_mask=mask)
        x = x + self.o_proj(o.transpose(0, 1).reshape(n, -1))
        return x + self.mlp(self.post_attention_layernorm(x))


class DFlashNet(nn.Module):
    """The DFlash drafter's own weights: ``fc``, ``hidden_norm``, the layers, the final ``norm`` and the mask embedding."""

    def __init__(self, spec: dict[str, Any]) -> None:
        super().__init__()
        from transformers.models.llama.modeling_llama import LlamaRMSNorm, LlamaRotaryEmbedding

        self.spec = dict(spec)
        c = llama_config(spec)
        d = c.hidden_size
        self.fc = nn.Linear(len(spec["target_layers"]) * d, d, bias=False)
        self.hidden_norm = LlamaRMSNorm(d, eps=c.rms_norm_eps)
        self.layers = nn.ModuleList(DFlashLayer(c) for _ in range(spec["layers"]))
        self.norm = LlamaRMSNorm(d, eps=c.rms_norm_eps)
        # SmolLM2 and most AR targets have no mask token: the block's MASK is one trained embedding row.
        self.mask_embedding = nn.Parameter(torch.zeros(d))
        self.rotary = LlamaRotaryEmbedding(c)
        # The draft vocabulary (EAGLE-3's and FR-Spec's reduced LM head): the target tokens the drafter may
        # propose, the most frequent of its training answers. The head over all of a 49k vocabulary costs
        # more than a 135M target's one-token forward; drafts are only proposals, so verification stays exact.
        if spec.get("draft_vocab"):
            self.register_buffer("vocab", torch.zeros(int(spec["draft_vocab"]), dtype=torch.long))
        else:
            self.vocab = None

    def rope(self, positions: torch.Tensor, like: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        cos, sin = self.rotary(like, positions[None])
        return cos[0].to(like.dtype), sin[0].to(like.dtype)

    def context(self, feats: torch.Tensor, positions: torch.Tensor) -> list[tuple[torch.Tensor, torch.Tensor]]:
        """Each layer's keys and values of the context rows (target features ``[m, F*d]`` at ``positions``)."""
        ctx = self.hidden_norm(self.fc(feats))
        cos, sin = self.rope(positions, ctx)
        return [layer.kv(ctx, cos, sin) for layer in self.layers]

    def block(self, x: torch.Tensor, positions: torch.Tensor, kvs: list[tuple[torch.Tensor, torch.Tensor]],
              mask: torch.Tensor | None = None) -> torch.Tensor:
        """The normed hidden states of the block rows ``x`` ``[n, d]``; ``mask`` ``[n, m + n]`` (True: attends)."""
        cos, sin = self.rope(positions, x)
        for layer, (k, v) in zip(self.layers, kvs):
            x = layer(x, cos, sin, k, v, mask)
        return self.norm(x)




def net_class(method: str) -> type:
    """The network class of ``method`` (a key of :data:`NET_IMPLS`)."""
    import importlib

    module, attr = NET_IMPLS[method].split(":")
    return getattr(importlib.import_module(module), attr)


def draft_head(net: nn.Module, head: nn.Module, width: int | None = None) -> tuple[torch.Tensor, torch.Tensor | None]:
    """The rows of the target's LM head the drafter scores (its draft vocabulary's, else all ``width``) and their ids."""
    w = head.weight
    vocab = getattr(net, "vocab", None)
    if vocab is None:
        return (w[:width] if width else w), None
    return w[vocab.to(w.device)], vocab


@dataclass(eq=False)
class LearnedDrafter:
    """A loaded drafter: its network, the method, the target it names. Bound to a target by its strategy."""

    net: nn.Module
    method: str
    target: dict[str, Any]
    spec: dict[str, Any]
    info: ModelInfo
    config: dict[str, Any]
    kind: str = field(default="drafter", init=False)
    tokenizer: Any = None
    eos_ids: tuple[int, ...] = ()
    max_length: int = 1 << 30
    token_count: int | None = None
    capabilities: frozenset[str] = field(default=frozenset(), init=False)
    speed: SpeedState = field(default_factory=SpeedState, init=False, repr=False)

    @property
    def device(self) -> torch.device:
        return next(self.net.parameters()).device

    @property
    def vocab_size(self) -> int:
        return int(self.target.get("vocab_size", 0))


def build(method: str, spec: dict[str, Any]) -> nn.Module:
    return net_class(method)(spec)


def load_drafter(path: Path, cfg: dict[str, Any], opts: Any, name: str) -> LearnedDrafter:
    from safetensors.torch import load_file

    from .files import pick_device

    method = cfg.get("method")
    if method not in NET_IMPLS:
        raise DlmError(f"{name}: drafter method {method!r} is not one dlm knows ({', '.join(NET_IMPLS)}); "
                       "upgrade dlm or retrain the drafter")
    target, spec = cfg.get("target"), cfg.get("drafter")
    if not isinstance(target, dict) or not isinstance(spec, dict):
        raise DlmError(f"{name}/config.json: a drafter config needs \"target\" and \"drafter\" objects; "
                       "the directory is broken, retrain it with dlm drafter train")
    weights = path / WEIGHTS
    if not weights.is_file():
        raise DlmError(f"{name}: {WEIGHTS} is missing; the drafter directory is incomplete, retrain it")
    try:
        net = build(method, spec)
        state = load_file(str(weights))
        net.load_state_dict(state, strict=False)
        missing = {k for k in net.state_dict() if not k.startswith("rotary.")} - set(state)
        if missing or set(state) - set(net.state_dict()):
            raise ValueError(f"weights do not match the config ({len(missing)} missing)")
    except DlmError:
        raise
    except Exception as exc:  # a damaged or foreign file: one line, no traceback
        raise DlmError(f"{name}: cannot load the drafter ({type(exc).__name__}: {str(exc)[:160]}); retrain it") from None
    device = pick_device(opts.device) if opts is not None else torch.device("cpu")
    net = net.to(device).eval()
    for p in net.parameters():
        p.requires_grad_(False)
    info = ModelInfo(name=name, family=FAMILY, path=str(path), parameters=sum(p.numel() for p in net.parameters()),
                     dtype="float32", device=str(device), chat_template=False)
    return LearnedDrafter(net=net, method=method, target=target, spec=spec, info=info, config=cfg)


def save_drafter(out: Path, method: str, net: nn.Module, target: dict[str, Any], training: dict[str, Any]) -> Path:
    """Write a drafter directory at ``out`` atomically (a sibling, then a rename); refuse to overwrite another model."""
    import os
    import shutil

    from safetensors.torch import save_file

    from ..errors import UsageError

    if out.exists():
        try:
            old = json.loads((out / "config.json").read_text())
        except (OSError, ValueError):
            old = {}
        if not isinstance(old, dict) or old.get("model_type") != MODEL_TYPE:
            raise UsageError(f"--out {out} exists and is not a drafter dlm wrote; give a new path")
    state = {k: (v.detach().float() if v.is_floating_point() else v.detach()).contiguous().cpu()
             for k, v in net.state_dict().items() if not k.startswith("rotary.")}
    tmp = out.with_name(f".{out.name}.partial-{os.getpid()}")
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir(parents=True)
    save_file(state, str(tmp / WEIGHTS), metadata={"format": "pt"})
    (tmp / "config.json").write_text(json.dumps({
        "model_type": MODEL_TYPE, "method": method, "target": target, "drafter": net.spec, "training": training,
    }, indent=2) + "\n")
    from ..atomic import swap_in

    return swap_in(tmp, out)
