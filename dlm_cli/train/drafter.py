"""Training a learned drafter on a frozen AR target (``dlm drafter train``): DFlash's objective, resumable.

Each training sequence is a prompt and the target's own greedy answer. One no-grad target forward
gives the features (the outputs of the drafter's ``target_layers``, kept in float16 so a resumed
run sees the very values an uninterrupted one does, and cached in memory up to a budget). Per
sequence, ``anchors`` answer positions ``a`` are drawn; each makes a block ``[x_a, MASK x (B - 1)]``
at positions ``a .. a + B - 1`` whose queries see the context features at positions ``< a``
(strictly) and their own block only, never another block (DFlash as SpecForge trains it:
``create_dflash_block_mask``). The loss is the cross-entropy of the target's tokens ``x_{a+k}``,
``k >= 1``, weighted ``w_k = exp(-(k - 1) / gamma)`` (position 0, the given token, weight 0).

``checkpoint.safetensors`` (drafter, AdamW moments, step; the recipe's key in its metadata) is
written atomically every ``checkpoint_minutes``, at the end and on Ctrl-C; the sequence order and
the anchors derive from the seed and the step, so a resumed run takes the same next steps. Every
step goes to ``log.jsonl``. No pickle anywhere.
"""

from __future__ import annotations

import json
import math
import os
import random
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Callable

import torch

from ..errors import INTERRUPTS, DlmError, UsageError
from .common import Report as BaseReport, cosine_lr, recipe_key

from ..models.drafter import METHODS  # noqa: F401  (every method, re-exported: its network; its objective below)


@dataclass
class DrafterRecipe:
    """Everything that decides the trained weights (checked against a checkpoint before resuming)."""

    method: str
    model: str
    seed: int = 0
    steps: int = 2000
    rows_per_step: int = 4  # sequences per optimizer step
    anchors: int = 32  # blocks drawn per sequence
    lr: float = 6e-4  # SpecForge's DFlash recipe
    warmup: float = 0.04
    layers: int = 1
    block: int = 8
    gamma: float = 4.0  # ModelOpt's decay for B = 8 (DFlash: 7 for B = 16)
    max_tokens: int = 1024
    target_layers: list[int] | None = None
    draft_vocab: int = 0  # the drafter proposes only the most frequent answer tokens (0: the whole vocabulary)
    init: str = "target"  # the drafter's layers start as copies of the target's last layers (Clover-2's init), or "random"
    spec: dict[str, Any] = field(default_factory=dict)  # the drafter's full hyper-parameters (filled from the target)
    init_from: str | None = None  # start from this drafter directory's weights (a later stage of a longer training)

    def key(self) -> str:
        return recipe_key(self, optional=("init_from",))


@dataclass(kw_only=True)
class Report(BaseReport):
    accept: float = math.nan  # tokens per target forward the drafts would give greedily (bonus included)


def lr_at(step: int, r: DrafterRecipe) -> float:
    return cosine_lr(step, r.steps, r.lr, r.warmup)


@dataclass(frozen=True)
class Objective:
    """One method's training: its network built for the target, the target layers whose outputs are cached
    per sequence (float16, :class:`Features`), the per-run constants its loss needs, and the loss.

    ``loss(net, target, aux, feats, ids, start, recipe, gen)`` returns the loss of one sequence (``ids``,
    the answer from ``start``), the greedy tokens per target forward its drafts would give there, and
    the number of drafted positions it scored (for tokens/s)."""

    make_net: Callable[[Any, DrafterRecipe, list[dict[str, Any]]], torch.nn.Module]
    feature_layers: Callable[[DrafterRecipe], list[int]]
    setup: Callable[[torch.nn.Module, Any], Any]
    loss: Callable[..., tuple[torch.Tensor, float, int]]


# Each method's objective, imported when a run trains it (``module:attr``).
OBJECTIVES = {
    "dflash": "dlm_cli.train.drafter:DFLASH",
    "clover": "dlm_cli.train.clover:OBJECTIVE",
    "hidden-transfer": "dlm_cli.train.hidden_transfer:OBJECTIVE",
    "ppd": "dlm_cli.train.ppd:OBJECTIVE",
}


def objective(method: str) -> Objective:
    import importlib

    module, attr = OBJECTIVES[method].split(":")
    return getattr(importlib.import_module(module), attr)


def make_net(target: Any, recipe: DrafterRecipe, data: list[dict[str, Any]] = ()) -> torch.nn.Module:
    """``recipe``'s drafter for ``target``, initialised as its method says (``recipe.spec`` filled in), or with
    the weights of the drafter directory ``recipe.init_from`` (its method, target and hyper-parameters)."""
    if recipe.init_from is None:
        return objective(recipe.method).make_net(target, recipe, list(data))
    from ..models.drafter import check_target, load_drafter

    path = Path(recipe.init_from)
    try:
        cfg = json.loads((path / "config.json").read_text())
    except (OSError, ValueError):
        raise UsageError(f"--init {path}: not a drafter directory (no readable config.json); give the --out of an "
                         "earlier dlm drafter train") from None
    if cfg.get("model_type") != "dlm-drafter":
        raise UsageError(f"--init {path}: not a drafter directory dlm wrote")
    if cfg.get("method") != recipe.method:
        raise UsageError(f"--init {path}: is a {cfg.get('method')} drafter; train it with --method {cfg.get('method')}")
    old = load_drafter(path, cfg, None, str(path))
    check_target(old, target)
    recipe.spec = dict(old.spec)
    return old.net.float().train().requires_grad_(True)


def vocab_by_frequency(target: Any, data: list[dict[str, Any]], size: int) -> torch.Tensor:
    """The ``size`` most frequent answer tokens of ``data`` (ties by id, every end token included), sorted."""
    counts = torch.zeros(target.token_count or target.vocab_size, dtype=torch.long)
    for r in data:
        counts.index_add_(0, torch.tensor(r["answer_ids"], dtype=torch.long), torch.ones(len(r["answer_ids"]), dtype=torch.long))
    counts[list(target.eos_ids)] += 1 << 40
    return torch.sort(torch.argsort(counts, descending=True, stable=True)[:size]).values


def head_setup(net: torch.nn.Module, target: Any) -> dict[str, Any]:
    """The LM head rows a drafter with an optional draft vocabulary (``net.vocab``) scores, and ``index``:
    target token -> row (-1: not in the draft vocabulary), or None for the whole vocabulary."""
    from ..models.drafter import draft_head

    width = target.token_count or target.vocab_size
    head, vocab = draft_head(net, target.net.get_output_embeddings(), width)
    index = None
    if vocab is not None:
        index = torch.full((width,), -1, dtype=torch.long)
        index[vocab.cpu()] = torch.arange(vocab.numel())
        index = index.to(target.device)
    return {"embed": target.net.get_input_embeddings(), "head": head.detach().float(), "index": index}


def dflash_net(target: Any, recipe: DrafterRecipe, data: list[dict[str, Any]] = ()) -> torch.nn.Module:
    from ..models.drafter import build, dflash_spec

    if not recipe.spec:
        recipe.spec = dflash_spec(target, layers=recipe.layers, block_size=recipe.block,
                                  target_layers=recipe.target_layers)
        width = target.token_count or target.vocab_size
        if recipe.draft_vocab and recipe.draft_vocab < width:
            recipe.spec["draft_vocab"] = recipe.draft_vocab
    n = recipe.spec["target_layers"]
    depth = int(target.net.config.get_text_config().num_hidden_layers)
    if any(not 0 <= i < depth for i in n):
        raise UsageError(f"--target-layers {','.join(map(str, n))}: {target.info.name} has layers 0..{depth - 1}")
    torch.manual_seed(recipe.seed)
    net = build(recipe.method, recipe.spec)
    with torch.no_grad():
        net.mask_embedding.normal_(0.0, float(target.net.get_input_embeddings().weight.float().std()))
        if recipe.init == "target":
            init_from_target(net, target)
        if getattr(net, "vocab", None) is not None:
            net.vocab.copy_(vocab_by_frequency(target, data, net.vocab.numel()))
    return net.float()


def init_from_target(net: torch.nn.Module, target: Any) -> int:
    """Copy the target's last ``len(net.layers)`` decoder layers (and its final norm) into the drafter where the
    shapes match (Llama-style names: ``self_attn.q_proj`` ... ``mlp`` and the two norms); the layers copied."""
    body = getattr(target.net, "model", None)
    layers = getattr(body, "layers", None)
    if layers is None:
        return 0
    copied = 0
    for mine, theirs in zip(net.layers, list(layers)[-len(net.layers):]):
        src = {k.replace("self_attn.", ""): v for k, v in theirs.state_dict().items()}
        dst = mine.state_dict()
        if set(dst) <= set(src) and all(dst[k].shape == src[k].shape for k in dst):
            mine.load_state_dict({k: src[k].float() for k in dst})
            copied += 1
    norm = getattr(body, "norm", None)
    if copied and norm is not None and norm.weight.shape == net.norm.weight.shape:
        net.norm.weight.copy_(norm.weight.float())
    return copied


class Features:
    """The target's features of each training sequence: one no-grad forward, float16, cached up to ``budget`` bytes."""

    def __init__(self, target: Any, layers: list[int], budget: float = 1.5e9) -> None:
        self.target, self.layers, self.budget = target, tuple(layers), budget
        self.cache: dict[int, torch.Tensor] = {}
        self.bytes = 0

    @torch.no_grad()
    def __call__(self, index: int, ids: torch.Tensor) -> torch.Tensor:
        if not self.layers:  # the method reads no target layer here
            return torch.zeros(ids.shape[0], 0)
        got = self.cache.get(index)
        if got is None:
            out = self.target.net(input_ids=ids[None].to(self.target.device), output_hidden_states=True,
                                  logits_to_keep=1)
            got = torch.cat([out.hidden_states[i + 1][0] for i in self.layers], -1).to(torch.float16).cpu()
            if self.bytes + got.numel() * 2 <= self.budget:
                self.cache[index] = got
                self.bytes += got.numel() * 2
        return got.float()


def dflash_loss(net: Any, embed: Any, head: torch.Tensor, feats: torch.Tensor, ids: torch.Tensor, start: int,
                recipe: DrafterRecipe, gen: torch.Generator, index: torch.Tensor | None = None) -> tuple[torch.Tensor, float, int]:
    """DFlash's weighted block cross-entropy over sampled anchors of one sequence; also the greedy
    tokens-per-forward its drafts would give (1 + the accepted prefix, averaged over anchors) and the blocks.

    ``head``: the LM head rows the drafter scores; ``index`` maps a target token to its row (-1: not in
    the draft vocabulary; such a label is left out of the loss and always counts as a miss)."""
    dev = feats.device
    T, B = ids.shape[0], recipe.block
    cand = torch.arange(start, T - 1)  # anchors whose next token is an answer token
    if cand.numel() == 0:
        return feats.new_zeros(()), 1.0, 0
    pick = cand[torch.randperm(cand.numel(), generator=gen)[: recipe.anchors]].sort().values
    A = pick.numel()
    pos = (pick[:, None] + torch.arange(B)[None]).reshape(-1)  # [A*B] absolute positions
    valid = pos < T
    k = torch.arange(B).repeat(A)
    labels = torch.where(valid, ids[pos.clamp_max(T - 1)], torch.zeros_like(pos))
    x = net.mask_embedding[None].expand(A * B, -1).clone()
    x[k == 0] = embed(ids[pick].to(dev)).float()
    see_ctx = torch.arange(T)[None] < pick.repeat_interleave(B)[:, None]  # strictly before the anchor
    blk = torch.arange(A).repeat_interleave(B)
    see_blk = blk[:, None] == blk[None]
    mask = torch.cat([see_ctx, see_blk], 1).to(dev)
    kvs = net.context(feats, torch.arange(T, device=dev))
    h = net.block(x, pos.to(dev), kvs, mask)
    labels = labels.to(dev) if index is None else index.to(dev)[labels.to(dev)]
    rows = ((k >= 1) & valid).to(dev) & (labels >= 0)
    logits = (h[rows] @ head.T).float()
    ce = torch.nn.functional.cross_entropy(logits, labels[rows], reduction="none")
    w = torch.exp(-(k.to(dev)[rows] - 1).float() / recipe.gamma)
    loss = (w * ce).sum() / w.sum().clamp_min(1e-9)
    with torch.no_grad():
        hit = torch.zeros(A * B, dtype=torch.bool, device=dev)
        hit[rows] = logits.argmax(-1) == labels[rows]
        hit = hit.view(A, B)[:, 1:]
        accept = 1.0 + float(hit.long().cumprod(1).sum(1).float().mean())
    return loss, accept, A


def save_checkpoint(path: Path, net: torch.nn.Module, opt: torch.optim.Optimizer, step: int,
                    recipe: DrafterRecipe) -> None:
    from safetensors.torch import save_file

    state = {f"net.{k}": v.detach().contiguous().cpu() for k, v in net.state_dict().items()}
    names = {id(p): n for n, p in net.named_parameters()}
    for group in opt.param_groups:
        for p in group["params"]:
            st = opt.state.get(p)
            if st:
                for key in ("exp_avg", "exp_avg_sq"):
                    state[f"opt.{names[id(p)]}.{key}"] = st[key].detach().contiguous().cpu()
                state[f"opt.{names[id(p)]}.step"] = torch.as_tensor(st["step"]).reshape(1).float().cpu()
    tmp = path.with_name(path.name + ".tmp")
    save_file(state, str(tmp), metadata={"step": str(step), "key": recipe.key(), "recipe": json.dumps(asdict(recipe))})
    os.replace(tmp, path)


def load_checkpoint(path: Path, net: torch.nn.Module, opt: torch.optim.Optimizer, recipe: DrafterRecipe) -> int:
    from safetensors import safe_open

    try:
        with safe_open(str(path), "pt") as f:
            meta = f.metadata() or {}
            state = {k: f.get_tensor(k) for k in f.keys()}
        step = int(meta["step"])
    except Exception as exc:  # a truncated or foreign file: one clear line, no traceback
        raise DlmError(f"the checkpoint {path} is damaged ({type(exc).__name__}: {str(exc)[:120]}); delete it to "
                       "restart the training") from None
    if meta.get("key") != recipe.key():
        raise UsageError(f"the checkpoint in {path.parent} is of another recipe ({meta.get('recipe')}); give another "
                         "--work directory, or the same options as the run that wrote it")
    net.load_state_dict({k[4:]: v for k, v in state.items() if k.startswith("net.")})
    for n, p in net.named_parameters():
        if f"opt.{n}.exp_avg" in state:
            opt.state[p] = {"step": state[f"opt.{n}.step"].reshape(()), "exp_avg": state[f"opt.{n}.exp_avg"].to(p.device),
                            "exp_avg_sq": state[f"opt.{n}.exp_avg_sq"].to(p.device)}
    return step


def train(target: Any, data: list[dict[str, Any]], recipe: DrafterRecipe, work: Path, *,
          checkpoint_minutes: float = 10.0, stop_minutes: float | None = None, stop_step: int | None = None,
          on_step: Callable[[Report], None] | None = None) -> tuple[torch.nn.Module, int]:
    """Train (or resume) the drafter of ``recipe`` on ``data`` rows; returns the drafter and the step reached."""
    from .data import log_line

    usable = [r for r in data if len(r["prompt_ids"]) + len(r["answer_ids"]) <= recipe.max_tokens
              and len(r["answer_ids"]) >= 2]
    if not usable:
        raise DlmError(f"no training sequence fits --max-tokens {recipe.max_tokens} with an answer of 2 tokens or more")
    for p in target.net.parameters():
        p.requires_grad_(False)
    target.net.eval()
    if recipe.method not in OBJECTIVES:
        raise UsageError(f"--method {recipe.method!r}: use one of {', '.join(OBJECTIVES)}")
    net = make_net(target, recipe, usable).to(target.device)
    params = [p for p in net.parameters() if p.requires_grad]
    opt = torch.optim.AdamW(params, lr=recipe.lr, weight_decay=0.0, betas=(0.9, 0.95))
    work.mkdir(parents=True, exist_ok=True)
    ckpt, log = work / "checkpoint.safetensors", work / "log.jsonl"
    step = load_checkpoint(ckpt, net, opt, recipe) if ckpt.exists() else 0
    obj = objective(recipe.method)
    feats = Features(target, obj.feature_layers(recipe))
    aux = obj.setup(net, target)
    end_at = min(recipe.steps, stop_step or recipe.steps)
    t0 = last_save = time.time()
    net.train()
    try:
        while step < end_at:
            rng = random.Random(recipe.seed * 1_000_003 + step)
            gen = torch.Generator().manual_seed(recipe.seed * 1_000_003 + step)
            for g in opt.param_groups:
                g["lr"] = lr_at(step, recipe)
            t_step, total, acc, n_tok = time.time(), 0.0, 0.0, 0
            for _ in range(recipe.rows_per_step):
                i = rng.randrange(len(usable))
                row = usable[i]
                ids = torch.tensor(row["prompt_ids"] + row["answer_ids"], dtype=torch.long)
                f = feats(i, ids).to(target.device)
                loss, accept, scored = obj.loss(net, target, aux, f, ids.to(target.device), len(row["prompt_ids"]),
                                                recipe, gen)
                (loss / recipe.rows_per_step).backward()
                total += float(loss.detach()) / recipe.rows_per_step
                acc += accept / recipe.rows_per_step
                n_tok += scored
            torch.nn.utils.clip_grad_norm_(params, 1.0)
            opt.step()
            opt.zero_grad(set_to_none=True)
            step += 1
            dt = time.time() - t_step
            rep = Report(step=step, loss=total, accept=acc, tokens_per_second=n_tok / max(dt, 1e-9))
            log_line(log, {"step": step, "loss": round(total, 5), "accept": round(acc, 4),
                           "lr": opt.param_groups[0]["lr"], "tokens_per_second": round(rep.tokens_per_second, 1),
                           "seconds": round(dt, 3)})
            if on_step is not None:
                on_step(rep)
            stop = stop_minutes is not None and time.time() - t0 > stop_minutes * 60
            if step == end_at or stop or time.time() - last_save > checkpoint_minutes * 60:
                save_checkpoint(ckpt, net, opt, step, recipe)
                last_save = time.time()
            if stop:
                break
    except INTERRUPTS:
        # Ctrl-C or SIGTERM: keep every finished step (the one under way is redone on resume).
        opt.zero_grad(set_to_none=True)
        save_checkpoint(ckpt, net, opt, step, recipe)
        raise
    net.eval()
    return net, step


def _dflash_loss(net: Any, target: Any, aux: dict[str, Any], feats: torch.Tensor, ids: torch.Tensor, start: int,
                 recipe: DrafterRecipe, gen: torch.Generator) -> tuple[torch.Tensor, float, int]:
    loss, accept, blocks = dflash_loss(net, aux["embed"], aux["head"], feats, ids, start, recipe, gen, aux["index"])
    return loss, accept, blocks * recipe.block


DFLASH = Objective(make_net=dflash_net, feature_layers=lambda r: list(r.spec["target_layers"]), setup=head_setup,
                   loss=_dflash_loss)
