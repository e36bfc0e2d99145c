"""Data parallelism over processes (dlm_cli/distributed.py): two CPU processes over gloo, started by the
launchers users run (torchrun for ``dlm bench``, ``accelerate launch`` for lm-eval), give the texts and
scores of one process."""

from __future__ import annotations

import glob
import json
import socket
import subprocess
import sys
from pathlib import Path

import pytest
from typer.testing import CliRunner

from dlm_cli.distributed import World, world
from dlm_cli.errors import UsageError

ROOT = Path(__file__).resolve().parent.parent
TASKS = Path(__file__).parent / "lmeval"


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def launched_env(tmp_path):
    import os

    env = {k: v for k, v in os.environ.items() if k not in ("WORLD_SIZE", "RANK", "LOCAL_RANK")}
    return dict(env, PYTHONPATH=str(ROOT), HF_HUB_OFFLINE="1", HF_DATASETS_OFFLINE="1", DLM_NATIVE_BF16="0",
                HF_HOME=str(tmp_path / "hf"), HF_DATASETS_CACHE=str(tmp_path / "ds"), OMP_NUM_THREADS="1",
                ACCELERATE_CONFIG_DIR=str(tmp_path / "accelerate"))


# -- the world and its shares ------------------------------------------------------------------

def test_shares_cover_every_item_once_in_order():
    items = list(range(11))
    for size in (1, 2, 3, 4):
        parts = [World(r, size).share(items) for r in range(size)]
        assert World.unshare(parts) == items
        assert max(map(len, parts)) - min(map(len, parts)) <= 1


def test_the_world_comes_from_the_launchers_environment(monkeypatch):
    assert world() == World(0, 1, 0)
    monkeypatch.setenv("WORLD_SIZE", "4")
    monkeypatch.setenv("RANK", "3")
    monkeypatch.setenv("LOCAL_RANK", "1")
    assert world() == World(3, 4, 1) and not world().main
    monkeypatch.setenv("RANK", "4")
    with pytest.raises(UsageError, match="0 <= RANK < WORLD_SIZE"):
        world()
    monkeypatch.setenv("RANK", "x")
    with pytest.raises(UsageError, match="RANK='x' is not a number"):
        world()


# -- dlm bench under torchrun ------------------------------------------------------------------

BENCH = ["bench", "-m", "dlm-demo", "--tasks", "sort,copy,add", "--per-task", "2", "--reps", "1", "-n", "32",
         "-p", "speedy", "--threads", "1", "--json"]


def test_bench_under_torchrun_on_two_processes_gives_one_processes_table(tmp_path):
    cmd = [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", "2", "--master_addr", "127.0.0.1",
           "--master_port", str(free_port()), "-m", "dlm_cli", *BENCH]
    r = subprocess.run(cmd, env=launched_env(tmp_path), capture_output=True, text=True, timeout=300)
    assert r.returncode == 0, r.stderr[-3000:]
    two = json.loads(r.stdout)  # one table: rank 1 printed nothing
    assert "bench 9/9 runs" in r.stderr  # rank 0 ran its share: 3 of the 6 prompts through 3 rows
    one = json.loads(CliRunner().invoke(__import__("dlm_cli.cli", fromlist=["app"]).app, BENCH).stdout)
    assert (two["processes"], one["processes"], two["prompts"]) == (2, 1, 6)
    assert [r["profile"] for r in two["rows"]] == [r["profile"] for r in one["rows"]] == \
        ["baseline", "baseline+eotp", "speedy"]
    for a, b in zip(one["rows"], two["rows"]):
        assert [x["answer"] for x in b["answers"]] == [x["answer"] for x in a["answers"]]
        assert [x["prompt"] for x in b["answers"]] == [x["prompt"] for x in a["answers"]]  # the prompts' order
        assert (b["nfe"], b["generated_tokens"], b["agreement"], b["score"], b["task_scores"]) == \
            (a["nfe"], a["generated_tokens"], a["agreement"], a["score"], a["task_scores"])
    assert len({x["answer"] for x in one["rows"][-1]["answers"]}) == 6  # six different answers, not one repeated
    assert two["wall_seconds"] > 0


# -- lm-eval under accelerate launch -----------------------------------------------------------

def test_lm_eval_under_accelerate_launch_on_two_processes_gives_one_processes_scores(tmp_path, monkeypatch):
    pytest.importorskip("lm_eval")
    pytest.importorskip("accelerate")
    out = tmp_path / "out"
    # --multi_gpu is accelerate's torchrun launcher: without a GPU each process takes the CPU and gloo
    # (--cpu alone starts one process; several CPU processes need --multi_gpu or an MPI hostfile).
    cmd = [sys.executable, "-m", "accelerate.commands.launch", "--multi_gpu", "--num_processes", "2",
           "--num_machines", "1", "--mixed_precision", "no", "--dynamo_backend", "no",
           "--main_process_port", str(free_port()), "-m", "lm_eval", "--model", "dlm",
           "--model_args", "model=dlm-demo-ar,profile=lookup,threads=1", "--tasks", "dlm_toy_gen,dlm_toy_choice",
           "--include_path", str(TASKS), "--apply_chat_template", "--output_path", str(out), "--log_samples"]
    r = subprocess.run(cmd, cwd=TASKS, env=launched_env(tmp_path), capture_output=True, text=True, timeout=300)
    assert r.returncode == 0, r.stderr[-3000:]
    assert "Building contexts for dlm_toy_gen on rank 1" in r.stderr  # the documents were sharded
    (results,) = glob.glob(str(out / "*" / "results_*.json"))
    two = json.loads(Path(results).read_text())["results"]

    def samples(task):
        (path,) = glob.glob(str(out / "*" / f"samples_{task}_*.jsonl"))
        return {s["doc_id"]: s for s in map(json.loads, Path(path).read_text().splitlines())}

    from test_lmeval import evaluate

    monkeypatch.setenv("HF_DATASETS_OFFLINE", "1")
    monkeypatch.chdir(TASKS)
    one = evaluate("model=dlm-demo-ar,profile=lookup", ["dlm_toy_gen", "dlm_toy_choice"])
    for task, metric in (("dlm_toy_gen", "exact_match,none"), ("dlm_toy_choice", "acc,none")):
        assert two[task][metric] == pytest.approx(one["results"][task][metric])
        got, want = samples(task), {s["doc_id"]: s for s in one["samples"][task]}
        assert sorted(got) == sorted(want) and len(got) == {"dlm_toy_gen": 6, "dlm_toy_choice": 3}[task]
        for i, s in want.items():
            if task == "dlm_toy_gen":
                assert got[i]["filtered_resps"][0] == s["filtered_resps"][0]
            else:
                lls = [float(resp[0][0]) for resp in got[i]["resps"]]
                assert lls == pytest.approx([resp[0][0] for resp in s["resps"]], abs=1e-4)
