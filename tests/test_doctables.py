"""docs/strategies.md's generated tables match what dlm_cli.doctables makes from the declarations now."""

from __future__ import annotations

import dataclasses
import re
from pathlib import Path

import pytest

from dlm_cli import doctables
from dlm_cli.decode import keys

ROOT = Path(__file__).resolve().parent.parent
PAGE = ROOT / "docs" / "strategies.md"
STALE = "docs/strategies.md is stale: run python -m dlm_cli.doctables"


def region(text: str, name: str) -> str:
    """The text between ``<!-- generated: NAME -->`` and the next ``<!-- end generated -->``."""
    m = re.search(r"<!-- generated: " + re.escape(name) + r"\b[^>]*-->\n(.*?)" + re.escape(doctables.END), text, re.S)
    assert m, f"docs/strategies.md has no generated region {name!r}"
    return m.group(1)


@pytest.mark.parametrize("name", sorted(doctables.TABLES))
def test_generated_region_is_current(name):
    assert region(PAGE.read_text(encoding="utf-8"), name) == doctables.TABLES[name](), STALE


def test_page_is_current_as_a_whole():
    text = PAGE.read_text(encoding="utf-8")
    assert doctables.regenerate(text) == text, STALE


def test_every_declared_key_and_strategy_has_a_row():
    table = region(PAGE.read_text(encoding="utf-8"), "keys")
    named = {re.match(r"\| `([^`]+)`", line).group(1) for line in table.splitlines()[2:]}
    declared = {name for strategy in keys.STRATEGIES for name in keys.keys_for(strategy)}
    assert declared - named == set(), f"keys missing from the key table: {sorted(declared - named)}"
    assert named <= declared
    old = {o for ks in keys.every_key().values() for k in ks for o in k.old}
    assert old and all(f"`{o}`" in table for o in old)  # former names, on their key's row
    strategies = region(PAGE.read_text(encoding="utf-8"), "strategies")
    assert {re.match(r"\| `([^`]+)`", line).group(1) for line in strategies.splitlines()[2:]} == set(keys.STRATEGIES)


def test_an_edited_declaration_makes_the_page_stale(monkeypatch):
    name, key = next((n, k) for n, k in keys.SHARED.items() if k.type is int)
    monkeypatch.setitem(keys.SHARED, name, dataclasses.replace(key, default=key.default + 1))
    text = PAGE.read_text(encoding="utf-8")
    assert doctables.regenerate(text) != text
    assert doctables.main(["--check", str(PAGE)]) == 1


def test_check_and_rewrite(tmp_path):
    page = tmp_path / "page.md"
    page.write_text("# t\n\n<!-- generated: strategies -->\nSTALE TEXT\n<!-- end generated -->\n\n"
                    "<!-- generated: keys -->\n<!-- end generated -->\n", encoding="utf-8")
    assert doctables.main(["--check", str(page)]) == 1
    assert doctables.main([str(page)]) == 0
    assert doctables.main(["--check", str(page)]) == 0
    text = page.read_text(encoding="utf-8")
    assert "STALE TEXT" not in text and region(text, "keys") == doctables.key_table()
    page.write_text("no regions\n", encoding="utf-8")
    assert doctables.main(["--check", str(page)]) == 2


def test_optional_strategy_fields_become_columns(monkeypatch):
    s = next(iter(keys.STRATEGIES.values()))
    monkeypatch.setattr(s, "needs", ("block-cache",), raising=False)
    table = doctables.strategy_table()
    assert "| needs |" in table.splitlines()[0] and "`block-cache`" in table
