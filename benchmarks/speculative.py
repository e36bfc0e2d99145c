"""Speculative and input-guided decoding against plain AR decoding, and against transformers' own generate().

    python benchmarks/speculative.py                 # every part, 3 reps, 1 torch thread
    python benchmarks/speculative.py --parts smollm2 --reps 5

Parts (each prints a table; ratios come from one run, runs interleaved prompt by prompt):
  demo     the embedded AR pair (dlm-demo-ar, draft dlm-demo-ar-draft): ar vs speculative, a token
           tree, PEARL, lookup (chain and tree) and ADED (chain and tree), greedy, outputs asserted
           identical; acceptance, tokens per target NFE, speedup.
  smollm2  SmolLM2-135M-Instruct fixing the typos of benchmarks/typo_text.txt (the 4 prompts of
           typo_prompts.jsonl): ar vs lookup and ADED, chain and tree, greedy, outputs asserted identical.
  hf       the same pair and prompts through transformers: generate(assistant_model=draft) and
           generate(prompt_lookup_num_tokens=...), and plain generate() against our ar; the ratio
           is transformers' seconds / ours (above 1: ours is faster) and whether the outputs agree.

Wall-clock seconds include everything a caller waits for (our event stream is consumed in full).
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path
from typing import Any, Callable

import torch

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from dlm_cli import profiles  # noqa: E402
from dlm_cli.decode import run  # noqa: E402
from dlm_cli.models.loading import load  # noqa: E402
from dlm_cli.prompting import encode  # noqa: E402

TYPO_INSTRUCTION = "Fix the typos in this text. Reply with the corrected text only."
DEMO_FALLBACK = ["Sort these numbers: 41 7 93 12 58 3", "Reverse this list: red green blue yellow",
                 "Add: 4821 + 377", "Copy this list: apple pear plum fig kiwi"]


def demo_prompts(per_task: int, tasks: list[str] | None = None) -> list[str]:
    try:
        from dlm_cli.demo.tasks import suite
    except ImportError:
        return DEMO_FALLBACK
    return [e.prompt for e in suite(per_task, tasks)]


def ours(model: Any, ids: list[int], profile: str, draft: Any = None, n: int = 256, **sets: Any) -> tuple[float, Any]:
    s = profiles.load(profile, sets=[f"{k}={v}" for k, v in sets.items()], flags={"max_new_tokens": n, "seed": 0})
    t = time.perf_counter()
    done = None
    for done in run(model, ids, s, draft=draft):
        pass
    return time.perf_counter() - t, done


def theirs(model: Any, ids: list[int], n: int, **kwargs: Any) -> tuple[float, list[int]]:
    x = torch.tensor([ids], device=model.device)
    eos = list(model.eos_ids)
    t = time.perf_counter()
    with torch.inference_mode():
        out = model.net.generate(x, attention_mask=torch.ones_like(x), do_sample=False, max_new_tokens=n,
                                 eos_token_id=eos, pad_token_id=eos[0], **kwargs)
    seconds = time.perf_counter() - t
    gen = out[0, len(ids):].tolist()
    cut = next((i for i, tok in enumerate(gen) if tok in eos), len(gen))
    return seconds, gen[:cut]


def compare(name: str, prompts: list[list[int]], reps: int, runs: dict[str, Callable[[list[int]], tuple[float, Any]]],
            base: str) -> dict[str, dict[str, float]]:
    """Every run on every prompt, ``reps`` times, interleaved; a warmup first. Returns totals per run."""
    for fn in runs.values():
        fn(prompts[0])
    secs = {k: 0.0 for k in runs}
    results: dict[str, list[Any]] = {k: [] for k in runs}
    for rep in range(reps):
        for ids in prompts:
            for k, fn in runs.items():
                s, res = fn(ids)
                secs[k] += s / reps
                if rep == 0:
                    results[k].append(res)
    import os

    print(f"\n## {name}: {len(prompts)} prompts x {reps} reps, torch threads {torch.get_num_threads()}, "
          f"load average {os.getloadavg()[0]:.2f} at the end")
    print(f"{'run':<40}{'seconds':>9}{'speedup':>9}{'tokens':>8}{'tok/NFE':>9}{'accept':>8}{'draft NFE':>10}"
          f"{'identical':>10}")
    out = {}
    for k in runs:
        toks = [r if isinstance(r, list) else r.tokens for r in results[k]]
        ref = [r if isinstance(r, list) else r.tokens for r in results[base]]
        same = sum(a == b for a, b in zip(toks, ref))
        dones = [r for r in results[k] if not isinstance(r, list)]
        ntok = sum(len(t) for t in toks)
        nfe = sum(d.nfe for d in dones)
        drafted = sum(d.drafted or 0 for d in dones)
        acc = sum(d.accepted or 0 for d in dones)
        dnfe = sum(d.draft_nfe or 0 for d in dones)
        row = {"seconds": secs[k], "speedup": secs[base] / secs[k], "tokens": ntok,
               "tokens_per_nfe": ntok / nfe if nfe else float("nan"),
               "acceptance": acc / drafted if drafted else float("nan"), "identical": same / len(toks)}
        out[k] = row
        print(f"{k:<40}{secs[k]:>9.2f}{row['speedup']:>8.2f}x{ntok:>8}{row['tokens_per_nfe']:>9.2f}"
              f"{row['acceptance']:>8.0%}{dnfe:>10}{same:>6}/{len(toks)}")
    return out


def part_demo(args: argparse.Namespace, with_hf: bool) -> None:
    try:
        target, draft = load(args.target), load(args.draft)
    except Exception as exc:  # noqa: BLE001 - a benchmark part is skipped, with the reason
        print(f"\n## demo pair: skipped ({exc})")
        return
    tasks = [t for t in args.tasks.split(",") if t] if args.tasks else None
    prompts = [encode(target.tokenizer, p) for p in demo_prompts(args.per_task, tasks)]
    n = args.demo_tokens
    runs: dict[str, Callable] = {
        "ar (ours)": lambda ids: ours(target, ids, "ar", n=n),
        "speculative (ours)": lambda ids: ours(target, ids, "speculative", draft, n=n),
        "speculative, tree 3x4": lambda ids: ours(target, ids, "speculative", draft, n=n, tree_width=3, tree_depth=4),
        "speculative, pearl": lambda ids: ours(target, ids, "speculative", draft, n=n, pearl="true"),
        "lookup": lambda ids: ours(target, ids, "lookup", n=n),
        "lookup, tree 3": lambda ids: ours(target, ids, "lookup", n=n, tree_width=3),
        "aded, chain": lambda ids: ours(target, ids, "aded", n=n, tree_width=1),
        "aded, tree (24 paths, <= 64 nodes)": lambda ids: ours(target, ids, "aded", n=n),
    }
    if args.compile:  # torch.compile over a static cache; the warm-up run (below) takes the compile
        runs["ar, compiled"] = lambda ids: ours(target, ids, "ar", n=n, compile="on")
        runs["speculative, compiled"] = lambda ids: ours(target, ids, "speculative", draft, n=n, compile="on")
        runs["lookup, compiled"] = lambda ids: ours(target, ids, "lookup", n=n, compile="on")
    if with_hf:
        runs["generate() (transformers)"] = lambda ids: theirs(target, ids, n)
        runs["generate(assistant_model=)"] = lambda ids: theirs(target, ids, n, assistant_model=draft.net)
    rows = compare(f"demo pair {args.target} + {args.draft}", prompts, args.reps, runs, "ar (ours)")
    for k in runs:
        if "(ours)" in k or not k.startswith(("generate", "ar")):
            assert rows[k]["identical"] == 1.0, f"{k}: greedy output differs from ar"
    if with_hf:
        print(f"speculative ours vs transformers assistant_model: "
              f"{rows['generate(assistant_model=)']['seconds'] / rows['speculative (ours)']['seconds']:.2f}x")


def part_smollm2(args: argparse.Namespace, with_hf: bool) -> None:
    model = load("smollm2")
    text = (ROOT / "benchmarks" / "typo_text.txt").read_text(encoding="utf-8")
    paragraphs = [p for p in text.split("\n\n") if p.strip()]
    prompts = [encode(model.tokenizer, f"{args.instruction}\n\n{text}")]
    prompts += [encode(model.tokenizer, f"{args.instruction}\n\n{p}") for p in paragraphs]
    n = args.smollm2_tokens
    sets = dict(kv.split("=", 1) for kv in args.set)
    runs: dict[str, Callable] = {
        "ar (ours)": lambda ids: ours(model, ids, "ar", n=n, **sets),
        "lookup (ours)": lambda ids: ours(model, ids, "lookup", n=n, **sets),
        "lookup, tree 3": lambda ids: ours(model, ids, "lookup", n=n, tree_width=3, **sets),
        "aded, chain": lambda ids: ours(model, ids, "aded", n=n, tree_width=1, **sets),
        "aded, tree (24 paths, <= 64 nodes)": lambda ids: ours(model, ids, "aded", n=n, **sets),
    }
    if with_hf:
        runs["generate() (transformers)"] = lambda ids: theirs(model, ids, n)
        runs["generate(prompt_lookup_num_tokens=10)"] = lambda ids: theirs(model, ids, n, prompt_lookup_num_tokens=10)
        # The same n-gram and draft lengths as our lookup profile.
        runs["generate(prompt_lookup, 15 tok, 3-gram)"] = lambda ids: theirs(
            model, ids, n, prompt_lookup_num_tokens=15, max_matching_ngram_size=3)
    rows = compare("SmolLM2-135M-Instruct, typo fixing", prompts, args.reps, runs, "ar (ours)")
    for k in runs:
        if not k.startswith(("generate", "ar")):
            assert rows[k]["identical"] == 1.0, f"{k}: greedy output differs from ar"
    if with_hf:
        for k in ("generate(prompt_lookup_num_tokens=10)", "generate(prompt_lookup, 15 tok, 3-gram)"):
            print(f"lookup ours vs transformers {k}: {rows[k]['seconds'] / rows['lookup (ours)']['seconds']:.2f}x")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--parts", default="demo,smollm2,hf", help="comma-separated: demo, smollm2, hf")
    ap.add_argument("--reps", type=int, default=3)
    ap.add_argument("--compile", action="store_true", help="demo: add rows compiled by torch.compile (compile=on)")
    ap.add_argument("--threads", type=int, default=1, help="torch threads (1: steady timings on a shared machine)")
    ap.add_argument("--target", default="dlm-demo-ar")
    ap.add_argument("--draft", default="dlm-demo-ar-draft")
    ap.add_argument("--per-task", type=int, default=2, help="demo prompts per task of the built-in suite")
    ap.add_argument("--tasks", default="", help="demo: only these suite tasks (comma-separated), e.g. story,copy")
    ap.add_argument("--demo-tokens", type=int, default=96)
    ap.add_argument("--smollm2-tokens", type=int, default=320)
    ap.add_argument("--instruction", default=TYPO_INSTRUCTION,
                    help="smollm2: the instruction before the text (e.g. 'fix the typos', the README's first example)")
    ap.add_argument("--set", action="append", default=[], metavar="KEY=VALUE",
                    help="smollm2: a profile key for both rows (e.g. stop_repeats=0)")
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    parts = {p.strip() for p in args.parts.split(",")}
    if "demo" in parts:
        part_demo(args, "hf" in parts)
    if "smollm2" in parts:
        part_smollm2(args, "hf" in parts)


if __name__ == "__main__":
    main()
