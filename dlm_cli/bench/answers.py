"""Each bench prompt's answer and score (``dlm bench --show``; always in ``--format json``/``jsonl``),
so a user sees which prompt failed and why."""

from __future__ import annotations

from typing import Any, Optional

from rich.console import Console


def expected(p: Any) -> Optional[str]:
    """The gold answer a prompt is scored against, where it has one (a typo fix: the clean paragraph)."""
    if p.answer is not None:
        return p.answer
    if p.example is not None and p.example.answer is not None:
        return p.example.answer
    if p.typo is not None:
        return p.typo.original
    return None


def answer(p: Any, text: str, score: Any) -> dict[str, Any]:
    return {"prompt": p.prompt, "task": p.task, "expected": expected(p), "answer": text,
            "score": float(score) if score is not None else None}


def _line(text: Optional[str]) -> str:
    return "" if text is None else text.replace("\n", "⏎ ")


def _mark(score: Optional[float]) -> str:
    if score is None:
        return "     -"
    return f"{'✓' if score >= 1 else '✗'} {score:4.2f}"


def render_answers(rows: list[Any], console: Console) -> None:
    """Per prompt: the prompt and its expected answer, then every row's answer with its score."""
    if not rows or not rows[0].answers:
        return
    width = max(len(r.profile) for r in rows)
    console.print("answers (score: 1 is right; a typo fix scores the share of typos fixed)", markup=False)
    for k, first in enumerate(rows[0].answers):
        task = f"{first['task']} · " if first["task"] else ""
        gold = f" → expected: {_line(first['expected'])}" if first["expected"] is not None else ""
        console.print(f"[{k + 1}] {task}{_line(first['prompt'])}{gold}", markup=False)
        for r in rows:
            if k < len(r.answers):
                a = r.answers[k]
                console.print(f"    {_mark(a['score'])}  {r.profile:<{width}}  {_line(a['answer'])}", markup=False)


def markdown_answers(rows: list[Any]) -> str:
    if not rows or not rows[0].answers:
        return ""
    out = ["", "| # | prompt | expected | profile | score | answer |", "|---|---|---|---|---|---|"]
    for k, first in enumerate(rows[0].answers):
        for r in rows:
            if k < len(r.answers):
                a = r.answers[k]
                cells = [str(k + 1), _line(a["prompt"]), _line(a["expected"]), r.profile,
                         "" if a["score"] is None else f"{a['score']:.2f}", _line(a["answer"])]
                out.append("| " + " | ".join(c.replace("|", "\\|") for c in cells) + " |")
    return "\n".join(out) + "\n"
