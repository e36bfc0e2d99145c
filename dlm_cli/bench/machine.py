"""What bench holds its rows against: the machine's copy bandwidth, the process's memory, the weights' size.

- Copy bandwidth: ``2 × bytes / seconds`` of the best of five copies of a 256 MiB tensor on the
  model's device (a copy reads and writes every byte), cached per machine, device and thread count
  in ``~/.cache/dlm/machine.json`` (``dlm bench --calibrate`` measures it again).
- Achieved weight bandwidth, as gpt-fast reports it: ``weight bytes × forwards per second``.
- Peak memory: on CUDA the allocator's peak over the run; on CPU the resident set size, sampled at
  each decoding event (the weights included).
"""

from __future__ import annotations

import json
import os
import platform
import time
from pathlib import Path
from typing import Any, Iterator, Optional, TYPE_CHECKING

if TYPE_CHECKING:
    from ..models.protocols import Model

CALIBRATION_BYTES = 256 * 1024 * 1024


def cache_file() -> Path:
    base = os.environ.get("XDG_CACHE_HOME") or str(Path.home() / ".cache")
    return Path(base) / "dlm" / "machine.json"


def _cpu_name() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def machine_key(device: str) -> str:
    import torch

    if device.startswith("cuda") and torch.cuda.is_available():
        where = torch.cuda.get_device_name(torch.device(device))
    else:
        where = f"{_cpu_name()} · {torch.get_num_threads()} threads"
    return f"{platform.node()} · {device} · {where}"


def measure_copy_bandwidth(device: str) -> float:
    """GB/s of a device-to-device tensor copy: 2 × bytes / seconds, best of five."""
    import torch

    n = CALIBRATION_BYTES // 4
    a = torch.ones(n, dtype=torch.float32, device=device)
    b = torch.empty_like(a)
    sync = torch.cuda.synchronize if device.startswith("cuda") else (lambda: None)
    b.copy_(a)
    sync()
    best = float("inf")
    for _ in range(5):
        t0 = time.perf_counter()
        b.copy_(a)
        sync()
        best = min(best, time.perf_counter() - t0)
    return 2 * CALIBRATION_BYTES / best / 1e9


def copy_bandwidth(device: str, *, remeasure: bool = False) -> tuple[float, bool]:
    """The cached copy bandwidth for this machine and device (measured when absent): (GB/s, measured now)."""
    path = cache_file()
    key = machine_key(device)
    data: dict[str, Any] = {}
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
        if not isinstance(data, dict):
            data = {}
    except (OSError, ValueError):
        data = {}
    entry = data.get(key)
    if not remeasure and isinstance(entry, dict) and isinstance(entry.get("copy_gbps"), (int, float)):
        return float(entry["copy_gbps"]), False
    gbps = measure_copy_bandwidth(device)
    data[key] = {"copy_gbps": round(gbps, 2), "measured": time.strftime("%Y-%m-%d %H:%M:%S")}
    from ..atomic import write_text_atomically

    try:  # never a half-written cache
        write_text_atomically(path, json.dumps(data, indent=2) + "\n")
    except OSError:
        pass  # a read-only cache only costs a re-measure next time
    return gbps, True


def weight_bytes(model: Model) -> int:
    """Bytes of the model's weights (what each forward reads at least once)."""
    net = getattr(model, "net", None)
    if net is not None and hasattr(net, "parameters"):
        return sum(p.numel() * p.element_size() for p in net.parameters())
    return int(model.info.parameters) * 4


def rss_bytes() -> int:
    """The process's resident set size now (0 where /proc is not there)."""
    try:
        with open("/proc/self/statm", "rb") as f:
            return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")
    except (OSError, ValueError, IndexError):
        return 0


class PeakMemory:
    """The peak memory of the runs it watches (bytes): CUDA's allocator peak, or sampled RSS on CPU."""

    def __init__(self, device: str) -> None:
        import torch

        self.cuda = device.startswith("cuda") and torch.cuda.is_available()
        self.device = device
        self.peak = 0

    def watch(self, events: Iterator[Any]) -> Iterator[Any]:
        if self.cuda:
            import torch

            torch.cuda.reset_peak_memory_stats(self.device)
            for ev in events:
                yield ev
            self.peak = max(self.peak, torch.cuda.max_memory_allocated(self.device))
            return
        peak = rss_bytes()
        for ev in events:
            peak = max(peak, rss_bytes())
            yield ev
        self.peak = max(self.peak, peak)


def describe(gbps: Optional[float]) -> str:
    return "" if gbps is None else f"copy {gbps:.1f} GB/s"
