"""stdin beside a PROMPT argument, in real processes: an open pipe nobody writes to does not hang,
an empty pipe gives one warning, /dev/null (cron, nohup) is not read and says nothing."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time

import pytest

SORT = "Sort these numbers: 4 7 1 9 3"
CMD = [sys.executable, "-m", "dlm_cli", "generate", "-m", "dlm-demo", SORT, "-n", "16", "--json", "--threads", "1"]


def env(**extra: str) -> dict[str, str]:
    return {**os.environ, "HF_HUB_OFFLINE": "1", **extra}


def test_an_open_pipe_nobody_writes_to_is_left_after_the_wait_with_a_note():
    start = time.monotonic()
    p = subprocess.Popen(CMD, stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                         env=env(DLM_STDIN_WAIT="1"))
    try:
        # The pipe stays open (our end is never closed nor written) while dlm runs.
        deadline = time.monotonic() + 120
        while p.poll() is None and time.monotonic() < deadline:
            time.sleep(0.1)
        assert p.returncode == 0, "dlm waited on a silent pipe"
        out, err = p.stdout.read(), p.stderr.read()
    finally:
        if p.poll() is None:
            p.kill()
        p.stdin.close()
    assert time.monotonic() - start >= 1
    assert json.loads(out)["text"].strip() == "1 3 4 7 9"
    lines = [line for line in err.splitlines() if line.startswith("dlm:")]
    assert len(lines) == 1 and lines[0].startswith("dlm: note: stdin is a pipe that stayed silent for 1 s"), err


def run(data: bytes) -> subprocess.CompletedProcess:
    return subprocess.run(CMD, input=data, capture_output=True, env=env(DLM_STDIN_WAIT="30"), timeout=120)


def test_an_empty_pipe_gives_one_warning_and_the_argument_alone():
    alone = run(b"")
    assert alone.returncode == 0 and json.loads(alone.stdout)["text"].strip() == "1 3 4 7 9"
    assert [line for line in alone.stderr.decode().splitlines() if line.startswith("dlm:")] == [
        "dlm: warning: stdin is empty, so the prompt is the argument alone ('Sort these numbers: 4 7 1 9 3'); pipe "
        "the text it is about, or use -f FILE"]


@pytest.mark.slow  # three more processes: about 25 s on a busy 2-core machine
def test_a_pipe_that_speaks_is_the_material_and_dev_null_is_not_read():
    fed, alone = run(b"and then 2 and 8\n"), run(b"")
    assert fed.returncode == 0 and b"dlm:" not in fed.stderr, fed.stderr
    assert json.loads(fed.stdout)["prompt_tokens"] > json.loads(alone.stdout)["prompt_tokens"]
    with open(os.devnull, "rb") as null:  # cron, nohup, `< /dev/null`: not read, no word
        quiet = subprocess.run(CMD, stdin=null, capture_output=True, env=env(), timeout=120)
    assert quiet.returncode == 0 and b"dlm:" not in quiet.stderr, quiet.stderr
    assert json.loads(quiet.stdout)["prompt_tokens"] == json.loads(alone.stdout)["prompt_tokens"]
