"""Clover (Clover-2's architecture, scaled): regressive draft heads over the target's last hidden state.

The drafter reads, at every committed position ``p``, the target's last hidden state ``f_p`` (the
output of its last decoder layer after the final norm, what its LM head reads) and the token
``x_{p+1}`` that follows it, and drafts the tokens after ``x_{t+1}`` for the last committed
position ``t``:

1. **Fusion** (Clover-2's attention decoder, a gate over two items, not attention over the sequence):
   ``z_p = f_p + concat_j cos(q_j, k_j) * v_j`` per head ``j``, ``q = W_q RMSNorm(f_p)``,
   ``k = W_k e(x_{p+1})``, ``v = W_v e(x_{p+1})``.
2. **Augmenting block**: ``layers`` Llama decoder layers, causal over the fused sequence (their keys
   and values cached across steps), initialised from the target's last layers; RMSNorm -> ``s_p``.
3. **Regressive heads**: ``o_0 = RMSNorm(W_0 s_t)`` predicts ``x_{t+2}``; for ``i >= 1`` the state takes
   the token head ``i - 1`` proposed, ``s <- gate(s, e(x_{t+1+i}))`` (a second fusion gate), and
   ``o_i = RMSNorm(W_c [s ; e(x_{t+1+i})])`` predicts ``x_{t+2+i}``. Logits are ``o_i`` through the
   target's frozen LM head (the rows of the draft vocabulary, as DFlash's).

``heads`` drafts per step (``block - 1`` of the training recipe). The target's embedding and head
are borrowed, frozen; the drafter's own weights are the gates, the block, ``W_0``, ``W_c`` and norms.
"""

from __future__ import annotations

from typing import Any

import torch
from torch import nn

from .drafter import DFlashLayer, _rope, llama_config


def clover_spec(target: Any, *, heads: int = 4, layers: int = 1, target_layers: list[int] | None = None) -> dict[str, Any]:
    """Clover's hyper-parameters for ``target``: width, heads, rope from its config; the feature layer is its last."""
    from .drafter import dflash_spec, target_config

    depth = int(target_config(target).num_hidden_layers)
    spec = dflash_spec(target, layers=layers, block_size=heads + 1, target_layers=target_layers or [depth - 1])
    spec["heads"] = heads
    return spec


class Gate(nn.Module):
    """Clover-2's fusion of a state with a token: ``x + concat_j cos(q_j, k_j) v_j``, per attention head."""

    def __init__(self, d: int, heads: int, eps: float) -> None:
        super().__init__()
        from transformers.models.llama.modeling_llama import LlamaRMSNorm

        self.heads = heads
        self.norm = LlamaRMSNorm(d, eps=eps)
        self.q = nn.Linear(d, d, bias=False)
        self.k = nn.Linear(d, d, bias=False)
        self.v = nn.Linear(d, d, bias=False)

    def forward(self, x: torch.Tensor, e: torch.Tensor) -> torch.Tensor:
        shape = (*x.shape[:-1], self.heads, -1)
        q, k, v = self.q(self.norm(x)).view(shape), self.k(e).view(shape), self.v(e).view(shape)
        g = torch.nn.functional.cosine_similarity(q, k, dim=-1, eps=1e-6)[..., None]
        return x + (g * v).reshape(x.shape)


class CausalLayer(DFlashLayer):
    """A Llama decoder layer over new rows ``x`` after cached keys and values, causal among the new rows."""

    def step(self, x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor, past: tuple[torch.Tensor, torch.Tensor] | None,
             ) -> tuple[torch.Tensor, tuple[torch.Tensor, torch.Tensor]]:
        n = x.shape[0]
        h = self.input_layernorm(x)
        q = _rope(self.q_proj(h).view(n, self.heads, self.head_dim).transpose(0, 1), cos, sin)
        k, v = self.kv(h, cos, sin)
        if past is not None:
            k, v = torch.cat([past[0], k], 1), torch.cat([past[1], v], 1)
        m = k.shape[1] - n
        mask = torch.arange(m + n, device=x.device)[None] <= (m + torch.arange(n, device=x.device))[:, None]
        kk, vv = k, v
        if self.kv_heads != self.heads:
            kk = k.repeat_interleave(self.heads // self.kv_heads, 0)
            vv = v.repeat_interleave(self.heads // self.kv_heads, 0)
        o = torch.nn.functional.scaled_dot_product_attention(q, kk, vv, attn_mask=mask)
        x = x + self.o_proj(o.transpose(0, 1).reshape(n, -1))
        return x + self.mlp(self.post_attention_layernorm(x)), (k, v)


class CloverNet(nn.Module):
    """Clover's own weights: the fusion gate, the augmenting block, the regressive heads' gate and projections."""

    def __init__(self, spec: dict[str, Any]) -> None:
        super().__init__()
        from transformers.models.llama.modeling_llama import LlamaRMSNorm, LlamaRotaryEmbedding

        self.spec = dict(spec)
        c = llama_config(spec)
        d, eps, heads = c.hidden_size, c.rms_norm_eps, c.num_attention_heads
        self.fuse = Gate(d, heads, eps)
        self.layers = nn.ModuleList(CausalLayer(c) for _ in range(spec["layers"]))
        self.norm = LlamaRMSNorm(d, eps=eps)
        self.w0 = nn.Linear(d, d, bias=False)
        self.regress = Gate(d, heads, eps)
        self.wc = nn.Linear(2 * d, d, bias=False)
        self.out_norm = LlamaRMSNorm(d, eps=eps)
        self.rotary = LlamaRotaryEmbedding(c)
        if spec.get("draft_vocab"):
            self.register_buffer("vocab", torch.zeros(int(spec["draft_vocab"]), dtype=torch.long))
        else:
            self.vocab = None

    @property
    def heads(self) -> int:
        return int(self.spec["heads"])

    def block(self, z: torch.Tensor, positions: torch.Tensor, past: list[Any] | None = None,
              ) -> tuple[torch.Tensor, list[tuple[torch.Tensor, torch.Tensor]]]:
        """The augmenting block over fused rows ``z`` ``[n, d]`` at ``positions`` after the cached ``past``:
        the normed states ``s`` and every layer's keys and values (past and new)."""
        cos, sin = self.rotary(z, positions[None])
        cos, sin = cos[0].to(z.dtype), sin[0].to(z.dtype)
        kvs = []
        for i, layer in enumerate(self.layers):
            z, kv = layer.step(z, cos, sin, past[i] if past else None)
            kvs.append(kv)
        return self.norm(z), kvs

    def first(self, s: torch.Tensor) -> torch.Tensor:
        """Head 0's output from the block's state."""
        return self.out_norm(self.w0(s))

    def next(self, s: torch.Tensor, e: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """One regressive step: the state after the proposed token's embedding ``e``, and the head's output."""
        s = self.regress(s, e)
        return s, self.out_norm(self.wc(torch.cat([s, e], -1)))
