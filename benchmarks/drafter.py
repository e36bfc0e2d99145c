"""A learned drafter against ``ar`` (and ``lookup``) on held-out real-language prompts, interleaved in one run.

For each held-out prompt of the chosen kinds (:func:`dlm_cli.demo.realtext.eval_prompts`: no training
source), every row decodes it once, greedily, one row after another (after one warm-up decode per
row), so the machine's load falls on every row alike. Per row:

- ``tok/fwd`` = generated tokens / target forwards (the acceptance length, bonus included);
- ``ms/fwd`` = decode milliseconds per target forward (drafting included);
- ``draft ms`` / ``verify ms`` = drafting and verify-forward milliseconds per target forward;
- ``s`` = decode seconds summed over the prompts; ``vs ar`` = the ``ar`` row's seconds / the row's;
- ``=ar`` = share of prompts whose tokens equal ``ar``'s exactly.

    python benchmarks/drafter.py -m smollm2 --draft DIR --kinds chat,continue -n 192
    python benchmarks/drafter.py -m smollm2 --draft DIR --rows "ar,lookup,dflash,dflash[tree_width=4]" --json out.json
"""

from __future__ import annotations

import argparse
import json
import re
import sys


def parse_row(spec: str) -> tuple[str, list[str]]:
    m = re.fullmatch(r"([\w.-]+)(?:\[(.*)\])?", spec.strip())
    if not m:
        raise SystemExit(f"bad row {spec!r}: PROFILE or PROFILE[key=value;...]")
    return m.group(1), [s for s in (m.group(2) or "").split(";") if s]


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("-m", "--model", default="smollm2")
    ap.add_argument("--draft", required=True)
    ap.add_argument("--kinds", default="chat,continue")
    ap.add_argument("--per-kind", type=int, default=0, help="at most this many prompts per kind (0: all)")
    ap.add_argument("-n", "--max-new-tokens", type=int, default=192)
    ap.add_argument("--rows", default="ar,lookup,dflash,dflash[tree_width=4]")
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--json", default=None)
    a = ap.parse_args()

    import torch

    torch.set_num_threads(a.threads)
    from dlm_cli import profiles
    from dlm_cli.decode import run
    from dlm_cli.demo.realtext import eval_prompts
    from dlm_cli.models.loading import load
    from dlm_cli.prompting import encode

    kinds = [k.strip() for k in a.kinds.split(",")]
    prompts = []
    for k in kinds:
        mine = [p for p in eval_prompts() if p.kind == k]
        prompts += mine[: a.per_kind] if a.per_kind else mine
    model = load(a.model)
    draft = load(a.draft)
    rows = [parse_row(r) for r in a.rows.split(",")]
    names = [r.strip() for r in a.rows.split(",")]

    def settings(profile: str, sets: list[str]):
        return profiles.load(profile, sets=sets, flags={"max_new_tokens": a.max_new_tokens, "temperature": 0.0,
                                                         "seed": 0})

    def decode(ids: list[int], profile: str, sets: list[str]):
        done = None
        for ev in run(model, ids, settings(profile, sets), draft=draft):
            done = ev
        return done

    encoded = [encode(model.tokenizer, p.prompt, context=model.max_length) for p in prompts]
    for profile, sets in rows:  # warm-up
        decode(encoded[0], profile, sets)
    stats = {n: {"tokens": 0, "nfe": 0, "seconds": 0.0, "draft": 0.0, "verify": 0.0, "same": 0} for n in names}
    for i, ids in enumerate(encoded):
        ref = None
        for name, (profile, sets) in zip(names, rows):
            done = decode(ids, profile, sets)
            s = stats[name]
            s["tokens"] += len(done.tokens)
            s["nfe"] += done.nfe
            s["seconds"] += done.seconds
            s["draft"] += done.draft_seconds or 0.0
            s["verify"] += done.verify_seconds or 0.0
            if ref is None:
                ref = list(done.tokens)
            s["same"] += list(done.tokens) == ref
        print(f"prompt {i + 1}/{len(encoded)} done", file=sys.stderr, flush=True)
    base = stats[names[0]]["seconds"]
    out = []
    print(f"{len(prompts)} held-out prompts ({a.kinds}), -n {a.max_new_tokens}, greedy, {a.threads} thread(s); "
          f"=ar and vs ar against the first row ({names[0]})")
    print(f"| row | tok/fwd | ms/fwd | draft ms | verify ms | s | vs {names[0]} | ={names[0]} |")
    print("|---|---|---|---|---|---|---|---|")
    for n in names:
        s = stats[n]
        row = {"row": n, "tokens_per_forward": s["tokens"] / s["nfe"], "draft_ms": 1e3 * s["draft"] / s["nfe"],
               "verify_ms": 1e3 * s["verify"] / s["nfe"], "seconds": s["seconds"], "speedup": base / s["seconds"],
               "identical": s["same"] / len(prompts), "tokens": s["tokens"], "forwards": s["nfe"],
               "ms_per_forward": 1e3 * s["seconds"] / s["nfe"]}
        out.append(row)
        draft_ms = f"{row['draft_ms']:.1f}" if s["draft"] else "-"
        verify_ms = f"{row['verify_ms']:.1f}" if s["verify"] else "-"
        print(f"| {n} | {row['tokens_per_forward']:.2f} | {row['ms_per_forward']:.1f} | {draft_ms} | {verify_ms} | {s['seconds']:.1f} | "
              f"{row['speedup']:.2f}x | {row['identical']:.0%} |")
    if a.json:
        with open(a.json, "w") as fh:
            json.dump({"args": vars(a), "rows": out}, fh, indent=2)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
