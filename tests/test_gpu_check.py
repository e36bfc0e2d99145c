"""benchmarks/gpu.py, the GPU check, run on the CPU with tiny shapes (--tiny): the same code paths as on a GPU."""

from __future__ import annotations

import json
import os
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "benchmarks"))

import gpu  # noqa: E402


def test_tiny_gpu_check_prints_every_row_with_its_counts(tmp_path, capsys, monkeypatch):
    monkeypatch.setenv("DLM_COMPILE_BACKEND", "aot_eager")  # the compiled rows, without a C++ build
    out = tmp_path / "rows.json"
    assert gpu.main(["--tiny", "--tokens", "8", "--no-fastdllm", "--json", str(out)]) == 0
    printed = capsys.readouterr()
    assert "Fast-dLLM rows skipped: --no-fastdllm" in printed.out
    rows = json.loads(out.read_text())
    dllm = [(r["model"], r["method"], r["cache"]) for r in rows if r["cache"] != "-"]
    assert dllm == [(m, f"dlm {p}", c) for m in ("LLaDA tiny", "Dream tiny") for c in gpu.CACHES
                    for p in gpu.DLLM_PROFILES]
    for r in rows:
        assert r["tokens_per_second"] > 0 and r["bandwidth_gbs"] > 0 and r["peak_gib"] is None  # no CUDA: no peak
        if r["method"] == "dlm quality":
            assert r["nfe"] == 8  # one token per step
    ar, ar_c, spec, spec_c = [r for r in rows if r["cache"] == "-"]
    assert [r["method"] for r in (ar, ar_c, spec, spec_c)] == [
        "dlm ar", "dlm ar, compiled", "dlm speculative", "dlm speculative, compiled"]
    assert ar["nfe"] == ar["tokens"] == 8 and spec["nfe"] <= ar["nfe"]
    assert ar_c["nfe"] == ar["nfe"] and spec_c["nfe"] == spec["nfe"]  # compiling changes no count
    assert printed.out.count("\n| ") == len(rows) + 1  # one table: the header and a line per row


def test_without_a_checkout_the_fastdllm_rows_say_what_they_need(tmp_path):
    assert "--fastdllm PATH" in gpu.load_fastdllm(None, tmp_path)
    assert "no such directory" in gpu.load_fastdllm(str(tmp_path / "nowhere"), tmp_path)


def test_no_cuda_says_so_and_points_at_tiny(capsys):
    import torch

    if torch.cuda.is_available():  # pragma: no cover - a GPU machine runs the real check
        pytest.skip("CUDA is available here")
    assert gpu.main([]) == 2
    assert "--tiny" in capsys.readouterr().err


@pytest.mark.skipif(not os.environ.get("FASTDLLM_REPO"), reason="needs a Fast-dLLM checkout in $FASTDLLM_REPO")
def test_tiny_gpu_check_against_fastdllm(tmp_path):
    out = tmp_path / "rows.json"
    assert gpu.main(["--tiny", "--tokens", "8", "--only", "llada", "--json", str(out)]) == 0
    rows = json.loads(out.read_text())
    theirs = [r for r in rows if r["method"].startswith("Fast-dLLM")]
    assert len(theirs) == 6  # three caches, with and without the threshold
    ours = [r for r in rows if r["method"].startswith("dlm")]
    assert all(r["ratio"] is not None for r in ours)
    assert all(r["nfe"] == 8 for r in theirs + ours if "None" in r["method"] or r["method"] == "dlm quality")
