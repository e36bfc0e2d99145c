"""``dlm profiles list|show`` and ``dlm models``: what is available, as rich tables or JSON."""

from __future__ import annotations

import json
import sys
from typing import Any

from rich.console import Console
from rich.table import Table

from . import profiles
from .tables import table_console


def _out() -> Console:
    return table_console()


def list_profiles(json_out: bool) -> None:
    rows = []
    for name, ref in sorted(profiles.available().items()):
        data = profiles.read(ref)
        rows.append({"name": name, "strategy": data.get("strategy", "?"), "origin": ref.origin,
                     "description": str(data.get("description", "")), "path": str(ref.path),
                     "default": profiles.DEFAULTS.get(name) if ref.origin == "built-in" else None})
    if json_out:
        sys.stdout.write(json.dumps(rows, indent=2) + "\n")
        return
    table = Table(title="profiles", title_justify="left")
    for col in ("name", "strategy", "origin", "description"):
        table.add_column(col, overflow="fold")
    for r in rows:
        note = f" ({r['default']})" if r["default"] else ""
        table.add_row(r["name"] + ("*" if r["default"] else ""), r["strategy"], r["origin"], r["description"] + note)
    _out().print(table)
    _out().print(f"user profiles: {profiles.user_dir()}/NAME.toml", style="dim")


def show_profile(name: str, sets: list[str], json_out: bool) -> None:
    from .decode import declared  # noqa: F401  (registers every strategy's keys; imports no torch)
    from .decode.keys import STRATEGIES, keys_for

    settings = profiles.load(name, sets=sets)
    keys = keys_for(settings.strategy)
    if json_out:
        payload = {"profile": settings.profile, **settings.meta,
                   "settings": {k: {"value": v, "source": settings.sources.get(k, "default")}
                                for k, v in settings.values.items()}}
        sys.stdout.write(json.dumps(payload, indent=2) + "\n")
        return
    strategy = STRATEGIES[settings.strategy]
    out = _out()
    out.print(f"[bold]{settings.profile}[/bold]: strategy [cyan]{strategy.name}[/cyan] ({strategy.kind}) — "
              f"{strategy.summary}")
    for meta in ("description", "model", "draft"):
        if settings.meta.get(meta):
            out.print(f"{meta}: {settings.meta[meta]}", markup=False)
    table = Table(title_justify="left")
    for col in ("key", "value", "source", "allowed", "meaning"):
        table.add_column(col, overflow="fold")
    for k, v in settings.values.items():
        key = keys[k]
        table.add_row(k, _fmt(v), settings.sources.get(k, "default"), key.allowed(), key.help, style=None)
    out.print(table)


def _fmt(v: Any) -> str:
    if v is None:
        return "(derived)"
    if isinstance(v, bool):
        return "true" if v else "false"
    return repr(v) if isinstance(v, str) else str(v)


def list_models(json_out: bool) -> None:
    from .models.families import FAMILIES
    from .models.resolve import EMBEDDED, embedded_installed

    embedded = [{"name": n, "description": d, "installed": embedded_installed(n)}
                for n, (sub, d) in EMBEDDED.items()]
    from .models.shortnames import SHORT_NAMES, short_name_installed

    embedded += [{"name": n, "description": d, "installed": short_name_installed(n)} for n, d in SHORT_NAMES.items()]
    fams = [{"family": f.name, "kind": f.kind, "example": f.example} for f in FAMILIES]
    if json_out:
        sys.stdout.write(json.dumps({"embedded": embedded, "families": fams}, indent=2) + "\n")
        return
    out = _out()
    t = Table(title="embedded models (offline)", title_justify="left")
    for col in ("name", "description", "installed"):
        t.add_column(col, overflow="fold")
    for e in embedded:
        t.add_row(e["name"], e["description"], "yes" if e["installed"] else "no")
    out.print(t)
    f = Table(title="families loaded natively", title_justify="left")
    for col in ("family", "kind", "example"):
        f.add_column(col, overflow="fold")
    for fam in fams:
        f.add_row(fam["family"], fam["kind"], fam["example"])
    out.print(f)
