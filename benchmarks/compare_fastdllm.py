"""dlm's threshold strategy side by side with Fast-dLLM's own ``generate`` functions, on the demo dLLM.

Fast-dLLM (NVlabs/Fast-dLLM, ``llada/generate.py``) decodes LLaDA-layout models with
``generate`` (no cache), ``generate_with_prefix_cache`` and ``generate_with_dual_cache``; with
``threshold`` set they commit every masked position of the block with confidence ≥ τ plus the
top-1, which is dlm's ``threshold`` strategy with ``cache = none | prefix | dual``. Both run the
same demo weights (theirs through their ``modeling_llada.py``) on the same prompts and settings
(greedy, τ, block length, generation length, no EoTP), and the script reports, per cache mode:
whether every output and every NFE count agree (their cached loops spend one extra forward,
which commits nothing, on each block that its first forward completes; dlm's count plus those
must equal theirs), and the wall-clock ratio (their seconds ÷ ours;
≥ 1 means dlm is at least as fast). Calls are interleaved prompt by prompt after a warmup, timed
with ``perf_counter`` around the whole call on both sides.

Their code never enters the repository: it is copied at run time into a temporary directory from
``--fastdllm PATH`` or ``$FASTDLLM_REPO`` (a checkout, or a git directory such as a mirror: files
are read from HEAD), else a shallow ``git clone``; when none is available the script says why and
exits 0 (skipped). The copy gets the same runtime shims as ``benchmarks/equivalence.py``.

    python benchmarks/compare_fastdllm.py --fastdllm /path/to/Fast-dLLM [-m MODEL] [--per-task 4]

Exits 1 when an output or an NFE count differs.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from collections import Counter
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "benchmarks"))


def fetch_generate(source: str | None, work: Path) -> str | None:
    """Their ``llada/model`` as package ``model`` and ``llada/generate.py`` as ``fd_generate``; None or why not."""
    import shutil

    from equivalence import fetch

    why = fetch(source, work)
    if why:
        return why
    root = Path(source) if source else work / "clone"
    if (root / "llada" / "generate.py").is_file():
        text = (root / "llada" / "generate.py").read_text()
    else:
        out = subprocess.run(["git", "--git-dir", str(root), "show", "HEAD:llada/generate.py"], capture_output=True,
                             text=True)
        if out.returncode != 0:
            return f"{root} has no llada/generate.py"
        text = out.stdout
    (work / "fd_generate.py").write_text(text)
    shutil.copytree(work / "llada_ref", work / "model")
    return None


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--fastdllm", default=os.environ.get("FASTDLLM_REPO"), help="Fast-dLLM checkout or git dir")
    ap.add_argument("-m", "--model", default="dlm-demo", help="LLaDA-layout model directory (default: the demo dLLM)")
    ap.add_argument("--per-task", type=int, default=3)
    ap.add_argument("--threshold", type=float, default=0.9)
    ap.add_argument("--block-length", type=int, default=32)
    ap.add_argument("--gen-length", type=int, default=64)
    ap.add_argument("--reps", type=int, default=2, help="timed repetitions")
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--json", action="store_true", help="print the results as JSON")
    args = ap.parse_args(argv)

    import torch

    torch.set_num_threads(args.threads)
    from dlm_cli import profiles
    from dlm_cli.bench.suites import builtin_prompts
    from dlm_cli.decode import run
    from dlm_cli.decode.events import Step
    from dlm_cli.models.loading import LoadOptions, load
    from dlm_cli.prompting import encode

    with tempfile.TemporaryDirectory() as tmp:
        work = Path(tmp)
        why = fetch_generate(args.fastdllm, work)
        if why:
            print(f"compare_fastdllm: skipped: {why}")
            return 0
        import fd_generate
        from model.configuration_llada import LLaDAConfig
        from model.modeling_llada import LLaDAModelLM
        from safetensors.torch import load_file

        ours = load(args.model, LoadOptions(device=args.device, dtype="float32"))
        path = Path(ours.info.path)
        cfg = json.loads((path / "config.json").read_text())
        theirs = LLaDAModelLM(LLaDAConfig(**{**cfg, "init_device": "cpu"}))
        theirs.load_state_dict(load_file(str(path / "model.safetensors")), strict=True)
        theirs = theirs.float().eval().to(ours.device)
        eos = set(ours.eos_ids)

        def cut(tokens: list[int]) -> list[int]:
            for i, t in enumerate(tokens):
                if t in eos:
                    return tokens[:i]
            return tokens

        fns = {"none": fd_generate.generate, "prefix": fd_generate.generate_with_prefix_cache,
               "dual": fd_generate.generate_with_dual_cache}
        prompts = builtin_prompts(args.per_task, None)
        ids = [encode(ours.tokenizer, p.prompt) for p in prompts]
        G = args.gen_length

        def call_theirs(mode: str, prompt_ids: list[int]) -> tuple[list[int], int, float]:
            x = torch.tensor([prompt_ids], device=ours.device)
            t = time.perf_counter()
            out, nfe = fns[mode](theirs, x, steps=G, gen_length=G, block_length=args.block_length, temperature=0.0,
                                 remasking="low_confidence", mask_id=ours.mask_id, threshold=args.threshold)
            if ours.device.type == "cuda":
                torch.cuda.synchronize()
            return cut(out[0, len(prompt_ids):].tolist()), int(nfe), time.perf_counter() - t

        def call_ours(mode: str, prompt_ids: list[int]) -> tuple[list[int], int, float]:
            s = profiles.build({"strategy": "threshold"}, "compare", profile="compare",
                               flags={"threshold": args.threshold, "block_length": args.block_length,
                                      "max_new_tokens": G, "cache": mode, "eotp": False, "seed": 0})
            t = time.perf_counter()
            events = list(run(ours, prompt_ids, s))
            if ours.device.type == "cuda":
                torch.cuda.synchronize()
            seconds = time.perf_counter() - t
            done = events[-1]
            steps = Counter(e.block for e in events if isinstance(e, Step))
            one_step = sum(1 for n in steps.values() if n == 1)
            return done.tokens, done.nfe, seconds, one_step

        results = {}
        failed = False
        for mode in fns:
            call_theirs(mode, ids[0])
            call_ours(mode, ids[0])
            same_out = same_nfe = 0
            t_theirs = t_ours = 0.0
            nfe_theirs = nfe_ours = idle_total = 0
            for rep in range(args.reps):
                for prompt_ids in ids:
                    a, na, ta = call_theirs(mode, prompt_ids)
                    b, nb, tb, one_step = call_ours(mode, prompt_ids)
                    # Their cached loops run the step body before the block-done check, so a block
                    # finished by its first (cache-filling) forward costs them one more forward that
                    # commits nothing; dlm stops there.
                    idle = one_step if mode != "none" else 0
                    t_theirs += ta
                    t_ours += tb
                    if rep == 0:
                        same_out += a == b
                        same_nfe += na == nb + idle
                        nfe_theirs += na
                        nfe_ours += nb
                        idle_total += idle
            n = len(ids)
            results[mode] = {"prompts": n, "same_output": same_out, "same_nfe": same_nfe,
                             "nfe_theirs": nfe_theirs / n, "nfe_ours": nfe_ours / n, "idle_theirs": idle_total / n,
                             "seconds_theirs": t_theirs / args.reps, "seconds_ours": t_ours / args.reps,
                             "ratio": t_theirs / t_ours}
            failed |= same_out != n or same_nfe != n
        if args.json:
            print(json.dumps({"model": ours.info.name, "device": str(ours.device), "threshold": args.threshold,
                              "block_length": args.block_length, "gen_length": G, "modes": results}, indent=2))
        else:
            print(f"{ours.info.name} · {len(ids)} prompts · threshold {args.threshold} · block {args.block_length} · "
                  f"{G} tokens · {args.reps} reps · {ours.device}\n")
            print("| cache | same output | same NFE | NFE Fast-dLLM / dlm (+ their idle forwards) | seconds (Fast-dLLM / dlm) | ratio |")
            print("|---|---|---|---|---|---|")
            for mode, r in results.items():
                print(f"| {mode} | {r['same_output']}/{r['prompts']} | {r['same_nfe']}/{r['prompts']} | "
                      f"{r['nfe_theirs']:.1f} / {r['nfe_ours']:.1f} (+{r['idle_theirs']:.1f}) | {r['seconds_theirs']:.2f} / "
                      f"{r['seconds_ours']:.2f} | {r['ratio']:.2f}× |")
        return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
