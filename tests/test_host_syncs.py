"""A dLLM step makes the host wait for the device once: the canvas commit's packed transfer.

Counted with benchmarks/syncs.py's counter (torch's host reads and blocking copies, wrapped) on
the demo dLLM: a rule, the lookup draft, the edit rule or the Elastic-Cache test that read a
device value on its own would add to the count.
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

BENCH = Path(__file__).resolve().parent.parent / "benchmarks"
ROWS = [
    ("quality", ()), ("speedy", ()), ("speedy", ("cache=none", "eotp=false")), ("speedy-lookup", ("eotp=false",)),
    ("factor", ()), ("eb", ()), ("credit", ()), ("prophet", ()), ("llada21-s", ()), ("elastic", ()),
    ("speedy", ("temperature=0.8",)),
]
# The counter patches torch.Tensor's methods; CPython keeps a sequence slot on the type after a
# patched __getitem__ is removed (torch.tensor([t, 5]) then fails for a 0-d t), so the counting runs
# in a process of its own and reports JSON.
SCRIPT = """
import json, sys
sys.path.insert(0, sys.argv[1])
import syncs, torch
from dlm_cli.models.loading import load
from dlm_cli.prompting import encode
rows = json.loads(sys.argv[2])
model = load("dlm-demo")
prompts = [encode(model.tokenizer, p) for p in ("reverse: a b c d e f", "copy: 3 1 4 1 5 9 2 6")]
counter = syncs.SyncCounter().install()
syncs.counted_forward(model, counter)
out = {"rows": [syncs.count(model, prompts, p, list(sets), 32, counter) for p, sets in rows]}
counter.uninstall()
probe = syncs.SyncCounter().install()
probe.active = True
t = torch.ones(3)
bool(t.any())
t.tolist()
torch.tensor([1, 2], device="cpu")
probe.active = False
probe.uninstall()
out["probe"] = probe.loop
print(json.dumps(out))
"""


@pytest.fixture(scope="module")
def counted() -> dict:
    torch_threads = {"OMP_NUM_THREADS": "1"}
    import os

    res = subprocess.run([sys.executable, "-c", SCRIPT, str(BENCH), json.dumps(ROWS)], capture_output=True,
                         text=True, timeout=600, env={**os.environ, **torch_threads})
    assert res.returncode == 0, res.stderr[-2000:]
    return json.loads(res.stdout.strip().splitlines()[-1])


@pytest.mark.parametrize("index", range(len(ROWS)), ids=[f"{p}{list(s)}" for p, s in ROWS])
def test_one_host_sync_per_dllm_step(counted, index):
    r = counted["rows"][index]
    assert r["steps"] >= 1
    assert r["loop"] == 1.0 and r["forward"] == 0.0


def test_the_counter_sees_a_host_read(counted):
    assert counted["probe"] == 3  # bool(), tolist(), and a blocking copy to a device
