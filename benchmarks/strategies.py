"""Every parallel-decoding strategy on the demo dLLM's task suite, with and without a KV cache, in one run.

For each profile and cache mode: mean NFE per prompt, tokens/NFE, wall-clock speedup against the
baseline (the ``quality`` profile: one token per step, no cache), exact agreement with the
baseline's output, agreement with the same profile without a cache (how much an approximate cache
changes outputs), the score on the deterministic tasks, on the random task (pick) and per task.
Runs are interleaved prompt by prompt so that machine noise hits every row alike, after one warmup
decode per row; seconds are decode time only (``Done.seconds``).

    python benchmarks/strategies.py                       # every built-in method profile, none + dual
    python benchmarks/strategies.py -p speedy,prophet --caches none,prefix,dual --per-task 8 --reps 2
    python benchmarks/strategies.py -p "speedy[threshold=0.7],speedy[threshold=0.95,eotp=false]"  # variants
    python benchmarks/strategies.py --json results.json   # also write the rows as JSON
    python benchmarks/strategies.py -p "window,quality[block_length=64]" --caches none   # Window-Diffusion

Speed is only comparable inside one run; rerun on a quiet machine (``--threads 1`` by default, so
that the numbers do not depend on how many cores other processes leave free).
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

METHODS = ("speedy,speedy[eotp=false],fast-dllm,margin,eb,prophet,credit,localleap,adablock,llada21-s,llada21-q,"
           "freedave,elastic,speedy[threshold=0.5],speedy[strategy=factor,factor=4.0]")
CACHE_FREE = {"freedave", "quality"}  # lossless/reference rows run only without a cache
CACHE_ONLY = {"elastic"}  # a cache policy: nothing to refresh without a cache
OWN_CACHE = {"window"}  # keeps its own cache (cache = "window"): one row, as its profile says


@dataclass
class Result:
    name: str
    profile: str
    strategy: str
    cache: str
    nfe: float = 0.0
    tokens_per_nfe: float = 0.0
    seconds: float = 0.0
    speedup: float = 1.0
    nfe_ratio: float = 1.0
    agreement: float = 1.0
    cache_agreement: float | None = None
    score: float = 0.0
    deterministic: float = 0.0
    random: float | None = None
    task_scores: dict[str, float] = field(default_factory=dict)
    refreshes: float = 0.0


def parse_row(item: str) -> tuple[str, list[str]]:
    """``profile`` or ``profile[key=value,key=value]`` (a variant of a profile): the profile and its --set items."""
    if item.endswith("]") and "[" in item:
        name, inner = item[:-1].split("[", 1)
        return name, [kv.strip() for kv in inner.split(",") if kv.strip()]
    return item, []


def split_rows(text: str) -> list[str]:
    """Comma-separated rows, where commas inside ``[...]`` belong to the row."""
    out, depth, cur = [], 0, ""
    for ch in text:
        depth += (ch == "[") - (ch == "]")
        if ch == "," and depth == 0:
            out.append(cur.strip())
            cur = ""
        else:
            cur += ch
    out.append(cur.strip())
    return [r for r in out if r]


def variants(names: list[str], caches: list[str]) -> list[tuple[str, str, list[str]]]:
    """(row name, profile, --set items) for each profile × cache mode."""
    out = []
    for item in names:
        profile, extra = parse_row(item)
        if profile in OWN_CACHE:
            out.append((item, profile, extra))
            continue
        for cache in caches:
            if (profile in CACHE_FREE and cache != "none") or (profile in CACHE_ONLY and cache == "none"):
                continue
            sets = [f"cache={cache}"] + extra
            if cache == "none":
                sets += ["refresh=0", "elastic_threshold=0.0"]
            out.append((item + ("" if cache == "none" else f" +{cache}"), profile, sets))
    return out


CACHE_KEYS = ("cache", "refresh", "elastic_threshold", "elastic_layer", "seed")


def same_without_cache(settings: Any, runs: list[tuple[str, str, Any]]) -> str | None:
    """The row that decodes with the same settings but no cache (to measure what the cache changes)."""
    want = {k: v for k, v in settings.as_dict().items() if k not in CACHE_KEYS}
    for name, _, s in runs:
        if s.cache == "none" and {k: v for k, v in s.as_dict().items() if k not in CACHE_KEYS} == want:
            return name
    return None


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("-m", "--model", default="dlm-demo", help="model (default: the embedded demo dLLM)")
    ap.add_argument("-p", "--profiles", default=METHODS, help="comma-separated profiles (quality is the baseline)")
    ap.add_argument("--caches", default="none,dual", help="cache modes to run each profile with")
    ap.add_argument("--per-task", type=int, default=6, help="held-out prompts per task")
    ap.add_argument("--tasks", default=None, help="comma-separated subset of the suite's tasks")
    ap.add_argument("--reps", type=int, default=1, help="timed repetitions of the whole suite")
    ap.add_argument("--max-new-tokens", type=int, default=None, help="override every profile's max_new_tokens")
    ap.add_argument("--threads", type=int, default=1, help="torch intra-op threads")
    ap.add_argument("--json", default=None, help="also write the rows to this JSON file")
    args = ap.parse_args(argv)

    import torch

    torch.set_num_threads(args.threads)
    from dlm_cli import profiles
    from dlm_cli.bench.suites import builtin_prompts
    from dlm_cli.evals.prompt import score
    from dlm_cli.decode import run
    from dlm_cli.models.loading import load
    from dlm_cli.prompting import encode

    model = load(args.model)
    prompts = builtin_prompts(args.per_task, args.tasks)
    ids = [encode(model.tokenizer, p.prompt) for p in prompts]
    flags = {"seed": 0}
    if args.max_new_tokens:
        flags["max_new_tokens"] = args.max_new_tokens
    names = [n for n in split_rows(args.profiles) if n != "quality"]
    rows = [("baseline (quality)", "quality", [])] + variants(names, args.caches.split(","))
    runs = [(name, prof, profiles.load(prof, sets=sets, flags=flags)) for name, prof, sets in rows]

    for _, _, s in runs:  # warmup
        list(run(model, ids[0], s))
    seconds = {name: 0.0 for name, _, _ in runs}
    dones: dict[str, list[Any]] = {name: [] for name, _, _ in runs}
    total = args.reps * len(ids) * len(runs)
    n = 0
    for rep in range(args.reps):
        for k, prompt_ids in enumerate(ids):
            for name, _, s in runs:
                s.seed = k
                done = None
                for done in run(model, prompt_ids, s):
                    pass
                seconds[name] += done.seconds
                if rep == 0:
                    dones[name].append(done)
                n += 1
                if sys.stderr.isatty():
                    print(f"\r{n}/{total}", end="", file=sys.stderr, flush=True)
    print(file=sys.stderr)

    base = runs[0][0]
    texts = {name: [model.tokenizer.decode(d.tokens, skip_special_tokens=True) for d in ds] for name, ds in dones.items()}
    results = []
    for name, prof, s in runs:
        ds = dones[name]
        tok = sum(len(d.tokens) for d in ds)
        nfe = sum(d.nfe for d in ds)
        r = Result(name, prof, s.strategy, s.cache, nfe=nfe / len(ds), tokens_per_nfe=tok / nfe if nfe else 0.0,
                   seconds=seconds[name] / args.reps)
        r.speedup = seconds[base] / seconds[name] if seconds[name] else 0.0
        r.nfe_ratio = sum(d.nfe for d in dones[base]) / nfe if nfe else 0.0
        r.agreement = sum(a.tokens == b.tokens for a, b in zip(ds, dones[base])) / len(ds)
        plain = same_without_cache(s, runs)
        if s.cache != "none" and plain is not None:
            r.cache_agreement = sum(a.tokens == b.tokens for a, b in zip(ds, dones[plain])) / len(ds)
        r.refreshes = sum(d.refreshes or 0 for d in ds) / len(ds)
        per: dict[str, list[bool]] = {}
        for p, text in zip(prompts, texts[name]):
            per.setdefault(p.task, []).append(bool(score(p, text)))
        from dlm_cli.demo.tasks import TASKS

        r.task_scores = {t: sum(v) / len(v) for t, v in per.items()}
        det = [x for t, v in per.items() if TASKS[t].deterministic for x in v]
        rnd = [x for t, v in per.items() if not TASKS[t].deterministic for x in v]
        r.deterministic = sum(det) / len(det) if det else 0.0
        r.random = sum(rnd) / len(rnd) if rnd else None
        r.score = statistics.mean(x for v in per.values() for x in v)
        results.append(r)

    tasks = list(results[0].task_scores)
    head = ["row", "strategy", "NFE", "NFE ×", "tok/NFE", "speedup", "= baseline", "= no cache", "refreshes",
            "det. score"] + tasks
    print(f"\n{model.info.name} · {len(prompts)} prompts ({args.per_task}/task) × {args.reps} reps · "
          f"{args.threads} thread(s) · {model.info.device}\n")
    print("| " + " | ".join(head) + " |")
    print("|" + "|".join("---" for _ in head) + "|")
    for r in results:
        cells = [r.name, r.strategy, f"{r.nfe:.1f}", f"{r.nfe_ratio:.1f}×", f"{r.tokens_per_nfe:.2f}",
                 f"{r.speedup:.1f}×", f"{r.agreement:.0%}",
                 "" if r.cache_agreement is None else f"{r.cache_agreement:.0%}",
                 f"{r.refreshes:.1f}" if r.refreshes else "", f"{r.deterministic:.1%}"]
        cells += [f"{r.task_scores[t]:.0%}" for t in tasks]
        print("| " + " | ".join(cells) + " |")
    if args.json:
        Path(args.json).write_text(json.dumps({"model": model.info.name, "prompts": len(prompts),
                                               "reps": args.reps, "rows": [asdict(r) for r in results]}, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
