"""``dlm bench``: the same prompts through the baseline and several profiles, in one process and one run.

It consumes the decoders' events and only counts: NFE, generated tokens, decode seconds, TTFT,
agreement with the baseline's output, and the task score where prompts have verifiable answers.
Profiles are interleaved prompt by prompt so that machine noise hits them alike; one short warm-up
run per profile comes first. Speedup is baseline seconds ÷ profile seconds over the same prompts.
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
from .evals.prompt import BenchPrompt
from .answers import answer, markdown_answers, render_answers
from .tables import count, table_console


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
    tokens_per_second_iqr: tuple[float, float] = (0.0, 0.0)
    seconds: float = 0.0
    ttft_seconds: float = 0.0
    prefill_seconds: float = 0.0
    decode_seconds: float = 0.0
    speedup: float = 1.0
    speedup_iqr: tuple[float, float] = (1.0, 1.0)
    speedup_plain: float = 1.0
    agreement: float = 1.0
    score: Optional[float] = None
    task_scores: dict[str, float] = field(default_factory=dict)
    acceptance_rate: Optional[float] = None
    peak_memory_mb: float = 0.0
    weight_gbps: float = 0.0
    sweep: dict[str, str] = field(default_factory=dict)
    baseline: bool = False
    cache: Optional[str] = None
    warnings: list[str] = field(default_factory=list)
    answers: list[dict[str, Any]] = field(default_factory=list)  # per prompt (first rep): text, expected, score
    batch_size: int = 1


FORMULAS = {
    "tokens_per_nfe": "generated tokens / NFE, where generated tokens stop before the first end token "
                      "(no padding, nothing after it) and NFE counts the model's forward passes",
    "tokens_per_second": "generated tokens / decode seconds over all prompts; the median over reps (IQR)",
    "speedup": "headline baseline seconds / row seconds over the same prompts (ratio of sums, median over "
               "reps); the headline baseline is one token per step with EoTP (it stops at the end token) for "
               "a dLLM, ar for an AR model; ( ) is the IQR of the per-prompt ratios",
    "speedup_plain": "one-token-per-step baseline without EoTP (it decodes every slot) seconds / row seconds",
    "agreement": "share of prompts whose generated tokens equal the first baseline's",
    "prefill_seconds": "mean time to the first committed token (the prompt's forward and the first step)",
    "decode_seconds": "mean seconds per prompt after the first committed token (seconds - prefill seconds)",
    "weight_gbps": "weight bytes x forwards per second (draft forwards at the draft's bytes), as gpt-fast "
                   "reports it; hold it against the machine's copy bandwidth (2 x bytes / seconds of a 256 MiB "
                   "copy)",
    "peak_memory_mb": "CUDA: the allocator's peak; CPU: the process's resident set, sampled at every event",
    "batch_size": "prompts decoded together, one forward per step (--batch-size); a batch's seconds are split "
                  "evenly over its prompts, and a prompt's TTFT counts from its batch's start",
}


@dataclass
class BenchRequest:
    model: Optional[str]
    draft: Optional[str]
    profiles: Optional[str]
    prompts: Optional[Path]
    reps: Optional[int]  # None: 1 for a real model, 3 for the toys
    per_task: Optional[int]
    tasks: Optional[str]
    flags: dict[str, Any]
    sets: list[str]
    json_out: bool
    chat_template: bool
    allow_different_tokenizers: bool
    load: Any
    format: str = "table"
    calibrate: bool = False
    show: bool = False  # --show: every prompt's answer and score after the tables
    dataset: Optional[str] = None  # a published data set instead of the suite (evals.datasets.DATASETS)
    limit: Optional[int] = None  # its first N problems
    batch_size: int = 1  # prompts decoded together (decode/batch.py)


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


def toy_task_names(tasks: Optional[str]) -> list[str]:
    """The toy tasks ``--tasks`` names, groups expanded (``long``: the 40-200-token answers); the default suite
    without it."""
    from .demo.tasks import GROUPS, TASKS, task_names

    names = [t.strip() for t in tasks.split(",") if t.strip()] if tasks else None
    try:
        return task_names(names)
    except ValueError:
        unknown = next(t for t in names or [] if t not in TASKS and t not in GROUPS)
        raise UsageError(f"--tasks: unknown task {unknown!r}; tasks: {', '.join(TASKS)} "
                         f"(groups: {', '.join(GROUPS)})") from None


def builtin_prompts(per_task: int, tasks: Optional[str]) -> list[BenchPrompt]:
    from .demo.tasks import suite

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
REAL_MAX_NEW_TOKENS = 256
# The toy long tasks' canvas when -n is not given: GSM8K's generation length, 2.5-6x their answers.
LONG_MAX_NEW_TOKENS = 256
# Defaults sized for about a minute on 2 CPU cores: the real model is slow, the toys are not.
REAL_PER_TASK, REAL_REPS = 1, 1
TOY_PER_TASK, TOY_REPS = 4, 3
WARMUP_TOKENS = 16


def realtext_prompts(per_task: int, tasks: Optional[str]) -> list[BenchPrompt]:
    """The held-out real-language suite (demo/realtext.py): typo fixes, chat, continuations, reformats."""
    from .demo.realtext import eval_prompts

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


def is_toy(model: Any) -> bool:
    """The demo task suite's own models (dlm-demo*), which only know its synthetic tasks."""
    from .models.resolve import is_toy as toy_path

    return toy_path(model.info.path)


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


def _median(xs: list[float]) -> float:
    return statistics.median(xs) if xs else 0.0


def _iqr(xs: list[float]) -> tuple[float, float]:
    """The first and third quartiles (the values themselves for fewer than four)."""
    if len(xs) < 4:
        return (min(xs), max(xs)) if xs else (0.0, 0.0)
    q = statistics.quantiles(xs, n=4, method="inclusive")
    return q[0], q[2]


def run_bench(model: Any, draft: Any, runs: list[tuple[str, Any]], prompts: list[BenchPrompt], reps: int,
              *, chat_template: bool = True, progress: Optional[Callable[[], None]] = None,
              baselines: int = 1, sweeps: Optional[dict[str, dict[str, str]]] = None,
              batch_size: int = 1) -> list[Row]:
    """Run every (row name, settings) pair on every prompt, ``reps`` times.

    The first ``baselines`` pairs are baselines: agreement is against the first, speedup against the
    last of them (the headline), ``speedup_plain`` against the first.
    """
    from .bench_batch import decode_chunk
    from .decode import run
    from .machine import PeakMemory, weight_bytes
    from .models.resolve import check_trained
    from .prompting import check_length, encode, fit_length

    ids = [encode(model.tokenizer, p.prompt, system=p.system, chat_template=chat_template) for p in prompts]

    for _, s in runs:
        fit_length(s, model, [len(i) for i in ids])
    for i in ids:
        for _, s in runs:
            check_length(len(i), s.max_new_tokens, model.max_length, model.info.name)
    for _, s in runs:
        check_trained(model, s.max_new_tokens)
    from .decode import resolve_seed

    for _, s in runs:  # warm-up: first-call allocations and lazy init stay out of the timings
        resolve_seed(s)
        # A short run does it: a full one-token-per-step baseline would cost minutes on a real model.
        warm = type(s)(s.profile, {**s.values, "max_new_tokens": min(s.max_new_tokens, WARMUP_TOKENS)},
                       dict(s.sources), dict(s.meta))
        if batch_size > 1:
            decode_chunk(model, ids[:batch_size], warm)
        else:
            _consume(run(model, ids[0], warm, draft=draft))
    seed0 = {name: s.seed for name, s in runs}
    seconds = {name: [[0.0] * len(ids) for _ in range(reps)] for name, _ in runs}
    dones: dict[str, list[Any]] = {name: [] for name, _ in runs}
    memory = {name: PeakMemory(model.info.device) for name, _ in runs}
    stopped: BaseException | None = None
    try:
        for rep in range(reps):
            for a in range(0, len(ids), batch_size) if batch_size > 1 else ():
                for name, s in runs:
                    s.seed = seed0[name] + a  # row j of the batch draws from seed + j: prompt a + j's seed
                    got, spent = decode_chunk(model, ids[a : a + batch_size], s, memory[name].watch)
                    for j, done in enumerate(got):
                        seconds[name][rep][a + j] = spent / len(got)
                        if rep == 0:
                            dones[name].append(done)
                        if progress:
                            progress()
            for k, prompt_ids in enumerate(ids if batch_size == 1 else ()):
                for name, s in runs:
                    s.seed = seed0[name] + k  # same seeds across reps and profiles: comparable samples
                    done = _consume(memory[name].watch(run(model, prompt_ids, s, draft=draft)))
                    seconds[name][rep][k] = done.seconds
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
            seconds[name] = [[d.seconds for d in dones[name]]]
    n = len(dones[runs[0][0]])
    per_prompt = {name: [_median([seconds[name][r][k] for r in range(reps)]) for k in range(n)] for name, _ in runs}
    totals = {name: [sum(seconds[name][r][:n]) for r in range(reps)] for name, _ in runs}
    plain, head = runs[0][0], runs[baselines - 1][0]
    head_total, plain_total = _median(totals[head]), _median(totals[plain])
    own_bytes = weight_bytes(model)
    draft_bytes = weight_bytes(draft) if draft is not None else 0
    rows = []
    for idx, (name, s) in enumerate(runs):
        ds = dones[name]
        tok = sum(len(d.tokens) for d in ds)
        nfe = sum(d.nfe for d in ds)
        draft_nfe = sum(d.draft_nfe or 0 for d in ds)
        total = _median(totals[name])
        rates = [tok / t if t > 0 else 0.0 for t in totals[name]]
        ttft = [d.ttft_seconds or 0.0 for d in ds]
        decode_s = total - sum(ttft)
        row = Row(profile=name, strategy=s.strategy, runs=len(ds) * reps, nfe=nfe / len(ds),
                  generated_tokens=tok / len(ds), tokens_per_nfe=tok / nfe if nfe else 0.0,
                  tokens_per_second=_median(rates), tokens_per_second_iqr=_iqr(rates), seconds=total,
                  ttft_seconds=statistics.mean(ttft), prefill_seconds=statistics.mean(ttft),
                  decode_seconds=max(decode_s, 0.0) / len(ds),
                  baseline=idx < baselines, sweep=dict((sweeps or {}).get(name, {})),
                  cache=getattr(s.frozen(), "cache", None), batch_size=batch_size)
        row.speedup = head_total / total if total > 0 else 0.0
        row.speedup_plain = plain_total / total if total > 0 else 0.0
        ratios = [b / t for b, t in zip(per_prompt[head], per_prompt[name]) if t > 0]
        row.speedup_iqr = _iqr(ratios)
        row.agreement = sum(d.tokens == b.tokens for d, b in zip(ds, dones[plain])) / len(ds)
        row.draft_nfe = draft_nfe / len(ds)
        if total > 0:
            row.weight_gbps = (own_bytes * nfe + draft_bytes * draft_nfe) / total / 1e9
        row.peak_memory_mb = memory[name].peak / 2**20
        drafted = sum(d.drafted or 0 for d in ds)
        if drafted:
            row.acceptance_rate = sum(d.accepted or 0 for d in ds) / drafted
        scores: dict[str, list[bool]] = {}
        for p, d in zip(prompts, ds):
            text = model.tokenizer.decode(d.tokens, skip_special_tokens=True)
            ok = score(p, text)
            row.answers.append(answer(p, text, ok))
            if ok is not None:
                scores.setdefault(p.task or "all", []).append(ok)
        if scores:
            flat = [x for v in scores.values() for x in v]
            row.score = sum(flat) / len(flat)
            row.task_scores = {t: sum(v) / len(v) for t, v in scores.items()}
        if not row.baseline and row.speedup < 1.0:
            row.warnings.append(f"slower than the baseline ({head})")
        if s.strategy in ("speculative", "lookup", "diffuspec") and not drafted:
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


COLUMNS = ("profile", "strategy", "NFE", "tok/NFE", "tok/s", "speedup", "×plain", "agree", "score", "note")
MACHINE_COLUMNS = ("profile", "prefill", "decode", "GB/s", "peak MB")


def _columns(diffusion: bool) -> tuple[str, ...]:
    return COLUMNS if diffusion else tuple(c for c in COLUMNS if c != "×plain")


def _short(x: float) -> str:
    return f"{x:.2f}" if x < 10 else f"{x:.1f}" if x < 100 else f"{x:.0f}"


def _cells(r: Row, diffusion: bool, *, rate_spread: bool = True) -> list[str]:
    note = "; ".join(r.warnings)
    if r.acceptance_rate is not None:
        drafts = f", draft NFE {r.draft_nfe:.1f}" if r.draft_nfe else ""
        note = f"accept {r.acceptance_rate:.0%}{drafts}" + (f"; {note}" if note else "")
    lo, hi = r.speedup_iqr
    speed = f"{r.speedup:.2f}×" + ("" if r.baseline and abs(lo - 1) < 1e-9 and abs(hi - 1) < 1e-9
                                   else f" ({_short(lo)}–{_short(hi)})")
    lo, hi = r.tokens_per_second_iqr
    rate = f"{r.tokens_per_second:.1f}" + (f" ({lo:.1f}–{hi:.1f})" if rate_spread and hi - lo > 1e-9 else "")
    score = "" if r.score is None else f"{r.score:.0%}" if r.score in (0, 1) else f"{r.score:.1%}"
    cells = [r.profile, r.strategy, f"{r.nfe:.1f}", f"{r.tokens_per_nfe:.2f}", rate, speed,
             f"{r.speedup_plain:.2f}×", f"{r.agreement:.0%}", score, note]
    return cells if diffusion else cells[:6] + cells[7:]


def _machine_cells(r: Row, copy_gbps: Optional[float]) -> list[str]:
    share = f" ({r.weight_gbps / copy_gbps:.0%})" if copy_gbps else ""
    return [r.profile, f"{r.prefill_seconds * 1000:.0f} ms", f"{r.decode_seconds * 1000:.0f} ms",
            f"{r.weight_gbps:.2f}{share}", f"{r.peak_memory_mb:.0f}"]


FOOTNOTE = ("tok/NFE = generated tokens (stopped before the end token, no padding) / forward passes; "
            "tok/s = generated tokens / decode seconds, median over reps; speedup = headline baseline "
            "seconds / row seconds on the same prompts (IQR of the per-prompt ratios); the headline baseline "
            "is {head}{plain}; agree = outputs equal to {first}'s.")
MACHINE_FOOTNOTE = ("prefill = mean time to the first committed token (the prompt's forward and the first "
                    "step); decode = mean time per prompt after it; GB/s = weight bytes × forwards per second{copy}; "
                    "peak MB = {memory}.")


def footnote(rows: list[Row], diffusion: bool, copy_gbps: Optional[float], device: str) -> tuple[str, str]:
    base = [r.profile for r in rows if r.baseline]
    plain = f"; ×plain = {base[0]} seconds / row seconds" if diffusion else ""
    cached = next((r for r in rows if r.baseline and r.cache == "prefix"), None)
    if cached is not None:
        plain += " (the baselines keep the model's exact prefix KV cache)"
    copy = f" (in parentheses: of this machine's copy bandwidth, {copy_gbps:.1f} GB/s)" if copy_gbps else ""
    memory = "the CUDA allocator's peak" if device.startswith("cuda") else "the process's resident set, sampled at each step"
    return (FOOTNOTE.format(head=base[-1] if base else "", plain=plain, first=base[0] if base else ""),
            MACHINE_FOOTNOTE.format(copy=copy, memory=memory))


def render(rows: list[Row], console: Console, title: str, *, diffusion: bool = True,
           copy_gbps: Optional[float] = None, device: str = "cpu") -> None:
    speed_note, machine_note = footnote(rows, diffusion, copy_gbps, device)
    from rich import box

    table = Table(title=title, title_justify="left", caption=speed_note, caption_justify="left",
                  box=box.SIMPLE_HEAD, pad_edge=False)
    cols = [c for c in _columns(diffusion) if c != "strategy"]  # the terminal is narrow: --format md has it
    notes = any(r.warnings or r.acceptance_rate is not None for r in rows)
    for col in cols if notes else cols[:-1]:
        table.add_column(col, justify="left" if col in ("profile", "note") else "right",
                         no_wrap=col not in ("profile", "note"))
    for r in rows:
        cells = _cells(r, diffusion, rate_spread=False)  # the speedup's per-prompt IQR is the spread shown
        cells = [cells[0]] + cells[2:]
        table.add_row(*(cells if notes else cells[:-1]),
                      style="yellow" if r.warnings else ("dim" if r.baseline else None))
    console.print(table)
    machine = Table(title="time and memory", title_justify="left", caption=machine_note, caption_justify="left",
                    box=box.SIMPLE_HEAD, pad_edge=False)
    for col in MACHINE_COLUMNS:
        machine.add_column(col, justify="left" if col == "profile" else "right")
    for r in rows:
        machine.add_row(*_machine_cells(r, copy_gbps))
    console.print(machine)
    tasks = task_names(rows)
    if tasks:
        per = Table(title="score by task", title_justify="left")
        per.add_column("profile")
        for t in tasks:
            per.add_column(t, justify="right")
        for r in rows:
            per.add_row(r.profile, *[f"{r.task_scores[t]:.0%}" if t in r.task_scores else "" for t in tasks])
        console.print(per)


def task_names(rows: list[Row]) -> list[str]:
    tasks = sorted({t for r in rows for t in r.task_scores})
    return tasks if tasks and tasks != ["all"] else []


def markdown(rows: list[Row], title: str, *, diffusion: bool, copy_gbps: Optional[float], device: str) -> str:
    def table(cols: tuple[str, ...], body: list[list[str]]) -> list[str]:
        out = ["| " + " | ".join(cols) + " |", "|" + "---|" * len(cols)]
        return out + ["| " + " | ".join(c.replace("|", "\\|") for c in cells) + " |" for cells in body]

    speed_note, machine_note = footnote(rows, diffusion, copy_gbps, device)
    lines = [f"**{title}**", ""] + table(_columns(diffusion), [_cells(r, diffusion) for r in rows])
    lines += ["", speed_note, ""] + table(MACHINE_COLUMNS, [_machine_cells(r, copy_gbps) for r in rows])
    lines += ["", machine_note]
    tasks = task_names(rows)
    if tasks:
        lines += [""] + table(("profile", *tasks), [[r.profile] + [f"{r.task_scores[t]:.0%}" if t in r.task_scores
                                                                    else "" for t in tasks] for r in rows])
    return "\n".join(lines) + "\n"


def flat(r: Row) -> dict[str, Any]:
    """One row as flat columns (for CSV): the IQRs split, task scores and swept keys prefixed."""
    d = asdict(r)
    out: dict[str, Any] = {}
    for k, v in d.items():
        if k in ("tokens_per_second_iqr", "speedup_iqr"):
            out[k.replace("_iqr", "_q1")], out[k.replace("_iqr", "_q3")] = v
        elif k == "task_scores":
            out.update({f"score_{t}": x for t, x in v.items()})
        elif k == "sweep":
            out.update({f"set_{t}": x for t, x in v.items()})
        elif k == "warnings":
            out[k] = "; ".join(v)
        elif k == "answers":  # a list per row: --format json or jsonl carries them
            continue
        else:
            out[k] = v
    return out


def write_rows(rows: list[Row], fmt: str, payload: dict[str, Any], title: str, *, diffusion: bool,
               copy_gbps: Optional[float]) -> None:
    device = payload["device"]
    if fmt == "json":
        sys.stdout.write(json.dumps({**payload, "rows": [asdict(r) for r in rows], "formulas": FORMULAS},
                                    indent=2) + "\n")
    elif fmt == "jsonl":
        for r in rows:
            sys.stdout.write(json.dumps({"model": payload["model"], **asdict(r)}) + "\n")
    elif fmt == "csv":
        import csv

        table = [flat(r) for r in rows]
        names: list[str] = []
        for t in table:
            names += [k for k in t if k not in names]
        w = csv.DictWriter(sys.stdout, fieldnames=names, lineterminator="\n")
        w.writeheader()
        w.writerows(table)
    elif fmt == "md":
        sys.stdout.write(markdown(rows, title, diffusion=diffusion, copy_gbps=copy_gbps, device=device))
    else:
        render(rows, table_console(), title, diffusion=diffusion, copy_gbps=copy_gbps, device=device)


FORMATS = ("table", "md", "csv", "json", "jsonl")


@dataclass
class Plan:
    """What a bench runs: the rows (baselines first), the model, the draft, the prompts."""

    model: Any
    draft: Any
    runs: list[tuple[str, Any]]
    baselines: int
    prompts: list[BenchPrompt]
    sweeps: dict[str, dict[str, str]]
    chat_template: bool = True
    batch_size: int = 1

    @property
    def diffusion(self) -> bool:
        return self.model.kind == "diffusion"


def plan(req: BenchRequest, err: Console, *, load_model: Callable[..., Any], points: Any = None) -> Plan:
    """Load the model and draft, pick the prompts, build the baselines and every (profile × sweep point) row."""
    from . import profiles as prof
    from .decode.keys import STRATEGIES
    from .demo.tasks import TASKS
    from .models.loading import TOY_DEFAULT
    from .models.resolve import TOY_LONG
    from .sweep import grid

    points = grid(req.sets) if points is None else points  # before loading: a bad --set fails fast
    for point in points:  # keys no strategy has, values out of every range: before the model loads too
        prof.check_early(point.sets, req.flags, None)
    file_prompts = load_prompts(req.prompts) if req.prompts else None
    if req.dataset:  # raw completions scored by the data set's own rule (evals/datasets.py)
        from .evals.datasets import dataset_prompts

        file_prompts = dataset_prompts(req)
    from .demo.tasks import GROUPS, LONG_TASKS

    asked = [t.strip() for t in req.tasks.split(",")] if req.tasks else []
    spec = req.model
    if spec is None and asked and any(t in TASKS or t in GROUPS for t in asked):
        # The toy tasks are only known to the toy models; the long ones to the one trained on 256 slots.
        spec = TOY_LONG if set(toy_task_names(req.tasks)) & set(LONG_TASKS) else TOY_DEFAULT
    model = load_model(spec, req.load, err)
    if file_prompts is not None:
        prompts = file_prompts
    elif is_toy(model):
        prompts = builtin_prompts(req.per_task or TOY_PER_TASK, req.tasks)
        if req.flags.get("max_new_tokens") is None and set(toy_task_names(req.tasks)) & set(LONG_TASKS):
            req.flags = {**req.flags, "max_new_tokens": LONG_MAX_NEW_TOKENS}
    else:
        prompts = realtext_prompts(req.per_task or REAL_PER_TASK, req.tasks)
        if req.flags.get("max_new_tokens") is None:  # a fixed paragraph is ~100-200 tokens
            req.flags = {**req.flags, "max_new_tokens": REAL_MAX_NEW_TOKENS}
    diffusion = model.kind == "diffusion"
    names = [n.strip() for n in (req.profiles or ("speedy" if diffusion else "speculative,lookup")).split(",")
             if n.strip()]
    if diffusion:  # one token per step, then the same stopping at the end token (the headline)
        # A block-diffusion model's prefix cache is exact: its baselines use it (the same output, in less time).
        exact = ["cache=prefix"] if getattr(model, "block_size", None) is not None else []
        runs = [("baseline", prof.load("baseline", sets=exact, flags=req.flags)),
                ("baseline+eotp", prof.load("baseline", sets=exact + ["eotp=true"], flags=req.flags))]
    else:
        runs = [("ar", prof.load("ar", flags=req.flags))]
    baselines = len(runs)
    seen = {s.frozen(): name for name, s in runs}
    sweeps: dict[str, dict[str, str]] = {}
    for n in names:
        for point in points:
            s = prof.load(n, sets=list(point.sets), flags=req.flags)
            if req.allow_different_tokenizers and "allow_different_tokenizers" in s.values:
                s.allow_different_tokenizers = True
            if STRATEGIES[s.strategy].kind != model.kind:
                raise UsageError(f"profile {n!r} (strategy {s.strategy}) needs "
                                 f"{'a diffusion LLM' if model.kind != 'diffusion' else 'an autoregressive model'}"
                                 f", but {model.info.name} is "
                                 f"{'a diffusion LLM' if diffusion else 'an autoregressive LM'}; pick another -m or -p")
            name = (s.profile if n == s.profile else n) + (f" {point.label}" if point.label else "")
            key = s.frozen()
            if key in seen:  # e.g. quality is the baseline: one row, not two of one configuration
                same = (f"{name} is the {seen[key]} row already" if name == seen[key]
                        else f"{name} decodes exactly as {seen[key]}; its row is {seen[key]}'s")
                err.print(f"dlm: note: {same}",
                          markup=False, highlight=False)
                continue
            seen[key] = name
            runs.append((name, s))
            sweeps[name] = dict(point.swept)
    draft_spec = req.draft or next((s.meta.get("draft") for _, s in runs if s.meta.get("draft")), None)
    draft = load_model(draft_spec, req.load, err, role="draft") if draft_spec and not diffusion else None
    if draft is None and not diffusion:
        needy = [n for n, s in runs if s.strategy in ("speculative", "diffuspec", "ead")]
        if needy and req.profiles:
            raise UsageError(f"profile {needy[0]!r} drafts with a draft model: pass --draft MODEL, "
                             "or compare -p lookup, which needs none")
        runs = [(n, s) for n, s in runs if s.strategy not in ("speculative", "diffuspec", "ead")]  # the default list, without a draft
    if req.batch_size > 1:
        from .bench_batch import check_rows

        check_rows(model, runs, req.batch_size)
    return Plan(model, draft, runs, baselines, prompts, sweeps, req.chat_template, req.batch_size)


def measure(p: Plan, reps: int, err: Console) -> tuple[list[Row], Optional[BenchInterrupted]]:
    """Run the plan with a progress bar (one line per tenth when stderr is not a terminal)."""
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeRemainingColumn

    total = reps * len(p.prompts) * len(p.runs)
    done = [0]

    def tick() -> None:
        done[0] += 1
        bar.advance(task)
        if not err.is_terminal and (done[0] * 10 // total) > ((done[0] - 1) * 10 // total):
            err.print(f"dlm: note: bench {done[0]}/{total} runs", markup=False, highlight=False)

    with Progress(TextColumn("bench"), BarColumn(), MofNCompleteColumn(), TimeRemainingColumn(),
                  console=err, transient=True, disable=not err.is_terminal) as bar:
        task = bar.add_task("runs", total=total)
        try:
            rows = run_bench(p.model, p.draft, p.runs, p.prompts, reps, chat_template=p.chat_template,
                             progress=tick, baselines=p.baselines, sweeps=p.sweeps, batch_size=p.batch_size)
        except BenchInterrupted as exc:
            return exc.rows, exc
    return rows, None


def run_bench_command(req: BenchRequest, *, load_model: Callable[..., Any]) -> None:
    from .machine import copy_bandwidth, weight_bytes

    err = Console(stderr=True, highlight=False)
    fmt = "json" if req.json_out else req.format
    if fmt not in FORMATS:
        raise UsageError(f"--format {fmt!r} is unknown; use one of {', '.join(FORMATS)}")
    p = plan(req, err, load_model=load_model)
    model = p.model
    gbps, fresh = copy_bandwidth(model.info.device, remeasure=req.calibrate)
    if fresh or req.calibrate:
        err.print(f"dlm: note: this machine copies at {gbps:.1f} GB/s on {model.info.device} "
                  "(cached for later runs)",
                  markup=False, highlight=False)
    reps = req.reps or (TOY_REPS if is_toy(model) else REAL_REPS)
    rows, stopped = measure(p, reps, err)
    n, reps = (len(p.prompts), reps) if stopped is None else (stopped.prompts, 1)
    base = [name for name, _ in p.runs[: p.baselines]]
    import torch

    baselines = f"baseline{'s' if len(base) > 1 else ''} {' and '.join(base)}"
    title = (f"{model.info.name} · {count(n, 'prompt')} × {count(reps, 'rep')} · {baselines} · "
             f"{model.info.device} · {torch.get_num_threads()} threads"
             + (f" · batch {p.batch_size}" if p.batch_size > 1 else "")
             + (f" · interrupted: {n} of {len(p.prompts)} prompts" if stopped else ""))
    payload = {"model": model.info.name, "device": model.info.device, "threads": torch.get_num_threads(),
               "prompts": n, "reps": reps, "baselines": base, "headline_baseline": base[-1],
               "copy_gbps": round(gbps, 2), "weight_bytes": weight_bytes(model),
               "interrupted": stopped is not None, "batch_size": p.batch_size}
    write_rows(rows, fmt, payload, title, diffusion=p.diffusion, copy_gbps=gbps)
    if req.show and fmt == "table":
        render_answers(rows, table_console())
    elif req.show and fmt == "md":
        sys.stdout.write(markdown_answers(rows))
    if stopped is not None:
        raise stopped.cause  # the CLI ends it with one line and 130 (143 for SIGTERM)
