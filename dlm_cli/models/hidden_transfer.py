"""Hidden Transfer (Wu et al. 2024, arXiv 2404.12022): linear maps that turn a target's layer-``t`` state into
pseudo hidden states of the next positions, decoded by the target's own upper layers and LM head.

The drafter's only weights are :class:`TransferNet`'s ``k`` maps ``W_j`` (``d x d``). In one target
forward (:func:`split_forward`) the real tokens run through layers ``0..t``; the layer-``t`` state
``h`` of an *anchor* row (the last real position, or every node of a draft tree) gives ``k`` pseudo
states ``W_j h``, appended after the real rows at positions ``anchor + 1 + j``; layers ``t+1..L-1``
run over real and pseudo rows together. A pseudo row sees what its anchor sees (the cached prefix,
the anchor's causal or tree ancestors, the anchor itself) and the earlier slots of its own group;
no real row sees a pseudo row, so the real rows' logits are the plain forward's. The pseudo rows'
keys and values never stay in the cache (cut from layers ``> t`` before returning).

No code of the paper exists (METHODS-TRAINED.md §5): the loss, the layer and which state feeds
``W_j`` are dlm's reading, see :mod:`dlm_cli.train.hidden_transfer`.
"""

from __future__ import annotations

from typing import Any

import torch
from torch import nn

from ..errors import DlmError


class TransferNet(nn.Module):
    """``slots`` linear maps ``W_j`` of ``hidden_size``, applied to the target's layer-``layer`` output."""

    def __init__(self, spec: dict[str, Any]) -> None:
        super().__init__()
        self.spec = dict(spec)
        k, d = int(spec["slots"]), int(spec["hidden_size"])
        # Identity at the start: a pseudo state begins as the anchor's own state, which the upper layers
        # already read as "the next token" (the closest guess for the tokens after it).
        self.maps = nn.Parameter(torch.eye(d).repeat(k, 1, 1))

    @property
    def layer(self) -> int:
        return int(self.spec["layer"])

    @property
    def slots(self) -> int:
        return int(self.spec["slots"])

    def forward(self, h: torch.Tensor) -> torch.Tensor:
        """Pseudo states ``[m, k, d]`` of layer-``t`` states ``h`` ``[m, d]`` (``W_j h`` for each slot ``j``)."""
        return torch.einsum("md,ked->mke", h.to(self.maps.dtype), self.maps).to(h.dtype)


def transfer_spec(target: Any, block: int, layer: int | None = None) -> dict[str, Any]:
    """The hyper-parameters for ``target``: ``block - 1`` slots at its width; ``layer`` defaults to 2/3 of the depth."""
    c = target.net.config
    c = c.get_text_config() if hasattr(c, "get_text_config") else c
    n = int(c.num_hidden_layers)
    if layer is None:
        layer = max(0, min(n - 2, round(2 * n / 3)))
    return {"slots": int(block) - 1, "layer": int(layer), "hidden_size": int(c.hidden_size)}


def body(net: Any) -> tuple[Any, Any, Any]:
    """``(layers, rotary embedding, final norm)`` of a Llama-style transformers causal LM (``net.model``)."""
    m = getattr(net, "model", None)
    parts = tuple(getattr(m, name, None) for name in ("layers", "rotary_emb", "norm"))
    if any(p is None for p in parts):
        raise DlmError(f"{type(net).__name__} is not a Llama-style causal LM (model.layers, model.rotary_emb, "
                       "model.norm); hidden-transfer splits its forward there")
    return parts  # type: ignore[return-value]


def additive(see: torch.Tensor, dtype: torch.dtype, device: torch.device) -> torch.Tensor:
    """The 4-D additive mask ``[1, 1, rows, keys]`` of a boolean ``see`` (True: attends)."""
    out = torch.zeros(see.shape, dtype=dtype, device=see.device).masked_fill_(~see, torch.finfo(dtype).min)
    return out[None, None].to(device)


def transfer_mask(see_real: torch.Tensor, anchors: torch.Tensor, k: int) -> torch.Tensor:
    """Boolean ``[n + A k, width + A k]``: the real rows as ``see_real`` ``[n, width]`` says (never a pseudo row);
    the pseudo rows of anchor row ``anchors[i]`` (slots ``0..k-1``) see what that row sees and their own group's
    slots up to themselves."""
    n, dev = see_real.shape[0], see_real.device
    A = anchors.numel()
    g = torch.arange(A, device=dev).repeat_interleave(k)
    s = torch.arange(k, device=dev).repeat(A)
    own = (g[:, None] == g[None]) & (s[:, None] >= s[None])
    top = torch.cat([see_real, see_real.new_zeros(n, A * k)], 1)
    return torch.cat([top, torch.cat([see_real[anchors.to(dev)].repeat_interleave(k, 0), own], 1)], 0)


def _layers(layers: Any, x: torch.Tensor, rope: tuple[torch.Tensor, torch.Tensor], positions: torch.Tensor,
            mask: torch.Tensor, cache: Any) -> torch.Tensor:
    from .compat import cache_kwarg

    for layer in layers:
        kw = {cache_kwarg(layer.forward): cache} if cache is not None else {}
        out = layer(x, attention_mask=mask, position_ids=positions, position_embeddings=rope,
                    use_cache=cache is not None, **kw)
        x = out[0] if isinstance(out, tuple) else out
    return x


def split_forward(net: Any, transfer: TransferNet, anchors: torch.Tensor, see_real: torch.Tensor,
                  positions: torch.Tensor, *, ids: torch.Tensor | None = None, hidden: torch.Tensor | None = None,
                  cache: Any = None) -> tuple[torch.Tensor, torch.Tensor]:
    """The target's final-layer states (before the final norm) of the real rows ``[n, d]`` and of the pseudo rows
    ``[A, k, d]``, in one pass.

    ``ids`` ``[n]`` run through layers ``0..t`` (appended to ``cache``, which holds ``width - n`` positions);
    or ``hidden`` ``[n, d]`` is their layer-``t`` output already (training, no cache). ``see_real``
    ``[n, width]`` is the real rows' visibility over cache + rows, ``positions`` ``[n]`` their positions,
    ``anchors`` ``[A]`` the rows whose layer-``t`` state feeds the maps. The pseudo rows' keys and values are
    cut from the cache of layers ``> t`` before returning.
    """
    layers, rotary, _ = body(net)
    t, k = transfer.layer, transfer.slots
    n = see_real.shape[0]
    dev = positions.device
    anchors = anchors.to(dev)
    pseudo_pos = (positions[anchors][:, None] + 1 + torch.arange(k, device=dev)[None]).reshape(-1)
    all_pos = torch.cat([positions, pseudo_pos])[None]
    if hidden is None:
        x = net.get_input_embeddings()(ids[None])
        rope = rotary(x, all_pos)
        lower = (rope[0][:, :n], rope[1][:, :n])
        x = _layers(layers[: t + 1], x, lower, all_pos[:, :n], additive(see_real, x.dtype, dev), cache)
    else:
        x = hidden[None]
        rope = rotary(x, all_pos)
    pseudo = transfer(x[0, anchors]).reshape(1, -1, x.shape[-1])
    mask = additive(transfer_mask(see_real, anchors, k), x.dtype, dev)
    x = _layers(layers[t + 1:], torch.cat([x, pseudo], 1), rope, all_pos, mask, cache)
    if cache is not None and pseudo.shape[1]:
        for layer in list(cache.layers)[t + 1:]:
            layer.crop(-pseudo.shape[1])  # negative: the rows to remove (every transformers 5 release reads it so)
    return x[0, :n], x[0, n:].view(anchors.numel(), k, -1)
