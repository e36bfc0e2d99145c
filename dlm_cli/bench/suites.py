"""The bench's prompts: the toy task suite, the held-out real-text suite, and the defaults sized for each."""

from __future__ import annotations

from typing import Optional, TYPE_CHECKING

from ..errors import UsageError
from ..evals.prompt import BenchPrompt

if TYPE_CHECKING:
    from ..models.protocols import Model


def toy_task_names(tasks: Optional[str]) -> list[str]:
    """The toy tasks ``--tasks`` names, groups expanded (``long``: the 40-200-token answers); the default suite
    without it."""
    from ..demo.tasks import GROUPS, TASKS, task_names

    names = [t.strip() for t in tasks.split(",") if t.strip()] if tasks else None
    try:
        return task_names(names)
    except ValueError:
        unknown = next(t for t in names or [] if t not in TASKS and t not in GROUPS)
        raise UsageError(f"--tasks: unknown task {unknown!r}; tasks: {', '.join(TASKS)} "
                         f"(groups: {', '.join(GROUPS)})") from None


def builtin_prompts(per_task: int, tasks: Optional[str]) -> list[BenchPrompt]:
    from ..demo.tasks import suite

    names = toy_task_names(tasks)
    try:
        examples = suite(per_task, tasks=names)
    except ValueError as e:
        raise UsageError(f"--per-task {per_task}: {e}") from None
    return [BenchPrompt(e.prompt, e.task, e.answer, example=e) for e in examples]


REAL_KINDS = ("typo", "chat", "continue", "reformat")
# The default real-text bench: one typo fix and one chat answer (a one-token-per-step baseline over
# 256 slots of a 135M dLLM costs about half a minute per prompt on 2 CPU cores); --tasks names more.
REAL_DEFAULT_KINDS = ("typo", "chat")
from ..demo.realtext import ANSWER_TOKENS as REAL_MAX_NEW_TOKENS  # noqa: E402, F401  (the real-text canvas)
# The toy long tasks' canvas when -n is not given: GSM8K's generation length, 2.5-6x their answers.
LONG_MAX_NEW_TOKENS = 256
# Defaults sized for about a minute on 2 CPU cores: the real model is slow, the toys are not.
REAL_PER_TASK, REAL_REPS = 1, 1
TOY_PER_TASK, TOY_REPS = 4, 3
WARMUP_TOKENS = 16


def realtext_prompts(per_task: int, tasks: Optional[str]) -> list[BenchPrompt]:
    """The held-out real-language suite (demo/realtext.py): typo fixes, chat, continuations, reformats."""
    from ..demo.realtext import eval_prompts

    kinds = [t.strip() for t in tasks.split(",")] if tasks else list(REAL_DEFAULT_KINDS)
    unknown = [k for k in kinds if k not in REAL_KINDS]
    if unknown:
        raise UsageError(f"--tasks: unknown task {unknown[0]!r} for a real-language model; tasks: "
                         f"{', '.join(REAL_KINDS)} (the toy tasks need -m dlm-demo)")
    every = eval_prompts()
    out = []
    for k in kinds:
        mine = [p for p in every if p.kind == k]
        if per_task > len(mine):
            raise UsageError(f"--per-task {per_task}: the {k} task has {len(mine)} held-out prompts")
        out += [BenchPrompt(p.prompt, k, p.answer if k == "reformat" else None, typo=p if k == "typo" else None)
                for p in mine[:per_task]]
    return out


def is_toy(model: Model) -> bool:
    """The demo task suite's own models (dlm-demo*), which only know its synthetic tasks."""
    from ..models.resolve import is_toy as toy_path

    return toy_path(model.info.path)
