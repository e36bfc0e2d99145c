"""The CLI as a real process: closed pipes, Ctrl-C, and a --help that never imports torch."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time

DLM = [sys.executable, "-m", "dlm_cli"]


def default_sigint() -> None:
    """In the child: Ctrl-C as a terminal delivers it, even when pytest runs as a background job (SIG_IGN)."""
    signal.signal(signal.SIGINT, signal.SIG_DFL)


def env() -> dict[str, str]:
    e = dict(os.environ)
    e.pop("PYTHONWARNINGS", None)
    return e


def test_help_imports_neither_torch_nor_transformers():
    code = ("import sys; from dlm_cli.cli import app\n"
            "from typer.testing import CliRunner\n"
            "r = CliRunner().invoke(app, ['--help']); assert r.exit_code == 0, r.stdout\n"
            "print(sorted(m for m in ('torch', 'transformers') if m in sys.modules))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=env(), check=True)
    assert out.stdout.strip() == "[]"


def test_a_closed_pipe_gives_one_line_and_no_traceback(tiny_llada):
    cmd = DLM + ["generate", "-m", str(tiny_llada), "hello", "-n", "200", "-p", "quality", "--view", "plain",
                 "--set", "block_length=1"]
    p = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, env=env(), preexec_fn=default_sigint)
    first = p.stdout.read(5)  # like `| head -c 5`
    p.stdout.close()
    err = p.stderr.read().decode()
    code = p.wait(timeout=120)
    assert len(first) == 5
    assert code == 1 and "Traceback" not in err and "Exception ignored" not in err
    assert err.strip().splitlines() == [err.strip().splitlines()[0]] and "pipe closed" in err


def test_ctrl_c_keeps_what_was_committed_and_leaves_no_traceback(tiny_llada, tmp_path):
    trace = tmp_path / "trace.jsonl"
    cmd = DLM + ["generate", "-m", str(tiny_llada), "hello", "-n", "200", "-p", "quality", "--view", "live",
                 "--pace", "0.05", "--set", "block_length=1", "--trace", str(trace)]
    p = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, env=env(), preexec_fn=default_sigint)
    deadline = time.time() + 120
    while time.time() < deadline:  # wait until a few steps are committed
        if trace.exists() and trace.read_text().count('"Step"') >= 5:
            break
        time.sleep(0.05)
    p.send_signal(signal.SIGINT)
    out, err = p.communicate(timeout=60)
    steps = trace.read_text().count('"Step"')
    assert p.returncode == 130
    assert "Traceback" not in err.decode()
    assert "interrupted: kept" in err.decode()
    assert 5 <= steps < 200 and out.strip()  # the committed prefix reached stdout


def _start_and_signal(cmd, trace, sig, steps=5):
    p = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, env=env(), preexec_fn=default_sigint)
    deadline = time.time() + 120
    while time.time() < deadline:  # wait until a few steps are committed
        if trace.exists() and trace.read_text().count('"Step"') >= steps:
            break
        time.sleep(0.05)
    p.send_signal(sig)
    out, err = p.communicate(timeout=60)
    return p.returncode, out.decode(), err.decode()


def test_sigterm_ends_like_ctrl_c_with_exit_143_and_the_committed_text(tiny_llada, tmp_path):
    trace = tmp_path / "trace.jsonl"
    cmd = DLM + ["generate", "-m", str(tiny_llada), "hello", "-n", "200", "-p", "quality", "--view", "plain",
                 "--pace", "0.05", "--set", "block_length=1", "--trace", str(trace)]
    code, out, err = _start_and_signal(cmd, trace, signal.SIGTERM)
    assert code == 143 and "Traceback" not in err
    assert err.strip().splitlines()[-1].startswith("dlm: terminated (SIGTERM): kept")
    assert out.strip()  # what was committed reached stdout


def test_ctrl_c_with_json_prints_the_partial_result(tiny_llada, tmp_path):
    import json

    trace = tmp_path / "trace.jsonl"
    cmd = DLM + ["generate", "-m", str(tiny_llada), "hello", "-n", "200", "-p", "quality", "--json",
                 "--view", "live", "--pace", "0.05", "--set", "block_length=1", "--trace", str(trace)]
    code, out, err = _start_and_signal(cmd, trace, signal.SIGINT)
    assert code == 130 and "Traceback" not in err
    result = json.loads(out)
    assert result["finish_reason"] == "interrupted" and 5 <= result["nfe"] < 200
    assert result["generated_tokens"] >= 1 and result["text"]
    # stderr is a pipe: the interrupted line stands on its own line, not glued to a live frame
    assert any(line.startswith("dlm: interrupted: kept") for line in err.splitlines())


def test_ctrl_c_before_decoding_starts_says_so_in_one_line(tmp_path):
    # The embedded demo loads in well under a second here, so interrupt a slower start: a prompt
    # that waits for stdin (no material arrives), then Ctrl-C.
    p = subprocess.Popen(DLM + ["generate", "-m", "dlm-demo", "-"], stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                         stderr=subprocess.PIPE, env=env(), preexec_fn=default_sigint)
    time.sleep(3)
    p.send_signal(signal.SIGINT)
    out, err = p.communicate(timeout=60)
    assert p.returncode == 130 and "Traceback" not in err.decode()
    assert err.decode().strip().splitlines() == ["dlm: interrupted"]


def test_a_pipe_gets_the_text_as_it_becomes_final_without_view_plain(tiny_llada, tmp_path):
    # `dlm generate ... | head -c 5` with the default view: the bytes arrive while decoding goes on,
    # and the closed pipe stops the generation long before its 200 steps.
    trace = tmp_path / "trace.jsonl"
    cmd = DLM + ["generate", "-m", str(tiny_llada), "hello", "-n", "200", "-p", "quality", "--set",
                 "block_length=1", "--pace", "0.02", "--trace", str(trace)]
    p = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, env=env(), preexec_fn=default_sigint)
    first = p.stdout.read(5)
    p.stdout.close()
    err = p.stderr.read().decode()
    code = p.wait(timeout=120)
    assert len(first) == 5 and code == 1 and "Traceback" not in err and "pipe closed" in err
    assert trace.read_text().count('"Step"') < 200


def test_a_tiny_model_runs_on_one_thread_unless_told_otherwise():
    import json

    base = DLM + ["generate", "-m", "dlm-demo", "Sort these numbers: 4 7 1 9 3", "-n", "16", "--json"]
    e = env()
    e.pop("OMP_NUM_THREADS", None)
    e["HF_HUB_OFFLINE"] = "1"
    e["XDG_CACHE_HOME"] = e["XDG_CONFIG_HOME"] = "/nonexistent-dlm-test"

    def threads(cmd, **extra):
        out = subprocess.run(cmd, capture_output=True, text=True, env={**e, **extra}, timeout=120)
        assert out.returncode == 0, out.stderr
        return json.loads(out.stdout)["threads"]

    assert threads(base) == 1  # 2M parameters: one thread (measured faster, idle or busy)
    assert threads(base + ["--threads", "2"]) == 2
    assert threads(base, OMP_NUM_THREADS="2") == 2


def test_models_profiles_and_completion_import_neither_torch_nor_transformers():
    """The static listings start fast: no torch (several seconds to import on a busy machine)."""
    for args in (["models"], ["models", "--json"], ["profiles", "list"], ["profiles", "list", "--json"]):
        code = ("import sys; from dlm_cli.cli import app\n"
                "from typer.testing import CliRunner\n"
                f"r = CliRunner().invoke(app, {args!r}); assert r.exit_code == 0, r.output\n"
                "print(sorted(m for m in ('torch', 'transformers') if m in sys.modules))")
        out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=env(), check=True)
        assert out.stdout.strip().splitlines()[-1] == "[]", (args, out.stdout[-300:])
