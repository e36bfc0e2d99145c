"""Behaviour snapshot: every shipped profile's events on the demo suite and on tiny random families.

A refactor of the decode loop must not change what any profile does. This records, for each
(model, profile, cache, prompt): the generated token ids and text, NFE, steps, finish reason and a
digest of the whole event stream (each Step's positions, tokens, filled and edited slots; each
Draft and Verify), then compares two snapshots and names every difference.

    python benchmarks/snapshot.py --out /tmp/before.json          # record
    python benchmarks/snapshot.py --check /tmp/before.json        # record again and compare

Models: the embedded ``dlm-demo`` (its held-out suite, 2 prompts per task) and ``dlm-demo-ar``
(+ its draft), plus tiny random checkpoints of every family built with ``tests/checkpoints.py``
(LLaDA, Dream, SDAR, Fast-dLLM v2, the block-diffusion adapter, DiffusionGemma, a causal Llama),
each with fixed seeds. ``--only smollm2-dlm`` (never part of the default set: it needs the converted
model) adds the real block-diffusion model on 3 held-out typo prompts, 32 tokens, float32 and bfloat16. Diffusion profiles run with every cache their strategy allows; a sampled run
(temperature 0.8, fixed seed) is added for a few profiles. Float ties are not an issue: the same
process, the same threads, the same order of operations.

``--batch N`` decodes each model's prompts N at a time wherever the batch runs the profile
(:func:`dlm_cli.decode.batch.run_batch`, prompt ``k`` with the seed its batch-1 run has) and everything
else alone, under the same keys: ``--batch 8 --check batch1.json`` shows every batched run equal to its
batch-1 run.

To compare with an older commit, run this file from a worktree of it
(``git worktree add /tmp/base REV; cp benchmarks/snapshot.py /tmp/base/benchmarks/``).
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import re
import sys
import tempfile
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "tests"))

PROMPTS_PER_TASK = 2
MAX_EVENTS = 5000
TINY_PROMPTS = ("a b c d", "the quick brown fox", "hello world, again and again")
EOTP_TOO = ("baseline", "freedave", "s2d2", "prophet")  # their EoTP paths differ: run them with it too
REAL = ("smollm2-dlm", "smollm2-dlm-bf16")  # opt-in labels (--only): a converted real model
EXTRA_SETS: list[str] = []  # --set: appended to every run's keys (e.g. kernels=torch to compare with older commits)
SAMPLED = ("speedy", "quality", "speculative", "ar", "llada21-s", "s2d2", "gemma-native")


def digest(events: list[Any]) -> tuple[str, Any]:
    h = hashlib.sha256()
    done = None
    for ev in events:
        name = type(ev).__name__
        if name == "Step":
            # Sets of (slot, token): the order a loop lists a step's commits in is not behaviour.
            h.update(repr((name, sorted(zip(ev.positions, ev.tokens)), sorted(ev.filled), ev.filled_token,
                           sorted(zip(ev.edited, ev.edited_tokens)), ev.block)).encode())
        elif name == "Draft":
            h.update(repr((name, ev.position, ev.tokens)).encode())
        elif name == "Verify":
            accepted = ev.accepted_tokens if hasattr(ev, "accepted_tokens") else ev.accepted
            h.update(repr((name, ev.position, accepted, ev.drafted, ev.rejected, ev.correction,
                           ev.bonus)).encode())
        elif name == "Start":
            h.update(repr((name, ev.kind, ev.prompt_tokens, ev.length, ev.block_length)).encode())
        elif name == "Done":
            done = ev
    return h.hexdigest()[:16], done


def profile_runs(model: Any) -> list[tuple[str, list[str]]]:
    """(label, --set items) for every shipped profile that fits ``model``, with each cache it allows."""
    from dlm_cli import profiles
    from dlm_cli.capabilities import NATIVE_SAMPLER, missing
    from dlm_cli.decode.keys import STRATEGIES

    out = []
    for name, ref in sorted(profiles.available().items()):
        data = profiles.read(ref)
        st = STRATEGIES[data["strategy"]]
        if st.kind != model.kind or missing(st.needs, model.capabilities):  # the strategy does not fit the model
            continue
        if st.kind == "diffusion" and NATIVE_SAMPLER not in st.needs:  # a model's own sampler has no cache choice
            from dlm_cli.errors import UsageError

            caches = []
            for c in ("none", "prefix", "dual"):  # the caches the validator lets this strategy use
                try:
                    profiles.build(dict(data), name, profile=name, sets=[f"cache={c}"])
                    caches.append(c)
                except UsageError:
                    pass
            for c in caches:
                out.append((f"{name}[cache={c}]", [f"cache={c}"]))
            if not caches:  # a strategy with its own cache (window)
                out.append((name, []))
            if data["strategy"] in EOTP_TOO and not data.get("eotp"):
                out.append((f"{name}[eotp=true]", ["eotp=true"]))
        else:
            out.append((name, []))
    return out


def run_one(model: Any, draft: Any, prompt_ids: list[int], profile: str, sets: list[str], n: int,
            seed: int) -> dict[str, Any]:
    from dlm_cli import profiles
    from dlm_cli.decode import run
    from dlm_cli.errors import DlmError

    try:
        s = profiles.load(profile, sets=list(sets) + EXTRA_SETS + [f"max_new_tokens={n}", f"seed={seed}"])
        events = []
        for ev in run(model, prompt_ids, s, draft=draft):
            events.append(ev)
            if len(events) > MAX_EVENTS:  # a loop that stopped making progress
                return {"error": f"hang: more than {MAX_EVENTS} events"}
    except DlmError as exc:
        return {"error": str(exc)}
    except Exception as exc:  # noqa: BLE001  (a crash is behaviour too: record it)
        return {"error": f"crash: {type(exc).__name__}: {str(exc).splitlines()[0] if str(exc) else ''}"[:200]}
    d, done = digest(events)
    return {"tokens": done.tokens, "text": model.tokenizer.decode(done.tokens, skip_special_tokens=True),
            "nfe": done.nfe, "steps": done.steps, "finish": done.finish_reason, "events": d}


def run_batched(model: Any, draft: Any, ids: list[list[int]], profile: str, sets: list[str], n: int,
                seed: int, size: int) -> list[dict[str, Any]] | None:
    """Each prompt's record from batches of ``size`` (prompt ``k`` draws with ``seed + k``), or None when the
    batch does not run this profile on this model."""
    from dlm_cli import profiles
    from dlm_cli.decode.batch import check_batchable, run_batch
    from dlm_cli.errors import UsageError

    s = profiles.load(profile, sets=list(sets) + EXTRA_SETS + [f"max_new_tokens={n}", f"seed={seed}"])
    try:
        check_batchable(model, s.frozen())
    except UsageError:
        return None
    out = []
    for a in range(0, len(ids), size):
        s = profiles.load(profile, sets=list(sets) + EXTRA_SETS + [f"max_new_tokens={n}", f"seed={seed + a}"])
        events: dict[int, list[Any]] = {}
        for row, ev in run_batch(model, ids[a : a + size], s, draft=draft):
            events.setdefault(row, []).append(ev)
        for row in range(len(ids[a : a + size])):
            d, done = digest(events[row])
            out.append({"tokens": done.tokens, "text": model.tokenizer.decode(done.tokens, skip_special_tokens=True),
                        "nfe": done.nfe, "steps": done.steps, "finish": done.finish_reason, "events": d})
    return out


def tiny_models(work: Path) -> list[tuple[str, Path]]:
    import checkpoints as ck

    return [
        ("tiny-llada", ck.make_llada(work / "llada", sharpen=8.0)),
        ("tiny-dream", ck.make_dream(work / "dream", sharpen=8.0)),
        ("tiny-sdar", ck.make_sdar(work / "sdar", sharpen=8.0)),
        ("tiny-fast-dllm-v2", ck.make_fast_dllm_v2(work / "fdv2", sharpen=8.0)),
        ("tiny-adapter", ck.make_adapter(work / "adapter")),
        ("tiny-diffusion-gemma", ck.make_diffusion_gemma(work / "dgemma", sharpen=8.0)),
        ("tiny-llama", ck.make_llama(work / "llama")),
    ]


def record(quick: bool = False, only: tuple[str, ...] = (), out_path: Path | None = None,
           batch: int = 1) -> dict[str, Any]:
    import torch

    from dlm_cli.demo.tasks import suite
    from dlm_cli.models.files import LoadOptions
    from dlm_cli.models.loading import load
    from dlm_cli.prompting import encode

    torch.set_num_threads(1)
    out: dict[str, Any] = {}
    with tempfile.TemporaryDirectory() as tmp:
        os.environ.setdefault("HF_HUB_OFFLINE", "1")
        os.environ.setdefault("DLM_NATIVE_BF16", "0")  # --dtype auto: float32 on every machine (as recorded)
        specs: list[tuple[str, str, str | None, list[str], int]] = []
        demo_prompts = [ex.prompt for ex in suite(1 if quick else PROMPTS_PER_TASK)]
        specs.append(("dlm-demo", "dlm-demo", None, demo_prompts, 32))
        specs.append(("dlm-demo-ar", "dlm-demo-ar", "dlm-demo-ar-draft", demo_prompts, 32))
        for label, path in tiny_models(Path(tmp)):
            specs.append((label, str(path), str(path) if label == "tiny-llama" else None, list(TINY_PROMPTS), 16))
        typo = [json.loads(line)["prompt"] for line in
                (ROOT / "benchmarks" / "typo_prompts.jsonl").read_text().splitlines()[-3:]]
        specs += [(label, "smollm2-dlm", None, typo, 32) for label in REAL]
        for label, spec, draft_spec, prompts, n in specs:
            if (only and label not in only) or (not only and label in REAL):
                continue
            model = load(spec, LoadOptions(dtype="bfloat16" if label.endswith("-bf16") else "float32"))
            draft = load(draft_spec, role="draft") if draft_spec else None
            runs = profile_runs(model)
            batched: dict[str, list[dict[str, Any]] | None] = {}
            if batch > 1:
                every = [encode(model.tokenizer, text) for text in prompts]
                for name, sets in runs:
                    batched[name] = run_batched(model, draft, every, name.split("[")[0], sets, n, 7, batch)
                print(f"{label}: {sum(v is not None for v in batched.values())} of {len(runs)} profile runs batched",
                      file=sys.stderr)
            for k, text in enumerate(prompts):
                ids = encode(model.tokenizer, text)
                for name, sets in runs:
                    prof = name.split("[")[0]
                    got = batched.get(name)
                    out[f"{label} | {name} | {k}"] = (got[k] if got is not None else
                                                      run_one(model, draft, ids, prof, sets, n, seed=7 + k))
                    if prof in SAMPLED and k == 0:
                        out[f"{label} | {name} t0.8 | {k}"] = run_one(model, draft, ids, prof,
                                                                     sets + ["temperature=0.8"], n, seed=11)
            print(f"{label}: {len(runs)} profile runs x {len(prompts)} prompts", file=sys.stderr)
            if out_path is not None and not only:  # after each model: an interrupted run keeps what it did
                out_path.write_text(json.dumps(out, indent=1, sort_keys=True))
    return out


def _norm(value: Any) -> Any:
    """Temporary directories differ between runs: not behaviour."""
    return re.sub(r"/tmp/[\w.-]+/", "<tmp>/", value) if isinstance(value, str) else value


def compare(old: dict[str, Any], new: dict[str, Any]) -> list[str]:
    diffs = []
    for key in sorted(set(old) | set(new)):
        a, b = old.get(key), new.get(key)
        if a is None or b is None:
            diffs.append(f"{key}: {'missing now' if b is None else 'new'}")
            continue
        for field in ("error", "tokens", "nfe", "steps", "finish", "events"):
            if _norm(a.get(field)) != _norm(b.get(field)):
                diffs.append(f"{key}: {field} {a.get(field)!r} -> {b.get(field)!r}"[:400])
                break
    return diffs


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--out", type=Path, help="write the snapshot here")
    ap.add_argument("--check", type=Path, help="compare with this snapshot; exit 1 on any difference")
    ap.add_argument("--quick", action="store_true", help="one demo prompt per task")
    ap.add_argument("--only", default="", help="comma-separated model labels (e.g. tiny-sdar,dlm-demo)")
    ap.add_argument("--batch", type=int, default=1, help="decode N prompts together where the batch runs the profile")
    ap.add_argument("--set", action="append", default=[], metavar="KEY=VALUE",
                    help="a profile key for every run (repeatable), e.g. kernels=torch to match a commit before it")
    ap.add_argument("--common", action="store_true",
                    help="--check: compare only the runs both snapshots hold (an older commit has fewer profiles)")
    args = ap.parse_args()
    EXTRA_SETS.extend(args.set)
    snap = record(args.quick, tuple(x for x in args.only.split(",") if x), args.out, args.batch)
    if args.out:
        if args.only and args.out.exists():  # add to a snapshot recorded earlier
            snap = {**json.loads(args.out.read_text()), **snap}
        args.out.write_text(json.dumps(snap, indent=1, sort_keys=True))
    if args.check:
        old = json.loads(args.check.read_text())
        if args.only:
            old = {k: v for k, v in old.items() if k.split(" | ")[0] in args.only.split(",")}
        if args.common:
            both = set(old) & set(snap)
            print(f"comparing the {len(both)} runs both hold ({len(snap) - len(both)} only here, "
                  f"{len(old) - len(both)} only there)")
            old, snap = {k: old[k] for k in both}, {k: snap[k] for k in both}
        diffs = compare(old, snap)
        for d in diffs:
            print(d)
        print(f"{len(snap)} runs, {len(diffs)} differences")
        return 1 if diffs else 0
    print(f"{len(snap)} runs recorded", file=sys.stderr)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
