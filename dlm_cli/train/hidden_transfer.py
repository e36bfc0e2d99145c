"""Training Hidden Transfer's maps (``dlm drafter train --method hidden-transfer``) on a frozen AR target.

Per sequence (a prompt and the target's own greedy answer ``x``), ``anchors`` positions ``a`` from the
last prompt token on are drawn. The layer-``t`` state at ``a`` gives ``k`` pseudo states; slot ``j``
(0-based, at position ``a + 1 + j``) predicts ``x_{a+2+j}`` (the real row at ``a`` already predicts
``x_{a+1}``). All anchors share one pass through layers ``t+1..L-1`` (:func:`~dlm_cli.models.hidden_transfer.split_forward`):
a group sees the real tokens ``<= a`` and its own earlier slots, never another group, and no real row
sees a pseudo row, so the same pass also gives the target's own teacher-forced distributions.

The loss (METHODS-TRAINED.md §5 leaves it open; the summaries mention KL) is, per slot, the
cross-entropy of the greedy token ``x_{a+2+j}``; ``spec["loss"] = "kl"`` takes
``KL(p_target(. | x_{<=a+1+j}) || q_slot)`` instead: the target's distribution at the real row
``a + 1 + j``, which predicts the same token, against the pseudo slot's. Measured, the cross-entropy
trains the acceptance faster: on a tiny random 3-layer Llama (150 steps, slots 3) the greedy
tokens-per-forward estimate was 2.02 vs 1.91 at steps 50-75; on SmolLM2-135M (layer 20, 3 slots,
60 steps of 2 sequences, 14 chat answers) 1.96 vs 1.65 on the last training steps and 1.124 vs
1.106 on 6 held-out answers. Slots are weighted ``w_j = exp(-j / gamma)`` and the loss is
``sum w l / sum w``. Only the maps train; the gradient flows through the frozen upper layers.

The layer-``t`` states are cached per sequence as :class:`~dlm_cli.train.drafter.Features` (float16):
they never see a gradient, so a revisited sequence skips layers ``0..t`` (about 2/3 of the target).
"""

from __future__ import annotations

from typing import Any

import torch

from ..errors import UsageError
from .drafter import DrafterRecipe, Objective

LOSSES = ("ce", "kl")


def make_net(target: Any, recipe: DrafterRecipe, data: list[dict[str, Any]] = ()) -> torch.nn.Module:
    from ..models.hidden_transfer import TransferNet, transfer_spec

    depth = int(target.net.config.get_text_config().num_hidden_layers)
    if not recipe.spec:
        layer = recipe.target_layers[0] if recipe.target_layers else None
        if recipe.target_layers and len(recipe.target_layers) > 1:
            raise UsageError("--target-layers: hidden-transfer reads one layer (the maps' input), give one number")
        recipe.spec = {**transfer_spec(target, recipe.block, layer), "loss": "ce"}
    t = recipe.spec["layer"]
    if not 0 <= t <= depth - 2:
        raise UsageError(f"--target-layers {t}: {target.info.name} has layers 0..{depth - 1} and hidden-transfer "
                         f"needs a layer above the maps' one (0..{depth - 2})")
    if recipe.spec.get("loss", "ce") not in LOSSES:
        raise UsageError(f"hidden-transfer loss {recipe.spec['loss']!r}: use one of {', '.join(LOSSES)}")
    torch.manual_seed(recipe.seed)
    return TransferNet(recipe.spec).float()


def head(target: Any, h: torch.Tensor) -> torch.Tensor:
    """The target's final norm and LM head on final-layer states ``h`` (float32 logits; autograd on, unlike
    :meth:`~dlm_cli.models.causal.CausalLM.early_logits`)."""
    from ..models.hidden_transfer import body

    out = target.net.get_output_embeddings()(body(target.net)[2](h)).float()
    return out if target.token_count is None else out[..., : target.token_count]


def transfer_loss(net: Any, target: Any, aux: Any, feats: torch.Tensor, ids: torch.Tensor, start: int,
                  recipe: DrafterRecipe, gen: torch.Generator) -> tuple[torch.Tensor, float, int]:
    """The weighted per-slot loss of one sequence, the greedy tokens per target forward its drafts would give
    (1 + the accepted prefix of the slots' argmaxes, over anchors), and the drafted positions scored."""
    from ..models.hidden_transfer import split_forward

    dev = feats.device
    T, k = ids.shape[0], net.slots
    cand = torch.arange(max(start - 1, 0), T - 2)  # anchors whose slot 0 has a token to predict
    if cand.numel() == 0:
        return feats.new_zeros(()), 1.0, 0
    pick = cand[torch.randperm(cand.numel(), generator=gen)[: recipe.anchors]].sort().values
    A = pick.numel()
    see = torch.ones(T, T, dtype=torch.bool).tril()
    real, pseudo = split_forward(target.net, net, pick, see, torch.arange(T, device=dev),
                                 hidden=feats.to(target.net.dtype))
    j = torch.arange(k).repeat(A)
    label_at = pick.repeat_interleave(k) + 2 + j  # the token slot j of anchor a predicts
    valid = label_at < T
    rows = pseudo.reshape(A * k, -1)[valid.to(dev)]
    logits = head(target, rows)
    labels = ids[label_at[valid]].to(dev)
    if recipe.spec.get("loss", "ce") == "ce":
        per = torch.nn.functional.cross_entropy(logits, labels, reduction="none")
    else:
        with torch.no_grad():
            teacher = head(target, real[(label_at[valid] - 1).to(dev)]).log_softmax(-1)
        per = (teacher.exp() * (teacher - logits.log_softmax(-1))).sum(-1)
    w = torch.exp(-j[valid].to(dev).float() / recipe.gamma)
    loss = (w * per).sum() / w.sum().clamp_min(1e-9)
    with torch.no_grad():
        hit = torch.zeros(A * k, dtype=torch.bool, device=dev)
        hit[valid.to(dev)] = logits.argmax(-1) == labels
        accept = 1.0 + float(hit.view(A, k).long().cumprod(1).sum(1).float().mean())
    return loss, accept, int(valid.sum())


OBJECTIVE = Objective(make_net=make_net, feature_layers=lambda r: [int(r.spec["layer"])],
                      setup=lambda net, target: None, loss=transfer_loss)
