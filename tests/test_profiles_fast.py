"""``dlm profiles show`` and the checks made before a model loads read the declarations alone: no torch.

Each case runs in a fresh interpreter (this one has torch loaded already) and reports which heavy
modules were imported by the end; the output and the exit code must be what the command prints.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
HEAVY = ("torch", "numpy", "transformers")
MARK = "heavy modules imported: "

CLI = f"""
import sys
sys.argv = ["dlm", *sys.argv[1:]]
from dlm_cli.cli import main
code = 0
try:
    main()
except SystemExit as exc:
    code = exc.code
sys.stdout.flush()
sys.stderr.write("\\n{MARK}" + ",".join(m for m in {HEAVY!r} if m in sys.modules) + "\\n")
sys.exit(code)
"""


def run(script: str, *args: str) -> tuple[int, str, str, list[str]]:
    """Run ``script`` with ``args`` in a fresh interpreter: exit code, stdout, stderr (less the report), heavy modules."""
    env = dict(os.environ, PYTHONPATH=os.pathsep.join([str(ROOT), os.environ.get("PYTHONPATH", "")]), COLUMNS="200")
    out = subprocess.run([sys.executable, "-c", script, *args], env=env, capture_output=True, text=True, timeout=120)
    err, _, report = out.stderr.rpartition(MARK)
    assert report, f"the script did not finish: {out.stderr}"
    return out.returncode, out.stdout, err, [m for m in report.strip().split(",") if m]


def test_show_imports_no_torch():
    code, out, err, heavy = run(CLI, "profiles", "show", "speedy")
    assert (code, heavy) == (0, [])
    assert "speedy: strategy threshold (diffusion)" in out
    for key in ("threshold", "cache", "eotp", "stop_repeats", "rank"):
        assert f"│ {key} " in out


def test_show_json_with_a_set_imports_no_torch():
    code, out, err, heavy = run(CLI, "profiles", "show", "speedy", "--json", "--set", "threshold=0.8")
    assert (code, heavy) == (0, [])
    data = json.loads(out)
    assert data["profile"] == "speedy" and data["strategy"] == "threshold"
    assert data["settings"]["threshold"] == {"value": 0.8, "source": "--set"}
    assert data["settings"]["cache"] == {"value": "dual", "source": "profile"}
    assert data["settings"]["top_k"] == {"value": 0, "source": "default"}


def test_unknown_profile_is_refused_without_torch():
    code, out, err, heavy = run(CLI, "profiles", "show", "nosuch")
    assert (code, heavy) == (2, [])
    assert out == ""
    assert err.startswith("dlm: unknown profile 'nosuch'") and "known profiles: " in err


def test_a_user_profile_and_a_profile_file_show_without_torch(tmp_path):
    from dlm_cli import profiles

    user = profiles.user_dir()
    user.mkdir(parents=True, exist_ok=True)
    (user / "mine.toml").write_text('description = "mine"\nstrategy = "credit"\ncredit_alpha = 0.5\n')
    code, out, err, heavy = run(CLI, "profiles", "show", "mine", "--json")
    assert (code, heavy) == (0, [])
    assert json.loads(out)["settings"]["credit_alpha"] == {"value": 0.5, "source": "profile"}
    # A conflict declared with a strategy, refused from the declarations alone.
    (tmp_path / "w.toml").write_text('strategy = "window"\nblock_length = 4\n')
    code, out, err, heavy = run(CLI, "profiles", "show", str(tmp_path / "w.toml"))
    assert (code, heavy) == (2, [])
    assert err.startswith(f"dlm: {tmp_path / 'w.toml'}: strategy 'window' has no semi-autoregressive blocks")


EARLY = f"""
import sys
from dlm_cli import profiles
from dlm_cli.errors import UsageError
try:
    profiles.load("speedy", sets=["threshhold=0.5"])
except UsageError as exc:
    print(exc)
profiles.check_early(["threshold=0.5"], {{"max_new_tokens": 8}}, None)
try:
    profiles.check_early(["nosuchkey=1"], None, None)
except UsageError as exc:
    print(exc)
settings = profiles.load("quality", sets=["steps=8"])
print(settings.strategy, settings.steps, type(settings.frozen()).__name__)
sys.stderr.write("\\n{MARK}" + ",".join(m for m in {HEAVY!r} if m in sys.modules) + "\\n")
"""


def test_load_and_the_early_checks_import_no_torch():
    code, out, err, heavy = run(EARLY)
    assert (code, heavy) == (0, []), err
    lines = out.splitlines()
    assert lines[0].startswith("--set threshhold=0.5: unknown key 'threshhold' for strategy 'threshold' "
                               "(did you mean 'threshold'?); allowed keys: ")
    assert lines[1].startswith("--set nosuchkey=1: unknown key 'nosuchkey'")
    assert lines[2] == "baseline 8 BaselineSettings"


def test_the_same_error_in_process():
    from dlm_cli import profiles
    from dlm_cli.errors import UsageError

    with pytest.raises(UsageError, match=r"unknown key 'threshhold' for strategy 'threshold' \(did you mean "):
        profiles.load("speedy", sets=["threshhold=0.5"])


def test_every_declared_factory_resolves():
    """A strategy names its part as "module:attribute": each one imports and is callable; loop-only ones have none."""
    from dlm_cli.decode import STRATEGIES

    own_loop = {"s2d2", "freedave", "gemma-native"}
    for name, strategy in STRATEGIES.items():
        if name in own_loop:
            assert strategy.impl is None and strategy.factory is None
        else:
            assert isinstance(strategy.impl, str) and callable(strategy.factory), name


def test_the_declarations_import_no_torch():
    code, out, err, heavy = run(f"""
import sys
import dlm_cli.decode
import dlm_cli.decode.declared
from dlm_cli import doctables
doctables.TABLES["strategies"]()
sys.stderr.write("\\n{MARK}" + ",".join(m for m in {HEAVY!r} if m in sys.modules) + "\\n")
""")
    assert (code, heavy) == (0, []), err


@pytest.mark.parametrize("args,word", [
    (["generate", "-m", "smollm2-dlm-dp", "--set", "threshhold=0.5", "hi"], "did you mean 'entropy_threshold'"),
    (["generate", "-n", "0", "hi"], "max_new_tokens = 0 is out of range"),
    (["generate", "-m", "dlm-demo", "-p", "nosuch", "hi"], "unknown profile 'nosuch'"),
    (["generate", "-m", "dlm-demo", "--set", "treshold=0.5", "hi"], "unknown key 'treshold'"),
])
def test_generate_refuses_a_bad_key_value_or_profile_before_importing_torch(args, word):
    """A typo is refused in a fraction of a second: nothing heavy is imported before the check."""
    code, out, err, heavy = run(CLI, *args)
    assert (code, heavy, out) == (2, [], "")
    assert err.strip().startswith("dlm: ") and word in err and len(err.strip().splitlines()) == 1
