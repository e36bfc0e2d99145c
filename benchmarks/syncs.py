"""Host syncs per dLLM step, counted on a CPU: what would make a GPU wait for the host.

On a CUDA device every read of a device value by the host (``.item()``, ``.tolist()``,
``bool(t)``, ``int(t)``, ``float(t)``, ``.cpu()``, ``.numpy()``, ``nonzero``, indexing with a
boolean mask or with a 0-dim integer tensor, ``torch.equal``) and every blocking copy from host
memory to the device (``torch.tensor(list, device=...)``, ``host_tensor.to(device)``) stalls the
stream. A CPU has no such stalls, so this script counts the calls instead: it wraps those torch
entry points while a profile decodes on the demo dLLM, and reports, per step (per NFE), how many
happened in the loop (canvas, rule, lookup, cache policy) and how many inside the model's forward.
Tensors built on the host without a device (``torch.tensor(list)``) are host values: reads of
them are not counted.

    python benchmarks/syncs.py                         # the default rows
    python benchmarks/syncs.py -p speedy,llada21-s --sites   # and where each sync comes from

A figure is a count of calls, not of time; it holds on any machine.
"""

from __future__ import annotations

import argparse
import sys
import traceback
import weakref
from collections import Counter
from pathlib import Path
from typing import Any, Iterator

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "benchmarks"))

ROWS = ("quality", "speedy[cache=none]", "speedy[cache=prefix]", "speedy", "fast-dllm", "speedy-lookup", "margin", "eb",
        "factor", "prophet", "credit", "localleap", "adablock", "llada21-s", "llada21-q", "learn2pd", "ete", "elastic",
        "speedy[temperature=0.8]")

READS = ("item", "tolist", "__bool__", "__int__", "__float__", "__index__", "cpu", "numpy", "nonzero")


class SyncCounter:
    """Counts host syncs of torch calls while :attr:`active`; ``forward`` is set inside the model's forward."""

    def __init__(self) -> None:
        self.active = False
        self.forward = False
        self.loop = 0
        self.model = 0
        self.sites: Counter[str] = Counter()
        self.hosted: weakref.WeakValueDictionary = weakref.WeakValueDictionary()  # id -> host tensor
        self._undo: list[tuple[Any, str, Any]] = []

    def hit(self, what: str) -> None:
        if not self.active:
            return
        if self.forward:
            self.model += 1
        else:
            self.loop += 1
        frame = next((f for f in reversed(traceback.extract_stack()[:-2])
                      if "dlm_cli" in f.filename and "benchmarks" not in f.filename), None)
        where = f"{Path(frame.filename).name}:{frame.lineno}" if frame else "?"
        self.sites[f"{'forward' if self.forward else 'loop'} {what} {where}"] += 1

    def on_host(self, t: Any) -> bool:
        return self.hosted.get(id(t)) is t

    def mark_host(self, t: Any) -> None:
        self.hosted[id(t)] = t

    def _patch(self, owner: Any, name: str, make: Any) -> None:
        old = getattr(owner, name)
        self._undo.append((owner, name, old))
        setattr(owner, name, make(old))

    def install(self) -> "SyncCounter":
        import torch

        me = self

        def reader(name: str) -> Any:
            def make(old: Any) -> Any:
                def wrapped(t: Any, *a: Any, **k: Any) -> Any:
                    if not me.on_host(t):
                        me.hit(name)
                    out = old(t, *a, **k)
                    if name == "cpu" and isinstance(out, torch.Tensor):
                        me.mark_host(out)  # .cpu().numpy() is one transfer
                    return out
                return wrapped
            return make

        for name in READS:
            self._patch(torch.Tensor, name, reader(name))

        def syncing_index(index: Any) -> bool:
            items = index if isinstance(index, tuple) else (index,)
            for i in items:
                if isinstance(i, torch.Tensor) and not me.on_host(i) and (
                        i.dtype == torch.bool or (i.dim() == 0 and not i.is_floating_point())):
                    return True  # a mask needs nonzero; a 0-dim integer index is read with .item()
            return False

        def indexer(name: str) -> Any:
            def make(old: Any) -> Any:
                def wrapped(t: Any, index: Any, *a: Any) -> Any:
                    if syncing_index(index):
                        me.hit(name)
                    return old(t, index, *a)
                return wrapped
            return make

        for name in ("__getitem__", "__setitem__"):
            self._patch(torch.Tensor, name, indexer(name))

        def fn(name: str) -> Any:
            def make(old: Any) -> Any:
                def wrapped(*a: Any, **k: Any) -> Any:
                    me.hit(name)
                    return old(*a, **k)
                return wrapped
            return make

        for name in ("nonzero", "equal", "masked_select", "unique"):
            self._patch(torch, name, fn(name))

        def maker(name: str) -> Any:
            def make(old: Any) -> Any:
                def wrapped(data: Any, *a: Any, **k: Any) -> Any:
                    out = old(data, *a, **k)
                    if k.get("device") is None:
                        me.mark_host(out)
                    elif not isinstance(data, torch.Tensor) and out.numel():
                        me.hit(f"{name}(device=)")  # a blocking host-to-device copy (an empty one copies nothing)
                    return out
                return wrapped
            return make

        for name in ("tensor", "as_tensor"):
            self._patch(torch, name, maker(name))

        def to_make(old: Any) -> Any:
            def wrapped(t: Any, *a: Any, **k: Any) -> Any:
                out = old(t, *a, **k)
                moves = any(isinstance(x, (torch.device, str)) for x in a) or "device" in k
                if me.on_host(t) and moves and not k.get("non_blocking"):
                    me.hit("to(device)")
                return out
            return wrapped

        self._patch(torch.Tensor, "to", to_make)
        return self

    def uninstall(self) -> None:
        for owner, name, old in reversed(self._undo):
            setattr(owner, name, old)
        self._undo.clear()


def counted_forward(model: Any, counter: SyncCounter) -> None:
    """Mark the model's forwards, so syncs inside them are told apart from the loop's."""
    old = model.logits

    def logits(*a: Any, **k: Any) -> Any:
        counter.forward = True
        try:
            return old(*a, **k)
        finally:
            counter.forward = False

    model.logits = logits


def count(model: Any, prompts: list[list[int]], profile: str, sets: list[str], n: int,
          counter: SyncCounter) -> dict[str, float]:
    """Syncs per step (loop, inside the forward) and per run of ``profile`` over ``prompts``."""
    from dlm_cli import profiles
    from dlm_cli.decode import run

    loop = fwd = steps = nfe = run_loop = 0
    for k, ids in enumerate(prompts):
        s = profiles.load(profile, sets=sets + [f"max_new_tokens={n}", f"seed={k}"])
        events: Iterator[Any] = run(model, ids, s)
        while True:
            counter.loop = counter.model = 0
            counter.active = True
            try:
                ev = next(events, None)
            finally:
                counter.active = False
            if type(ev).__name__ == "Step":  # what the step cost: from the previous event to this one
                loop += counter.loop
                fwd += counter.model
                steps += 1
            else:
                run_loop += counter.loop + counter.model  # the run's start (canvas, caches) and end
            if ev is None:
                break
            if type(ev).__name__ == "Done":
                nfe += ev.nfe
    return {"steps": steps / len(prompts), "nfe": nfe / len(prompts), "loop": loop / steps, "forward": fwd / steps,
            "run": run_loop / len(prompts)}


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("-p", "--profiles", default=",".join(ROWS), help="comma-separated rows: profile or profile[k=v,...]")
    ap.add_argument("-m", "--model", default="dlm-demo")
    ap.add_argument("--per-task", type=int, default=1)
    ap.add_argument("-n", "--max-new-tokens", type=int, default=64)
    ap.add_argument("--sites", action="store_true", help="also list where the syncs happen")
    args = ap.parse_args(argv)

    import torch

    torch.set_num_threads(1)
    from dlm_cli.bench.suites import builtin_prompts
    from dlm_cli.models.loading import load
    from dlm_cli.prompting import encode
    from strategies import parse_row, split_rows

    model = load(args.model)
    prompts = [encode(model.tokenizer, p.prompt) for p in builtin_prompts(args.per_task, None)]
    counter = SyncCounter().install()
    counted_forward(model, counter)
    print(f"{model.info.name} · {len(prompts)} prompts · {args.max_new_tokens} tokens\n")
    print("| row | steps | NFE | syncs per step: loop | in the forward | per run (start, end) |")
    print("|---|---|---|---|---|---|")
    try:
        for row in split_rows(args.profiles):
            name, sets = parse_row(row)
            counter.sites.clear()
            r = count(model, prompts, name, sets, args.max_new_tokens, counter)
            print(f"| {row} | {r['steps']:.1f} | {r['nfe']:.1f} | {r['loop']:.2f} | {r['forward']:.2f} | {r['run']:.1f} |", flush=True)
            if args.sites:
                for site, c in counter.sites.most_common():
                    print(f"|   {site} | | | {c} | | |")
    finally:
        counter.uninstall()
    return 0


if __name__ == "__main__":
    sys.exit(main())
