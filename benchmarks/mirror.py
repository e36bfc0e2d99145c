"""Mirror-SD's schedule on one device: branch reuse against the exit layer and top-k, and the projected two-device time.

    python benchmarks/mirror.py [-m dlm-demo-ar] [--draft dlm-demo-ar-draft] [--per-task 4] [-n 64] [--threads 1]

For each exit layer (1 .. the target's depth) and top-k, every prompt is decoded with ``-p mirror`` (greedy; its
output is checked against ``ar``'s). Per configuration: tokens per target forward, the branch reuse rate
(reuses / (reuses + fallbacks): the verdicts whose correction or bonus was among the early exit's top-k),
the measured serial seconds of draft and verify, and the projected two-device seconds (decode/mirror.py's
formula: an estimate, not a measurement), against ``ar``'s and fixed-window ``speculative``'s decode seconds.
"""

from __future__ import annotations

import argparse

import torch


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("-m", "--model", default="dlm-demo-ar")
    ap.add_argument("--draft", default="dlm-demo-ar-draft")
    ap.add_argument("--per-task", type=int, default=4)
    ap.add_argument("-n", "--max-new-tokens", type=int, default=64)
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--topk", default="1,8")
    a = ap.parse_args()
    torch.set_num_threads(a.threads)
    from dlm_cli import profiles
    from dlm_cli.decode import run
    from dlm_cli.decode.events import Done
    from dlm_cli.demo.tasks import suite
    from dlm_cli.models.loading import load
    from dlm_cli.prompting import encode

    target, draft = load(a.model), load(a.draft, role="draft")
    ids = [encode(target.tokenizer, e.prompt) for e in suite(a.per_task)]

    def decode(profile: str, sets: list[str]) -> list[Done]:
        out = []
        for x in ids:
            s = profiles.load(profile, sets=sets, flags={"seed": 0, "max_new_tokens": a.max_new_tokens})
            out.append([e for e in run(target, x, s, draft=draft) if isinstance(e, Done)][0])
        return out

    decode("mirror", [])  # warm-up
    ar = decode("ar", [])
    spec = decode("speculative", ["draft_confidence=0", "adaptive_draft=false"])
    t_ar, t_spec = sum(d.seconds for d in ar), sum(d.seconds for d in spec)
    print(f"{a.model} + {a.draft} · {len(ids)} toy prompts · -n {a.max_new_tokens} · {a.threads} thread(s) · greedy\n")
    print(f"ar: {t_ar:.2f} s · speculative (draft_length 4, fixed): {t_spec:.2f} s ({t_ar / t_spec:.2f}× ar)\n")
    print("| exit layer | top-k | tok/forward | branch reuse | serial s | projected two-device s | projected × ar | = ar |")
    print("|---|---|---|---|---|---|---|---|")
    for layer in range(1, target.depth + 1):
        for k in (int(x) for x in a.topk.split(",")):
            got = decode("mirror", [f"mirror_exit_layer={layer}", f"mirror_topk={k}"])
            reuse = sum(d.extra["branch_reuses"] for d in got)
            tests = reuse + sum(d.extra["fallbacks"] for d in got)
            serial = sum(d.extra["serial_seconds"] for d in got)
            proj = sum(d.extra["projected_two_device_seconds"] for d in got)
            tpf = sum(len(d.tokens) for d in got) / sum(d.nfe for d in got)
            same = all(x.tokens == y.tokens for x, y in zip(got, ar))
            print(f"| {layer} | {k} | {tpf:.2f} | {reuse / max(tests, 1):.0%} | {serial:.2f} | {proj:.2f} | "
                  f"{t_ar / proj:.2f}× | {'yes' if same else 'no'} |")


if __name__ == "__main__":
    main()
