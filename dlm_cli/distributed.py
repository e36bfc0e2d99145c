"""Data parallelism over processes: the world a launcher (``torchrun``, ``accelerate launch``) made, and its gathers.

A launcher starts one process per GPU (or per share of a CPU) and tells each its place through the
environment: ``WORLD_SIZE``, ``RANK``, ``LOCAL_RANK``, ``MASTER_ADDR``, ``MASTER_PORT``. Each
process loads the model, runs its share of the work and sends what it measured to rank 0, which
reports for all. The process group is torch.distributed's: NCCL between GPUs, gloo on CPUs. A
process on a GPU machine takes GPU ``LOCAL_RANK`` (``--device auto`` or ``cuda``).

``dlm bench`` and the lm-eval adapter use it; without a launcher the world is one process and
nothing here touches torch.distributed.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from typing import Any, Optional, Sequence, TypeVar

from .errors import DlmError, UsageError

T = TypeVar("T")


@dataclass(frozen=True)
class World:
    rank: int = 0
    size: int = 1
    local_rank: int = 0

    @property
    def main(self) -> bool:
        return self.rank == 0

    def bounds(self, n: int) -> tuple[int, int]:
        """This process's items of ``n``: a contiguous slice, the sizes within one of each other."""
        return self.rank * n // self.size, (self.rank + 1) * n // self.size

    def share(self, items: Sequence[T]) -> list[T]:
        lo, hi = self.bounds(len(items))
        return list(items[lo:hi])

    @staticmethod
    def unshare(parts: Sequence[Sequence[T]]) -> list[T]:
        """Every rank's :meth:`share` (``parts[r]`` from rank r) back in the items' order."""
        return [x for part in parts for x in part]


def _int(name: str, default: int) -> int:
    raw = os.environ.get(name)
    if raw is None or raw == "":
        return default
    try:
        return int(raw)
    except ValueError:
        raise UsageError(f"the environment variable {name}={raw!r} is not a number (it is the launcher's: "
                         "torchrun or accelerate launch)") from None


def world() -> World:
    """The world of this process, from the launcher's environment (one process without a launcher)."""
    size = _int("WORLD_SIZE", 1)
    rank = _int("RANK", 0)
    if size < 1 or not 0 <= rank < size:
        raise UsageError(f"RANK={rank} and WORLD_SIZE={size} do not go together: 0 <= RANK < WORLD_SIZE")
    return World(rank, size, _int("LOCAL_RANK", rank))


def join(w: World, device: Optional[str] = None) -> None:
    """Join the launcher's process group (once), on GPU ``LOCAL_RANK`` when the run uses CUDA."""
    if w.size == 1:
        return
    import torch
    import torch.distributed as dist

    if dist.is_initialized():
        return
    cuda = torch.cuda.is_available() and str(device or "auto").split(":")[0] in ("auto", "cuda")
    if cuda:
        torch.cuda.set_device(w.local_rank % torch.cuda.device_count())
    if "MASTER_ADDR" not in os.environ or "MASTER_PORT" not in os.environ:
        raise UsageError("WORLD_SIZE is set but MASTER_ADDR/MASTER_PORT are not: start the processes with "
                         "torchrun or accelerate launch")
    try:
        dist.init_process_group("nccl" if cuda else "gloo", rank=w.rank, world_size=w.size)
    except (RuntimeError, ValueError) as exc:  # torch's DistNetworkError is a RuntimeError
        where = f"{os.environ['MASTER_ADDR']}:{os.environ['MASTER_PORT']}"
        raise DlmError(f"rank {w.rank} of {w.size} could not join the process group at {where}: "
                       f"{str(exc).splitlines()[0][:200]}") from None


def gather(obj: Any, w: World) -> Optional[list[Any]]:
    """Every rank's ``obj`` on rank 0, in rank order (None on the others); ``[obj]`` for one process."""
    if w.size == 1:
        return [obj]
    import torch.distributed as dist

    out: Optional[list[Any]] = [None] * w.size if w.main else None
    dist.gather_object(obj, out, dst=0)
    return out


def all_gather_tensor(tensor: Any, w: World) -> Any:
    """Every rank's tensor concatenated along dim 0 (a scalar counts as one row), as accelerate's gather."""
    if w.size == 1:
        return tensor
    import torch
    import torch.distributed as dist

    t = tensor.reshape(1) if tensor.dim() == 0 else tensor
    parts = [torch.empty_like(t) for _ in range(w.size)]
    dist.all_gather(parts, t.contiguous())
    return torch.cat(parts)


def barrier(w: World) -> None:
    if w.size > 1:
        import torch.distributed as dist

        dist.barrier()


def leave(w: World) -> None:
    """Leave the process group (at the end of a command), so the process exits without torch's warning."""
    if w.size > 1:
        import torch.distributed as dist

        if dist.is_initialized():
            dist.destroy_process_group()
