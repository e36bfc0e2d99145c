"""Running and timing a bench: every row on every prompt, interleaved, and the rows' figures.

Profiles are interleaved prompt by prompt so that machine noise hits them alike; one short warm-up
run per profile comes first. Speedup is baseline seconds / profile seconds over the same prompts.
"""

from __future__ import annotations

from typing import Any, Callable, Optional

from rich.console import Console

from ..distributed import World, gather
from ..errors import INTERRUPTS, UsageError
from ..evals.prompt import BenchPrompt
from .remote import Asker, Remote, RemoteFailed
from .rows import Row, build_rows

WARMUP_TOKENS = 16


def _consume(events: Any) -> Any:
    done = None
    for ev in events:
        done = ev
    return done


def run_bench(session: Any, runs: list[tuple[str, Any]], prompts: list[BenchPrompt], reps: int,
              *, chat_template: bool = True, progress: Optional[Callable[[], None]] = None,
              baselines: int = 1, sweeps: Optional[dict[str, dict[str, str]]] = None,
              batch_size: int = 1, failures: Optional[dict[str, str]] = None, world: Optional[World] = None) -> list[Row]:
    """Run every (row name, settings) pair on every prompt, ``reps`` times.

    The first ``baselines`` pairs are baselines: agreement is against the first, speedup against the
    last of them (the headline), ``speedup_plain`` against the first. A row whose settings are a
    :class:`.remote.Remote` asks its server; if it fails during the run it leaves the table, its
    one-line reason goes into ``failures`` (by row) and the other rows go on.

    ``world`` (several processes under a launcher): each process runs its contiguous share of the
    prompts, every row on each, and rank 0 gathers the answers and seconds and computes the rows (the
    others return no rows). A prompt keeps its seed (the bench's seed + its index in the whole list).
    """
    from ..decode import resolve_seed, run
    from ..prompting import encode
    from .batch import decode_chunk
    from .machine import PeakMemory

    w = world or World()
    model, draft = session.model, session.draft
    every = [encode(model.tokenizer, p.prompt, system=p.system, chat_template=chat_template) for p in prompts]
    for _, s in runs:  # every row fits every prompt before the first decode (on every rank: all fail alike)
        if not isinstance(s, Remote):
            session.check_prompt(s, [len(i) for i in every])
    lo, hi = w.bounds(len(prompts))
    if hi == lo:
        raise UsageError(f"{len(prompts)} prompts over {w.size} processes leave rank {w.rank} none; run fewer "
                         "processes or more prompts")
    ids, mine = every[lo:hi], prompts[lo:hi]
    seed0 = {name: resolve_seed(s) + lo for name, s in runs if not isinstance(s, Remote)}
    ask = Asker(model.tokenizer, max_tokens=runs[0][1].max_new_tokens, seed=seed0[runs[0][0]],
                chat=chat_template)
    failed = failures if failures is not None else {}

    for _, s in runs:  # warm-up: first-call allocations and lazy init stay out of the timings
        if isinstance(s, Remote):  # a server that fails here fails before anything is measured
            ask(s, mine[:1], 0, max_tokens=min(ask.max_tokens, WARMUP_TOKENS))
            continue
        # A short run does it: a full one-token-per-step baseline would cost minutes on a real model.
        warm = type(s)(s.profile, {**s.values, "max_new_tokens": min(s.max_new_tokens, WARMUP_TOKENS)},
                       dict(s.sources), dict(s.meta))
        if batch_size > 1:
            decode_chunk(model, ids[:batch_size], warm, draft=draft)
        else:
            _consume(run(model, ids[0], warm, draft=draft))
    seconds = {name: [[0.0] * len(ids) for _ in range(reps)] for name, _ in runs}
    dones: dict[str, list[Any]] = {name: [] for name, _ in runs}
    memory = {name: PeakMemory(model.info.device) for name, _ in runs}
    live = list(runs)  # the rows still measured: a remote row that fails leaves
    stopped: BaseException | None = None
    step = batch_size if batch_size > 1 else 1
    try:
        for rep in range(reps):
            for a in range(0, len(ids), step):  # a batch (or one prompt) through every row in turn
                for name, s in list(live):
                    if isinstance(s, Remote):  # a batch's prompts as concurrent requests
                        try:
                            got, spent = ask(s, mine[a : a + step], a)
                        except RemoteFailed as exc:
                            failed[name] = str(exc)
                            live.remove((name, s))
                            continue
                    elif batch_size > 1:
                        s.seed = seed0[name] + a  # row j of the batch draws from seed + j: prompt a + j's seed
                        got, spent = decode_chunk(model, ids[a : a + step], s, memory[name].watch, draft=draft)
                    else:
                        s.seed = seed0[name] + a  # same seeds across reps and profiles: comparable samples
                        got = [_consume(memory[name].watch(run(model, ids[a], s, draft=draft)))]
                        spent = got[0].seconds
                    for j, done in enumerate(got):
                        seconds[name][rep][a + j] = spent / len(got)
                        if rep == 0:
                            dones[name].append(done)
                        if progress:
                            progress()
    except INTERRUPTS as exc:  # Ctrl-C or SIGTERM: the rows over the prompts every profile finished
        m = min(len(dones[name]) for name, _ in live)
        if m == 0 or w.size > 1:  # several processes stop at different prompts: no common table
            raise
        stopped, reps, mine = exc, 1, mine[:m]
        for name, _ in live:
            dones[name] = dones[name][:m]
            seconds[name] = [[d.seconds for d in dones[name]]]
    peaks = {name: memory[name].peak for name, _ in live}
    if w.size > 1:  # rank 0 takes every rank's answers, seconds and peaks, in the prompts' order
        parts = gather({"dones": dones, "seconds": seconds, "peaks": peaks, "failed": failed}, w)
        if parts is None:
            return []
        for part in parts:
            failed.update(part["failed"])
        live = [(name, s) for name, s in live if name not in failed]
        dones = {name: World.unshare([part["dones"][name] for part in parts]) for name, _ in live}
        seconds = {name: [World.unshare([part["seconds"][name][r] for part in parts]) for r in range(reps)]
                   for name, _ in live}
        peaks = {name: max(part["peaks"][name] for part in parts) for name, _ in live}
        mine = prompts
    rows = build_rows(model, draft, live, mine, dones, seconds, peaks, reps=reps, baselines=baselines,
                      sweeps=sweeps or {}, batch_size=batch_size)
    if stopped is not None:
        raise BenchInterrupted(rows, len(mine), stopped)
    return rows


class BenchInterrupted(Exception):
    """A bench stopped early: the rows over the first ``prompts`` prompts (one rep), and what stopped it."""

    def __init__(self, rows: list[Row], prompts: int, cause: BaseException) -> None:
        super().__init__(f"interrupted after {prompts} prompts")
        self.rows, self.prompts, self.cause = rows, prompts, cause


def measure(p: Any, reps: int, err: Console) -> tuple[list[Row], Optional[BenchInterrupted]]:
    """Run the plan with a progress bar (one line per tenth when stderr is not a terminal)."""
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeRemainingColumn

    total = reps * len(p.world.share(p.prompts)) * len(p.runs)  # this process's runs
    done = [0]

    def tick() -> None:
        done[0] += 1
        bar.advance(task)
        if not err.is_terminal and p.world.main and (done[0] * 10 // total) > ((done[0] - 1) * 10 // total):
            err.print(f"dlm: note: bench {done[0]}/{total} runs", markup=False, highlight=False)

    with Progress(TextColumn("bench"), BarColumn(), MofNCompleteColumn(), TimeRemainingColumn(),
                  console=err, transient=True, disable=not err.is_terminal or not p.world.main) as bar:
        task = bar.add_task("runs", total=total)
        try:
            rows = run_bench(p.session, p.runs, p.prompts, reps, chat_template=p.chat_template,
                             progress=tick, baselines=p.baselines, sweeps=p.sweeps, batch_size=p.batch_size,
                             failures=p.failures, world=p.world)
        except BenchInterrupted as exc:
            return exc.rows, exc
    return rows, None
