"""Throughput, latency and tokens per forward against the batch size, dLLM and AR rows in one run.

    python benchmarks/batch_sweep.py [--rows smollm2-dlm:speedy,smollm2:ar] [--batch 1,4,8,16] [--prompts 16]
        [-n 64] [--rounds 1] [--threads 2] [--json FILE]

Each row (``MODEL:PROFILE``) decodes the same prompts (held-out real-text prompts for a real model, the
toy suite for dlm-demo models) in chunks of each batch size, one chunk after another
(:func:`dlm_cli.decode.batch.run_batch`; batch 1 is :func:`dlm_cli.decode.run`). Rounds visit the batch
sizes in alternating order, so machine noise hits them alike. Per row and batch size:

- tok/s = generated tokens of every prompt / the seconds of every chunk (wall clock, median over rounds);
- latency = a request's seconds from its chunk's start to its own end (what a user in that batch waits),
  p50 and p99 over the prompts;
- tok/NFE = generated tokens / the rows' own forwards (each row counts the forwards it took part in);
- same = every output token-identical to batch 1's.

The crossover the issue asks about: the batch size where the dLLM row's tok/s stops beating the AR row's.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import time

import torch


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--rows", default="smollm2-dlm:speedy,smollm2:ar")
    ap.add_argument("--batch", default="1,4,8,16")
    ap.add_argument("--prompts", type=int, default=16)
    ap.add_argument("-n", "--max-new-tokens", type=int, default=64)
    ap.add_argument("--rounds", type=int, default=1)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--json", default=None)
    a = ap.parse_args()
    torch.set_num_threads(a.threads)
    from dlm_cli import profiles
    from dlm_cli.decode import run
    from dlm_cli.decode.batch import run_batch
    from dlm_cli.decode.events import Done
    from dlm_cli.models.loading import load
    from dlm_cli.prompting import encode

    sizes = [int(b) for b in a.batch.split(",")]
    results = []
    for spec in a.rows.split(","):
        name, profile = spec.split(":")
        model = load(name)
        if name.startswith("dlm-demo"):
            from dlm_cli.demo.tasks import suite

            texts = [e.prompt for e in suite(max(1, -(-a.prompts // 7)))][: a.prompts]
        else:
            from dlm_cli.demo.realtext import eval_prompts

            texts = [p.prompt for p in eval_prompts()][: a.prompts]
        ids = [encode(model.tokenizer, t) for t in texts]

        # A dLLM keeps its KV cache in a batch only where it is exact (block diffusion): elsewhere both sides run without.
        sets = ["cache=none"] if model.kind == "diffusion" and not model.block_size else []

        def settings():
            return profiles.load(profile, sets=sets, flags={"seed": 0, "max_new_tokens": a.max_new_tokens})

        def decode(batch: int) -> tuple[list, list[float], float]:
            dones, lat = [None] * len(ids), [0.0] * len(ids)
            t0 = time.perf_counter()
            for s in range(0, len(ids), batch):
                start = time.perf_counter()
                if batch == 1:
                    events = ((0, e) for e in run(model, ids[s], settings()))
                else:
                    events = run_batch(model, ids[s : s + batch], settings())
                for r, e in events:
                    if isinstance(e, Done):
                        dones[s + r] = e
                        lat[s + r] = time.perf_counter() - start
            return dones, lat, time.perf_counter() - t0

        decode(sizes[-1])  # warm-up: packing, first allocations
        got: dict[int, list] = {b: [] for b in sizes}
        for k in range(a.rounds):
            for b in sizes if k % 2 == 0 else sizes[::-1]:
                got[b].append(decode(b))
        base = got[sizes[0]][0][0]
        for b in sizes:
            runs = got[b]
            dones, lat, _ = runs[0]
            tokens = sum(len(d.tokens) for d in dones)
            rate = statistics.median(sum(len(d.tokens) for d in r[0]) / r[2] for r in runs)
            lat_all = sorted(x for r in runs for x in r[1])
            row = {"model": name, "profile": profile, "sets": sets, "batch": b, "tokens_per_second": round(rate, 2),
                   "latency_p50": round(statistics.median(lat_all), 2),
                   "latency_p99": round(lat_all[min(len(lat_all) - 1, int(0.99 * len(lat_all)))], 2),
                   "tokens_per_nfe": round(tokens / sum(d.nfe for d in dones), 2),
                   "same": all(x.tokens == y.tokens for x, y in zip(dones, base))}
            results.append(row)
            print(json.dumps(row), flush=True)
    print(f"\n{a.prompts} prompts · -n {a.max_new_tokens} · {torch.get_num_threads()} threads · greedy · "
          f"load {os.getloadavg()[0]:.1f} on {os.cpu_count()} cores · {a.rounds} round(s)\n")
    print("| row | batch | tok/s | × batch 1 | latency p50 / p99 (s) | tok/NFE | = batch 1 |")
    print("|---|---|---|---|---|---|---|")
    first = {}
    for r in results:
        key = (r["model"], r["profile"])
        first.setdefault(key, r["tokens_per_second"])
        print(f"| {r['model']} {r['profile']} | {r['batch']} | {r['tokens_per_second']:.1f} | "
              f"{r['tokens_per_second'] / first[key]:.2f}× | {r['latency_p50']:.2f} / {r['latency_p99']:.2f} | "
              f"{r['tokens_per_nfe']:.2f} | {'yes' if r['same'] else 'no'} |")
    if a.json:
        with open(a.json, "w") as fh:
            json.dump(results, fh, indent=1)


if __name__ == "__main__":
    main()
