"""Shell completion scripts for bash, zsh and fish, generated from the Typer app.

``python -m dlm_cli.completions [DIR]`` writes them (default: completions/); a test fails when
the committed ones are stale.
"""

from __future__ import annotations

import sys
from pathlib import Path

SHELLS = {"bash": "dlm.bash", "zsh": "_dlm", "fish": "dlm.fish"}


def script(shell: str) -> str:
    from typer._completion_shared import get_completion_script

    return get_completion_script(prog_name="dlm", complete_var="_DLM_COMPLETE", shell=shell).rstrip() + "\n"


def write_all(folder: Path) -> list[Path]:
    folder.mkdir(parents=True, exist_ok=True)
    out = []
    for shell, name in SHELLS.items():
        path = folder / name
        path.write_text(script(shell))
        out.append(path)
    return out


if __name__ == "__main__":
    for p in write_all(Path(sys.argv[1] if len(sys.argv) > 1 else "completions")):
        print(p)


def _last_item(incomplete: str) -> tuple[str, str]:
    """``a,b,sp`` -> (``a,b,``, ``sp``): a comma list completes its last item."""
    head, _, last = incomplete.rpartition(",")
    return (head + "," if head else ""), last


def profile_names(incomplete: str) -> list[str]:
    """Profile names for ``-p`` (built-in and the user's), completing the last item of a comma list."""
    from . import profiles

    head, last = _last_item(incomplete)
    return [head + n for n in sorted(profiles.available()) if n.startswith(last)]


def model_names(incomplete: str) -> list[str]:
    """The short names ``-m`` and ``--draft`` take (a directory or hub id is the shell's own to complete)."""
    from .models.resolve import EMBEDDED
    from .models.shortnames import SHORT_NAMES

    return [n for n in [*EMBEDDED, *SHORT_NAMES] if n.startswith(incomplete)]
