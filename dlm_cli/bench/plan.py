"""What a bench runs: the request, and the plan built from it (the model, the prompts, the rows)."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, Optional

from rich.console import Console

from ..distributed import World
from ..evals.prompt import BenchPrompt, load_prompts
from .remote import Remote, check_names, is_remote, parse_remote
from .suites import (LONG_MAX_NEW_TOKENS, REAL_MAX_NEW_TOKENS, REAL_PER_TASK, TOY_PER_TASK, builtin_prompts, is_toy,
                     realtext_prompts, toy_task_names)

if TYPE_CHECKING:
    from ..session import LoadModel


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


@dataclass
class Plan:
    """What a bench runs: the rows (baselines first), the model, the draft, the prompts."""

    session: Any  # the run session (:mod:`dlm_cli.session`): model, draft, every row's checks
    runs: list[tuple[str, Any]]
    baselines: int
    prompts: list[BenchPrompt]
    sweeps: dict[str, dict[str, str]]
    chat_template: bool = True
    batch_size: int = 1
    failures: dict[str, str] = field(default_factory=dict)  # a remote row that failed during the run: why
    world: World = field(default_factory=World)  # the processes a launcher started (each runs its share)

    @property
    def model(self) -> Any:
        return self.session.model

    @property
    def draft(self) -> Any:
        return self.session.draft

    @property
    def diffusion(self) -> bool:
        return self.session.diffusion


def plan(req: BenchRequest, err: Console, *, load_model: LoadModel, points: Any = None,
         world: Optional[World] = None) -> Plan:
    """Load the model and draft, pick the prompts, build the baselines and every (profile × sweep point) row."""
    from .. import profiles as prof
    from ..capabilities import BLOCK_CACHE, DRAFT_MODEL
    from ..decode.keys import STRATEGIES
    from ..demo.tasks import GROUPS, LONG_TASKS, TASKS
    from ..models.resolve import TOY_DEFAULT, TOY_LONG
    from ..session import RunRequest, open_session
    from .sweep import grid, split_values

    points = grid(req.sets) if points is None else points  # before loading: a bad --set fails fast
    listed = [n for n in split_values(req.profiles or "") if n]
    remotes = {n: parse_remote(n) for n in listed if is_remote(n)}  # a bad URL item fails fast too
    check_names(list(remotes.values()), [n for n in listed if n not in remotes] + ["baseline", "baseline+eotp", "ar"])
    for remote in remotes.values():  # reach each server before the model loads
        remote.probe()
    for point in points:  # keys no strategy has, values out of every range: before the model loads too
        prof.check_early(point.sets, req.flags, None)
    file_prompts = load_prompts(req.prompts) if req.prompts else None
    if req.dataset:  # raw completions scored by the data set's own rule (bench/datasets.py)
        from .datasets import dataset_prompts

        file_prompts = dataset_prompts(req)
    asked = [t.strip() for t in req.tasks.split(",")] if req.tasks else []
    spec = req.model
    if spec is None and asked and any(t in TASKS or t in GROUPS for t in asked):
        # The toy tasks are only known to the toy models; the long ones to the one trained on 256 slots.
        spec = TOY_LONG if set(toy_task_names(req.tasks)) & set(LONG_TASKS) else TOY_DEFAULT
    session = open_session(RunRequest(spec, req.draft, None, (), dict(req.flags), req.allow_different_tokenizers),
                           load_model)
    model = session.model
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
    diffusion = session.diffusion
    names = listed or (["speedy"] if diffusion else ["speculative", "lookup"])
    rows = [(n, point, remotes[n] if n in remotes else prof.load(n, sets=list(point.sets), flags=req.flags))
            for n in names for point in (points[:1] if n in remotes else points)]
    if session.draft is None and not diffusion:  # a row's profile may name the draft (its ``draft`` key)
        named = next((s.meta["draft"] for _, _, s in rows if not isinstance(s, Remote) and s.meta.get("draft")), None)
        if named:
            session.attach_draft(named)
    if session.draft is None and not req.profiles:  # the default list, without a draft: the rows that need none
        rows = [r for r in rows if isinstance(r[2], Remote) or DRAFT_MODEL not in STRATEGIES[r[2].strategy].needs]
    if diffusion:  # one token per step, then the same stopping at the end token (the headline)
        # An exact block cache gives the same output in less time: the baselines use it where the model has one.
        exact = ["cache=prefix"] if BLOCK_CACHE in model.capabilities else []
        runs = [("baseline", session.settings_for("baseline", sets=exact, flags=req.flags)),
                ("baseline+eotp", session.settings_for("baseline", sets=exact + ["eotp=true"], flags=req.flags))]
    else:
        runs = [("ar", session.settings_for("ar", flags=req.flags))]
    baselines = len(runs)
    seen = {s.frozen(): name for name, s in runs}
    sweeps: dict[str, dict[str, str]] = {}
    for n, point, s in rows:
        if isinstance(s, Remote):  # the server's settings are its own: not swept, never a duplicate
            runs.append((s.name, s))
            continue
        s = session.settings_for(settings=s)  # the model's defaults, the tokenizer switch; fits model and draft
        name = (s.profile if n == s.profile else n) + (f" {point.label}" if point.label else "")
        key = s.frozen()
        if key in seen:  # e.g. quality is the baseline: one row, not two of one configuration
            same = (f"{name} is the {seen[key]} row already" if name == seen[key]
                    else f"{name} decodes exactly as {seen[key]}; its row is {seen[key]}'s")
            err.print(f"dlm: note: {same}", markup=False, highlight=False)
            continue
        seen[key] = name
        runs.append((name, s))
        sweeps[name] = dict(point.swept)
    if req.batch_size > 1:
        from .batch import check_rows

        check_rows(model, [r for r in runs if not isinstance(r[1], Remote)], req.batch_size)
    return Plan(session, runs, baselines, prompts, sweeps, req.chat_template, req.batch_size,
                world=world or World())
