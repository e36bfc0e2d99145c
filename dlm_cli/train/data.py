"""Prompts to distill on, and the teacher's answers to them (the trajectories' end points), cached and resumable.

Prompts come from a JSONL file (``{"prompt": ..., "answer": ...}`` per line, ``answer`` optional, as
``dlm bench --prompts`` reads) or from built-in suites (``--tasks``):

- ``realtext``: ``smollm2-dlm``'s kinds of work (typo fixing, reformatting, chat, continuation) over
  the prose paragraphs of the docstrings of the standard library *and* of every installed package
  (training split only: a paragraph's source file decides its split, so the held-out prompts of
  ``benchmarks/realtext.py`` never share a file with training);
- the demo task names (``copy``, ``sort``, ..., ``default``, ``long``): the toy suite's training stream.

Targets (dParallel trains on the model's own answers): each prompt is decoded by the teacher (the
model itself unless ``--teacher`` names another with the same tokenizer) with the teacher profile,
one commit per step by default. ``targets = "gold"`` uses a prompt's gold answer where it has one;
``check = True`` drops a teacher answer that differs from the gold one (dParallel drops wrong answers).
Answers are appended to ``answers.jsonl`` as they come, so an interrupted run resumes by prompt.
"""

from __future__ import annotations

import json
import os
import random
import sysconfig
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Iterable

from ..errors import DlmError, UsageError

REALTEXT = "realtext"
# The realtext suite's sampling weights per kind (as smollm2-dlm's adaptation mixed them).
REALTEXT_MIX = {"typo": 0.5, "reformat": 0.2, "chat": 0.2, "continue": 0.1}


@dataclass
class Item:
    prompt: str
    answer: str | None = None  # the gold answer, where one exists
    kind: str = "prompt"


def read_prompts(path: Path) -> list[Item]:
    """Items of a JSONL prompts file; a bad line is one ``dlm:`` line naming it."""
    try:
        text = path.read_text(encoding="utf-8")
    except FileNotFoundError:
        raise UsageError(f"--prompts {path}: no such file; give a JSONL file with one {{\"prompt\": ...}} per line") from None
    except (OSError, UnicodeDecodeError) as exc:
        raise UsageError(f"--prompts {path}: cannot read it ({exc}); give a UTF-8 JSONL file") from None
    items: list[Item] = []
    for n, line in enumerate(text.splitlines(), 1):
        if not line.strip():
            continue
        try:
            row = json.loads(line)
        except json.JSONDecodeError as exc:
            raise UsageError(f"--prompts {path}:{n}: not JSON ({exc.msg}); each line is one "
                             "{\"prompt\": ..., \"answer\": ...} object") from None
        if not isinstance(row, dict) or not isinstance(row.get("prompt"), str) or not row["prompt"].strip():
            raise UsageError(f"--prompts {path}:{n}: needs a non-empty string \"prompt\"")
        answer = row.get("answer")
        if answer is not None and not isinstance(answer, str):
            raise UsageError(f"--prompts {path}:{n}: \"answer\" must be a string when given")
        items.append(Item(row["prompt"], answer, str(row.get("kind", "prompt"))))
    if not items:
        raise UsageError(f"--prompts {path} holds no prompts")
    return items


def realtext_items(seed: int, n_chat: int, n_continue: int, site: bool = True) -> list[Item]:
    """smollm2-dlm's kinds of work over training-split paragraphs (standard library + installed packages)."""
    from ..demo import realtext as R

    rng = random.Random(seed)
    stdlib = R.paragraphs()
    paras = [p for p in stdlib if not p.held_out]
    if site:
        held = {p.text for p in stdlib if p.held_out}
        root = sysconfig.get_paths()["purelib"]
        for p in R.paragraphs(root=root, skip=()):
            if not p.held_out and p.text not in held:
                paras.append(R.Paragraph("site-packages/" + p.source, p.text))
    out: list[Item] = []
    for p in paras:
        t = R.typo_prompt(p, rng)
        out.append(Item(t.prompt, t.answer, "typo"))
        r = R.reformat_prompt(p, rng)
        if r is not None and rng.random() < 0.5:
            out.append(Item(r.prompt, r.answer, "reformat"))
    out += [Item(c.prompt, None, "chat") for c in R.chat_prompts(False, rng, n_chat)]
    rng.shuffle(paras)
    out += [Item(c.prompt, None, "continue") for c in (R.continue_prompt(p, rng) for p in paras[:n_continue])]
    rng.shuffle(out)
    return out


def demo_items(names: list[str], count: int, seed: int) -> list[Item]:
    from ..demo import tasks as T

    stream = T.training_stream(seed, T.task_names(names))
    rng = random.Random(seed)
    out = []
    for ex in stream:
        out.append(Item(ex.prompt, ex.target(rng), ex.task))
        if len(out) >= count:
            break
    return out


def task_items(tasks: list[str], *, seed: int, limit: int, n_chat: int, n_continue: int) -> list[Item]:
    if tasks == [REALTEXT]:
        return realtext_items(seed, n_chat, n_continue)
    if REALTEXT in tasks:
        raise UsageError("--tasks realtext cannot be mixed with demo task names; run them as two distillations")
    from ..demo import tasks as T

    try:
        T.task_names(tasks)
    except (KeyError, ValueError, DlmError) as exc:
        raise UsageError(f"--tasks: {exc}; use realtext or demo task names ({', '.join(T.GROUPS)} or "
                         f"{', '.join(T.DEFAULT_TASKS + T.LONG_TASKS)})") from None
    return demo_items(tasks, limit, seed)


def same_text(a: str, b: str) -> bool:
    return " ".join(a.split()) == " ".join(b.split())


def answers(items: list[Item], work: Path, *, encode: Callable[[str], list[int]],
            decode: Callable[[list[list[int]]], Iterable[tuple[int, list[int], bool]]] | None, end_id: int,
            targets: str, check: bool, tokenize: Callable[[str], list[int]], detokenize: Callable[[list[int]], str],
            progress: Callable[[int, int, int], None]) -> list[dict[str, Any]]:
    """Rows ``{prompt_ids, answer_ids, kind, source}`` for ``items``, the teacher's answers cached in ``work``.

    ``decode(prompts)`` yields ``(index, answer tokens, ended on an end token)`` for each of ``prompts``
    in any order (a batched teacher finishes short answers first); an ended answer gets ``end_id``
    appended (the model learns to stop). Each answer is written as it comes, so an interrupted run
    keeps them. ``progress(done, total, tokens)`` is called after each.
    """
    cache = work / "answers.jsonl"
    done: dict[str, dict[str, Any]] = {}
    if cache.is_file():
        lines = cache.read_text(encoding="utf-8").splitlines()
        for n, line in enumerate(lines, 1):
            try:
                row = json.loads(line)
                done[row["prompt"]] = row
            except (json.JSONDecodeError, KeyError, TypeError):
                if n < len(lines):
                    raise DlmError(f"{cache}:{n} is damaged; delete the file to decode the teacher's answers again") from None
                # the last line of an interrupted write: decoded again below
    todo, seen = [], set()
    for it in items:
        if it.prompt not in done and it.prompt not in seen and not (targets == "gold" and it.answer is not None):
            todo.append(it)
            seen.add(it.prompt)
    if todo and decode is None:
        raise DlmError("internal: answers to decode but no teacher")
    made = 0
    if todo:
        with open(cache, "a", encoding="utf-8") as fh:
            for k, (i, ids, ended) in enumerate(decode([encode(it.prompt) for it in todo]), 1):  # type: ignore[misc]
                row = {"prompt": todo[i].prompt, "answer_ids": ids + ([end_id] if ended else [])}
                fh.write(json.dumps(row) + "\n")
                fh.flush()
                done[todo[i].prompt] = row
                made += len(ids)
                progress(k, len(todo), made)
    rows = []
    for it in items:
        if targets == "gold" and it.answer is not None:
            rows.append({"prompt_ids": encode(it.prompt), "answer_ids": tokenize(it.answer) + [end_id],
                         "kind": it.kind, "source": "gold"})
            continue
        row = done[it.prompt]
        if check and it.answer is not None:
            ids = [t for t in row["answer_ids"] if t != end_id]
            if not same_text(detokenize(ids), it.answer):
                continue
        if len(row["answer_ids"]) == 0:
            continue
        rows.append({"prompt_ids": encode(it.prompt), "answer_ids": row["answer_ids"], "kind": it.kind,
                     "source": "teacher"})
    return rows


def write_rows(path: Path, rows: Iterable[dict[str, Any]]) -> None:
    tmp = path.with_suffix(".tmp")
    with open(tmp, "w", encoding="utf-8") as fh:
        for row in rows:
            fh.write(json.dumps(row) + "\n")
    os.replace(tmp, path)


def log_line(path: Path, record: dict[str, Any]) -> None:
    with open(path, "a", encoding="utf-8") as fh:
        fh.write(json.dumps({"time": round(time.time(), 3), **record}) + "\n")
