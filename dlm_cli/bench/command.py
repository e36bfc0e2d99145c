"""``dlm bench``: plan, measure, render; the one entry the CLI calls."""

from __future__ import annotations

import sys
from typing import TYPE_CHECKING

from rich.console import Console

from ..errors import UsageError
from ..tables import count, table_console
from .answers import markdown_answers, render_answers
from .plan import BenchRequest, plan
from .remote import RemoteFailed
from .render import FORMATS, write_rows
from .run import measure
from .suites import REAL_REPS, TOY_REPS, is_toy

if TYPE_CHECKING:
    from ..distributed import World
    from ..session import LoadModel


def run_bench_command(req: BenchRequest, *, load_model: LoadModel) -> None:
    """Under ``torchrun`` or ``accelerate launch`` every process runs its share of the prompts and rank 0
    prints the one table (:mod:`dlm_cli.distributed`)."""
    from ..distributed import join, leave, world

    fmt = "json" if req.json_out else req.format
    if fmt not in FORMATS:
        raise UsageError(f"--format {fmt!r} is unknown; use one of {', '.join(FORMATS)}")
    w = world()
    join(w, getattr(req.load, "device", None))
    try:
        _bench(req, fmt, w, load_model)
    finally:
        leave(w)


def _bench(req: BenchRequest, fmt: str, w: World, load_model: LoadModel) -> None:
    import time

    from .machine import copy_bandwidth, weight_bytes

    err = Console(stderr=True, highlight=False, quiet=not w.main)  # one process speaks: rank 0
    p = plan(req, err, load_model=load_model, world=w)
    model = p.model
    gbps, fresh = copy_bandwidth(model.info.device, remeasure=req.calibrate)
    if fresh or req.calibrate:
        err.print(f"dlm: note: this machine copies at {gbps:.1f} GB/s on {model.info.device} "
                  "(cached for later runs)",
                  markup=False, highlight=False)
    reps = req.reps or (TOY_REPS if is_toy(model) else REAL_REPS)
    start = time.perf_counter()
    rows, stopped = measure(p, reps, err)
    wall = time.perf_counter() - start  # on rank 0: until every rank's share is gathered
    if not w.main:
        if stopped is not None:
            raise stopped.cause
        return
    n, reps = (len(p.prompts), reps) if stopped is None else (stopped.prompts, 1)
    base = [name for name, _ in p.runs[: p.baselines]]
    import torch

    baselines = f"baseline{'s' if len(base) > 1 else ''} {' and '.join(base)}"
    title = (f"{model.info.name} · {count(n, 'prompt')} × {count(reps, 'rep')} · {baselines} · "
             f"{model.info.device} · {torch.get_num_threads()} threads"
             + (f" · batch {p.batch_size}" if p.batch_size > 1 else "")
             + (f" · {w.size} processes: seconds summed over them, wall-clock {wall:.1f} s" if w.size > 1 else "")
             + (f" · interrupted: {n} of {len(p.prompts)} prompts" if stopped else ""))
    payload = {"model": model.info.name, "device": model.info.device, "threads": torch.get_num_threads(),
               "prompts": n, "reps": reps, "baselines": base, "headline_baseline": base[-1],
               "copy_gbps": round(gbps, 2), "weight_bytes": weight_bytes(model),
               "interrupted": stopped is not None, "batch_size": p.batch_size, "failed_rows": dict(p.failures),
               "processes": w.size, "wall_seconds": round(wall, 3)}
    write_rows(rows, fmt, payload, title, diffusion=p.diffusion, copy_gbps=gbps)
    if req.show and fmt == "table":
        render_answers(rows, table_console())
    elif req.show and fmt == "md":
        sys.stdout.write(markdown_answers(rows))
    if p.failures:  # a URL row that failed during the run: the others are in the table above
        why = "; ".join(p.failures.values())
        if stopped is None:
            raise RemoteFailed(f"{why}; the row{'s' if len(p.failures) > 1 else ''} left the table, the others are "
                               "complete")
        from ..errors import warning

        warning(why)
    if stopped is not None:
        raise stopped.cause  # the CLI ends it with one line and 130 (143 for SIGTERM)
