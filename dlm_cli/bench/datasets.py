"""``dlm bench --dataset NAME``: the prompts of a published data set, scored by its own rule."""

from __future__ import annotations

from typing import Any

from ..errors import UsageError

DATASETS = ("humaneval",)
DEFAULT_MAX_NEW_TOKENS = 256  # a HumanEval function body fits; -n overrides it


def dataset_prompts(req: Any) -> list[Any]:
    """The prompts of ``req.dataset`` (the first ``req.limit``), and the request set up for them:
    raw completions (no chat template) and, unless ``-n`` was given, 256 new tokens."""
    from ..evals.prompt import BenchPrompt

    if req.dataset not in DATASETS:
        raise UsageError(f"--dataset: unknown data set {req.dataset!r}; data sets: {', '.join(DATASETS)}")
    for flag, value in (("--prompts", req.prompts), ("--tasks", req.tasks)):
        if value:
            raise UsageError(f"--dataset {req.dataset} brings its own prompts; drop {flag}")
    from ..evals.humaneval import problems

    chosen = problems()[: req.limit] if req.limit else problems()
    req.chat_template = False  # code prompts are completions; a chat template would wrap them as a question
    if req.flags.get("max_new_tokens") is None:
        req.flags = {**req.flags, "max_new_tokens": DEFAULT_MAX_NEW_TOKENS}
    return [BenchPrompt(p.prompt, "humaneval", problem=p) for p in chosen]
