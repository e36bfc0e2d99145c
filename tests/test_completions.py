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


def _complete(words: str) -> list[str]:
    import os
    import subprocess
    import sys

    env = dict(os.environ, _DLM_COMPLETE="complete_bash", COMP_WORDS=words, COMP_CWORD=str(len(words.split(" ")) - 1))
    out = subprocess.run([sys.executable, "-m", "dlm_cli"], env=env, capture_output=True, text=True, timeout=60)
    return out.stdout.split()


def test_profile_and_model_names_complete():
    assert {"speedy", "speedy-lookup"} <= set(_complete("dlm generate -p spe"))
    assert "quality" not in _complete("dlm generate -p spe")
    assert set(_complete("dlm bench -p quality,spe")) >= {"quality,speedy", "quality,speedy-lookup"}
    assert set(_complete("dlm generate -m dlm-demo")) == {"dlm-demo", "dlm-demo-long", "dlm-demo-ar", "dlm-demo-ar-draft"}
    assert "smollm2-dlm" in _complete("dlm generate --draft smol") and "prophet" in _complete("dlm profiles show pro")
