"""CPU threads that survive a busy machine.

Measured on this project's 2-core machine with other jobs running (load 2-6, smollm2-dlm, 64 slots,
`docs/threads.md`): torch's default of one thread per core with OpenMP's active wait took 18-154 s
per decode, against 5-11 s with one thread or with passive wait. A spinning OpenMP thread burns the
core that the thread it waits for needs. So dlm waits passively and starts as many threads as there
are free cores. Imports no torch: the wait policy is read when torch loads.
"""

from __future__ import annotations

import os

TINY_PARAMETERS = 20_000_000  # below this a forward is mostly per-op overhead: more threads only add syncs
BUSY_SHARE = 0.6  # the decode thread ran less than this share of the wall time: the cores were shared


def passive_wait() -> None:
    """OpenMP threads sleep instead of spinning while they wait (unless the user set a policy).

    Read by the OpenMP runtime when torch is imported, so this runs before that import.
    """
    os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")


def usable_cores() -> int:
    """The cores this process may run on (its CPU affinity), or the machine's count."""
    try:
        return len(os.sched_getaffinity(0))
    except (AttributeError, OSError):  # macOS, Windows
        return os.cpu_count() or 1


def free_cores() -> int:
    """Cores not taken by other work: ``min(usable cores, cores - round(1-minute load))``, at least 1."""
    usable = usable_cores()
    try:
        load = os.getloadavg()[0]
    except (AttributeError, OSError):
        return usable
    return max(1, min(usable, (os.cpu_count() or usable) - round(load)))


def default_threads(parameters: int) -> int:
    """The intra-op threads for a CPU run when neither --threads nor OMP_NUM_THREADS chose them."""
    return 1 if parameters < TINY_PARAMETERS else free_cores()


def busy_share(cpu_seconds: float | None, seconds: float) -> float | None:
    """The decode thread's CPU time over its wall time, when it fell below :data:`BUSY_SHARE`; else None."""
    if cpu_seconds is None or seconds < 0.5:  # too short to tell scheduling from noise
        return None
    share = cpu_seconds / seconds
    return share if share < BUSY_SHARE else None
