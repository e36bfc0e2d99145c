"""Threads on a busy machine: passive OpenMP waits, one thread per free core, and a stats line that
says when other processes had the cores."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time

import pytest
from typer.testing import CliRunner

from dlm_cli import threads
from dlm_cli.cli import app


def test_free_cores_subtract_the_load_and_never_reach_zero(monkeypatch):
    monkeypatch.setattr(os, "sched_getaffinity", lambda pid: {0, 1}, raising=False)
    monkeypatch.setattr(os, "cpu_count", lambda: 2)
    for load, free in ((0.2, 2), (0.8, 1), (1.4, 1), (2.7, 1), (6.0, 1)):
        monkeypatch.setattr(os, "getloadavg", lambda load=load: (load, load, load))
        assert threads.free_cores() == free, load
    monkeypatch.setattr(os, "cpu_count", lambda: 64)  # a container pinned to 2 of 64 cores
    monkeypatch.setattr(os, "getloadavg", lambda: (10.0, 10.0, 10.0))
    assert threads.free_cores() == 2


def test_the_cli_sets_passive_waits_before_torch_loads():
    code = ("import sys, os; import dlm_cli.cli\n"
            "print(os.environ.get('OMP_WAIT_POLICY'), 'torch' in sys.modules)")
    env = {k: v for k, v in os.environ.items() if k != "OMP_WAIT_POLICY"}
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=env, check=True)
    assert out.stdout.split() == ["PASSIVE", "False"]
    env["OMP_WAIT_POLICY"] = "ACTIVE"  # the user's own choice stays
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=env, check=True)
    assert out.stdout.split() == ["ACTIVE", "False"]


def test_a_model_above_the_tiny_size_gets_the_free_cores(tiny_llada, monkeypatch):
    import torch

    monkeypatch.delenv("OMP_NUM_THREADS", raising=False)
    monkeypatch.setattr(threads, "TINY_PARAMETERS", 0)  # the tiny checkpoint stands in for a real model
    monkeypatch.setattr(threads, "free_cores", lambda: 3)
    before = torch.get_num_threads()
    try:
        r = CliRunner().invoke(app, ["generate", "-m", str(tiny_llada), "hi", "-n", "8", "--json"])
        assert r.exit_code == 0, r.stderr
        assert json.loads(r.stdout)["threads"] == 3
        r = CliRunner().invoke(app, ["generate", "-m", str(tiny_llada), "hi", "-n", "8", "--json", "--threads", "1"])
        assert json.loads(r.stdout)["threads"] == 1
    finally:
        torch.set_num_threads(before)


def test_the_clock_counts_the_decode_threads_cpu_time_and_the_stats_line_says_when_it_was_starved():
    from dlm_cli.decode.events import Clock, Done, timed
    from dlm_cli.view.stats import stats_line

    def loop():  # a decode that waits off the CPU most of its time, as a descheduled thread does
        time.sleep(0.6)
        sum(range(200_000))
        yield Done(tokens=[1, 2], nfe=2, steps=2, seconds=0.6, ttft_seconds=0.1, finish_reason="eos")

    clock = Clock(cpu=True)
    done = list(timed(loop(), clock))[-1]
    assert 0 <= done.cpu_seconds < 0.3
    line = stats_line(done, threads=2)
    assert "CPU busy: the decode thread ran" in line and "try --threads 1" in line
    assert "--threads 1" not in stats_line(done, threads=1)

    def busy():  # the thread computes the whole time: no note
        end = time.perf_counter() + 0.6
        while time.perf_counter() < end:
            pass
        yield Done(tokens=[1], nfe=1, steps=1, seconds=0.6, ttft_seconds=0.1, finish_reason="eos")

    done = list(timed(busy(), Clock(cpu=True)))[-1]
    if done.cpu_seconds > 0.5:  # this test's own process may be starved by other jobs on the machine
        assert "CPU busy" not in stats_line(done)
    assert list(timed(busy(), Clock()))[-1].cpu_seconds is None  # not measured off the CPU


@pytest.mark.parametrize("n, words", [("3", "stopped: length, -n 3"), ("16", None)])
def test_the_stats_line_says_when_the_length_limit_cut_the_answer(n, words):
    args = ["generate", "-m", "dlm-demo", "Sort these numbers: 4 7 1 9 3", "-n", n, "-p", "quality"]
    r = CliRunner().invoke(app, args + ["--json"])
    assert json.loads(r.stdout)["finish_reason"] == ("length" if words else "eos")
    r = CliRunner().invoke(app, args)
    assert r.exit_code == 0 and (words in r.stderr if words else "stopped" not in r.stderr), r.stderr
