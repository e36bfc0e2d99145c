"""The ``dlm distill`` run: prompts, the teacher's answers, training with a progress bar, export."""

from __future__ import annotations

import json
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Optional

from ..errors import INTERRUPTS, DlmError, UsageError
from . import data as D
from .distill import METHODS, Recipe, export, train


@dataclass
class DistillRequest:
    method: str
    model: Optional[str]
    out: Path
    work: Optional[Path]
    prompts: Optional[Path]
    tasks: list[str]
    teacher: Optional[str]
    teacher_profile: Optional[str]
    targets: str
    check: bool
    limit: int
    max_new_tokens: int
    recipe: dict[str, Any]
    load: Any
    checkpoint_minutes: float = 10.0
    stop_minutes: Optional[float] = None
    stop_step: Optional[int] = None
    sets: list[str] = field(default_factory=list)
    n_chat: int = 120
    n_continue: int = 60


def default_work(model: str, method: str) -> Path:
    safe = "".join(c if c.isalnum() or c in "-_." else "_" for c in model.rstrip("/").split("/")[-1])
    return Path.home() / ".cache" / "dlm" / "distill" / f"{safe}-{method}"


def _same_tokenizer(a: Any, b: Any) -> bool:
    try:
        return a.get_vocab() == b.get_vocab()
    except (AttributeError, TypeError):
        return len(a) == len(b)


def run_distill(req: DistillRequest, *, load_model: Callable[..., Any], err: Any) -> int:
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn, TimeRemainingColumn

    from .. import profiles
    from ..decode import STRATEGIES, check_fits, run
    from ..decode.events import Done
    from ..prompting import encode

    if req.method not in METHODS:
        raise UsageError(f"--method {req.method!r}: use one of {', '.join(METHODS)}")
    if req.targets not in ("teacher", "gold"):
        raise UsageError(f"--targets {req.targets!r}: use teacher (the model's own answers, dParallel) or gold")
    if (req.prompts is None) == (not req.tasks):
        raise UsageError("give the prompts to distill on: --prompts FILE.jsonl or --tasks (realtext, or demo task names)")
    items = D.read_prompts(req.prompts) if req.prompts else D.task_items(
        req.tasks, seed=req.recipe.get("seed", 0), limit=req.limit or 2000, n_chat=req.n_chat, n_continue=req.n_continue)
    if req.limit:
        items = items[: req.limit]
    model = load_model(req.model, req.load, err)
    if model.kind != "diffusion":
        raise UsageError(f"{model.info.name} is an AR model; dlm distill trains a diffusion LLM (e.g. -m smollm2-dlm). "
                         "For AR drafters see `dlm drafter`")
    name = req.model or model.info.name
    base = str(Path(name).resolve()) if Path(name).exists() else name
    work = req.work or default_work(name, req.method)
    work.mkdir(parents=True, exist_ok=True)
    mix = D.REALTEXT_MIX if req.tasks == [D.REALTEXT] else None
    recipe = Recipe(method=req.method, model=base, mix=mix, **req.recipe)
    err.print(f"dlm: note: distilling {model.info.name} with {req.method}; work directory {work} "
              "(rerun the same command to resume)", markup=False, highlight=False)

    teacher = model
    if req.teacher and req.teacher != req.model:
        teacher = load_model(req.teacher, req.load, err, role="teacher")
        if not _same_tokenizer(teacher.tokenizer, model.tokenizer):
            raise UsageError(f"--teacher {req.teacher} has another tokenizer than {model.info.name}; a teacher's "
                             "answers are token ids the student trains on, so both must share one")
    tprofile = req.teacher_profile or ("quality" if teacher.kind == "diffusion" else "ar")
    settings = profiles.load(tprofile, sets=req.sets, flags={"max_new_tokens": req.max_new_tokens})
    check_fits(STRATEGIES[settings.strategy], teacher)

    def enc(text: str) -> list[int]:
        return encode(model.tokenizer, text, context=model.max_length)

    def dec(ids: list[int]) -> tuple[list[int], bool]:
        done = None
        for ev in run(teacher, ids, settings):
            if isinstance(ev, Done):
                done = ev
        if done is None:
            raise DlmError("the teacher's decoding ended without a result")
        return list(done.tokens), done.finish_reason == "eos"

    def tokenize(text: str) -> list[int]:
        return model.tokenizer.encode(text, add_special_tokens=False)

    def detokenize(ids: list[int]) -> str:
        return model.tokenizer.decode(ids, skip_special_tokens=True)

    end_id = model.eos_ids[0] if model.eos_ids else model.mask_id
    columns = (TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(), TextColumn("{task.fields[info]}"),
               TimeElapsedColumn(), TextColumn("eta"), TimeRemainingColumn())
    with Progress(*columns, console=err, transient=False, disable=not err.is_terminal) as bar:
        task = bar.add_task("teacher answers", total=None, info="")
        t0 = time.time()

        def answered(k: int, total: int, tokens: int) -> None:
            bar.update(task, completed=k, total=total, info=f"{tokens / max(time.time() - t0, 1e-9):.1f} tok/s")
            if not err.is_terminal and (k % 20 == 0 or k == total):
                err.print(f"dlm: note: teacher answers {k}/{total}", markup=False, highlight=False)

        rows = D.answers(items, work, encode=enc, decode=dec, end_id=end_id, targets=req.targets, check=req.check,
                         tokenize=tokenize, detokenize=detokenize, progress=answered)
        D.write_rows(work / "rows.jsonl", rows)
        if not rows:
            raise DlmError("no training rows are left (every teacher answer failed --check); drop "
                           "--check or use --targets gold")
        teacher = model  # frees another teacher (the closures read this name) before training
        kinds: dict[str, int] = {}
        for r in rows:
            kinds[r["kind"]] = kinds.get(r["kind"], 0) + 1
        err.print(f"dlm: note: {len(rows)} training rows ({', '.join(f'{k} {v}' for k, v in sorted(kinds.items()))})",
                  markup=False, highlight=False)
        ttask = bar.add_task(f"{req.method}", total=recipe.steps, info="")

        def stepped(rep: Any) -> None:
            bar.update(ttask, completed=rep.step,
                       info=f"loss {rep.loss:.4f} · {rep.tokens_per_second:.0f} tok/s")
            if not err.is_terminal and (rep.step % 10 == 0 or rep.step == recipe.steps):
                err.print(f"dlm: note: step {rep.step}/{recipe.steps} loss {rep.loss:.4f} "
                          f"{rep.tokens_per_second:.0f} tok/s", markup=False, highlight=False)

        try:
            step = train(model, rows, recipe, work, checkpoint_minutes=req.checkpoint_minutes,
                         stop_minutes=req.stop_minutes, stop_step=req.stop_step, on_step=stepped)
        except INTERRUPTS:
            bar.stop()
            err.print(f"dlm: note: the finished steps are kept in {work / 'checkpoint.pt'}; rerun the same command "
                      "to resume", markup=False, highlight=False)
            raise
    if step < min(recipe.steps, req.stop_step or recipe.steps):
        err.print(f"dlm: note: stopped at step {step}/{recipe.steps}; the checkpoint is in {work}, rerun the same "
                  "command to go on", markup=False, highlight=False)
        return 0
    export(model, recipe, req.out, base=base, step=step,
           extra={"rows": len(rows), "teacher": req.teacher or base, "teacher_profile": tprofile,
                  "targets": req.targets, "kinds": kinds})
    err.print(f"dlm: note: wrote {req.out} (-m {req.out}; profile {json.loads((req.out / 'config.json').read_text())['profile']})",
              markup=False, highlight=False)
    return 0
