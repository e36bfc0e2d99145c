"""``dlm bench``: the same prompts through the baseline and several profiles, in one process and one run.

It consumes the decoders' events and only counts: NFE, generated tokens, decode seconds, TTFT,
agreement with the baseline's output, and the task score where prompts have verifiable answers.
Profiles are interleaved prompt by prompt so that machine noise hits them alike; one warmup run
per profile comes first. Speedup is baseline seconds ÷ profile seconds over the same prompts.
"""

from __future__ import annotations

import json
import statistics
import sys
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Callable, Optional

from rich.console import Console
from rich.table import Table

from .errors import INTERRUPTS, UsageError


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


@dataclass
class Row:
    profile: str
    strategy: str
    runs: int = 0
    nfe: float = 0.0
    draft_nfe: float = 0.0
    generated_tokens: float = 0.0
    tokens_per_nfe: float = 0.0
    tokens_per_second: float = 0.0
    tokens_per_second_std: float = 0.0
    seconds: float = 0.0
    ttft_seconds: float = 0.0
    speedup: float = 1.0
    agreement: float = 1.0
    score: Optional[float] = None
    task_scores: dict[str, float] = field(default_factory=dict)
    acceptance_rate: Optional[float] = None
    warnings: list[str] = field(default_factory=list)


@dataclass
class BenchRequest:
    model: Optional[str]
    draft: Optional[str]
    profiles: Optional[str]
    prompts: Optional[Path]
    reps: int
    per_task: int
    tasks: Optional[str]
    flags: dict[str, Any]
    sets: list[str]
    json_out: bool
    chat_template: bool
    allow_different_tokenizers: bool
    load: Any
    dataset: Optional[str] = None  # a published data set instead of the suite (evals.datasets.DATASETS)
    limit: Optional[int] = None  # its first N problems


def load_prompts(path: Path) -> list[BenchPrompt]:
    """Prompts from a JSONL file: one object per line with "prompt" and optional "answer", "match", "task",
    "system" (``match``: exact, contains, number or regex; see :mod:`dlm_cli.evals.scoring`)."""
    from .evals.scoring import check_answer

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


def builtin_prompts(per_task: int, tasks: Optional[str]) -> list[BenchPrompt]:
    from .demo.tasks import TASKS, suite

    names = [t.strip() for t in tasks.split(",")] if tasks else None
    if names:
        unknown = [t for t in names if t not in TASKS]
        if unknown:
            raise UsageError(f"--tasks: unknown task {unknown[0]!r}; tasks: {', '.join(TASKS)}")
    try:
        examples = suite(per_task, tasks=names)
    except ValueError as e:
        raise UsageError(f"--per-task {per_task}: {e}") from None
    return [BenchPrompt(e.prompt, e.task, e.answer, example=e) for e in examples]


REAL_KINDS = ("typo", "chat", "continue", "reformat")
REAL_MAX_NEW_TOKENS = 256


def realtext_prompts(per_task: int, tasks: Optional[str]) -> list[BenchPrompt]:
    """The held-out real-language suite (demo/realtext.py): typo fixes, chat, continuations, reformats."""
    from .demo.realtext import eval_prompts

    kinds = [t.strip() for t in tasks.split(",")] if tasks else list(REAL_KINDS)
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


def is_toy(model: Any) -> bool:
    """The demo task suite's own models (dlm-demo*), which only know its synthetic tasks."""
    from .models.loading import DEMO_DIR, REAL_DEFAULT

    path = Path(model.info.path).resolve()
    return path.parent == DEMO_DIR.resolve() and path.name != REAL_DEFAULT


def score(p: BenchPrompt, text: str) -> Optional[float]:
    if p.problem is not None:
        from .evals.humaneval import passes

        return passes(p.problem, text)
    if p.typo is not None:
        from .demo.realtext import typo_scores

        return typo_scores(p.typo.original, p.typo.noisy, p.typo.typos, text)[0]
    if p.example is not None:
        from .demo.tasks import TASKS

        return bool(TASKS[p.example.task].score(p.example, text))
    if p.answer is not None:
        from .evals.scoring import matches

        return matches(p.answer, p.match, text)
    return None


def _consume(events: Any) -> Any:
    done = None
    for ev in events:
        done = ev
    return done


def run_bench(model: Any, draft: Any, runs: list[tuple[str, Any]], prompts: list[BenchPrompt], reps: int,
              *, chat_template: bool = True, progress: Optional[Callable[[], None]] = None) -> list[Row]:
    """Run every (profile name, settings) pair on every prompt, ``reps`` times; the first pair is the baseline."""
    from .decode import run
    from .prompting import check_length, encode

    ids = [encode(model.tokenizer, p.prompt, system=p.system, chat_template=chat_template) for p in prompts]
    from .generate import fit_length

    for _, s in runs:
        fit_length(s, model, [len(i) for i in ids])
    for i in ids:
        for _, s in runs:
            check_length(len(i), s.max_new_tokens, model.max_length, model.info.name)
    for _, s in runs:  # warmup: first-call allocations and lazy init stay out of the timings
        _consume(run(model, ids[0], s, draft=draft))
    seed0 = {name: s.seed for name, s in runs}
    seconds = {name: [0.0] * reps for name, _ in runs}
    dones: dict[str, list[Any]] = {name: [] for name, _ in runs}
    stopped: BaseException | None = None
    try:
        for rep in range(reps):
            for k, prompt_ids in enumerate(ids):
                for name, s in runs:
                    s.seed = seed0[name] + k  # same seeds across reps and profiles: comparable samples
                    done = _consume(run(model, prompt_ids, s, draft=draft))
                    seconds[name][rep] += done.seconds
                    if rep == 0:
                        dones[name].append(done)
                    if progress:
                        progress()
    except INTERRUPTS as exc:  # Ctrl-C or SIGTERM: the rows over the prompts every profile finished
        stopped, reps = exc, 1
        m = min(len(d) for d in dones.values())
        if m == 0:
            raise
        prompts = prompts[:m]
        for name in dones:
            dones[name] = dones[name][:m]
            seconds[name] = [sum(d.seconds for d in dones[name])]
    base_name = runs[0][0]
    base_seconds = statistics.mean(seconds[base_name])
    rows = []
    for name, s in runs:
        ds = dones[name]
        tok = sum(len(d.tokens) for d in ds)
        nfe = sum(d.nfe for d in ds)
        rates = [tok / t if t > 0 else 0.0 for t in seconds[name]]
        row = Row(profile=name, strategy=s.strategy, runs=len(ds) * reps, nfe=nfe / len(ds),
                  generated_tokens=tok / len(ds), tokens_per_nfe=tok / nfe if nfe else 0.0,
                  tokens_per_second=statistics.mean(rates),
                  tokens_per_second_std=statistics.stdev(rates) if len(rates) > 1 else 0.0,
                  seconds=statistics.mean(seconds[name]),
                  ttft_seconds=statistics.mean(d.ttft_seconds or 0.0 for d in ds))
        row.speedup = base_seconds / row.seconds if row.seconds > 0 else 0.0
        row.agreement = sum(d.tokens == b.tokens for d, b in zip(ds, dones[base_name])) / len(ds)
        row.draft_nfe = sum(d.draft_nfe or 0 for d in ds) / len(ds)
        drafted = sum(d.drafted or 0 for d in ds)
        if drafted:
            row.acceptance_rate = sum(d.accepted or 0 for d in ds) / drafted
        scores: dict[str, list[bool]] = {}
        for p, d in zip(prompts, ds):
            ok = score(p, model.tokenizer.decode(d.tokens, skip_special_tokens=True))
            if ok is not None:
                scores.setdefault(p.task or "all", []).append(ok)
        if scores:
            flat = [x for v in scores.values() for x in v]
            row.score = sum(flat) / len(flat)
            row.task_scores = {t: sum(v) / len(v) for t, v in scores.items()}
        if name != base_name and row.speedup < 1.0:
            row.warnings.append("slower than the baseline")
        if s.strategy in ("speculative", "lookup") and not drafted:
            row.warnings.append("drafted nothing")
        rows.append(row)
    if stopped is not None:
        raise BenchInterrupted(rows, len(prompts), stopped)
    return rows


class BenchInterrupted(Exception):
    """A bench stopped early: the rows over the first ``prompts`` prompts (one rep), and what stopped it."""

    def __init__(self, rows: list[Row], prompts: int, cause: BaseException) -> None:
        super().__init__(f"interrupted after {prompts} prompts")
        self.rows, self.prompts, self.cause = rows, prompts, cause


def render(rows: list[Row], console: Console, title: str) -> None:
    table = Table(title=title, title_justify="left")
    for col in ("profile", "strategy", "NFE", "tok/NFE", "tok/s", "speedup", "agree", "score", "note"):
        table.add_column(col, justify="left" if col in ("profile", "strategy", "note") else "right")
    for r in rows:
        score = "" if r.score is None else f"{r.score:.1%}"
        note = "; ".join(r.warnings)
        if r.acceptance_rate is not None:
            drafts = f", draft NFE {r.draft_nfe:.1f}" if r.draft_nfe else ""
            note = f"accept {r.acceptance_rate:.0%}{drafts}" + (f"; {note}" if note else "")
        table.add_row(r.profile, r.strategy, f"{r.nfe:.1f}", f"{r.tokens_per_nfe:.2f}",
                      f"{r.tokens_per_second:.1f} ± {r.tokens_per_second_std:.1f}", f"{r.speedup:.2f}×",
                      f"{r.agreement:.0%}", score, note, style="yellow" if r.warnings else None)
    console.print(table)
    tasks = sorted({t for r in rows for t in r.task_scores})
    if tasks and tasks != ["all"]:
        per = Table(title="score by task", title_justify="left")
        per.add_column("profile")
        for t in tasks:
            per.add_column(t, justify="right")
        for r in rows:
            per.add_row(r.profile, *[f"{r.task_scores[t]:.0%}" if t in r.task_scores else "" for t in tasks])
        console.print(per)


def run_bench_command(req: BenchRequest, *, load_model: Callable[..., Any]) -> None:
    from . import profiles as prof
    from .decode.keys import STRATEGIES

    from .demo.tasks import TASKS
    from .models.loading import TOY_DEFAULT

    err = Console(stderr=True, highlight=False)
    file_prompts = load_prompts(req.prompts) if req.prompts else None
    if req.dataset:  # raw completions scored by the data set's own rule (evals/datasets.py)
        from .evals.datasets import dataset_prompts

        file_prompts = dataset_prompts(req)
    asked = [t.strip() for t in req.tasks.split(",")] if req.tasks else []
    spec = req.model
    if spec is None and asked and any(t in TASKS for t in asked):
        spec = TOY_DEFAULT  # the toy tasks are only known to the toy models
    model = load_model(spec, req.load, err)
    if file_prompts is not None:
        prompts = file_prompts
    elif is_toy(model):
        prompts = builtin_prompts(req.per_task, req.tasks)
    else:
        prompts = realtext_prompts(req.per_task, req.tasks)
        if req.flags.get("max_new_tokens") is None:  # a fixed paragraph is ~100-200 tokens
            req.flags = {**req.flags, "max_new_tokens": REAL_MAX_NEW_TOKENS}
    diffusion = model.kind == "diffusion"
    names = [n.strip() for n in (req.profiles or ("speedy" if diffusion else "speculative,lookup")).split(",")
             if n.strip()]
    baseline = "baseline" if diffusion else "ar"
    runs = [(baseline, prof.load(baseline, flags=req.flags))]
    for n in names:
        s = prof.load(n, sets=req.sets, flags=req.flags)
        if req.allow_different_tokenizers and "allow_different_tokenizers" in s.values:
            s.allow_different_tokenizers = True
        if STRATEGIES[s.strategy].kind != model.kind:
            raise UsageError(f"profile {n!r} (strategy {s.strategy}) does not fit {model.info.name}, "
                             f"which is {'a diffusion LLM' if diffusion else 'an autoregressive LM'}")
        if s.frozen() == runs[0][1].frozen():  # e.g. quality is the baseline: one row, not two of one configuration
            err.print(f"dlm: {n} decodes exactly as the baseline ({baseline}); its row is the baseline's",
                      markup=False, highlight=False)
            continue
        runs.append((s.profile if n == s.profile else n, s))
    draft_spec = req.draft or next((s.meta.get("draft") for _, s in runs if s.meta.get("draft")), None)
    draft = load_model(draft_spec, req.load, err, role="draft") if draft_spec and not diffusion else None
    if draft is None and not diffusion:
        needy = [n for n, s in runs if s.strategy == "speculative"]
        if needy and req.profiles:
            raise UsageError(f"profile {needy[0]!r} drafts with a draft model: pass --draft MODEL, "
                             "or compare -p lookup, which needs none")
        runs = [(n, s) for n, s in runs if s.strategy != "speculative"]  # the default list, without a draft

    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeRemainingColumn

    total = req.reps * len(prompts) * len(runs)
    with Progress(TextColumn("bench"), BarColumn(), MofNCompleteColumn(), TimeRemainingColumn(),
                  console=err, transient=True, disable=not err.is_terminal) as bar:
        task = bar.add_task("runs", total=total)
        stopped = None
        try:
            rows = run_bench(model, draft, runs, prompts, req.reps, chat_template=req.chat_template,
                             progress=lambda: bar.advance(task))
        except BenchInterrupted as exc:
            rows, stopped = exc.rows, exc
    n, reps = (len(prompts), req.reps) if stopped is None else (stopped.prompts, 1)
    title = (f"{model.info.name} · {n} prompts × {reps} reps · baseline {baseline} · "
             f"{model.info.device}" + (f" · interrupted: {n} of {len(prompts)} prompts" if stopped else ""))
    if req.json_out:
        payload = {"model": model.info.name, "device": model.info.device, "prompts": n,
                   "reps": reps, "baseline": baseline, "interrupted": stopped is not None,
                   "rows": [asdict(r) for r in rows]}
        sys.stdout.write(json.dumps(payload, indent=2) + "\n")
    else:
        render(rows, Console(highlight=False), title)
    if stopped is not None:
        raise stopped.cause  # the CLI ends it with one line and 130 (143 for SIGTERM)
