"""One bench prompt: its text and what scores the answer (shared by the bench and the data sets)."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Optional


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
