"""Batched against one-at-a-time dLLM decoding in one process: throughput ratio, and the outputs compared.

    python benchmarks/batch_ratio.py [-m dlm-demo] [-p quality|speedy] [-n 64] [--batch 8] [--prompts 8] [--rounds 2]
        [--set kernels=torch]

Each round decodes the same prompts once one at a time and once in batches (order alternating between
rounds, so machine noise hits both alike) and reports generated tokens per second of decode time for
each, their ratio (median over rounds), forwards per batch, and whether every output equals batch 1's.
speedy keeps its KV cache on a block-diffusion model (exact) and runs without it elsewhere.
"""

from __future__ import annotations

import argparse
import statistics
import time

import torch


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("-m", "--model", default="dlm-demo")
    ap.add_argument("-p", "--profile", default="speedy")
    ap.add_argument("-n", "--max-new-tokens", type=int, default=64)
    ap.add_argument("--batch", type=int, default=8)
    ap.add_argument("--prompts", type=int, default=8)
    ap.add_argument("--rounds", type=int, default=2)
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--set", action="append", default=[], help="a profile key for both sides, e.g. kernels=torch")
    a = ap.parse_args()
    torch.set_num_threads(a.threads)
    from dlm_cli import profiles
    from dlm_cli.decode import run
    from dlm_cli.decode.batch import run_batch
    from dlm_cli.decode.events import Done
    from dlm_cli.models.loading import load
    from dlm_cli.prompting import encode

    model = load(a.model)
    if a.model.startswith("dlm-demo"):
        from dlm_cli.demo.tasks import suite

        texts = [e.prompt for e in suite(max(1, -(-a.prompts // 7)))][: a.prompts]
    else:
        from dlm_cli.demo.realtext import eval_prompts

        texts = [p.prompt for p in eval_prompts()][: a.prompts]
    ids = [encode(model.tokenizer, t) for t in texts]
    sets = ["cache=none"] if a.profile == "speedy" and not model.block_size else []  # a cache only where exact
    sets += a.set

    def settings():
        return profiles.load(a.profile, sets=sets, flags={"seed": 0, "max_new_tokens": a.max_new_tokens})

    def one():
        t0 = time.perf_counter()
        out = [[e for e in run(model, i, settings()) if isinstance(e, Done)][0] for i in ids]
        return out, time.perf_counter() - t0

    def batched():
        t0 = time.perf_counter()
        out = [None] * len(ids)
        for s in range(0, len(ids), a.batch):
            for r, e in run_batch(model, ids[s : s + a.batch], settings()):
                if isinstance(e, Done):
                    out[s + r] = e
        return out, time.perf_counter() - t0

    one(), batched()  # warm-up
    rates = {"1": [], str(a.batch): []}
    same = True
    for k in range(a.rounds):
        order = [("1", one), (str(a.batch), batched)]
        got = {}
        for name, fn in order if k % 2 == 0 else order[::-1]:
            dones, secs = fn()
            got[name] = dones
            rates[name].append(sum(len(d.tokens) for d in dones) / secs)
        same &= all(x.tokens == y.tokens and x.nfe == y.nfe for x, y in zip(got["1"], got[str(a.batch)]))
    base, bat = statistics.median(rates["1"]), statistics.median(rates[str(a.batch)])
    nfe = [d.nfe for d in got["1"]]
    forwards = sum(max(nfe[s : s + a.batch]) for s in range(0, len(nfe), a.batch))
    import os

    print(f"{a.model} · {a.profile}{' ' + ' '.join(sets) if sets else ''} · {len(ids)} prompts · -n {a.max_new_tokens} · "
          f"{torch.get_num_threads()} threads · load {os.getloadavg()[0]:.1f} on {os.cpu_count()} cores")
    print(f"batch 1: {base:.1f} tok/s ({sum(nfe)} forwards); batch {a.batch}: {bat:.1f} tok/s ({forwards} forwards); "
          f"ratio {bat / base:.2f}x (median of {a.rounds} rounds); outputs identical: {same}")


if __name__ == "__main__":
    main()
