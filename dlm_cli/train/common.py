"""What every training command shares: its prompts, the teacher's answers with a progress line and the
learning-rate schedule."""

from __future__ import annotations

import hashlib
import json
import math
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Callable, Optional

from ..errors import INTERRUPTS, DlmError, UsageError
from . import data as D


def prompt_items(prompts: Path | None, tasks: list[str], *, seed: int, limit: int, n_chat: int, n_continue: int,
                 what: str, kinds: list[str] | None = None) -> list[D.Item]:
    """The training prompts: ``--prompts FILE.jsonl`` or the built-in ``--tasks``, only those of ``kinds``
    when given, at most ``limit`` (0: all)."""
    if (prompts is None) == (not tasks):
        raise UsageError(f"give the prompts to {what}: --prompts FILE.jsonl or --tasks (realtext, or demo task names)")
    items = D.read_prompts(prompts) if prompts else D.task_items(tasks, seed=seed, limit=limit or 2000, n_chat=n_chat,
                                                                n_continue=n_continue)
    if kinds:
        have = sorted({it.kind for it in items})
        items = [it for it in items if it.kind in kinds]
        if not items:
            raise UsageError(f"--kinds {','.join(kinds)}: no prompt is of these kinds (there are: {', '.join(have)})")
    return items[:limit] if limit else items


@dataclass(kw_only=True)
class TrainRequest:
    """What every training command is asked: the model, the method, the prompts, the schedule's stops."""

    method: str
    model: Optional[str]
    out: Path
    work: Optional[Path]
    prompts: Optional[Path]
    tasks: list[str]
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
    teacher_batch: Optional[int] = None  # teacher answers decoded together (None: 8 where the profile batches)


def work_dir(work: Path | None, kind: str, name: str, method: str) -> Path:
    """The work directory: ``--work``, else ``~/.cache/dlm/KIND/MODEL-METHOD``; created."""
    if work is None:
        safe = "".join(c if c.isalnum() or c in "-_." else "_" for c in name.rstrip("/").split("/")[-1])
        work = Path.home() / ".cache" / "dlm" / kind / f"{safe}-{method}"
    work.mkdir(parents=True, exist_ok=True)
    return work


def spec_of(name: str) -> str:
    """A model spec as the recipe records it: a directory's absolute path, else the name."""
    return str(Path(name).resolve()) if Path(name).exists() else name


def progress_columns() -> tuple[Any, ...]:
    from rich.progress import BarColumn, MofNCompleteColumn, TextColumn, TimeElapsedColumn, TimeRemainingColumn

    return (TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(), TextColumn("{task.fields[info]}"),
            TimeElapsedColumn(), TextColumn("eta"), TimeRemainingColumn())


def teacher_rows(items: list[D.Item], work: Path, *, student: Any, teacher: Any, settings: Any, bar: Any, err: Any,
                 label: str, targets: str, check: bool, end_id: int, skip_special: bool = True,
                 batch: int | None = None) -> list[dict[str, Any]]:
    """``teacher``'s answers to ``items`` decoded with ``settings`` (cached in ``work``), as rows of the
    student's tokens, with a progress task on ``bar`` (a ``dlm: note:`` line every 20 when not a terminal).

    ``batch`` answers are decoded together (:mod:`..decode.batch`, each answer the one a batch of one
    gives); ``None``: 8 where the teacher's profile batches, else one at a time."""
    from ..decode import run
    from ..decode.batch import check_batchable
    from ..decode.events import Done
    from ..prompting import encode

    def enc(text: str) -> list[int]:
        return encode(student.tokenizer, text, context=student.max_length)

    width = batch
    if width is None or width > 1:
        try:
            check_batchable(teacher, settings.frozen(), "--teacher-batch")
        except UsageError:
            if width is not None:
                raise
            width = 1
        width = 8 if width is None else width

    def one(ids: list[int]) -> tuple[list[int], bool]:
        done = None
        for ev in run(teacher, ids, settings):
            if isinstance(ev, Done):
                done = ev
        if done is None:
            raise DlmError(f"the {label}'s decoding ended without a result")
        return list(done.tokens), done.finish_reason == "eos"

    def dec(prompts: list[list[int]]) -> Any:
        if width == 1:
            for i, ids in enumerate(prompts):
                yield (i, *one(ids))
            return
        from ..decode import resolve_seed
        from ..decode.batch import new_engine

        seed = resolve_seed(settings)
        engine = new_engine(teacher, getattr(settings.frozen(), "cache", "none"))
        nxt = 0
        while nxt < len(prompts) or len(engine):
            while nxt < len(prompts) and len(engine) < width:
                engine.add(nxt, prompts[nxt], settings, seed=seed)
                nxt += 1
            for key, ev in engine.step():
                if isinstance(ev, Done):
                    yield key, list(ev.tokens), ev.finish_reason == "eos"

    task = bar.add_task(f"{label} answers", total=None, info="")
    t0 = time.time()

    def answered(k: int, total: int, tokens: int) -> None:
        bar.update(task, completed=k, total=total, info=f"{tokens / max(time.time() - t0, 1e-9):.1f} tok/s")
        if not err.is_terminal and (k % 20 == 0 or k == total):
            err.print(f"dlm: note: {label} answers {k}/{total}", markup=False, highlight=False)

    return D.answers(items, work, encode=enc, decode=dec, end_id=end_id, targets=targets, check=check,
                     tokenize=lambda text: student.tokenizer.encode(text, add_special_tokens=False),
                     detokenize=lambda ids: student.tokenizer.decode(ids, skip_special_tokens=skip_special),
                     progress=answered)


def cosine_lr(step: int, steps: int, peak: float, warmup: float) -> float:
    """``peak`` after a linear warm-up over the first ``warmup`` share of ``steps``, then a cosine down to 10%."""
    warm = max(1, int(warmup * steps))
    if step < warm:
        return peak * (step + 1) / warm
    frac = min(1.0, (step - warm) / max(1, steps - warm))
    return peak * (0.1 + 0.9 * 0.5 * (1 + math.cos(math.pi * frac)))


def train_with_progress(bar: Any, err: Any, *, label: str, steps: int, work: Path, checkpoint: str,
                        info: Callable[[Any], str], note: Callable[[Any], str], train: Callable[[Any], Any]) -> Any:
    """``train(on_step)`` with a progress task (a ``dlm: note:`` line every 10 steps when not a terminal);
    Ctrl-C or SIGTERM keeps the finished steps in ``work / checkpoint`` and says so."""
    task = bar.add_task(label, total=steps, info="")

    def stepped(rep: Any) -> None:
        bar.update(task, completed=rep.step, info=info(rep))
        if not err.is_terminal and (rep.step % 10 == 0 or rep.step == steps):
            err.print(f"dlm: note: step {rep.step}/{steps} {note(rep)}", markup=False, highlight=False)

    try:
        return train(stepped)
    except INTERRUPTS:
        bar.stop()
        err.print(f"dlm: note: the finished steps are kept in {work / checkpoint}; rerun the same command to resume",
                  markup=False, highlight=False)
        raise


def stopped_early(step: int, steps: int, stop_step: int | None, work: Path, err: Any) -> bool:
    """Whether the run stopped before its last step (``--stop-minutes``), said in a note: nothing to export yet."""
    if step < min(steps, stop_step or steps):
        err.print(f"dlm: note: stopped at step {step}/{steps}; the checkpoint is in {work}, rerun the same "
                  "command to go on", markup=False, highlight=False)
        return True
    return False


def workspace(req: TrainRequest, model: Any, kind: str) -> tuple[str, str, Path]:
    """The model's name as asked, its spec as the recipe records it, and the work directory (created)."""
    name = req.model or model.info.name
    return name, spec_of(name), work_dir(req.work, kind, name, req.method)


def recipe_key(recipe: Any, *, optional: tuple[str, ...] = ()) -> str:
    """A short digest of everything in a recipe dataclass: a checkpoint of another recipe is refused by it.

    The ``optional`` fields are left out while they are None, so a field added later keeps the keys of
    the checkpoints written before it.
    """
    fields = {k: v for k, v in asdict(recipe).items() if not (k in optional and v is None)}
    return hashlib.sha256(json.dumps(fields, sort_keys=True).encode()).hexdigest()[:16]


@dataclass(kw_only=True)
class Report:
    """One finished training step, as the progress bar and the JSONL log see it."""

    step: int = 0
    loss: float = math.nan
    tokens_per_second: float = 0.0
