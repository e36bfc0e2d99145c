"""A dLLM step makes the host wait for the device once: the canvas commit's packed transfer.

Counted with benchmarks/syncs.py's counter (torch's host reads and blocking copies, wrapped) on
the demo dLLM: a rule, the lookup draft, the edit rule or the Elastic-Cache test that read a
device value on its own would add to the count.
"""

from __future__ import annotations

import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "benchmarks"))

import syncs  # noqa: E402


@pytest.fixture(scope="module")
def counted():
    from dlm_cli.models.loading import load
    from dlm_cli.prompting import encode

    model = load("dlm-demo")
    prompts = [encode(model.tokenizer, p) for p in ("reverse: a b c d e f", "copy: 3 1 4 1 5 9 2 6")]
    counter = syncs.SyncCounter().install()
    syncs.counted_forward(model, counter)
    try:
        yield lambda profile, sets=(): syncs.count(model, prompts, profile, list(sets), 32, counter)
    finally:
        counter.uninstall()


@pytest.mark.parametrize("profile,sets", [
    ("quality", ()), ("speedy", ()), ("speedy", ("cache=none", "eotp=false")), ("speedy-lookup", ("eotp=false",)),
    ("factor", ()), ("eb", ()), ("credit", ()), ("prophet", ()), ("llada21-s", ()), ("elastic", ()),
    ("speedy", ("temperature=0.8",)),
])
def test_one_host_sync_per_dllm_step(counted, profile, sets):
    r = counted(profile, sets)
    assert r["steps"] >= 1
    assert r["loop"] == 1.0 and r["forward"] == 0.0


def test_the_counter_sees_a_host_read(counted):
    import torch

    counter = syncs.SyncCounter().install()
    try:
        counter.active = True
        t = torch.ones(3)
        bool(t.any())
        t.tolist()
        torch.tensor([1, 2], device="cpu")
        counter.active = False
    finally:
        counter.uninstall()
    assert counter.loop == 3
