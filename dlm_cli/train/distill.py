"""``dlm distill``: dParallel and CD4LM as one resumable training command over any dLLM dlm loads.

Stages, all under ``--work`` (outside the repository; rerun the same command to resume):

1. **Answers.** The teacher decodes every prompt with its own decoding (:mod:`.data`), cached by prompt.
2. **Training.** A fresh LoRA (PEFT, every linear layer of the decoder: q, k, v, o, gate, up, down)
   is trained on the model with the method's loss (:mod:`.losses`) over masked rows (:mod:`.rows`).
   CD4LM's frozen teacher is the same network with the LoRA switched off: no second copy in memory.
   ``checkpoint.pt`` is written atomically every ``checkpoint_minutes`` and at the end; the data
   order and the masks derive from the seed and the step, so a resumed run takes the same next steps.
3. **Export.** A ``dlm-lora`` directory (:mod:`~dlm_cli.models.lora`) that ``-m DIR`` loads: the
   LoRA in PEFT's layout over the model it was trained on, written beside ``--out`` and renamed
   into place, so ``--out`` is never half-written.

Progress goes to stderr (a rich bar with loss, tokens/s and ETA) and every logged step to
``log.jsonl``.
"""

from __future__ import annotations

import json
import os
import random
import shutil
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Callable, TYPE_CHECKING

import torch

from ..errors import INTERRUPTS, DlmError, UsageError
from . import losses, rows as R
from .common import Report as BaseReport, cosine_lr, recipe_key

if TYPE_CHECKING:
    from ..models.protocols import Model

TARGETS = ("q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj")
METHODS = ("dparallel", "cd4lm")
# The decoding each method's paper uses, as a dlm profile (written into the exported config).
PROFILES = {"dparallel": "dparallel", "cd4lm": "cad"}


@dataclass
class Recipe:
    """Everything that decides the trained weights (checked against a checkpoint before resuming)."""

    method: str
    model: str
    seed: int = 0
    steps: int = 300
    rows_per_step: int = 4
    lr: float = 2e-4
    warmup: float = 0.05
    rank: int = 32
    alpha: float = 32.0
    beta: float = 2.0  # dParallel's entropy weight (LLaDA's 2; Dream's 1)
    rate: float = 0.5  # dParallel's mask rate of the active block
    block: int = 32  # full-attention models: the active block (the decode block)
    max_tokens: int = 1024  # a row whose prompt + answer is longer is skipped
    bf16: bool = False  # bfloat16 autocast for the forward
    mix: dict[str, float] | None = None  # sampling weight per row kind; None: every row alike
    init: str | None = None  # a dlm-lora delta over the same model whose LoRA the run starts from

    def key(self) -> str:
        return recipe_key(self, optional=("init",))


@dataclass(kw_only=True)
class Report(BaseReport):
    parts: dict[str, float] = field(default_factory=dict)


def lr_at(step: int, r: Recipe) -> float:
    return cosine_lr(step, r.steps, r.lr, r.warmup)


def linear_targets(net: torch.nn.Module) -> list[str]:
    """The LoRA's target module names that ``net`` has (Llama/Qwen layer names; MoE experts included)."""
    names = {n.rsplit(".", 1)[-1] for n, m in net.named_modules() if isinstance(m, torch.nn.Linear)}
    found = [t for t in TARGETS if t in names]
    if not found:
        raise DlmError("the model's network has none of the linear layers a LoRA adapts "
                       f"({', '.join(TARGETS)}); distillation supports dlm's native dLLM networks")
    return found


def add_lora(net: torch.nn.Module, recipe: Recipe) -> list[torch.nn.Parameter]:
    from peft import LoraConfig, inject_adapter_in_model

    for p in net.parameters():
        p.requires_grad_(False)
    torch.manual_seed(recipe.seed)
    config = LoraConfig(r=recipe.rank, lora_alpha=recipe.alpha, lora_dropout=0.0,
                        target_modules=linear_targets(net), bias="none")
    inject_adapter_in_model(config, net)
    params = []
    for name, p in net.named_parameters():
        if "lora_" in name:
            p.data = p.data.float()
            p.requires_grad_(True)
            params.append(p)
    return params


def init_lora(net: torch.nn.Module, path: Path) -> None:
    """Set the freshly added LoRA of ``net`` to the delta at ``path`` (``--init``): the run goes on from it.

    The delta must adapt exactly the layers the run adapts, with the run's rank (its scale is checked by
    the caller, which knows the recipe's alpha).
    """
    from ..models.lora import read_lora

    lora, _ = read_lora(path)
    own = {k: v for k, v in net.state_dict().items() if "lora_" in k}
    want = {"base_model.model." + k.replace(".default", ""): k for k in own}
    if set(want) != set(lora):
        extra, lack = sorted(set(lora) - set(want)), sorted(set(want) - set(lora))
        raise DlmError(f"--init {path}: its LoRA adapts other layers than this run ("
                       f"{len(lack)} missing, {len(extra)} extra, e.g. {(lack or extra)[0]}); it belongs to another model")
    with torch.no_grad():
        for name, key in want.items():
            if lora[name].shape != own[key].shape:
                raise DlmError(f"--init {path}: {name} has shape {tuple(lora[name].shape)}, this run's "
                               f"{tuple(own[key].shape)}; pass the delta's --rank or use another delta")
        net.load_state_dict({key: lora[name].float() for name, key in want.items()}, strict=False)


def set_lora(net: torch.nn.Module, enabled: bool) -> None:
    from peft.tuners.tuners_utils import BaseTunerLayer

    for m in net.modules():
        if isinstance(m, BaseTunerLayer):
            m.enable_adapters(enabled)


def lora_state(net: torch.nn.Module) -> dict[str, torch.Tensor]:
    return {k: v.detach().clone() for k, v in net.state_dict().items() if "lora_" in k}


def layout_of(model: Model, recipe: Recipe) -> R.Layout:
    end = model.eos_ids[0] if model.eos_ids else model.mask_id
    return R.Layout(mask_id=model.mask_id, end_id=end, shift=bool(model.shift), grid=model.block_size,
                    block=recipe.block)


def make_row(row: dict[str, Any], lay: R.Layout, recipe: Recipe, gen: torch.Generator) -> R.Row:
    if recipe.method == "dparallel":
        return R.dparallel_row(row["prompt_ids"], row["answer_ids"], lay, gen, recipe.rate)
    return R.cd4lm_row(row["prompt_ids"], row["answer_ids"], lay, gen)


def forward(model: Model, ids: torch.Tensor, row: R.Row, bf16: bool) -> torch.Tensor:
    """Logits ``[K, V]`` at the row's predictor rows: the model's own network, no cache."""
    dev = model.device
    with torch.autocast(dev.type, dtype=torch.bfloat16, enabled=bf16):
        out = model.net(ids.to(dev)[None], mask=row.mask.to(dev), positions=row.positions.to(dev),
                        rows=row.src.to(dev))
    out = out[0]
    return out if model.token_count is None else out[..., : model.token_count]


def step_loss(model: Model, row: R.Row, recipe: Recipe, step: int) -> tuple[torch.Tensor, dict[str, float]]:
    dev = model.device
    tgt = row.tgt.to(dev)
    student = forward(model, row.ids, row, recipe.bf16)
    if recipe.method == "dparallel":
        return losses.dparallel_loss(student, tgt, row.view.to(dev), recipe.beta)
    assert row.teacher_ids is not None
    set_lora(model.net, False)
    try:
        with torch.no_grad():
            teacher = forward(model, row.teacher_ids, row, recipe.bf16)
    finally:
        set_lora(model.net, True)
    return losses.cd4lm_loss(student, teacher, tgt, losses.cd4lm_lambda(step, recipe.steps))


def save_checkpoint(path: Path, net: torch.nn.Module, opt: torch.optim.Optimizer, step: int, recipe: Recipe) -> None:
    tmp = path.with_name(path.name + ".tmp")
    torch.save({"lora": lora_state(net), "opt": opt.state_dict(), "step": step, "recipe": asdict(recipe),
                "key": recipe.key()}, tmp)
    os.replace(tmp, path)


def load_checkpoint(path: Path, recipe: Recipe) -> dict[str, Any]:
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
        if not isinstance(state, dict) or not {"lora", "opt", "step", "key"} <= set(state):
            raise ValueError("missing fields")
    except Exception as exc:  # a truncated or foreign file: one clear line, no traceback
        raise DlmError(f"the checkpoint {path} is damaged ({type(exc).__name__}: {str(exc)[:120]}); delete it "
                       "to restart the training, or restore it from a backup") from None
    if state["key"] != recipe.key():
        raise UsageError(f"the checkpoint in {path.parent} is of another recipe ({state.get('recipe')}); give "
                         "another --work directory, or the same options as the run that wrote it")
    return state


def train(model: Model, data: list[dict[str, Any]], recipe: Recipe, work: Path, *,
          checkpoint_minutes: float = 10.0, stop_minutes: float | None = None, stop_step: int | None = None,
          on_step: Callable[[Report], None] | None = None) -> int:
    """Train (or resume) ``recipe`` on ``data``; returns the step reached. The LoRA stays in ``model.net``.

    ``stop_step`` ends the run at that step of the schedule (a checkpoint already past it is kept as is).
    """
    usable = [r for r in data if len(r["prompt_ids"]) + len(r["answer_ids"]) <= recipe.max_tokens and r["answer_ids"]]
    if not usable:
        raise DlmError(f"no training row fits --max-tokens {recipe.max_tokens}; raise it")
    import inspect

    if "positions" not in inspect.signature(model.net.forward).parameters:
        raise DlmError(f"{model.info.name}: its network cannot run a packed training row (dlm distill needs dlm's "
                       "native dLLM networks: LLaDA, Dream, SDAR, Fast-dLLM v2, MoE dLLMs, block-diffusion adapters)")
    params = add_lora(model.net, recipe)
    if recipe.init is not None:
        init_lora(model.net, Path(recipe.init))
    opt = torch.optim.AdamW(params, lr=recipe.lr, weight_decay=0.01, betas=(0.9, 0.999))
    work.mkdir(parents=True, exist_ok=True)
    ckpt = work / "checkpoint.pt"
    step = 0
    if ckpt.exists():
        state = load_checkpoint(ckpt, recipe)
        missing = set(lora_state(model.net)) - set(state["lora"])
        if missing:
            raise DlmError(f"the checkpoint {ckpt} lacks {len(missing)} LoRA tensors; it belongs to another model")
        model.net.load_state_dict(state["lora"], strict=False)
        opt.load_state_dict(state["opt"])
        step = int(state["step"])
    lay = layout_of(model, recipe)
    model.net.train()
    by_kind: dict[str, list[dict[str, Any]]] = {}
    for r in usable:
        by_kind.setdefault(r.get("kind", "prompt"), []).append(r)
    kinds = sorted(by_kind)
    weights = [(recipe.mix or {}).get(k, 0.0) if recipe.mix else len(by_kind[k]) for k in kinds]
    if not any(weights):
        weights = [len(by_kind[k]) for k in kinds]
    end_at = min(recipe.steps, stop_step or recipe.steps)
    finished = [step]  # the last finished step, for the interrupt handler
    try:
        step = _loop(model, recipe, opt, params, by_kind, kinds, weights, lay, work, finished, end_at,
                     checkpoint_minutes, stop_minutes, on_step)
    except INTERRUPTS:
        # Ctrl-C or SIGTERM: keep every finished step (the one under way is redone on resume).
        opt.zero_grad(set_to_none=True)
        save_checkpoint(ckpt, model.net, opt, finished[0], recipe)
        raise
    model.net.eval()
    return step


def _loop(model: Model, recipe: Recipe, opt: Any, params: list[torch.nn.Parameter], by_kind: dict[str, Any],
          kinds: list[str], weights: list[float], lay: R.Layout, work: Path, finished: list[int], end_at: int,
          checkpoint_minutes: float, stop_minutes: float | None, on_step: Callable[[Report], None] | None) -> int:
    from .data import log_line

    ckpt, log = work / "checkpoint.pt", work / "log.jsonl"
    t0 = last_save = time.time()
    step = finished[0]
    while step < end_at:
        rng = random.Random(recipe.seed * 1_000_003 + step)
        gen = torch.Generator().manual_seed(recipe.seed * 1_000_003 + step)
        for g in opt.param_groups:
            g["lr"] = lr_at(step, recipe)
        t_step, total, n_tok = time.time(), 0.0, 0
        parts: dict[str, float] = {}
        for _ in range(recipe.rows_per_step):
            kind = rng.choices(kinds, weights=weights)[0]
            row = make_row(rng.choice(by_kind[kind]), lay, recipe, gen)
            if len(row.tgt) == 0:
                continue
            loss, part = step_loss(model, row, recipe, step)
            (loss / recipe.rows_per_step).backward()
            total += float(loss.detach()) / recipe.rows_per_step
            n_tok += len(row.ids) * (2 if row.teacher_ids is not None else 1)
            for k, v in part.items():
                parts[k] = parts.get(k, 0.0) + v / recipe.rows_per_step
        torch.nn.utils.clip_grad_norm_(params, 1.0)
        opt.step()
        opt.zero_grad(set_to_none=True)
        step += 1
        finished[0] = step
        dt = time.time() - t_step
        rep = Report(step=step, loss=total, parts=parts, tokens_per_second=n_tok / max(dt, 1e-9))
        log_line(log, {"step": step, "loss": round(total, 5), "lr": opt.param_groups[0]["lr"],
                       "tokens_per_second": round(rep.tokens_per_second, 1), "seconds": round(dt, 3),
                       **{k: round(v, 5) for k, v in parts.items()}})
        if on_step is not None:
            on_step(rep)
        stop = stop_minutes is not None and time.time() - t0 > stop_minutes * 60
        if step == end_at or stop or time.time() - last_save > checkpoint_minutes * 60:
            save_checkpoint(ckpt, model.net, opt, step, recipe)
            last_save = time.time()
        if stop:
            break
    return step


def export(model: Model, recipe: Recipe, out: Path, *, base: str, step: int, extra: dict[str, Any]) -> Path:
    """Write the trained LoRA as a ``dlm-lora`` directory at ``out`` (atomically: a sibling, then a rename)."""
    from safetensors.torch import save_file

    from ..models.lora import ADAPTER_CONFIG, ADAPTER_FILE, MODEL_TYPE

    if out.exists() and not (out / "config.json").is_file():
        raise UsageError(f"--out {out} exists and is not a model directory dlm wrote; give a new path")
    if out.exists():
        try:
            old = json.loads((out / "config.json").read_text())
        except (OSError, json.JSONDecodeError):
            old = {}
        if old.get("model_type") != MODEL_TYPE:
            raise UsageError(f"--out {out} holds another model; give a new path")
    state = {}
    for k, v in lora_state(model.net).items():
        name = k.replace(".default", "")
        state["base_model.model." + name] = v.to(torch.bfloat16).contiguous().cpu()
    tmp = out.with_name(f".{out.name}.partial-{os.getpid()}")
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir(parents=True)
    save_file(state, str(tmp / ADAPTER_FILE), metadata={"format": "pt"})
    (tmp / ADAPTER_CONFIG).write_text(json.dumps({
        "peft_type": "LORA", "r": recipe.rank, "lora_alpha": recipe.alpha, "lora_dropout": 0.0, "bias": "none",
        "target_modules": sorted({k.split(".lora_")[0].rsplit(".", 1)[-1] for k in state}),
        "base_model_name_or_path": base,
    }, indent=2) + "\n")
    (tmp / "config.json").write_text(json.dumps({
        "model_type": MODEL_TYPE, "base_model": base, "profile": PROFILES[recipe.method],
        "training": {**asdict(recipe), "step": step, **extra},
    }, indent=2) + "\n")
    from ..atomic import swap_in

    return swap_in(tmp, out)
