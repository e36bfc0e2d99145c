"""Training Clover's regressive heads (``dlm drafter train --method clover``) on the frozen target's own answers.

Teacher forcing, as Clover-2 trains: the fused sequence ``z_p`` (the target's last hidden state
``f_p`` gated with the embedding of the true next token) runs once through the augmenting block
(causal); at ``anchors`` sampled positions ``p`` (the last prompt position on, as decoding sees them)
the heads run regressively on the *true* tokens, head ``i`` predicting ``x_{p+2+i}``. Per head:

    w_i * (CE(head(o_i), x_{p+2+i}) + SmoothL1(o_i, f_{p+1+i})),   w_i = exp(-i / gamma)

(Clover-2: ``0.7^i``, gamma = 2.8; its distribution loss is a soft CE against the target's softmax, which on
the target's own greedy answers has its mode at the answer token; ``f_{p+1+i}`` is the target state that
predicts the same token), summed and divided by the weights of the scored heads. A label outside the draft
vocabulary is left out of the CE (and counts as a miss).
"""

from __future__ import annotations

from typing import Any

import torch

from .drafter import DrafterRecipe, Objective, head_setup, init_from_target, vocab_by_frequency


def clover_net(target: Any, recipe: DrafterRecipe, data: list[dict[str, Any]] = ()) -> torch.nn.Module:
    from ..errors import UsageError
    from ..models.clover import clover_spec
    from ..models.drafter import build

    if not recipe.spec:
        recipe.spec = clover_spec(target, heads=recipe.block - 1, layers=recipe.layers,
                                  target_layers=recipe.target_layers)
        width = target.token_count or target.vocab_size
        if recipe.draft_vocab and recipe.draft_vocab < width:
            recipe.spec["draft_vocab"] = recipe.draft_vocab
    depth = int(target.net.config.get_text_config().num_hidden_layers)
    if any(not 0 <= i < depth for i in recipe.spec["target_layers"]):
        raise UsageError(f"--target-layers {','.join(map(str, recipe.spec['target_layers']))}: "
                         f"{target.info.name} has layers 0..{depth - 1}")
    torch.manual_seed(recipe.seed)
    net = build("clover", recipe.spec)
    with torch.no_grad():
        if recipe.init == "target":
            init_from_target(net, target)
            d = net.w0.weight.shape[0]
            # Head 0 starts as the identity, W_c as [I 0]; the output norm as the target's final norm.
            net.w0.weight.copy_(torch.eye(d))
            net.wc.weight.zero_()
            net.wc.weight[:, :d].copy_(torch.eye(d))
            norm = getattr(getattr(target.net, "model", None), "norm", None)
            if norm is not None and norm.weight.shape == net.out_norm.weight.shape:
                net.out_norm.weight.copy_(norm.weight.float())
        if getattr(net, "vocab", None) is not None:
            net.vocab.copy_(vocab_by_frequency(target, data, net.vocab.numel()))
    return net.float()


def clover_loss(net: Any, target: Any, aux: dict[str, Any], feats: torch.Tensor, ids: torch.Tensor, start: int,
                recipe: DrafterRecipe, gen: torch.Generator) -> tuple[torch.Tensor, float, int]:
    """The weighted head loss of one sequence; the greedy tokens per forward of its chains; the heads scored."""
    dev = feats.device
    T, k = ids.shape[0], net.heads
    cand = torch.arange(max(start - 1, 0), T - 2)  # positions whose first draft x_{p+2} exists
    if cand.numel() == 0:
        return feats.new_zeros(()), 1.0, 0
    pick = cand[torch.randperm(cand.numel(), generator=gen)[: recipe.anchors]].sort().values.to(dev)
    A = pick.numel()
    e_all = aux["embed"](ids).float()
    z = net.fuse(feats[:-1], e_all[1:])
    s, _ = net.block(z, torch.arange(T - 1, device=dev))
    st = s[pick]
    outs = [net.first(st)]
    for i in range(1, k):
        st, o = net.next(st, e_all[(pick + 1 + i).clamp_max(T - 1)])
        outs.append(o)
    O = torch.stack(outs, 1)  # [A, k, d]
    lp = pick[:, None] + 2 + torch.arange(k, device=dev)[None]  # label positions [A, k]
    valid = lp < T
    labels = ids[lp.clamp_max(T - 1)]
    if aux["index"] is not None:
        labels = aux["index"][labels]
    rows = valid & (labels >= 0)
    w = torch.exp(-torch.arange(k, device=dev).float() / recipe.gamma)[None].expand(A, k)
    logits = (O[rows] @ aux["head"].T).float()
    ce = torch.nn.functional.cross_entropy(logits, labels[rows], reduction="none")
    reg = torch.nn.functional.smooth_l1_loss(O[valid], feats[(lp - 1).clamp_max(T - 1)][valid], reduction="none").mean(-1)
    loss = ((w[rows] * ce).sum() + (w[valid] * reg).sum()) / w[valid].sum().clamp_min(1e-9)
    with torch.no_grad():
        hit = torch.zeros(A, k, dtype=torch.bool, device=dev)
        hit[rows] = logits.argmax(-1) == labels[rows]
        accept = 1.0 + float(hit.long().cumprod(1).sum(1).float().mean())
    return loss, accept, A * k


OBJECTIVE = Objective(make_net=clover_net, feature_layers=lambda r: list(r.spec["target_layers"]), setup=head_setup,
                      loss=clover_loss)
