"""The ``dlm drafter train`` run: prompts, the target's own greedy answers, training with a progress bar, export."""

from __future__ import annotations

import time
from dataclasses import dataclass
from typing import Any, Callable

from .common import TrainRequest
from ..errors import DlmError, UsageError
from .drafter import METHODS, DrafterRecipe, objective, train


@dataclass(kw_only=True)
class DrafterRequest(TrainRequest):
    kinds: list[str]
    teacher_profile: str = "ar"


def run_drafter_train(req: DrafterRequest, *, load_model: Callable[..., Any], err: Any) -> int:
    from rich.progress import Progress

    from .. import profiles
    from ..decode import STRATEGIES, check_fits
    from ..models.drafter import fingerprint, save_drafter
    from .common import (progress_columns, prompt_items, stopped_early, teacher_rows, train_with_progress, workspace)

    if req.method not in METHODS:
        raise UsageError(f"--method {req.method!r}: use one of {', '.join(METHODS)}")
    items = prompt_items(req.prompts, req.tasks, seed=req.recipe.get("seed", 0), limit=req.limit, n_chat=req.n_chat,
                         n_continue=req.n_continue, what="train on", kinds=req.kinds)
    model = load_model(req.model, req.load, err)
    if model.kind != "autoregressive":
        raise UsageError(f"{model.info.name} is not an AR model; dlm drafter train learns a drafter for an AR target "
                         "(e.g. -m smollm2). For a diffusion LLM see `dlm distill`")
    name, base, work = workspace(req, model, "drafter")
    recipe = DrafterRecipe(method=req.method, model=base, **req.recipe)
    err.print(f"dlm: note: training a {req.method} drafter for {model.info.name}; work directory {work} "
              "(rerun the same command to resume)", markup=False, highlight=False)
    settings = profiles.load(req.teacher_profile, sets=tuple(req.sets), flags={"max_new_tokens": req.max_new_tokens})
    check_fits(STRATEGIES[settings.strategy], model)

    with Progress(*progress_columns(), console=err, transient=False, disable=not err.is_terminal) as bar:
        rows = teacher_rows(items, work, student=model, teacher=model, settings=settings, bar=bar, err=err,
                            label="target", targets="teacher", check=False,
                            end_id=model.eos_ids[0] if model.eos_ids else 0, skip_special=False,
                            batch=req.teacher_batch)
        if not rows:
            raise DlmError("no training sequence: the target answered every prompt with nothing")
        kinds: dict[str, int] = {}
        for r in rows:
            kinds[r["kind"]] = kinds.get(r["kind"], 0) + 1
        err.print(f"dlm: note: {len(rows)} training sequences ({', '.join(f'{k} {v}' for k, v in sorted(kinds.items()))})",
                  markup=False, highlight=False)
        # A method may hold sequences out of training and measure something on them after it (PPD's tree).
        obj = objective(req.method)
        split, finish = getattr(obj, "split", None), getattr(obj, "finish", None)
        train_rows, held = split(rows) if split is not None else (rows, [])
        t_train = time.time()
        net, step = train_with_progress(
            bar, err, label=req.method, steps=recipe.steps, work=work, checkpoint="checkpoint.safetensors",
            info=lambda rep: f"loss {rep.loss:.4f} · accept {rep.accept:.2f} · {rep.tokens_per_second:.0f} tok/s",
            note=lambda rep: f"loss {rep.loss:.4f} accept {rep.accept:.2f}",
            train=lambda on_step: train(model, train_rows, recipe, work, checkpoint_minutes=req.checkpoint_minutes,
                                        stop_minutes=req.stop_minutes, stop_step=req.stop_step, on_step=on_step))
    if stopped_early(step, recipe.steps, req.stop_step, work, err):
        return 0
    if finish is not None:
        err.print(f"dlm: note: {finish(net, model, held, train_rows)}", markup=False, highlight=False)
    from dataclasses import asdict

    save_drafter(req.out, req.method, net, fingerprint(model, name),
                 {**asdict(recipe), "step": step, "sequences": len(rows), "kinds": kinds,
                  "teacher_profile": req.teacher_profile, "max_new_tokens": req.max_new_tokens,
                  "last_session_seconds": round(time.time() - t_train, 1)})
    err.print(f"dlm: note: wrote {req.out} (-m {name} -p {req.method} --draft {req.out})", markup=False, highlight=False)
    return 0
