"""Where a forward's time goes: SmolLM2's AR step against smollm2-dlm's cached block step.

Each row runs one kind of forward the decoders run, over a held-out typo prompt, after a prefill:

- ``ar``: SmolLM2-135M-Instruct, one new token over transformers' ``DynamicCache`` (dlm's ``ar``);
- ``block``: smollm2-dlm, one non-first step of a block of 8 under the exact prefix cache
  (:class:`~dlm_cli.decode.cache.Forward`, the path ``speedy`` takes: 9 positions with the AR shift).

``torch.profiler`` sorts the operators' own CPU time into matrix products, attention, cache
copies (``cat``/``copy_``/``index_copy``/slicing writes), mask building (``arange``, comparisons,
block division), other operators (norms, rotary, activations, embedding) and the rest, which is
Python and dispatch (wall time minus every operator's own time). ``--reps`` forwards are timed
per row, interleaved row by row, after ``--warmup`` untimed ones.

    python benchmarks/forward_profile.py --threads 1 --dtype float32
    python benchmarks/forward_profile.py --threads 1 --dtype bfloat16 --rows ar,block

Run it on an idle machine and note the load average: figures are only comparable inside one run.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from pathlib import Path
from typing import Any, Callable

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

CATEGORIES = {
    "matmul": ("aten::mm", "aten::addmm", "aten::bmm", "aten::matmul", "aten::linear", "aten::_weight_int4pack",
               "aten::_int_mm", "mkldnn", "torchao::"),
    "attention": ("scaled_dot_product", "flash_attention", "aten::_softmax", "aten::softmax"),
    "cache copies": ("aten::cat", "aten::copy_", "aten::index_copy", "aten::slice_scatter", "aten::clone",
                     "aten::contiguous", "aten::index_put"),
    "mask building": ("aten::arange", "aten::le", "aten::floor_divide", "aten::div", "aten::ge", "aten::lt",
                      "aten::full", "aten::eq", "aten::fill_"),
}


def category(name: str) -> str:
    for cat, keys in CATEGORIES.items():
        if any(k in name for k in keys):
            return cat
    return "other operators"


def typo_prompt(tokenizer: Any) -> list[int]:
    from dlm_cli.prompting import encode

    line = (ROOT / "benchmarks" / "typo_prompts.jsonl").read_text().splitlines()[-1]
    return encode(tokenizer, json.loads(line)["prompt"])


def ar_step(dtype: str) -> Callable[[], Any]:
    """One token over a DynamicCache after the prompt's prefill; the cache is cropped back each call."""
    import torch

    from dlm_cli.models.files import LoadOptions
    from dlm_cli.models.loading import load

    model = load("smollm2", LoadOptions(dtype=dtype))
    ids = torch.tensor(typo_prompt(model.tokenizer))
    cache = model.new_cache()
    model.forward(ids, cache)
    n = int(ids.shape[0])
    tok = ids[-1:]

    def step() -> Any:
        out = model.forward(tok, cache)
        cache.crop(-1)
        return out

    return step


def block_step(dtype: str) -> Callable[[], Any]:
    """A non-first step of the first generated block under the exact prefix cache (``speedy``'s forward)."""
    import torch

    from dlm_cli import profiles
    from dlm_cli.decode.cache import Forward
    from dlm_cli.models.files import LoadOptions
    from dlm_cli.models.loading import load

    model = load("smollm2-dlm", LoadOptions(dtype=dtype))
    prompt = typo_prompt(model.tokenizer)
    s = profiles.load("speedy", sets=["cache=prefix", "max_new_tokens=192"])
    length = len(prompt) + 192
    x = torch.full((1, length), model.mask_id, dtype=torch.long)
    x[0, : len(prompt)] = torch.tensor(prompt)
    model.begin(len(prompt))
    fwd = Forward(model, s, length)
    bs = len(prompt)
    be = model.block_end(bs)
    fwd(x, bs, be, True)

    def step() -> Any:
        return fwd(x, bs, be, False)

    return step


ROWS = {"ar": ar_step, "block": block_step}


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--rows", default="ar,block")
    ap.add_argument("--dtype", default="float32", choices=("float32", "bfloat16"))
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--reps", type=int, default=30)
    ap.add_argument("--warmup", type=int, default=5)
    ap.add_argument("--json", type=Path, help="also write the breakdown here")
    args = ap.parse_args()
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    import torch
    from torch.profiler import ProfilerActivity, profile

    torch.set_num_threads(args.threads)
    steps = {name: ROWS[name](args.dtype) for name in args.rows.split(",")}
    result: dict[str, Any] = {"load": os.getloadavg()[0], "threads": args.threads, "dtype": args.dtype}
    with torch.inference_mode():
        for step in steps.values():
            for _ in range(args.warmup):
                step()
        wall = {name: [] for name in steps}
        for _ in range(args.reps):  # interleaved: a disturbance hits every row alike
            for name, step in steps.items():
                t = time.perf_counter()
                step()
                wall[name].append(time.perf_counter() - t)
        for name, step in steps.items():
            with profile(activities=[ProfilerActivity.CPU]) as prof:
                t = time.perf_counter()
                for _ in range(args.reps):
                    step()
                prof_wall = (time.perf_counter() - t) / args.reps
            cats: dict[str, float] = {}
            for ev in prof.key_averages():
                cats[category(ev.key)] = cats.get(category(ev.key), 0.0) + ev.self_cpu_time_total / 1e6 / args.reps
            ops = sum(cats.values())
            # Under the profiler each op costs a little more; the shares are of the profiled wall time.
            cats["python and dispatch"] = max(prof_wall - ops, 0.0)
            ms = sorted(wall[name])[len(wall[name]) // 2] * 1e3
            row = {"ms": ms, "profiled_ms": prof_wall * 1e3,
                   "share": {k: v / prof_wall for k, v in sorted(cats.items(), key=lambda kv: -kv[1])}}
            result[name] = row
            shares = ", ".join(f"{k} {100 * v:.0f}%" for k, v in row["share"].items())
            print(f"{name}: {ms:.1f} ms per forward (median of {args.reps}; {prof_wall * 1e3:.1f} profiled): {shares}")
            top = sorted(prof.key_averages(), key=lambda e: -e.self_cpu_time_total)[:8]
            print("   top ops: " + ", ".join(f"{e.key} {e.self_cpu_time_total / 1e3 / args.reps:.2f}ms"
                                             for e in top))
    print(f"load average {result['load']:.2f}, {args.threads} thread(s), {args.dtype}")
    if args.json:
        args.json.write_text(json.dumps(result, indent=1))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
