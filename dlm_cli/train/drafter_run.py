"""The ``dlm drafter train`` run: prompts, the target's own greedy answers, training with a progress bar, export."""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Optional

from ..errors import INTERRUPTS, DlmError, UsageError
from . import data as D
from .drafter import METHODS, DrafterRecipe, train


@dataclass
class DrafterRequest:
    method: str
    model: Optional[str]
    out: Path
    work: Optional[Path]
    prompts: Optional[Path]
    tasks: list[str]
    kinds: list[str]
    limit: int
    max_new_tokens: int
    recipe: dict[str, Any]
    load: Any
    checkpoint_minutes: float = 10.0
    stop_minutes: Optional[float] = None
    stop_step: Optional[int] = None
    n_chat: int = 120
    n_continue: int = 60
    teacher_profile: str = "ar"
    sets: list[str] = field(default_factory=list)


def default_work(model: str, method: str) -> Path:
    safe = "".join(c if c.isalnum() or c in "-_." else "_" for c in model.rstrip("/").split("/")[-1])
    return Path.home() / ".cache" / "dlm" / "drafter" / f"{safe}-{method}"


def run_drafter_train(req: DrafterRequest, *, load_model: Callable[..., Any], err: Any) -> int:
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn, TimeRemainingColumn

    from .. import profiles
    from ..decode import STRATEGIES, check_fits, run
    from ..decode.events import Done
    from ..models.drafter import fingerprint, save_drafter
    from ..prompting import encode

    if req.method not in METHODS:
        raise UsageError(f"--method {req.method!r}: use one of {', '.join(METHODS)}")
    if (req.prompts is None) == (not req.tasks):
        raise UsageError("give the prompts to train on: --prompts FILE.jsonl or --tasks realtext")
    items = D.read_prompts(req.prompts) if req.prompts else D.task_items(
        req.tasks, seed=req.recipe.get("seed", 0), limit=req.limit or 2000, n_chat=req.n_chat, n_continue=req.n_continue)
    if req.kinds:
        have = sorted({it.kind for it in items})
        items = [it for it in items if it.kind in req.kinds]
        if not items:
            raise UsageError(f"--kinds {','.join(req.kinds)}: no prompt is of these kinds (there are: {', '.join(have)})")
    if req.limit:
        items = items[: req.limit]
    model = load_model(req.model, req.load, err)
    if model.kind != "autoregressive":
        raise UsageError(f"{model.info.name} is not an AR model; dlm drafter train learns a drafter for an AR target "
                         "(e.g. -m smollm2). For a diffusion LLM see `dlm distill`")
    name = req.model or model.info.name
    base = str(Path(name).resolve()) if Path(name).exists() else name
    work = req.work or default_work(name, req.method)
    work.mkdir(parents=True, exist_ok=True)
    recipe = DrafterRecipe(method=req.method, model=base, **req.recipe)
    err.print(f"dlm: note: training a {req.method} drafter for {model.info.name}; work directory {work} "
              "(rerun the same command to resume)", markup=False, highlight=False)
    settings = profiles.load(req.teacher_profile, sets=tuple(req.sets), flags={"max_new_tokens": req.max_new_tokens})
    check_fits(STRATEGIES[settings.strategy], model)

    def enc(text: str) -> list[int]:
        return encode(model.tokenizer, text, context=model.max_length)

    def dec(ids: list[int]) -> tuple[list[int], bool]:
        done = None
        for ev in run(model, ids, settings):
            if isinstance(ev, Done):
                done = ev
        if done is None:
            raise DlmError("the target's decoding ended without a result")
        return list(done.tokens), done.finish_reason == "eos"

    end_id = model.eos_ids[0] if model.eos_ids else 0
    columns = (TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(), TextColumn("{task.fields[info]}"),
               TimeElapsedColumn(), TextColumn("eta"), TimeRemainingColumn())
    with Progress(*columns, console=err, transient=False, disable=not err.is_terminal) as bar:
        task = bar.add_task("target answers", total=None, info="")
        t0 = time.time()

        def answered(k: int, total: int, tokens: int) -> None:
            bar.update(task, completed=k, total=total, info=f"{tokens / max(time.time() - t0, 1e-9):.1f} tok/s")
            if not err.is_terminal and (k % 20 == 0 or k == total):
                err.print(f"dlm: note: target answers {k}/{total}", markup=False, highlight=False)

        rows = D.answers(items, work, encode=enc, decode=dec, end_id=end_id, targets="teacher", check=False,
                         tokenize=lambda t: model.tokenizer.encode(t, add_special_tokens=False),
                         detokenize=lambda ids: model.tokenizer.decode(ids), progress=answered)
        if not rows:
            raise DlmError("no training sequence: the target answered every prompt with nothing")
        kinds: dict[str, int] = {}
        for r in rows:
            kinds[r["kind"]] = kinds.get(r["kind"], 0) + 1
        err.print(f"dlm: note: {len(rows)} training sequences ({', '.join(f'{k} {v}' for k, v in sorted(kinds.items()))})",
                  markup=False, highlight=False)
        ttask = bar.add_task(req.method, total=recipe.steps, info="")

        def stepped(rep: Any) -> None:
            bar.update(ttask, completed=rep.step,
                       info=f"loss {rep.loss:.4f} · accept {rep.accept:.2f} · {rep.tokens_per_second:.0f} tok/s")
            if not err.is_terminal and (rep.step % 10 == 0 or rep.step == recipe.steps):
                err.print(f"dlm: note: step {rep.step}/{recipe.steps} loss {rep.loss:.4f} accept {rep.accept:.2f}",
                          markup=False, highlight=False)

        t_train = time.time()
        try:
            net, step = train(model, rows, recipe, work, checkpoint_minutes=req.checkpoint_minutes,
                              stop_minutes=req.stop_minutes, stop_step=req.stop_step, on_step=stepped)
        except INTERRUPTS:
            bar.stop()
            err.print(f"dlm: note: the finished steps are kept in {work / 'checkpoint.safetensors'}; rerun the same "
                      "command to resume", markup=False, highlight=False)
            raise
    if step < min(recipe.steps, req.stop_step or recipe.steps):
        err.print(f"dlm: note: stopped at step {step}/{recipe.steps}; the checkpoint is in {work}, rerun the same "
                  "command to go on", markup=False, highlight=False)
        return 0
    from dataclasses import asdict

    save_drafter(req.out, req.method, net, fingerprint(model, name),
                 {**asdict(recipe), "step": step, "sequences": len(rows), "kinds": kinds,
                  "teacher_profile": req.teacher_profile, "max_new_tokens": req.max_new_tokens,
                  "last_session_seconds": round(time.time() - t_train, 1)})
    err.print(f"dlm: note: wrote {req.out} (-m {name} -p {req.method} --draft {req.out})", markup=False, highlight=False)
    return 0
