"""smollm2-dlm against SmolLM2's own AR decoding on held-out real-language prompts, in one run.

The prompts are :func:`dlm_cli.demo.realtext.eval_prompts`: 14 typo fixes (a 60-150-word paragraph
on "stdin", the instruction ``fix the typos``), 10 short chat questions, 6 continuations and 6
reformats, none from a training source. Each row decodes every prompt once (after one warm-up
decode) with greedy decoding and ``-n`` generation slots, then reports:

- ``tok/NFE`` = generated tokens / target forwards (tokens exclude the prompt, padding and everything
  after the first end token);
- ``s`` = decode seconds summed over the prompts (``Done.seconds``: no load, no prompt encoding);
- ``vs AR`` = the ``smollm2 ar`` row's seconds / the row's seconds (SmolLM2 greedy with its KV cache);
- ``vs own`` = the ``one-per-step`` row's seconds / the row's seconds (the dLLM, one token per step, EoTP);
- ``typo vs AR`` = the same as ``vs AR`` over the typo prompts only;
- ``=AR`` = share of prompts whose text equals SmolLM2's greedy text exactly; ``sim`` = mean word-level
  similarity to it (difflib ratio, 1 = equal);
- ``fixed`` / ``changed`` = typo prompts only: share of injected typos whose word is restored, and share
  of the other words changed (:func:`dlm_cli.demo.realtext.typo_scores`);
- ``rep`` = share of answers that ended on the repetition stop (``finish_reason == "repetition"``);
- ``=ref`` = share of prompts whose text equals the ``--reference`` row's exactly (a distilled model
  against its teacher's one-token-per-step output);
- ``AUP`` (d3LLM, :func:`dlm_cli.evals.scoring.aup`, α = 3) per model over its rows, typo prompts:
  ``(tok/NFE, fixed %)`` points, ``y_max`` the best ``fixed`` of any row.

``--models key=SPEC,...`` adds models that rows name by key (``dp:speedy``); ``dlm`` is ``--model``.

    python benchmarks/realtext.py                          # the real-text table of docs/results.md
    python benchmarks/realtext.py --kinds typo -n 256 --rows "speedy,speedy[cache=prefix]"
    python benchmarks/realtext.py --model DIR --json out.json

Run it on a quiet machine: speed is only comparable inside one run.
"""

from __future__ import annotations

import argparse
import difflib
import json
import re
import sys
import time
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

# (label, model, profile[overrides]); "dlm" is --model (smollm2-dlm), "ar" is smollm2.
ROWS = ("ar:ar,ar:lookup,dlm:one-per-step=quality[eotp=true],dlm:block-1=s2d2[s2d2_min_gain=0.0,eotp=true],"
        "dlm:s2d2[eotp=true],dlm:speedy,dlm:speedy[cache=prefix],dlm:speedy[threshold=0.7],"
        "dlm:speedy-lookup")


def parse_rows(spec: str) -> list[tuple[str, str, str, dict[str, str]]]:
    rows = []
    for item in re.findall(r"(?:[^,\[]|\[[^\]]*\])+", spec):
        item = item.strip()
        if not item:
            continue
        which, _, rest = item.partition(":")
        head, bracket, over = rest.partition("[")
        label, eq, name = head.partition("=")
        if not eq:
            label, name = rest, head
        sets = dict(kv.split("=", 1) for kv in over.rstrip("]").split(",") if kv) if bracket else {}
        prof = name
        rows.append((f"{'smollm2' if which == 'ar' else which} {label}", which, prof, sets))
    return rows


def words_sim(a: str, b: str) -> float:
    return difflib.SequenceMatcher(a=a.split(), b=b.split(), autojunk=False).ratio()


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--model", default="smollm2-dlm")
    ap.add_argument("--models", default="", help="more models rows can name: key=SPEC,key2=SPEC2")
    ap.add_argument("--reference", default="", help="the row label the =ref column compares with")
    ap.add_argument("--rows", default=ROWS)
    ap.add_argument("--kinds", default="typo,chat,continue,reformat")
    ap.add_argument("-n", "--max-new-tokens", type=int, default=256)
    ap.add_argument("--limit", type=int, default=0, help="at most this many prompts per kind (0: all)")
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--json", type=Path)
    ap.add_argument("--show", action="store_true", help="print each row's first typo answer")
    a = ap.parse_args(argv)

    import torch

    torch.set_num_threads(a.threads)
    from dlm_cli import profiles
    from dlm_cli.decode import run
    from dlm_cli.demo import realtext as R
    from dlm_cli.models.loading import load
    from dlm_cli.prompting import encode

    kinds = a.kinds.split(",")
    prompts = [p for p in R.eval_prompts() if p.kind in kinds]
    if a.limit:
        prompts = [p for k in kinds for p in [q for q in prompts if q.kind == k][: a.limit]]
    models = {"dlm": load(a.model), "ar": load("smollm2")}
    for item in filter(None, a.models.split(",")):
        key, _, spec = item.partition("=")
        models[key] = load(spec)
    rows = parse_rows(a.rows)
    results: list[dict[str, Any]] = []
    reference: list[str] | None = None
    for label, which, prof, sets in rows:
        model = models[which]
        s = profiles.load(prof, sets=[f"{k}={v}" for k, v in sets.items()],
                          flags={"max_new_tokens": a.max_new_tokens, "seed": 0})
        ids = [encode(model.tokenizer, p.prompt) for p in prompts]
        for _ in run(model, ids[0], s):  # warm-up
            pass
        secs = nfe = toks = 0.0
        texts: list[str] = []
        per: list[float] = []
        reps = 0
        t0 = time.time()
        for pid in ids:
            done = None
            for ev in run(model, pid, s):
                done = ev
            secs += done.seconds
            per.append(done.seconds)
            nfe += done.nfe
            toks += len(done.tokens)
            reps += done.finish_reason == "repetition"
            texts.append(model.tokenizer.decode(done.tokens, skip_special_tokens=True))
        if label == "smollm2 ar":
            reference = texts
        row: dict[str, Any] = {"row": label, "model": model.info.name, "profile": prof, "sets": sets,
                               "tokens": int(toks), "nfe": int(nfe), "tokens_per_nfe": toks / nfe, "seconds": secs,
                               "wall": time.time() - t0, "texts": texts, "repetition": reps / len(ids),
                               "which": which,
                               "typo_seconds": sum(x for x, p in zip(per, prompts) if p.kind == "typo")}
        if reference is not None:
            row["exact_ar"] = sum(t.strip() == r.strip() for t, r in zip(texts, reference)) / len(texts)
            row["sim_ar"] = sum(words_sim(t, r) for t, r in zip(texts, reference)) / len(texts)
        typo = [(p, t) for p, t in zip(prompts, texts) if p.kind == "typo"]
        if typo:
            scores = [R.typo_scores(p.original, p.noisy, p.typos, t) for p, t in typo]
            row["fixed"] = sum(f for f, _ in scores) / len(scores)
            row["changed"] = sum(c for _, c in scores) / len(scores)
        ref = next((r for r in results if r["row"] == a.reference), None)
        if ref is not None:
            row["exact_ref"] = sum(t.strip() == r.strip() for t, r in zip(texts, ref["texts"])) / len(texts)
        results.append(row)
        print(f"{label:40s} {row['tokens_per_nfe']:5.2f} tok/NFE  {secs:7.1f} s  "
              f"=AR {row.get('exact_ar', float('nan')):.0%}  sim {row.get('sim_ar', float('nan')):.3f}  "
              f"fixed {row.get('fixed', float('nan')):.0%}  changed {row.get('changed', float('nan')):.1%}",
              file=sys.stderr, flush=True)
        if a.show and typo:
            print(typo[0][1][:600], file=sys.stderr)
    by = {r["row"]: r for r in results}
    ar = by.get("smollm2 ar")
    own = by.get("dlm one-per-step")
    print(f"\n{len(prompts)} prompts ({', '.join(f'{k} {sum(p.kind == k for p in prompts)}' for k in kinds)}), "
          f"-n {a.max_new_tokens}, greedy, {a.threads} threads\n")
    print("| row | tok/NFE | tok/s | s | vs AR | vs own | typo vs AR | =AR | sim | fixed | changed | rep | =ref |")
    print("|---|---|---|---|---|---|---|---|---|---|---|---|---|")
    for r in results:
        vs_ar = f"{ar['seconds'] / r['seconds']:.2f}x" if ar else "-"
        vs_own = f"{own['seconds'] / r['seconds']:.2f}x" if own else "-"
        typo_ar = f"{ar['typo_seconds'] / r['typo_seconds']:.2f}x" if ar and r["typo_seconds"] else "-"
        pct = lambda k, f="{:.0%}": f.format(r[k]) if k in r else "-"  # noqa: E731
        print(f"| {r['row']} | {r['tokens_per_nfe']:.2f} | {r['tokens'] / r['seconds']:.1f} | {r['seconds']:.1f} | "
              f"{vs_ar} | {vs_own} | {typo_ar} | {pct('exact_ar')} | {pct('sim_ar', '{:.3f}')} | {pct('fixed')} | "
              f"{pct('changed', '{:.1%}')} | {pct('repetition')} | {pct('exact_ref')} |")
    scored = [r for r in results if "fixed" in r]
    if scored:
        from dlm_cli.evals.scoring import aup

        y_max = max(100 * r["fixed"] for r in scored)
        print("\n| model | AUP (typo: fixed % against tok/NFE) | points |\n|---|---|---|")
        for which in dict.fromkeys(r["which"] for r in scored):
            pts = [(r["tokens_per_nfe"], 100 * r["fixed"]) for r in scored if r["which"] == which]
            print(f"| {which} | {aup(pts, y_max):.1f} | {len(pts)} |")
    if a.json:
        a.json.write_text(json.dumps({"prompts": [p.prompt for p in prompts], "rows": results}, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
