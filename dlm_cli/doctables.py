"""The strategy and key tables of docs/strategies.md, generated from the declarations (:mod:`.decode.declared`).

``python -m dlm_cli.doctables`` rewrites each region between ``<!-- generated: NAME -->`` and
``<!-- end generated -->`` in docs/strategies.md (NAME: ``strategies`` or ``keys``); ``--check``
rewrites nothing and exits 1 when a region is stale. A test fails when the committed page differs
from what this module produces, so a declaration edited without regenerating the page is caught.

Optional fields of :class:`~.decode.keys.Strategy` are read with ``getattr``: a ``needs`` tuple
(capability names) becomes a column when the class has it, ``families`` one when any strategy
names families.
"""

from __future__ import annotations

import argparse
import json
import re
import sys
from pathlib import Path
from typing import Any, Callable

ROOT = Path(__file__).resolve().parent.parent
PAGE = ROOT / "docs" / "strategies.md"
END = "<!-- end generated -->"
KIND_WORDS = {"diffusion": "dLLM", "autoregressive": "AR"}
TYPE_WORDS = {int: "int", float: "float", bool: "bool", str: "str"}


def _registry() -> Any:
    from .decode import declared, keys  # noqa: F401  (declared: registers every strategy and its keys)

    return keys


def cell(text: str) -> str:
    """``text`` as one markdown table cell: one line, pipes escaped."""
    return " ".join(str(text).split()).replace("|", "\\|")


def value(v: Any) -> str:
    """A default as it is written in a profile (TOML), in backticks; ``—`` when derived at run time."""
    if v is None:
        return "—"
    if isinstance(v, bool):
        return f"`{'true' if v else 'false'}`"
    if isinstance(v, str):
        return "`" + json.dumps(v, ensure_ascii=False) + "`"
    return f"`{v!r}`"


def _number(x: float, type_: type) -> str:
    return str(int(x)) if type_ is int and float(x).is_integer() else f"{x:g}"


def allowed(key: Any) -> str:
    """The key's range or choices, short: ``0 ≤ v ≤ 1``, ``≥ 1``, `"a"` \\| `"b"`; the values it refuses."""
    if key.choices:
        out = " \\| ".join(value(c) for c in key.choices)
    elif key.type in (int, float) and (key.min is not None or key.max is not None):
        lo = None if key.min is None else _number(key.min, key.type)
        hi = None if key.max is None else _number(key.max, key.type)
        if lo is not None and hi is not None:
            out = f"{lo} {'<' if key.min_open else '≤'} v ≤ {hi}"
        elif lo is not None:
            out = f"{'>' if key.min_open else '≥'} {lo}"
        else:
            out = f"≤ {hi}"
    else:
        out = "any" if key.type is not bool else "`true` \\| `false`"
    for refused, why in key.refuse:
        out += f"; not {value(refused)} ({cell(why)})"
    return out


def _strategies() -> list[Any]:
    keys = _registry()
    order = {kind: i for i, kind in enumerate(keys.KINDS)}
    return sorted(keys.STRATEGIES.values(), key=lambda s: (order.get(s.kind, len(order)), s.name))


def strategy_table() -> str:
    """Every registered strategy: name, kind, summary, the keys it adds with their defaults (and its needs)."""
    keys = _registry()
    strategies = _strategies()
    columns: list[tuple[str, Callable[[Any], str]]] = [
        ("strategy", lambda s: f"`{s.name}`"),
        ("kind", lambda s: KIND_WORDS.get(s.kind, s.kind)),
        ("summary", lambda s: cell(s.summary)),
        ("keys it adds (default)", lambda s: ", ".join(
            f"`{k.name}`" + (f" ({value(k.default)})" if k.default is not None else "") for k in s.keys) or "—"),
    ]
    if any(getattr(s, "families", ()) for s in strategies):
        columns.append(("models", lambda s: ", ".join(getattr(s, "families", ())) or "any"))
    if hasattr(keys.Strategy, "needs") or any(hasattr(s, "needs") for s in strategies):
        columns.append(("needs", lambda s: ", ".join(f"`{n}`" for n in getattr(s, "needs", ()) or ()) or "—"))
    head = "| " + " | ".join(name for name, _ in columns) + " |"
    rule = "|" + "---|" * len(columns)
    rows = ["| " + " | ".join(fn(s) for _, fn in columns) + " |" for s in strategies]
    return "\n".join([head, rule, *rows]) + "\n"


def _declarations() -> list[tuple[Any, list[str], str]]:
    """Every distinct declaration of a key: ``(key, strategies it applies to, scope)``, in the table's order.

    A name may be declared more than once (``draft_length`` of ``lookup`` and of ``speculative``): each
    declaration is its own row. Scope orders the rows: keys of every strategy, of every strategy of a
    kind, then a strategy's own keys; by name inside each.
    """
    keys = _registry()
    strategies = [s.name for s in _strategies()]
    found: list[tuple[Any, list[str]]] = []
    for name in strategies:
        for key in keys.keys_for(name).values():
            for known, users in found:
                if known == key:
                    users.append(name)
                    break
            else:
                found.append((key, [name]))
    scoped = []
    for key, users in found:
        if keys.SHARED.get(key.name) == key:
            scope = "0"
        else:
            kind = next((k for k in keys.KINDS if keys.COMMON[k].get(key.name) == key), None)
            scope = f"1{keys.KINDS.index(kind)}" if kind is not None else "2"
        scoped.append((key, users, scope))
    return sorted(scoped, key=lambda t: (t[2], t[0].name, strategies.index(t[1][0])))


def applies_to(key: Any, users: list[str], scope: str) -> str:
    """``all``, ``every dLLM strategy but `window```, or the strategies by name."""
    keys = _registry()
    names = [s.name for s in _strategies()]
    if scope == "0":
        base, label = names, "all"
    elif scope.startswith("1"):
        kind = keys.KINDS[int(scope[1:])]
        base = [n for n in names if keys.STRATEGIES[n].kind == kind]
        label = f"every {KIND_WORDS.get(kind, kind)} strategy"
    else:
        return ", ".join(f"`{n}`" for n in users)
    left_out = [n for n in base if n not in users]
    if left_out:
        label += " but " + ", ".join(f"`{n}`" for n in left_out)
    return label


def key_table() -> str:
    """Every declared key: name (and former names), type, default, range or choices, where it applies, help."""
    head = "| key | type | default | allowed | applies to | meaning |\n|---|---|---|---|---|---|"
    rows = []
    for key, users, scope in _declarations():
        name = f"`{key.name}`" + (" (formerly " + ", ".join(f"`{o}`" for o in key.old) + ")" if key.old else "")
        rows.append(f"| {name} | {TYPE_WORDS.get(key.type, key.type.__name__)} | {value(key.default)} | "
                    f"{allowed(key)} | {applies_to(key, users, scope)} | {cell(key.help)} |")
    return "\n".join([head, *rows]) + "\n"


TABLES: dict[str, Callable[[], str]] = {"strategies": strategy_table, "keys": key_table}


def regenerate(text: str) -> str:
    """``text`` with every generated region replaced by the table it names."""
    seen = []

    def fill(m: re.Match) -> str:
        name = m.group(2)
        if name not in TABLES:
            raise ValueError(f"unknown generated region {name!r}; known: {', '.join(TABLES)}")
        seen.append(name)
        return f"{m.group(1)}\n{TABLES[name]()}{END}"

    out = re.sub(r"(<!-- generated: ([\w-]+)[^>]*-->)\n.*?" + re.escape(END), fill, text, flags=re.S)
    missing = [n for n in TABLES if n not in seen]
    if missing:
        raise ValueError(f"no generated region for {', '.join(missing)} (a line <!-- generated: NAME --> "
                         f"followed by {END})")
    return out


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m dlm_cli.doctables", description=__doc__.splitlines()[0])
    parser.add_argument("page", nargs="?", type=Path, default=PAGE, help="the page to rewrite (default: %(default)s)")
    parser.add_argument("--check", action="store_true", help="rewrite nothing; exit 1 when a region is stale")
    args = parser.parse_args(argv)
    text = args.page.read_text(encoding="utf-8")
    try:
        new = regenerate(text)
    except ValueError as exc:
        print(f"dlm: {args.page}: {exc}", file=sys.stderr)
        return 2
    if new == text:
        print(f"{args.page}: up to date")
        return 0
    if args.check:
        print(f"dlm: {args.page} is stale: run python -m dlm_cli.doctables", file=sys.stderr)
        return 1
    args.page.write_text(new, encoding="utf-8")
    print(f"{args.page}: regenerated")
    return 0


if __name__ == "__main__":
    sys.exit(main())
