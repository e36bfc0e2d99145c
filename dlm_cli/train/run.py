"""The ``dlm distill`` run: prompts, the teacher's answers, training with a progress bar, export."""

from __future__ import annotations

import json
from dataclasses import dataclass
from typing import Any, Callable, Optional

from ..errors import DlmError, UsageError
from . import data as D
from .common import TrainRequest
from .distill import METHODS, Recipe, export, train


@dataclass(kw_only=True)
class DistillRequest(TrainRequest):
    teacher: Optional[str]
    teacher_profile: Optional[str]
    targets: str
    check: bool
    init: Optional[str] = None


def init_delta(spec: str, base: str, rank: int, alpha: float, opts: Any) -> str:
    """The directory of ``--init``'s delta, checked: a dlm-lora over the model being trained, of the run's rank."""
    from ..models.files import read_config
    from ..models.loading import LoadOptions
    from ..models.lora import ADAPTER_CONFIG, is_lora_config
    from ..models.adapter import read_json
    from ..models.resolve import resolve_path
    from .common import spec_of

    _, path = resolve_path(spec, opts or LoadOptions(device="cpu"))
    cfg = read_config(path)
    if not is_lora_config(cfg):
        raise UsageError(f"--init {spec} is not a LoRA delta (model_type {cfg.get('model_type')!r}); give a "
                         "directory dlm distill wrote (model_type dlm-lora)")
    over = cfg.get("base_model")
    if not isinstance(over, str) or spec_of(over) != base:
        raise UsageError(f"--init {spec} is a delta over {over!r}, not over {base!r}, the model this run trains; "
                         f"train -m {over} or give a delta over {base}")
    conf = read_json(path / ADAPTER_CONFIG)
    if conf.get("r") != rank or float(conf.get("lora_alpha", -1)) != alpha:
        raise UsageError(f"--init {spec} has rank {conf.get('r')} (alpha {conf.get('lora_alpha')}); this run's is "
                         f"{rank} (alpha {alpha}): pass --rank {conf.get('r')}")
    return str(path.resolve())


def _same_tokenizer(a: Any, b: Any) -> bool:
    try:
        return a.get_vocab() == b.get_vocab()
    except (AttributeError, TypeError):
        return len(a) == len(b)


def run_distill(req: DistillRequest, *, load_model: Callable[..., Any], err: Any) -> int:
    from rich.progress import Progress

    from .. import profiles
    from ..decode import STRATEGIES, check_fits
    from .common import (progress_columns, prompt_items, stopped_early, teacher_rows, train_with_progress, workspace)

    if req.method not in METHODS:
        raise UsageError(f"--method {req.method!r}: use one of {', '.join(METHODS)}")
    if req.targets not in ("teacher", "gold"):
        raise UsageError(f"--targets {req.targets!r}: use teacher (the model's own answers, dParallel) or gold")
    items = prompt_items(req.prompts, req.tasks, seed=req.recipe.get("seed", 0), limit=req.limit, n_chat=req.n_chat,
                         n_continue=req.n_continue, what="distill on")
    model = load_model(req.model, req.load, err)
    if model.kind != "diffusion":
        raise UsageError(f"{model.info.name} is an AR model; dlm distill trains a diffusion LLM (e.g. -m smollm2-dlm). "
                         "For AR drafters see `dlm drafter`")
    name, base, work = workspace(req, model, "distill")
    mix = D.REALTEXT_MIX if req.tasks == [D.REALTEXT] else None
    init = init_delta(req.init, base, req.recipe.get("rank", 32), req.recipe.get("alpha", 32.0), req.load) \
        if req.init else None
    recipe = Recipe(method=req.method, model=base, mix=mix, init=init, **req.recipe)
    err.print(f"dlm: note: distilling {model.info.name} with {req.method}"
              + (f", starting from the LoRA of {req.init}" if init else "")
              + f"; work directory {work} (rerun the same command to resume)", markup=False, highlight=False)

    teacher = model
    if req.teacher and req.teacher != req.model:
        teacher = load_model(req.teacher, req.load, err, role="teacher")
        if not _same_tokenizer(teacher.tokenizer, model.tokenizer):
            raise UsageError(f"--teacher {req.teacher} has another tokenizer than {model.info.name}; a teacher's "
                             "answers are token ids the student trains on, so both must share one")
    tprofile = req.teacher_profile or ("quality" if teacher.kind == "diffusion" else "ar")
    settings = profiles.load(tprofile, sets=req.sets, flags={"max_new_tokens": req.max_new_tokens})
    check_fits(STRATEGIES[settings.strategy], teacher)

    with Progress(*progress_columns(), console=err, transient=False, disable=not err.is_terminal) as bar:
        rows = teacher_rows(items, work, student=model, teacher=teacher, settings=settings, bar=bar, err=err,
                            label="teacher", targets=req.targets, check=req.check,
                            end_id=model.eos_ids[0] if model.eos_ids else model.mask_id,
                            batch=req.teacher_batch)
        D.write_rows(work / "rows.jsonl", rows)
        if not rows:
            raise DlmError("no training rows are left (every teacher answer failed --check); drop "
                           "--check or use --targets gold")
        teacher = model  # frees another teacher before training
        kinds: dict[str, int] = {}
        for r in rows:
            kinds[r["kind"]] = kinds.get(r["kind"], 0) + 1
        err.print(f"dlm: note: {len(rows)} training rows ({', '.join(f'{k} {v}' for k, v in sorted(kinds.items()))})",
                  markup=False, highlight=False)
        step = train_with_progress(
            bar, err, label=req.method, steps=recipe.steps, work=work, checkpoint="checkpoint.pt",
            info=lambda rep: f"loss {rep.loss:.4f} · {rep.tokens_per_second:.0f} tok/s",
            note=lambda rep: f"loss {rep.loss:.4f} {rep.tokens_per_second:.0f} tok/s",
            train=lambda on_step: train(model, rows, recipe, work, checkpoint_minutes=req.checkpoint_minutes,
                                        stop_minutes=req.stop_minutes, stop_step=req.stop_step, on_step=on_step))
    if stopped_early(step, recipe.steps, req.stop_step, work, err):
        return 0
    export(model, recipe, req.out, base=base, step=step,
           extra={"rows": len(rows), "teacher": req.teacher or base, "teacher_profile": tprofile,
                  "targets": req.targets, "kinds": kinds})
    err.print(f"dlm: note: wrote {req.out} (-m {req.out}; profile {json.loads((req.out / 'config.json').read_text())['profile']})",
              markup=False, highlight=False)
    return 0
