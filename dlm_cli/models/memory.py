"""Will the weights fit? Estimated from the safetensors headers before a single tensor is read.

A safetensors file starts with an 8-byte little-endian header length and a JSON header giving
each tensor's dtype and shape, so the parameter count (and so the bytes at the dtype we will load
in) is known without reading the weights. Pickle files have no such header: their file size is
the estimate. The loader refuses a model that cannot fit rather than letting the machine swap or
the OOM killer end it.
"""

from __future__ import annotations

import json
import os
import struct
from pathlib import Path

import torch

from ..errors import DlmError

# Activations, the KV cache and allocator slack come on top of the weights.
HEADROOM = 1.10
GIB = 1024**3

_SAFE_DTYPES = {"F64": 8, "I64": 8, "U64": 8, "F32": 4, "I32": 4, "U32": 4, "F16": 2, "BF16": 2, "I16": 2,
                "U16": 2, "F8_E4M3": 1, "F8_E5M2": 1, "I8": 1, "U8": 1, "BOOL": 1}


def read_header(path: Path) -> dict[str, dict]:
    """The tensor table of a safetensors file (name -> {dtype, shape, data_offsets})."""
    try:
        with open(path, "rb") as fh:
            raw = fh.read(8)
            if len(raw) < 8:
                raise ValueError("shorter than its 8-byte header length")
            (n,) = struct.unpack("<Q", raw)
            if n > 100 * 1024 * 1024:
                raise ValueError(f"header length {n} is implausible")
            header = json.loads(fh.read(n))
    except (OSError, ValueError) as exc:  # JSONDecodeError is a ValueError
        raise DlmError(f"weights file {path} is corrupt or truncated ({exc}); delete it and download it again") from None
    header.pop("__metadata__", None)
    return header


def _numel(info: dict) -> int:
    n = 1
    for d in info.get("shape", []):
        n *= int(d)
    return n


def parameter_count(files: list[Path]) -> int | None:
    """Parameters across the checkpoint's safetensors files; None when a file is not safetensors."""
    if any(f.suffix != ".safetensors" for f in files):
        return None
    return sum(_numel(info) for f in files for info in read_header(f).values())


def weight_bytes(files: list[Path], dtype: torch.dtype) -> int:
    """Bytes the weights take once loaded in ``dtype`` (floating tensors are cast, as the loader does)."""
    itemsize = torch.empty((), dtype=dtype).element_size()
    total = 0
    for f in files:
        if f.suffix != ".safetensors":
            total += f.stat().st_size
            continue
        for info in read_header(f).values():
            kind = info.get("dtype", "F32")
            total += _numel(info) * (itemsize if kind.startswith(("F", "BF")) else _SAFE_DTYPES.get(kind, 4))
    return total


def available_bytes(device: torch.device) -> int | None:
    """Free memory where the weights will live; None when it cannot be known (MPS shares RAM: RAM is used)."""
    if device.type == "cuda":
        free, _total = torch.cuda.mem_get_info(device)
        return int(free)
    return available_ram()


def available_ram() -> int | None:
    """MemAvailable from /proc/meminfo (what Linux can give without swapping), else sysconf."""
    try:
        for line in Path("/proc/meminfo").read_text().splitlines():
            if line.startswith("MemAvailable:"):
                return int(line.split()[1]) * 1024
    except (OSError, ValueError, IndexError):
        pass
    try:
        return os.sysconf("SC_AVPHYS_PAGES") * os.sysconf("SC_PAGE_SIZE")
    except (ValueError, OSError, AttributeError):
        return None


def check_fits(files: list[Path], dtype: torch.dtype, device: torch.device, name: str,
               device_map: str | None = None) -> int:
    """Refuse (DlmError) when the weights cannot fit where they are going; returns the estimate in bytes.

    With ``device_map`` accelerate spreads the layers over every GPU and the CPU, so the check is
    left to it.
    """
    need = weight_bytes(files, dtype)
    if device_map:
        return need
    have = available_bytes(device)
    if have is None or need * HEADROOM <= have:
        return need
    where = "GPU memory" if device.type == "cuda" else "RAM"
    dt = str(dtype).replace("torch.", "")
    hints = []
    if dtype == torch.float32:
        hints.append("--dtype bfloat16 halves it")
    if device.type == "cuda":
        hints.append("--device-map auto spreads it over every GPU (and the CPU)")
    hints.append("or use a smaller model")
    raise DlmError(f"{name} needs about {need / GIB:.1f} GiB for its weights in {dt} but only "
                   f"{have / GIB:.1f} GiB of {where} is free; " + ", ".join(hints))
