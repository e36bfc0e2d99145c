"""A bench's rows as a table on the terminal, Markdown, CSV, JSON or JSON lines."""

from __future__ import annotations

import json
import sys
from dataclasses import asdict
from typing import Any, Optional

from rich.console import Console
from rich.table import Table

from ..tables import table_console
from .rows import FORMULAS, Row


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
    cells = [r.profile, r.strategy, _known(r.nfe, "{:.1f}"), _known(r.tokens_per_nfe, "{:.2f}"), rate, speed,
             f"{r.speedup_plain:.2f}×", f"{r.agreement:.0%}", score, note]
    return cells if diffusion else cells[:6] + cells[7:]


def _known(x: Optional[float], fmt: str) -> str:
    """A figure, or n/a where it is unknown (a remote row's forwards and memory are the server's)."""
    return UNKNOWN if x is None else fmt.format(x)


UNKNOWN = "n/a"


def _machine_cells(r: Row, copy_gbps: Optional[float]) -> list[str]:
    share = f" ({r.weight_gbps / copy_gbps:.0%})" if copy_gbps and r.weight_gbps is not None else ""
    return [r.profile, f"{r.prefill_seconds * 1000:.0f} ms", f"{r.decode_seconds * 1000:.0f} ms",
            _known(r.weight_gbps, "{:.2f}") + share, _known(r.peak_memory_mb, "{:.0f}")]


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
    remote = (" A url: row is a server's: its streamed text re-tokenised by this model gives its tokens, TTFT "
              "(prefill) is its first streamed text, agree compares texts; its NFE, GB/s and memory are unknown "
              f"({UNKNOWN})." if any(r.nfe is None for r in rows) else "")
    return (FOOTNOTE.format(head=base[-1] if base else "", plain=plain, first=base[0] if base else "") + remote,
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
