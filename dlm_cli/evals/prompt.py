"""One bench prompt: its text and what scores the answer (shared by the bench and the data sets)."""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Optional

from ..errors import UsageError


@dataclass
class BenchPrompt:
    prompt: str
    task: Optional[str] = None
    answer: Optional[str] = None
    system: Optional[str] = None
    example: Any = None  # a demo-suite Example, scored by its task
    typo: Any = None  # a real-text typo prompt (demo.realtext.Prompt), scored by the share of typos fixed
    match: str = "exact"  # how ``answer`` is checked (evals.scoring.MATCHES)
    problem: Any = None  # a HumanEval problem (evals.humaneval.Problem), scored by running its tests


def load_prompts(path: Path) -> list[BenchPrompt]:
    """Prompts from a JSONL file: one object per line with "prompt" and optional "answer", "match", "task",
    "system" (``match``: exact, contains, number or regex; see :mod:`dlm_cli.evals.scoring`)."""
    from .scoring import check_answer

    try:
        lines = Path(path).read_text(encoding="utf-8").splitlines()
    except (OSError, UnicodeDecodeError) as exc:
        raise UsageError(f"cannot read --prompts {path}: {exc}") from None
    out = []
    for n, line in enumerate(lines, 1):
        if not line.strip():
            continue
        try:
            obj = json.loads(line)
        except json.JSONDecodeError as exc:
            raise UsageError(f"{path}:{n} is not valid JSON ({exc.msg}); each line must be one JSON object") from None
        if not isinstance(obj, dict) or not isinstance(obj.get("prompt"), str) or not obj["prompt"].strip():
            raise UsageError(f'{path}:{n} needs a non-empty "prompt" string, e.g. {{"prompt": "Sort: 3 1 2"}}')
        answer, match = obj.get("answer"), obj.get("match")
        if answer is not None or match is not None:
            answer, match = check_answer(answer, match, f"{path}:{n}")
        out.append(BenchPrompt(obj["prompt"], obj.get("task"), answer, obj.get("system"), match=match or "exact"))
    if not out:
        raise UsageError(f"{path} has no prompts; put one JSON object per line")
    return out


def score(p: BenchPrompt, text: str) -> Optional[float]:
    if p.problem is not None:
        from .humaneval import passes

        return passes(p.problem, text)
    if p.typo is not None:
        from ..demo.realtext import typo_scores

        return typo_scores(p.typo.original, p.typo.noisy, p.typo.typos, text)[0]
    if p.example is not None:
        from ..demo.tasks import TASKS

        return bool(TASKS[p.example.task].score(p.example, text))
    if p.answer is not None:
        from .scoring import matches

        return matches(p.answer, p.match, text)
    return None
