"""Held-out accuracy of the demo models, measured through the paths users run.

    python -m dlm_cli.demo.evaluate dllm DIR --per-task 50 [--profile quality]
    python -m dlm_cli.demo.evaluate dllm DIR --per-task 50 --tasks long -n 256    # the long answers
    python -m dlm_cli.demo.evaluate ar TARGET_DIR --draft DRAFT_DIR --per-task 50

The dLLM is decoded by ``dlm_cli.decode.run`` with a profile's settings (one token per step with
``quality``). The AR pair is decoded greedily with transformers; the draft/target agreement is the
share of the target's greedy tokens that the draft also predicts greedily, given the same prefix,
which is the per-token acceptance rate of greedy speculative decoding.
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path
from typing import Any

import torch

from . import tasks as T


def per_task(results: list[tuple[str, bool]]) -> dict[str, float]:
    out: dict[str, list[bool]] = {}
    for task, ok in results:
        out.setdefault(task, []).append(ok)
    return {t: sum(v) / len(v) for t, v in out.items()}


def eval_dllm(path: Path | str, n: int, profile: str = "quality", tasks: list[str] | None = None,
              model: Any = None, max_new_tokens: int | None = None, sets: list[str] | None = None) -> dict[str, float]:
    """Held-out score per task of a dLLM decoded by dlm with ``profile`` (on ``max_new_tokens`` slots: by
    default the profile's)."""
    from .. import profiles
    from ..decode import run
    from ..models.loading import load
    from ..prompting import encode

    model = model or load(str(path))
    settings = profiles.load(profile, sets=list(sets or []), flags={"max_new_tokens": max_new_tokens})
    results = []
    for k, ex in enumerate(T.suite(n, tasks)):
        settings.seed = k
        done = None
        for done in run(model, encode(model.tokenizer, ex.prompt), settings):
            pass
        text = model.tokenizer.decode(done.tokens, skip_special_tokens=True)
        results.append((ex.task, T.TASKS[ex.task].score(ex, text)))
    return per_task(results)


def _load_ar(path: Path | str) -> tuple[Any, Any]:
    from transformers import AutoTokenizer, LlamaForCausalLM

    return LlamaForCausalLM.from_pretrained(str(path)).eval(), AutoTokenizer.from_pretrained(str(path))


@torch.no_grad()
def greedy(net: Any, ids: list[int], stop: set[int], max_new: int = 40) -> list[int]:
    out = net.generate(torch.tensor([ids]), attention_mask=torch.ones(1, len(ids), dtype=torch.long),
                       max_new_tokens=max_new, do_sample=False, eos_token_id=sorted(stop), pad_token_id=min(stop))
    gen = out[0, len(ids):].tolist()
    for i, t in enumerate(gen):
        if t in stop:
            return gen[: i + 1]
    return gen


def eval_ar(target: Path | str, draft: Path | str | None, n: int) -> dict[str, Any]:
    """Greedy held-out score per task of the target (and draft) and the draft's agreement with the target."""
    from ..prompting import encode

    tnet, tok = _load_ar(target)
    dnet = _load_ar(draft)[0] if draft else None
    stop = {tok.convert_tokens_to_ids("<|eot_id|>"), tok.convert_tokens_to_ids("<|endoftext|>")}
    res_t, res_d, agree, total = [], [], 0, 0
    for ex in T.suite(n):
        ids = encode(tok, ex.prompt)
        gen = greedy(tnet, ids, stop)
        score = T.TASKS[ex.task].score
        res_t.append((ex.task, score(ex, tok.decode(gen, skip_special_tokens=True))))
        if dnet is not None:
            dgen = greedy(dnet, ids, stop)
            res_d.append((ex.task, score(ex, tok.decode(dgen, skip_special_tokens=True))))
            full = torch.tensor([ids + gen])
            pred = dnet(full).logits[0, len(ids) - 1 : -1].argmax(-1)
            agree += int((pred == full[0, len(ids):]).sum())
            total += len(gen)
    out: dict[str, Any] = {"target": per_task(res_t)}
    if dnet is not None:
        out["draft"] = per_task(res_d)
        out["agreement"] = agree / max(1, total)
    return out


def _table(scores: dict[str, float]) -> str:
    det = [v for t, v in scores.items() if T.TASKS[t].deterministic]
    cells = " ".join(f"{t}={v:.0%}" for t, v in scores.items())
    return f"{cells} | deterministic mean={sum(det) / max(1, len(det)):.1%}"


def _markdown(rows: dict[str, dict[str, float]], n: int) -> str:
    """A model-card table: one row per model, a column per task (% exact match, or % valid for random tasks)."""
    tasks = list(next(iter(rows.values())))
    head = "| model | " + " | ".join(t if T.TASKS[t].deterministic else f"{t} (valid)" for t in tasks) + " |"
    lines = [head, "|---" * (len(tasks) + 1) + "|"]
    for name, scores in rows.items():
        lines.append(f"| {name} | " + " | ".join(f"{scores[t]:.0%}" for t in tasks) + " |")
    return "\n".join(lines) + f"\n\n({n} held-out prompts per task)"


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="python -m dlm_cli.demo.evaluate")
    ap.add_argument("kind", choices=["dllm", "ar"])
    ap.add_argument("path", type=Path)
    ap.add_argument("--draft", type=Path)
    ap.add_argument("--per-task", type=int, default=50)
    ap.add_argument("--profile", default="quality")
    ap.add_argument("--tasks", help="comma-separated tasks or groups (default, long, all) [default: default]")
    ap.add_argument("-n", "--max-new-tokens", type=int, help="dllm: the canvas [default: the profile's, 64]")
    ap.add_argument("--set", action="append", default=[], metavar="KEY=VALUE",
                    help="dllm: a profile key (eotp=true stops at the end token: the same answers, fewer forwards)")
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--markdown", action="store_true", help="print a model-card table")
    args = ap.parse_args(argv)
    torch.set_num_threads(args.threads)
    t0 = time.monotonic()
    if args.kind == "dllm":
        tasks = args.tasks.split(",") if args.tasks else None
        scores = eval_dllm(args.path, args.per_task, args.profile, tasks, max_new_tokens=args.max_new_tokens,
                           sets=args.set)
        print(_markdown({f"`{args.profile}`": scores}, args.per_task) if args.markdown
              else f"{args.profile}: {_table(scores)}")
    else:
        res = eval_ar(args.path, args.draft, args.per_task)
        if args.markdown:
            rows = {"target, greedy": res["target"], **({"draft, greedy": res["draft"]} if "draft" in res else {})}
            print(_markdown(rows, args.per_task))
        print(f"target: {_table(res['target'])}")
        if "draft" in res:
            print(f"draft: {_table(res['draft'])}")
            print(f"draft/target greedy agreement: {res['agreement']:.1%}")
    print(f"({time.monotonic() - t0:.0f} s)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
