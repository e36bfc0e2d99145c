"""The committed shell completion scripts match what the Typer app generates now."""

from __future__ import annotations

from pathlib import Path

import pytest

from dlm_cli.completions import SHELLS, script

ROOT = Path(__file__).resolve().parent.parent


@pytest.mark.parametrize("shell", sorted(SHELLS))
def test_completion_script_is_current(shell):
    committed = (ROOT / "completions" / SHELLS[shell]).read_text()
    assert committed == script(shell), f"completions/{SHELLS[shell]} is stale: run python -m dlm_cli.completions"


def test_completion_callback_lists_the_subcommands():
    import os
    import subprocess
    import sys

    env = dict(os.environ, _DLM_COMPLETE="complete_bash", COMP_WORDS="dlm ", COMP_CWORD="1")
    out = subprocess.run([sys.executable, "-m", "dlm_cli"], env=env, capture_output=True, text=True)
    for cmd in ("generate", "bench", "profiles", "models"):
        assert cmd in out.stdout
