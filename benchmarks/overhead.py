"""Per-step overhead of the dLLM loop: a decode's time per step against its bare forwards.

For each row (a profile, with any ``[key=value]`` changes) and prompt, the script decodes once
(also the warm-up) and records every forward the step loop asked for (the canvas, the block, the cache policy's
call), then replays exactly those forwards, in order, through a fresh cache policy with nothing
else around them: no sampling, no commit rule, no canvas bookkeeping, no events. The overhead is
``(decode − replay) / replay``: what the loop adds to the network's own work. Decodes and replays
are interleaved prompt by prompt, ``--reps`` times; each prompt's fastest decode and fastest
replay are kept (the least disturbed by other processes), then summed over prompts. Times are
the CPU time of the decoding thread (``time.thread_time``): on a machine shared with other
processes, waiting for a core is not counted on either side (run it with ``--threads 1``).

    python benchmarks/overhead.py                      # the default rows on the demo dLLM
    python benchmarks/overhead.py -p "speedy,quality" --reps 5 --threads 1

Ratios are comparable only inside one run; run with ``--threads 1`` and note the load.
"""

from __future__ import annotations

import argparse
import os
import sys
import time
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "benchmarks"))

ROWS = "quality,speedy[cache=none,eotp=false],speedy[cache=prefix,eotp=false],speedy[eotp=false],speedy"


class Recorder:
    """Wraps ``Forward.__call__`` to keep each call's arguments (the canvas cloned) while :attr:`on`."""

    def __init__(self) -> None:
        from dlm_cli.decode.cache import Forward

        self.calls: list[tuple[Any, ...]] = []
        self.on = False
        original = Forward.__call__
        me = self

        def call(fwd: Any, x: Any, bs: int, be: int, first: bool, rows_end: int | None = None) -> Any:
            if me.on:
                me.calls.append((x.clone(), bs, be, first, rows_end))
            return original(fwd, x, bs, be, first, rows_end)

        Forward.__call__ = call


def decode(model: Any, ids: list[int], settings: Any, rec: Recorder,
           record: bool = False) -> tuple[float, int, list[tuple[Any, ...]]]:
    from dlm_cli.decode import run

    rec.calls, rec.on = [], record
    t = time.thread_time()
    events = list(run(model, ids, settings))
    seconds = time.thread_time() - t
    rec.on = False
    return seconds, events[-1].steps, rec.calls


def replay(model: Any, settings: Any, length: int, calls: list[tuple[Any, ...]], prompt: int) -> float:
    """The recorded forwards alone, through a fresh cache policy, in order."""
    import torch

    from dlm_cli.decode.cache import Forward

    model.begin(prompt, None)
    fwd = Forward(model, settings, length)
    t = time.thread_time()
    with torch.no_grad():
        for x, bs, be, first, rows_end in calls:
            fwd(x, bs, be, first, rows_end)
    seconds = time.thread_time() - t
    fwd.close()
    return seconds


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("-p", "--profiles", default=ROWS, help="comma-separated rows: profile or profile[k=v,...]")
    ap.add_argument("-m", "--model", default="dlm-demo")
    ap.add_argument("--per-task", type=int, default=1)
    ap.add_argument("-n", "--max-new-tokens", type=int, default=64)
    ap.add_argument("--reps", type=int, default=3)
    ap.add_argument("--threads", type=int, default=1)
    args = ap.parse_args(argv)

    import torch

    torch.set_num_threads(args.threads)
    from dlm_cli import profiles
    from dlm_cli.bench.suites import builtin_prompts
    from dlm_cli.models.loading import load
    from dlm_cli.prompting import encode
    from strategies import parse_row, split_rows

    model = load(args.model)
    prompts = [encode(model.tokenizer, p.prompt) for p in builtin_prompts(args.per_task, None)]
    rec = Recorder()
    load_avg = os.getloadavg()[0] if hasattr(os, "getloadavg") else float("nan")
    print(f"{model.info.name} · {len(prompts)} prompts · {args.max_new_tokens} tokens · {args.reps} reps · "
          f"{args.threads} thread(s) · load {load_avg:.2f}\n")
    print("| row | steps | ms per step | bare forwards, ms per step | overhead |")
    print("|---|---|---|---|---|")
    for row in split_rows(args.profiles):
        name, sets = parse_row(row)
        total_decode = total_replay = 0.0
        steps = 0
        for k, ids in enumerate(prompts):
            s = profiles.load(name, sets=sets + [f"max_new_tokens={args.max_new_tokens}", "seed=0"])
            frozen = s.frozen()
            _, n, calls = decode(model, ids, s, rec, record=True)  # the forwards to replay (and a warm-up)
            best_d = best_r = float("inf")
            for _ in range(args.reps):
                d, _, _ = decode(model, ids, s, rec)  # the same seed: the same forwards, not recorded now
                r = replay(model, frozen, len(ids) + args.max_new_tokens, calls, len(ids))
                best_d, best_r = min(best_d, d), min(best_r, r)
            total_decode += best_d
            total_replay += best_r
            steps += n
        print(f"| {row} | {steps / len(prompts):.1f} | {1000 * total_decode / steps:.2f} | "
              f"{1000 * total_replay / steps:.2f} | {100 * (total_decode / total_replay - 1):.0f}% |", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
