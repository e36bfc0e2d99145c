"""Where the repetition stop (``stop_repeats``, ``stop_ngram``) would cut real outputs, for a grid of settings.

Decodes every prompt once per row without the stop (greedy, ``-n`` slots), keeps the tokens, and
then applies :func:`dlm_cli.decode.repetition.first_repeat` for each setting: the stop is a
function of the output tokens alone, so the output with the stop is exactly this output cut there.
Prompts: the held-out real-text set (:func:`dlm_cli.demo.realtext.eval_prompts`: 14 typo, 10 chat,
6 continue, 6 reformat) and ``benchmarks/typo_prompts.jsonl`` (4), the latter also with the short
instruction ``fix the typos``. For each row and setting it reports how many outputs that ended on
their own (an end token) the stop would cut (these must be 0 for a default), how many that ran to
the limit it cuts, and the generated tokens it saves.

    python benchmarks/repetition.py --out /tmp/rep.json            # decode (cached in --out) and report
    python benchmarks/repetition.py --out /tmp/rep.json --show 16x2  # also print each cut output
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

ROWS = (("smollm2", "ar"), ("smollm2-dlm", "speedy"))
GRID = ((8, 2), (12, 2), (16, 1), (16, 2), (16, 3), (24, 1), (24, 2), (32, 1), (32, 2))


def prompts() -> list[tuple[str, str]]:
    from dlm_cli.demo.realtext import eval_prompts

    out = [(p.kind, p.prompt) for p in eval_prompts()]
    for line in (ROOT / "benchmarks" / "typo_prompts.jsonl").read_text().splitlines():
        prompt = json.loads(line)["prompt"]
        out.append(("typo-readme", prompt))
        out.append(("typo-short", "fix the typos\n\n" + prompt.split("\n\n", 1)[1]))
    return out


def decode(rows: list[tuple[str, str]], n: int, threads: int) -> list[dict]:
    import torch

    torch.set_num_threads(threads)
    from dlm_cli import profiles
    from dlm_cli.decode import run
    from dlm_cli.models.loading import load
    from dlm_cli.prompting import encode

    out = []
    for name, profile in rows:
        model = load(name)
        s = profiles.load(profile, sets=["stop_repeats=0"], flags={"max_new_tokens": n, "seed": 0})
        for kind, prompt in prompts():
            done = None
            for done in run(model, encode(model.tokenizer, prompt, context=model.max_length), s):
                pass
            out.append({"model": name, "profile": profile, "kind": kind, "tokens": done.tokens,
                        "finish_reason": done.finish_reason,
                        "text": model.tokenizer.decode(done.tokens, skip_special_tokens=True)})
            print(f"{name} {profile} {kind}: {len(done.tokens)} tokens, {done.finish_reason}", file=sys.stderr,
                  flush=True)
    return out


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--out", type=Path, required=True, help="JSON file of the decoded outputs (reused if present)")
    ap.add_argument("-n", "--max-new-tokens", type=int, default=256)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--show", default="", help="NxR: print the outputs this setting cuts")
    ap.add_argument("--rows", default=",".join(f"{m}:{p}" for m, p in ROWS), help="MODEL:PROFILE,... to decode")
    a = ap.parse_args(argv)
    from dlm_cli.decode.repetition import first_repeat

    if a.out.exists():
        outputs = json.loads(a.out.read_text())
    else:
        outputs = decode([tuple(r.split(":")) for r in a.rows.split(",")], a.max_new_tokens, a.threads)
        a.out.write_text(json.dumps(outputs))
    print(f"{len(outputs)} outputs, -n {a.max_new_tokens}, greedy, no stop\n")
    print("| row | stop_ngram × stop_repeats | ended on their own: cut | ran to the limit: cut | tokens saved |")
    print("|---|---|---|---|---|")
    show = tuple(int(x) for x in a.show.split("x")) if a.show else None
    for name, profile in dict.fromkeys((o["model"], o["profile"]) for o in outputs):
        mine = [o for o in outputs if o["model"] == name and o["profile"] == profile]
        eos = [o for o in mine if o["finish_reason"] == "eos"]
        length = [o for o in mine if o["finish_reason"] != "eos"]
        total = sum(len(o["tokens"]) for o in mine)
        for ngram, repeats in GRID:
            cuts = [(o, first_repeat(o["tokens"], ngram, repeats)) for o in mine]
            cut_eos = sum(k is not None for o, k in cuts if o["finish_reason"] == "eos")
            cut_len = sum(k is not None for o, k in cuts if o["finish_reason"] != "eos")
            saved = sum(len(o["tokens"]) - k for o, k in cuts if k is not None)
            print(f"| {name} `{profile}` | {ngram} × {repeats} | {cut_eos}/{len(eos)} | {cut_len}/{len(length)} | "
                  f"{saved}/{total} ({saved / max(total, 1):.0%}) |")
            if show == (ngram, repeats):
                from dlm_cli.models.loading import load

                tok = load(name).tokenizer
                for o, k in cuts:
                    if k is not None:
                        kept = tok.decode(o["tokens"][:k], skip_special_tokens=True)
                        print(f"\n--- {o['kind']} ({o['finish_reason']}, {len(o['tokens'])} -> {k} tokens)\n"
                              f"{kept[-300:]}\n    [cut here; dropped:] {o['text'][len(kept):][:200]!r}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
