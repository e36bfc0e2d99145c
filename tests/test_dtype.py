"""--dtype auto: bfloat16 where the device multiplies it natively, float32 elsewhere; the choice is reported."""

from __future__ import annotations

import json

import pytest
import torch
from typer.testing import CliRunner

from dlm_cli.cli import app
from dlm_cli.models import files


@pytest.fixture
def cpu(monkeypatch):
    """A CPU whose capability and flags the test sets; no override from the environment."""
    monkeypatch.delenv("DLM_NATIVE_BF16", raising=False)

    def make(capability: str, flags: set[str]) -> None:
        monkeypatch.setattr(torch.backends.cpu, "get_cpu_capability", lambda: capability)
        monkeypatch.setattr(files, "cpu_flags", lambda: flags)

    return make


@pytest.mark.parametrize("capability,flags,want", [
    ("AVX512", {"avx512f", "avx512_bf16", "avx512_vnni"}, torch.bfloat16),
    ("AVX512", {"avx512f", "amx_bf16", "amx_tile"}, torch.bfloat16),
    ("AVX512", {"avx512f", "avx512_vnni"}, torch.float32),  # AVX-512 without BF16: converted around each product
    ("AVX2", {"avx2", "avx512_bf16"}, torch.float32),  # torch runs its AVX2 kernels: no native bfloat16 there
    ("DEFAULT", set(), torch.float32),
])
def test_auto_is_bfloat16_only_on_a_cpu_that_multiplies_it(cpu, capability, flags, want):
    cpu(capability, flags)
    assert files.pick_dtype("auto", torch.device("cpu")) == want
    assert files.pick_dtype("float32", torch.device("cpu")) == torch.float32  # a named dtype is taken as is


def test_auto_is_bfloat16_on_cuda_and_the_environment_overrides_the_test(cpu, monkeypatch):
    cpu("DEFAULT", set())
    assert files.native_bf16(torch.device("cuda")) == "cuda"
    assert files.pick_dtype("auto", torch.device("mps")) == torch.float32
    monkeypatch.setenv("DLM_NATIVE_BF16", "1")
    assert files.pick_dtype("auto", torch.device("cpu")) == torch.bfloat16
    monkeypatch.setenv("DLM_NATIVE_BF16", "0")
    assert files.pick_dtype("auto", torch.device("cuda")) == torch.float32


def test_json_and_the_stats_line_name_the_choice(tiny_llada, monkeypatch):
    runner = CliRunner()
    args = ["generate", "-m", str(tiny_llada), "hello", "-n", "8", "--seed", "1"]
    out = json.loads(runner.invoke(app, args + ["--json"]).stdout)
    assert (out["dtype"], out["dtype_choice"]) == ("float32", "auto: no native bfloat16")
    out = json.loads(runner.invoke(app, args + ["--json", "--dtype", "float32"]).stdout)
    assert (out["dtype"], out["dtype_choice"]) == ("float32", "--dtype")
    monkeypatch.setenv("DLM_NATIVE_BF16", "1")
    out = json.loads(runner.invoke(app, args + ["--json"]).stdout)
    assert (out["dtype"], out["dtype_choice"]) == ("bfloat16", "auto: DLM_NATIVE_BF16=1")
    r = runner.invoke(app, args)
    assert r.exit_code == 0 and "bfloat16 (auto: DLM_NATIVE_BF16=1)" in r.stderr
    r = runner.invoke(app, args + ["--dtype", "float32"])
    from dlm_cli.models.kernels import available

    packed = ", oneDNN packed" if available(torch.float32) else ""  # kernels = auto on a CPU (float32)
    assert f" float32{packed} " in r.stderr.replace("·", " ") and "auto" not in r.stderr
    r = runner.invoke(app, args + ["--dtype", "float32", "--set", "kernels=torch"])
    assert " float32 " in r.stderr.replace("·", " ") and "oneDNN" not in r.stderr
