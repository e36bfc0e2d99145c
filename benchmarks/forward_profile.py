"""Where a forward's time goes: SmolLM2's AR step against smollm2-dlm's cached block step.

Each row runs one kind of forward the decoders run, over a held-out typo prompt, after a prefill:

- ``ar``: SmolLM2-135M-Instruct, one new token over transformers' ``DynamicCache`` (dlm's ``ar``);
- ``block``: smollm2-dlm, one non-first step of a block of 8 under the exact prefix cache
  (:class:`~dlm_cli.decode.cache.Forward`, the path ``speedy`` takes: 9 positions with the AR shift);
- ``block-compiled``: the same with ``compile = "on"`` (fixed shapes over the whole static cache);
- ``ar-int4``, ``block-int4``: torchao int4 weights (bfloat16 only);
- ``ar-compiled``: the AR step over the static cache, compiled (``compile = "on"``);
- ``ar-static``: the AR step over the static cache, eager (transformers' ``StaticCache`` without compiling);
- ``*-onednn``: the same with ``kernels = "onednn"`` (every linear layer on oneDNN's prepacked weights,
  :mod:`dlm_cli.models.kernels`); the other rows use torch's own products (``kernels = "torch"``).

Each row is timed against its floor: its weight bytes over the copy bandwidth
(:func:`dlm_cli.bench.machine.measure_copy_bandwidth`, what ``dlm bench --calibrate`` measures) at the
same thread count.

``torch.profiler`` sorts the operators' own CPU time into matrix products, attention, cache
copies (``cat``/``copy_``/``index_copy``/slicing writes), mask building (``arange``, comparisons,
block division), other operators (norms, rotary, activations, embedding) and the rest, which is
Python and dispatch (wall time minus every operator's own time). ``--reps`` forwards are timed
per row, interleaved row by row, after ``--warmup`` untimed ones.

    python benchmarks/forward_profile.py --profile --threads 1 --dtypes float32,bfloat16
    python benchmarks/forward_profile.py --rows ar,ar-int4,block,block-compiled,block-int4 \
        --dtypes float32,bfloat16 --threads 1,2
    python benchmarks/forward_profile.py --rows block-onednn-compiled,block-onednn-compiled+cpp,\
    block-onednn-compiled+autotune,block-compiled+freezing --threads 1,2   # inductor's options (INDUCTOR)

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


def ar_step(dtype: str, quantize: str = "none", kernels: str = "torch", compile: str = "off", static: bool = False
            ) -> tuple[Callable[[], Any], Any]:
    """One token after the prompt's prefill, the cache cropped back each call: over transformers'
    ``DynamicCache`` (dlm's eager ``ar``), or with ``compile`` on over the static cache, compiled."""
    import torch

    from dlm_cli import profiles
    from dlm_cli.models import speed
    from dlm_cli.models.causal import rollback
    from dlm_cli.models.files import LoadOptions
    from dlm_cli.models.loading import load

    model = load("smollm2", LoadOptions(dtype=dtype))
    ids = torch.tensor(typo_prompt(model.tokenizer))
    s = profiles.load("ar", sets=[f"quantize={quantize}", f"compile={compile}", f"kernels={kernels}"],
                      flags={"max_new_tokens": 192})
    speed.prepare(model, s, len(ids) + 192 + 1, keep_float=False)  # quantize, pack, compile with its warm-up
    cache = speed.static_cache(model, len(ids) + 193) if static else model.new_cache()
    model.forward(ids, cache)
    tok = ids[-1:]
    length = len(ids)

    def step() -> Any:
        out = model.forward(tok, cache)
        rollback(cache, length)
        return out

    return step, model


def block_step(dtype: str, quantize: str = "none", compile: str = "off", kernels: str = "torch"
               ) -> tuple[Callable[[], Any], Any]:
    """A non-first step of the first full generated block under the exact prefix cache (``speedy``'s forward)."""
    import torch

    from dlm_cli import profiles
    from dlm_cli.decode.cache import Forward
    from dlm_cli.models import speed
    from dlm_cli.models.files import LoadOptions
    from dlm_cli.models.loading import load

    model = load("smollm2-dlm", LoadOptions(dtype=dtype))
    prompt = typo_prompt(model.tokenizer)
    s = profiles.load("speedy", sets=["cache=prefix", f"quantize={quantize}", f"compile={compile}", f"kernels={kernels}"],
                      flags={"max_new_tokens": 192})
    length = len(prompt) + 192
    speed.prepare(model, s, length + 1, keep_float=False)  # quantize, and compile with its warm-up
    x = torch.full((1, length), model.mask_id, dtype=torch.long)
    x[0, : len(prompt)] = torch.tensor(prompt)
    model.begin(len(prompt))
    fwd = Forward(model, s, length)
    bs = model.block_end(len(prompt))  # the first block on the model grid: a plain 9-position step
    be = model.block_end(bs)
    fwd(x, len(prompt), bs, True)
    x[0, len(prompt) : bs] = 42  # committed
    fwd(x, bs, be, True)

    def step() -> Any:
        return fwd(x, bs, be, False)

    return step, model


ROWS: dict[str, Callable[[str], tuple[Callable[[], Any], Any]]] = {
    "ar": lambda dt: ar_step(dt),
    "ar-int4": lambda dt: ar_step(dt, "int4"),
    "block": lambda dt: block_step(dt),
    "block-compiled": lambda dt: block_step(dt, compile="on"),
    "block-int4": lambda dt: block_step(dt, "int4"),
    "ar-onednn": lambda dt: ar_step(dt, kernels="onednn"),
    "ar-compiled": lambda dt: ar_step(dt, compile="on"),
    "ar-static": lambda dt: ar_step(dt, static=True),  # eager over transformers' StaticCache
    "ar-onednn-static": lambda dt: ar_step(dt, kernels="onednn", static=True),
    "ar-onednn-compiled": lambda dt: ar_step(dt, kernels="onednn", compile="on"),
    "block-onednn": lambda dt: block_step(dt, kernels="onednn"),
    "block-onednn-compiled": lambda dt: block_step(dt, compile="on", kernels="onednn"),
}


# ``ROW+OPTION+...``: inductor settings a compiled row is built with (the trials).
INDUCTOR = {
    "cpp": {"cpp_wrapper": True},  # the C++ wrapper instead of Python around the kernels
    "freezing": {"freezing": True},  # weights as constants: oneDNN prepacks them, constant folding
    "autotune": {"max_autotune": True},  # max-autotune-no-cudagraphs: benchmark GEMM templates per shape
}


class inductor_options:
    """Set inductor's config for the options named (a row suffix) while a row compiles, then restore it."""

    def __init__(self, opts: list[str]) -> None:
        unknown = [o for o in opts if o not in INDUCTOR]
        if unknown:
            raise SystemExit(f"forward_profile.py: unknown row option {unknown[0]!r} (known: {', '.join(INDUCTOR)})")
        self.settings = {k: v for o in opts for k, v in INDUCTOR[o].items()}
        self.saved: dict[str, Any] = {}

    def __enter__(self) -> None:
        if self.settings:
            import torch._inductor.config as cfg

            for k, v in self.settings.items():
                self.saved[k] = getattr(cfg, k)
                setattr(cfg, k, v)

    def __exit__(self, *exc: Any) -> None:
        if self.saved:
            import torch._inductor.config as cfg

            for k, v in self.saved.items():
                setattr(cfg, k, v)


def weight_bytes(model: Any, row: str) -> float:
    """Bytes a forward reads at least: every weight once (int4: half a byte and its group's scale and zero)."""
    n = sum(p.numel() for p in model.net.parameters())
    if row.endswith("int4"):
        from dlm_cli.models import speed

        n = sum(m.weight.shape[0] * m.weight.shape[1] for m in model.net.modules()
                if isinstance(m, speed.torch.nn.Linear) and type(m.weight).__name__.startswith("Int4"))
        return n * (0.5 + 4 / speed.INT4_GROUP)
    return n * next(model.net.parameters()).element_size()


def breakdown(name: str, step: Callable[[], Any], reps: int) -> dict[str, Any]:
    import time as _time

    from torch.profiler import ProfilerActivity, profile

    with profile(activities=[ProfilerActivity.CPU]) as prof:
        t = _time.perf_counter()
        for _ in range(reps):
            step()
        wall = (_time.perf_counter() - t) / reps
    cats: dict[str, float] = {}
    for ev in prof.key_averages():
        cats[category(ev.key)] = cats.get(category(ev.key), 0.0) + ev.self_cpu_time_total / 1e6 / reps
    # Under the profiler each op costs a little more; the shares are of the profiled wall time.
    cats["python and dispatch"] = max(wall - sum(cats.values()), 0.0)
    share = {k: v / wall for k, v in sorted(cats.items(), key=lambda kv: -kv[1])}
    print(f"{name}: {wall * 1e3:.1f} ms profiled: " + ", ".join(f"{k} {100 * v:.0f}%" for k, v in share.items()))
    top = sorted(prof.key_averages(), key=lambda e: -e.self_cpu_time_total)[:6]
    print("   top ops: " + ", ".join(f"{e.key} {e.self_cpu_time_total / 1e3 / reps:.2f}ms" for e in top))
    return {"profiled_ms": wall * 1e3, "share": share}


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--rows", default="ar,block")
    ap.add_argument("--dtypes", default="float32", help="comma-separated: float32,bfloat16")
    ap.add_argument("--threads", default="1", help="comma-separated thread counts, each timed in turn")
    ap.add_argument("--reps", type=int, default=30)
    ap.add_argument("--warmup", type=int, default=5)
    ap.add_argument("--profile", action="store_true", help="also break each row's time down by operator kind")
    ap.add_argument("--json", type=Path, help="also write the figures here")
    args = ap.parse_args()
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    import torch

    from dlm_cli.bench.machine import measure_copy_bandwidth

    from dlm_cli.models import kernels as K

    steps: dict[str, tuple[Callable[[], Any], float]] = {}
    models: list[Any] = []
    for dtype in args.dtypes.split(","):
        for row in args.rows.split(","):
            if row.endswith("int4") and dtype != "bfloat16":
                continue  # int4 computes in bfloat16
            base, *opts = row.split("+")
            with inductor_options(opts):  # the compiled rows compile inside the builder (their warm-up)
                step, model = ROWS[base](dtype)
            steps[f"{row} {dtype}"] = (step, weight_bytes(model, row))
            models.append(model)
    result: dict[str, Any] = {"load_before": os.getloadavg()[0], "rows": {}}
    with torch.inference_mode():
        for threads in (int(t) for t in args.threads.split(",")):
            torch.set_num_threads(threads)
            for model in models:  # packed layers choose their one-row product by the thread count
                if K.is_packed(model.net):
                    K.pack(model.net)
            gbps = measure_copy_bandwidth("cpu")
            for step, _ in steps.values():
                for _ in range(args.warmup):
                    step()
            wall: dict[str, list[float]] = {name: [] for name in steps}
            for _ in range(args.reps):  # interleaved: a disturbance hits every row alike
                for name, (step, _) in steps.items():
                    t = time.perf_counter()
                    step()
                    wall[name].append(time.perf_counter() - t)
            print(f"{threads} thread(s), copy bandwidth {gbps:.1f} GB/s")
            for name, (step, nbytes) in steps.items():
                ms = sorted(wall[name])[len(wall[name]) // 2] * 1e3
                floor = nbytes / (gbps * 1e9) * 1e3
                row = {"threads": threads, "ms": ms, "floor_ms": floor, "weight_mb": nbytes / 1e6, "copy_gbps": gbps}
                print(f"  {name:24s} {ms:7.1f} ms per forward (median of {args.reps})   floor {floor:5.1f} ms "
                      f"({nbytes / 1e6:.0f} MB)   x floor {ms / floor:.2f}")
                if args.profile:
                    row.update(breakdown(f"    {name}", step, max(args.reps // 3, 3)))
                result["rows"][f"{name} {threads}t"] = row
    result["load_after"] = os.getloadavg()[0]
    print(f"load average {result['load_before']:.2f} before, {result['load_after']:.2f} after")
    if args.json:
        args.json.write_text(json.dumps(result, indent=1))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
