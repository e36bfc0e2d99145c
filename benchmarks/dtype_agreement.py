"""smollm2-dlm ``speedy``: bfloat16 (eager and compiled) and int4 against float32 on the held-out typo prompts.

    python benchmarks/dtype_agreement.py 96      # -n 96, 1 thread; prints agreement, tok/s, NFE per row

The four rows decode every prompt in turn (interleaved); the compiled row's warm-up is not timed.
"""
import json, os, sys
os.environ.setdefault("HF_HUB_OFFLINE", "1")
import torch
torch.set_num_threads(1)
from dlm_cli import profiles
from dlm_cli.decode import run
from dlm_cli.models.files import LoadOptions
from dlm_cli.models.loading import load
from dlm_cli.prompting import encode
n = int(sys.argv[1]) if len(sys.argv) > 1 else 64
prompts = [json.loads(line)["prompt"] for line in open(os.path.join(os.path.dirname(__file__), "typo_prompts.jsonl"))]
rows = {"float32": ("float32", []), "bfloat16": ("bfloat16", []), "bfloat16 compiled": ("bfloat16", ["compile=on"]),
        "int4": ("bfloat16", ["quantize=int4"])}
models = {"float32": load("smollm2-dlm", LoadOptions(dtype="float32")), "bfloat16": load("smollm2-dlm", LoadOptions(dtype="bfloat16"))}
comp = load("smollm2-dlm", LoadOptions(dtype="bfloat16"))
q4 = load("smollm2-dlm", LoadOptions(dtype="bfloat16"))
inst = {"float32": models["float32"], "bfloat16": models["bfloat16"], "bfloat16 compiled": comp, "int4": q4}
out = {r: [] for r in rows}
secs = {r: 0.0 for r in rows}; nfe = {r: 0 for r in rows}
for i, p in enumerate(prompts):
    for r, (dt, sets) in rows.items():
        m = inst[r]
        ids = encode(m.tokenizer, p)
        s = profiles.load("speedy", sets=sets, flags={"max_new_tokens": n, "seed": 0})
        done = list(run(m, ids, s))[-1]
        out[r].append(done.tokens); secs[r] += done.seconds; nfe[r] += done.nfe
ref = out["float32"]
for r in rows:
    same = sum(a == b for a, b in zip(out[r], ref))
    pre = []
    for a, b in zip(out[r], ref):
        k = 0
        for x, y in zip(a, b):
            if x != y: break
            k += 1
        pre.append(k / max(len(b), 1))
    toks = sum(len(t) for t in out[r])
    print(f"{r:18s} identical to float32 {same}/{len(ref)}  shared prefix {sum(pre)/len(pre):.0%}  "
          f"tok/s {toks/secs[r]:.1f}  NFE {nfe[r]}  tokens {toks}")
print("load", os.getloadavg())
