"""Sweeps and the speed/score front: ``--set k=a,b`` grids, ``lo:hi:step`` ranges, Pareto fronts.

``dlm bench --set threshold=0.5,0.7 --set block_length=8,16`` runs each profile once per point of
the Cartesian product of the listed values (as llama-bench does); ``dlm tune`` searches such a
grid for the fastest point whose score stays above a floor.
"""

from __future__ import annotations

import itertools
from dataclasses import dataclass
from typing import Any, Optional, Sequence

from ..errors import UsageError

GRID_LIMIT = 256  # points in one sweep; more is almost always a typo (a range with a tiny step)


def split_values(raw: str) -> list[str]:
    """``a,b,c`` -> the items, with commas inside brackets or quotes kept (``[1,2]``, ``"x,y"``)."""
    items, depth, quote, cur = [], 0, "", []
    for ch in raw:
        if quote:
            quote = "" if ch == quote else quote
        elif ch in "\"'":
            quote = ch
        elif ch in "[{":
            depth += 1
        elif ch in "]}":
            depth -= 1
        elif ch == "," and depth == 0:
            items.append("".join(cur).strip())
            cur = []
            continue
        cur.append(ch)
    items.append("".join(cur).strip())
    return items


def _number(text: str, item: str) -> float:
    try:
        return float(text)
    except ValueError:
        raise UsageError(f"{item}: {text!r} is not a number; a range is LOW:HIGH:STEP, e.g. threshold=0.5:0.9:0.1") from None


def expand_range(item: str, raw: str) -> list[str]:
    """``lo:hi:step`` -> the values from lo to hi inclusive (integers stay integers)."""
    parts = raw.split(":")
    if len(parts) != 3:
        raise UsageError(f"{item}: a range is LOW:HIGH:STEP, e.g. threshold=0.5:0.9:0.1")
    lo, hi, step = (_number(p, item) for p in parts)
    if step <= 0 or hi < lo:
        raise UsageError(f"{item}: a range needs LOW <= HIGH and STEP > 0")
    count = int(round((hi - lo) / step + 1e-9)) + 1
    if count > GRID_LIMIT:
        raise UsageError(f"{item}: {count} values; use a larger step (at most {GRID_LIMIT})")
    ints = all(p.strip().lstrip("-").isdigit() for p in parts)
    values = [lo + i * step for i in range(count)]
    return [str(int(round(v))) if ints else f"{v:.10g}" for v in values]


@dataclass(frozen=True)
class Point:
    """One point of a sweep: the ``--set`` items that every profile of the row gets."""

    sets: tuple[str, ...]  # every item, fixed and swept, as KEY=VALUE
    swept: tuple[tuple[str, str], ...]  # the swept keys and their value at this point

    @property
    def label(self) -> str:
        return " ".join(f"{k}={v}" for k, v in self.swept)


def grid(items: Sequence[str], *, ranges: bool = False) -> list[Point]:
    """The Cartesian product of ``KEY=V1,V2,...`` items (and ``KEY=LO:HI:STEP`` when ``ranges``), in order."""
    axes: list[tuple[str, list[str]]] = []
    for item in items:
        if "=" not in item:
            raise UsageError(f"--set {item!r} must look like KEY=VALUE, e.g. --set threshold=0.8")
        key, raw = (s.strip() for s in item.split("=", 1))
        if ranges and raw.count(":") == 2 and not raw.startswith(("[", '"', "'")):
            values = expand_range(item, raw)
        else:
            values = split_values(raw)
        if any(v == "" for v in values):
            raise UsageError(f"--set {item!r} has an empty value; list values as KEY=A,B,C")
        if key in (k for k, _ in axes):
            raise UsageError(f"--set {key} is given twice; list all its values in one item: {key}=A,B")
        axes.append((key, values))
    size = 1
    for _, values in axes:
        size *= len(values)
    if size > GRID_LIMIT:
        raise UsageError(f"the sweep has {size} points (the product of the listed values); at most {GRID_LIMIT}")
    swept = [k for k, v in axes if len(v) > 1]
    points = []
    for combo in itertools.product(*(values for _, values in axes)):
        sets = tuple(f"{k}={v}" for (k, _), v in zip(axes, combo))
        points.append(Point(sets, tuple((k, v) for (k, _), v in zip(axes, combo) if k in swept)))
    return points


def pareto(points: Sequence[tuple[float, Optional[float]]]) -> list[int]:
    """Indices of the points no other point beats on both speed and score (higher is better for both).

    A point without a score competes on speed alone. Ties keep every tied point.
    """
    front = []
    for i, (speed, score) in enumerate(points):
        s = float("-inf") if score is None else score
        dominated = False
        for j, (speed2, score2) in enumerate(points):
            if j == i:
                continue
            s2 = float("-inf") if score2 is None else score2
            if speed2 >= speed and s2 >= s and (speed2 > speed or s2 > s):
                dominated = True
                break
        if not dominated:
            front.append(i)
    return sorted(front, key=lambda i: points[i][0])


def best_above(points: Sequence[tuple[float, Optional[float]]], floor: float) -> Optional[int]:
    """The fastest point whose score is at least ``floor`` (None when no point reaches it)."""
    ok = [i for i, (_, score) in enumerate(points) if score is not None and score >= floor - 1e-12]
    return max(ok, key=lambda i: (points[i][0], points[i][1])) if ok else None


def as_toml_value(value: Any) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, (int, float)):
        return repr(value)
    return '"' + str(value).replace("\\", "\\\\").replace('"', '\\"') + '"'
