"""The two setup commands leave `dlm` on the PATH: `make install` (under `make demo` and `make test`)
links the venv's dlm into ~/.local/bin and says so, or says what to add to PATH."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
pytestmark = pytest.mark.skipif(shutil.which("make") is None, reason="needs make")


def make(*args: str, home: Path, path: str) -> subprocess.CompletedProcess:
    env = {"HOME": str(home), "PATH": path}
    return subprocess.run(["make", "-s", "-C", str(ROOT), *args], capture_output=True, text=True, env=env,
                          timeout=60)


def test_make_links_dlm_so_a_new_shell_runs_it_as_typed(tmp_path):
    venv = Path(sys.executable).parent.parent
    if not (venv / "bin" / "dlm").exists():
        pytest.skip("the tests run outside a venv with the dlm script")
    home = tmp_path / "home"
    bare = "/usr/bin:/bin"
    out = make("link", f"VENV={venv}", home=home, path=bare)
    assert out.returncode == 0, out.stderr
    link = home / ".local" / "bin" / "dlm"
    assert f"dlm: note: linked {link} -> {venv}/bin/dlm" in out.stdout
    assert f"dlm: warning: {home}/.local/bin is not on your PATH" in out.stdout  # and how to add it
    # A new shell with ~/.local/bin on its PATH (as ~/.profile adds it on most systems) runs `dlm` as typed.
    shell = subprocess.run(["sh", "-c", "dlm --version"], capture_output=True, text=True, timeout=120,
                           env={"HOME": str(home), "PATH": f"{home}/.local/bin:{bare}"})
    assert shell.returncode == 0 and shell.stdout.startswith("dlm "), shell.stderr
    again = make("link", f"VENV={venv}", home=home, path=f"{home}/.local/bin:{bare}")
    assert "not on your PATH" not in again.stdout and os.path.realpath(link) == os.path.realpath(venv / "bin" / "dlm")


def test_a_real_dlm_file_already_there_is_left_alone(tmp_path):
    home = tmp_path / "home"
    (home / ".local" / "bin").mkdir(parents=True)
    mine = home / ".local" / "bin" / "dlm"
    mine.write_text("#!/bin/sh\necho pipx\n")
    out = make("link", f"VENV={tmp_path / 'venv'}", home=home, path="/usr/bin:/bin")
    assert out.returncode == 0 and "exists and is not a link; left as it is" in out.stdout
    assert mine.read_text() == "#!/bin/sh\necho pipx\n"


def test_install_runs_the_link_after_installing():
    out = subprocess.run(["make", "-n", "-C", str(ROOT), "install", "VENV=/nonexistent-venv"], capture_output=True,
                         text=True, timeout=60)
    lines = out.stdout.splitlines()
    pip = next(i for i, line in enumerate(lines) if "pip install" in line and "-e" in line)
    assert any("link" in line for line in lines[pip:]), out.stdout
