"""``dlm tune``: the fastest settings of a profile whose score stays above a floor, and the speed/score front.

Every point of the searched grid (``--search KEY=LO:HI:STEP`` or ``KEY=A,B,C``, their product) runs
as a bench row against the same baselines on the same prompts, in one run. A point's speed is its
speedup over the headline baseline; its score is the task score where the prompts have answers,
otherwise its agreement with the baseline's output. The best point is the fastest whose score is at
least the floor (the headline baseline's own score unless ``--floor`` says otherwise); ``--write``
saves it as a user profile and ``--plot`` draws the front.
"""

from __future__ import annotations

import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Optional

from rich.console import Console

from ..errors import UsageError
from ..tables import count, table_console


@dataclass
class TuneRequest:
    bench: Any  # a BenchRequest: model, prompts, reps, flags; its ``sets`` are fixed for every point
    profile: str
    search: list[str]
    floor: Optional[float]
    write: Optional[str]
    force: bool
    plot: Optional[Path]


def quality(row: Any) -> float:
    """A row's score for the floor: the task score, or agreement with the baseline where prompts have no answers."""
    return row.score if row.score is not None else row.agreement


def profile_path(name: str) -> Path:
    """Where ``--write NAME`` goes: a path as given, or the user's profile directory."""
    if "/" in name or name.endswith(".toml"):
        return Path(name)
    from ..profiles import user_dir

    return user_dir() / f"{name}.toml"


def profile_text(settings: Any, base: str, description: str) -> str:
    from .sweep import as_toml_value

    lines = [f"description = {as_toml_value(description)}", f"strategy = {as_toml_value(settings.strategy)}"]
    for key, value in settings.values.items():
        if settings.sources.get(key) in ("profile", "--set") and value is not None:
            lines.append(f"{key} = {as_toml_value(value)}")
    return "\n".join(lines) + "\n"


def write_profile(path: Path, text: str, force: bool) -> None:
    if path.exists() and not force:
        raise UsageError(f"--write {path} exists; pass --force to replace it or name another profile")
    from ..atomic import write_text_atomically

    try:
        write_text_atomically(path, text)
    except OSError as exc:
        raise UsageError(f"cannot write --write {path}: {exc.strerror or exc}; give a writable path") from None


def plot_front(rows: list[Any], front: list[int], best: Optional[int], floor: float, path: Path, title: str) -> None:
    """Speedup against score, the front joined, the baselines and the floor marked: PNG, SVG, PDF or HTML."""
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        raise UsageError("--plot needs matplotlib: pip install 'dlm-cli[plot]'") from None
    suffix = path.suffix.lower()
    if suffix not in (".png", ".svg", ".pdf", ".html"):
        raise UsageError(f"--plot {path}: give a .png, .svg, .pdf or .html file")
    fig, ax = plt.subplots(figsize=(7, 4.5), dpi=120)
    xs = [r.speedup for r in rows]
    ys = [quality(r) for r in rows]
    points = [i for i, r in enumerate(rows) if not r.baseline]
    ax.scatter([xs[i] for i in points], [ys[i] for i in points], color="#7a8ca5", s=22, label="searched points")
    f = [i for i in front if not rows[i].baseline]
    if f:
        ax.plot([xs[i] for i in f], [ys[i] for i in f], "-o", color="#1f6feb", ms=5, label="Pareto front")
        for i in f:
            ax.annotate(rows[i].profile.split(" ", 1)[-1], (xs[i], ys[i]), fontsize=7, xytext=(4, 4),
                        textcoords="offset points")
    for k, (i, r) in enumerate((i, r) for i, r in enumerate(rows) if r.baseline):
        ax.scatter([xs[i]], [ys[i]], marker="*", s=140, color="#d1242f", zorder=3)
        ax.annotate(r.profile, (xs[i], ys[i]), fontsize=8, xytext=(5, -12 - 10 * k), textcoords="offset points")
    if best is not None:
        ax.scatter([xs[best]], [ys[best]], s=160, facecolors="none", edgecolors="#1a7f37", linewidths=2, zorder=4,
                   label=f"best ≥ floor: {rows[best].profile}")
    ax.axhline(floor, color="#9a6700", ls="--", lw=1, label=f"floor {floor:.3g}")
    ax.set_xlabel("speedup over the headline baseline (×)")
    ax.set_ylabel("score" if any(r.score is not None for r in rows) else "agreement with the baseline")
    ax.set_title(title, fontsize=9)
    ax.grid(alpha=0.3)
    ax.legend(fontsize=7, loc="lower left")
    fig.tight_layout()
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        if suffix == ".html":
            import io

            buf = io.StringIO()
            fig.savefig(buf, format="svg")
            path.write_text(f"<!doctype html><meta charset=utf-8><title>{title}</title>\n{buf.getvalue()}\n",
                            encoding="utf-8")
        else:
            fig.savefig(path)
    except OSError as exc:
        raise UsageError(f"cannot write --plot {path}: {exc.strerror or exc}") from None
    finally:
        plt.close(fig)


def run_tune_command(req: TuneRequest, *, load_model: Callable[..., Any]) -> None:
    from .plan import plan
    from .render import write_rows
    from .run import measure
    from .sweep import best_above, grid, pareto

    err = Console(stderr=True, highlight=False)
    from .remote import is_remote

    from ..distributed import world

    if world().size > 1:
        raise UsageError("dlm tune runs in one process; start it without torchrun or accelerate launch (dlm bench "
                         "runs data-parallel)")
    if is_remote(req.profile):
        raise UsageError("dlm tune searches a local profile's keys; a url: row (a running server) goes in dlm bench -p")
    if not req.search:
        raise UsageError("dlm tune needs at least one --search KEY=LO:HI:STEP or KEY=A,B,C, e.g. "
                         "--search threshold=0.5:0.95:0.05")
    fixed = {s.split("=", 1)[0].strip() for s in req.bench.sets if "=" in s}
    searched = grid(req.search, ranges=True)
    clash = fixed & {item.split("=", 1)[0] for item in searched[0].sets}
    if clash:
        raise UsageError(f"--set {sorted(clash)[0]} is also searched; drop one of them")
    points = [type(p)(tuple(req.bench.sets) + p.sets, p.swept) for p in searched]
    req.bench.profiles = req.profile
    p = plan(req.bench, err, load_model=load_model, points=points)
    from .suites import REAL_REPS, TOY_REPS, is_toy

    reps = req.bench.reps or (TOY_REPS if is_toy(p.model) else REAL_REPS)
    rows, stopped = measure(p, reps, err)
    if stopped is not None:
        raise stopped.cause
    head = rows[p.baselines - 1]
    floor = quality(head) if req.floor is None else req.floor
    speeds = [(r.speedup, quality(r)) for r in rows]
    front = pareto(speeds)
    candidates = [i for i, r in enumerate(rows) if not r.baseline]
    best_local = best_above([speeds[i] for i in candidates], floor)
    best = candidates[best_local] if best_local is not None else None
    import torch

    title = (f"dlm tune {req.profile} · {p.model.info.name} · {count(len(p.prompts), 'prompt')} × {count(reps, 'rep')} · "
             f"{p.model.info.device} · {torch.get_num_threads()} threads")
    fmt = "json" if req.bench.json_out else req.bench.format
    payload = {"model": p.model.info.name, "device": p.model.info.device, "prompts": len(p.prompts), "reps": reps,
               "baselines": [r.profile for r in rows if r.baseline], "headline_baseline": head.profile,
               "floor": floor, "front": [rows[i].profile for i in front],
               "best": rows[best].profile if best is not None else None, "copy_gbps": None}
    write_rows(rows, fmt, payload, title, diffusion=p.diffusion, copy_gbps=None)
    if fmt == "table":
        out = table_console()
        out.print("Pareto front (speedup ↑, score ↑): " + "; ".join(
            f"{rows[i].profile} {rows[i].speedup:.2f}× {quality(rows[i]):.3g}" for i in front), markup=False)
        if best is None:
            out.print(f"no searched point reaches the floor {floor:.3g}; lower --floor or widen --search", markup=False)
        else:
            out.print(f"best with score ≥ {floor:.3g}: {rows[best].profile} ({rows[best].speedup:.2f}×, "
                      f"score {quality(rows[best]):.3g})", markup=False)
    if req.plot is not None:
        plot_front(rows, front, best, floor, req.plot, title)
        err.print(f"dlm: note: wrote the front to {req.plot}", markup=False, highlight=False)
    if req.write is not None:
        if best is None:
            raise UsageError(f"--write {req.write}: no searched point reaches the floor {floor:.3g}, so nothing "
                             "was written; lower --floor or widen --search")
        settings = p.runs[best][1]
        desc = (f"dlm tune of {req.profile} on {p.model.info.name}: {rows[best].speedup:.2f}x over "
                f"{head.profile}, score {quality(rows[best]):.3g} (floor {floor:.3g}), {len(p.prompts)} prompts")
        path = profile_path(req.write)
        write_profile(path, profile_text(settings, req.profile, desc), req.force)
        err.print(f"dlm: note: wrote profile {path} ({rows[best].profile}); use it with -p {req.write}",
                  markup=False, highlight=False)
    sys.stdout.flush()
