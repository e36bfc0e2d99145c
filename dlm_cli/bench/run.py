"""Running and timing a bench: every row on every prompt, interleaved, and the rows' figures.

Profiles are interleaved prompt by prompt so that machine noise hits them alike; one short warm-up
run per profile comes first. Speedup is baseline seconds / profile seconds over the same prompts.
"""

from __future__ import annotations

import statistics
from typing import Any, Callable, Optional

from rich.console import Console

from ..errors import INTERRUPTS
from ..evals.prompt import BenchPrompt, score
from .answers import answer
from .remote import Asker, Remote, RemoteFailed
from .rows import Row

WARMUP_TOKENS = 16


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


def run_bench(session: Any, runs: list[tuple[str, Any]], prompts: list[BenchPrompt], reps: int,
              *, chat_template: bool = True, progress: Optional[Callable[[], None]] = None,
              baselines: int = 1, sweeps: Optional[dict[str, dict[str, str]]] = None,
              batch_size: int = 1, failures: Optional[dict[str, str]] = None) -> list[Row]:
    """Run every (row name, settings) pair on every prompt, ``reps`` times.

    The first ``baselines`` pairs are baselines: agreement is against the first, speedup against the
    last of them (the headline), ``speedup_plain`` against the first. A row whose settings are a
    :class:`.remote.Remote` asks its server; if it fails during the run it leaves the table, its
    one-line reason goes into ``failures`` (by row) and the other rows go on.
    """
    from ..decode import STRATEGIES, resolve_seed, run
    from ..prompting import encode
    from .batch import decode_chunk
    from .machine import PeakMemory, weight_bytes

    model, draft = session.model, session.draft
    ids = [encode(model.tokenizer, p.prompt, system=p.system, chat_template=chat_template) for p in prompts]
    for _, s in runs:  # every row fits every prompt before the first decode
        if not isinstance(s, Remote):
            session.check_prompt(s, [len(i) for i in ids])
    seed0 = {name: resolve_seed(s) for name, s in runs if not isinstance(s, Remote)}
    ask = Asker(model.tokenizer, max_tokens=runs[0][1].max_new_tokens, seed=seed0[runs[0][0]],
                chat=chat_template)
    failed = failures if failures is not None else {}

    for _, s in runs:  # warm-up: first-call allocations and lazy init stay out of the timings
        if isinstance(s, Remote):  # a server that fails here fails before anything is measured
            ask(s, prompts[:1], 0, max_tokens=min(ask.max_tokens, WARMUP_TOKENS))
            continue
        # A short run does it: a full one-token-per-step baseline would cost minutes on a real model.
        warm = type(s)(s.profile, {**s.values, "max_new_tokens": min(s.max_new_tokens, WARMUP_TOKENS)},
                       dict(s.sources), dict(s.meta))
        if batch_size > 1:
            decode_chunk(model, ids[:batch_size], warm)
        else:
            _consume(run(model, ids[0], warm, draft=draft))
    seconds = {name: [[0.0] * len(ids) for _ in range(reps)] for name, _ in runs}
    dones: dict[str, list[Any]] = {name: [] for name, _ in runs}
    memory = {name: PeakMemory(model.info.device) for name, _ in runs}
    live = list(runs)  # the rows still measured: a remote row that fails leaves
    stopped: BaseException | None = None
    try:
        for rep in range(reps):
            for a in range(0, len(ids), batch_size) if batch_size > 1 else ():
                for name, s in list(live):
                    if isinstance(s, Remote):  # the batch's prompts as concurrent requests
                        try:
                            got, spent = ask(s, prompts[a : a + batch_size], a)
                        except RemoteFailed as exc:
                            failed[name] = str(exc)
                            live.remove((name, s))
                            continue
                    else:
                        s.seed = seed0[name] + a  # row j of the batch draws from seed + j: prompt a + j's seed
                        got, spent = decode_chunk(model, ids[a : a + batch_size], s, memory[name].watch)
                    for j, done in enumerate(got):
                        seconds[name][rep][a + j] = spent / len(got)
                        if rep == 0:
                            dones[name].append(done)
                        if progress:
                            progress()
            for k, prompt_ids in enumerate(ids if batch_size == 1 else ()):
                for name, s in list(live):
                    if isinstance(s, Remote):
                        try:
                            done = ask(s, prompts[k : k + 1], k)[0][0]
                        except RemoteFailed as exc:
                            failed[name] = str(exc)
                            live.remove((name, s))
                            continue
                    else:
                        s.seed = seed0[name] + k  # same seeds across reps and profiles: comparable samples
                        done = _consume(memory[name].watch(run(model, prompt_ids, s, draft=draft)))
                    seconds[name][rep][k] = done.seconds
                    if rep == 0:
                        dones[name].append(done)
                    if progress:
                        progress()
    except INTERRUPTS as exc:  # Ctrl-C or SIGTERM: the rows over the prompts every profile finished
        stopped, reps = exc, 1
        m = min(len(dones[name]) for name, _ in live)
        if m == 0:
            raise
        prompts = prompts[:m]
        for name, _ in live:
            dones[name] = dones[name][:m]
            seconds[name] = [[d.seconds for d in dones[name]]]
    runs = live
    n = len(dones[runs[0][0]])
    per_prompt = {name: [_median([seconds[name][r][k] for r in range(reps)]) for k in range(n)] for name, _ in runs}
    totals = {name: [sum(seconds[name][r][:n]) for r in range(reps)] for name, _ in runs}
    plain, head = runs[0][0], runs[baselines - 1][0]
    head_total, plain_total = _median(totals[head]), _median(totals[plain])
    own_bytes = weight_bytes(model)
    draft_bytes = weight_bytes(draft) if draft is not None else 0
    rows = []
    texts = {name: [d.text if isinstance(s, Remote) else model.tokenizer.decode(d.tokens, skip_special_tokens=True)
                    for d in dones[name]] for name, s in runs}
    for idx, (name, s) in enumerate(runs):
        ds = dones[name]
        remote = isinstance(s, Remote)
        tok = sum(len(d.tokens) for d in ds)
        nfe = None if remote else sum(d.nfe for d in ds)
        draft_nfe = sum(d.draft_nfe or 0 for d in ds)
        total = _median(totals[name])
        rates = [tok / t if t > 0 else 0.0 for t in totals[name]]
        ttft = [d.ttft_seconds or 0.0 for d in ds]
        decode_s = total - sum(ttft)
        row = Row(profile=name, strategy=s.strategy, runs=len(ds) * reps, nfe=None if nfe is None else nfe / len(ds),
                  generated_tokens=tok / len(ds), tokens_per_nfe=None if nfe is None else tok / nfe if nfe else 0.0,
                  tokens_per_second=_median(rates), tokens_per_second_iqr=_iqr(rates), seconds=total,
                  ttft_seconds=statistics.mean(ttft), prefill_seconds=statistics.mean(ttft),
                  decode_seconds=max(decode_s, 0.0) / len(ds),
                  baseline=idx < baselines, sweep=dict((sweeps or {}).get(name, {})),
                  cache=None if remote else getattr(s.frozen(), "cache", None), batch_size=batch_size)
        row.speedup = head_total / total if total > 0 else 0.0
        row.speedup_plain = plain_total / total if total > 0 else 0.0
        ratios = [b / t for b, t in zip(per_prompt[head], per_prompt[name]) if t > 0]
        row.speedup_iqr = _iqr(ratios)
        if remote:  # the text is all a server gives back
            row.agreement = sum(t == b for t, b in zip(texts[name], texts[plain])) / len(ds)
            row.weight_gbps = row.peak_memory_mb = None  # the server's forwards and memory: unknown here
        else:
            row.agreement = sum(d.tokens == b.tokens for d, b in zip(ds, dones[plain])) / len(ds)
            row.draft_nfe = draft_nfe / len(ds)
            if total > 0:
                row.weight_gbps = (own_bytes * nfe + draft_bytes * draft_nfe) / total / 1e9
            row.peak_memory_mb = memory[name].peak / 2**20
        drafted = sum(d.drafted or 0 for d in ds)
        if drafted:
            row.acceptance_rate = sum(d.accepted or 0 for d in ds) / drafted
        scores: dict[str, list[bool]] = {}
        for p, text in zip(prompts, texts[name]):
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
        if not remote and STRATEGIES[s.strategy].drafts and not drafted:
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


def measure(p: Any, reps: int, err: Console) -> tuple[list[Row], Optional[BenchInterrupted]]:
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
            rows = run_bench(p.session, p.runs, p.prompts, reps, chat_template=p.chat_template,
                             progress=tick, baselines=p.baselines, sweeps=p.sweeps, batch_size=p.batch_size,
                             failures=p.failures)
        except BenchInterrupted as exc:
            return exc.rows, exc
    return rows, None
