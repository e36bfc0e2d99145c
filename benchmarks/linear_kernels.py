"""What each CPU product reaches for SmolLM2's linear layers: torch's own, oneDNN packed, MKL packed.

    python benchmarks/linear_kernels.py --threads 1,2 [--dtype float32]

Rows: the 30 decoder layers' seven products (q, k, v, o, gate, up, down: SmolLM2-135M's shapes), each
layer a separate weight so they stream from memory as in a forward, and the 49,152-row head alone; for
M = 1 (an AR step), 9 (a block of 8 plus the shifted row) and 16/33 (a verify). Per kernel: ms for all
of them and the weight bytes read per second. ``torch``: ``F.linear`` on the weight as stored;
``onednn``: ``torch.ops.mkldnn._linear_pointwise`` on a weight reordered once for 16 rows (what
``kernels = "onednn"`` uses, :mod:`dlm_cli.models.kernels`); ``mkl``: ``torch.ops.mkl._mkl_linear``
on a weight packed for M rows (float32 only). Run it on an idle machine; compare within one run.
"""

from __future__ import annotations

import argparse
import time
from typing import Any, Callable

import torch
import torch.nn.functional as F

LAYER = [(576, 576), (192, 576), (192, 576), (576, 576), (1536, 576), (1536, 576), (576, 1536)]
HEAD = (49152, 576)


def kernels(w: torch.Tensor, m: int) -> dict[str, Callable[[torch.Tensor], Any]]:
    out: dict[str, Callable[[torch.Tensor], Any]] = {"torch": lambda x: F.linear(x, w)}
    if torch.backends.mkldnn.is_available() and (w.dtype == torch.float32 or torch.ops.mkldnn._is_mkldnn_bf16_supported()):
        p = torch.ops.mkldnn._reorder_linear_weight(w, 16)
        out["onednn"] = lambda x: torch.ops.mkldnn._linear_pointwise(x, p, None, "none", [], "")
    if w.dtype == torch.float32 and torch._C.has_mkl:
        q = torch.ops.mkl._mkl_reorder_linear_weight(w, m)
        out["mkl"] = lambda x: torch.ops.mkl._mkl_linear(x, q, w, None, m)
    return out


def timed(fn: Callable[[], Any], reps: int) -> float:
    for _ in range(3):
        fn()
    t = time.perf_counter()
    for _ in range(reps):
        fn()
    return (time.perf_counter() - t) / reps


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--threads", default="1,2")
    ap.add_argument("--dtype", default="float32", choices=("float32", "bfloat16"))
    ap.add_argument("--rows", default="1,9,16,33")
    ap.add_argument("--reps", type=int, default=10)
    args = ap.parse_args()
    dtype = getattr(torch, args.dtype)
    torch.manual_seed(0)
    with torch.no_grad():
        layers = [[torch.randn(n, k, dtype=dtype) * 0.02 for n, k in LAYER] for _ in range(30)]
        head = torch.randn(*HEAD, dtype=dtype) * 0.02
        layer_bytes = sum(w.numel() * w.element_size() for ws in layers for w in ws)
        head_bytes = head.numel() * head.element_size()
        print(f"cpu capability {torch.backends.cpu.get_cpu_capability()}, dtype {args.dtype}, "
              f"layers {layer_bytes / 1e6:.0f} MB, head {head_bytes / 1e6:.0f} MB")
        for threads in (int(t) for t in args.threads.split(",")):
            torch.set_num_threads(threads)
            for m in (int(r) for r in args.rows.split(",")):
                xs = {k: torch.randn(m, k, dtype=dtype) for k in (576, 1536)}
                per_layer = [[kernels(w, m) for w in ws] for ws in layers]
                head_k = kernels(head, m)
                cells = []
                for name in head_k:
                    fns = [[ks[name] for ks in layer] for layer in per_layer]

                    def run_layers() -> None:
                        for layer in fns:
                            for (_, k), f in zip(LAYER, layer):
                                f(xs[k])

                    t_layers = timed(run_layers, args.reps)
                    t_head = timed(lambda: head_k[name](xs[576]), args.reps * 2)
                    cells.append(f"{name} {t_layers * 1e3:6.2f} ms ({layer_bytes / t_layers / 1e9:4.1f} GB/s) "
                                 f"head {t_head * 1e3:5.2f} ms ({head_bytes / t_head / 1e9:4.1f} GB/s)")
                print(f"{threads} thread(s) M={m:2d}: " + " | ".join(cells), flush=True)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
