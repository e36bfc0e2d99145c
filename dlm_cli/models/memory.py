"""Will the weights fit? Estimated from the safetensors headers before a single tensor is read.

A safetensors file starts with an 8-byte little-endian header length and a JSON header giving
each tensor's dtype and shape, so the parameter count (and so the bytes at the dtype we will load
in) is known without reading the weights. Pickle files have no such header: their file size is
the estimate. The loader refuses a model that cannot fit rather than letting the machine swap or
the OOM killer end it.
"""

from __future__ import annotations

import functools
import json
import math
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
    """The tensor table of a safetensors file (name -> {dtype, shape, data_offsets}), checked.

    Every entry must be an object with a dtype, a shape of non-negative integers and data offsets
    that fit the file: a hostile or truncated file is one line here, before safetensors or torch
    sees it. Tables are cached by path, size and modification time (the loaders ask several times).
    """
    try:
        st = path.stat()
    except OSError as exc:
        raise DlmError(f"cannot read weights file {path} ({exc.strerror or exc}); re-download the model") from None
    return dict(_read_header(str(path), st.st_size, st.st_mtime_ns))


@functools.lru_cache(maxsize=64)
def _read_header(path: str, size: int, _mtime: int) -> tuple[tuple[str, dict], ...]:
    try:
        with open(path, "rb") as fh:
            raw = fh.read(8)
            if len(raw) < 8:
                raise ValueError("shorter than its 8-byte header length")
            (n,) = struct.unpack("<Q", raw)
            if n > min(100 * 1024 * 1024, size - 8):
                raise ValueError(f"header length {n} is implausible for a file of {size} bytes")
            header = json.loads(fh.read(n))
        if not isinstance(header, dict):
            raise ValueError("its header is not a JSON object")
        header.pop("__metadata__", None)
        data = size - 8 - n
        for name, info in header.items():
            _check_entry(name, info, data)
    except (OSError, ValueError, RecursionError) as exc:  # JSONDecodeError is a ValueError
        why = "nested too deeply" if isinstance(exc, RecursionError) else exc
        raise DlmError(f"weights file {path} is corrupt or truncated ({why}); delete it and download it again") from None
    return tuple(header.items())


def _check_entry(name: str, info: object, data: int) -> None:
    if not isinstance(info, dict):
        raise ValueError(f"tensor {name!r} is described by {type(info).__name__}, not an object")
    dtype, shape, offsets = info.get("dtype"), info.get("shape"), info.get("data_offsets")
    if not isinstance(dtype, str):
        raise ValueError(f"tensor {name!r} has no dtype")
    if not isinstance(shape, list) or not all(isinstance(d, int) and not isinstance(d, bool) and d >= 0 for d in shape):
        raise ValueError(f"tensor {name!r} has the shape {shape!r}, not a list of non-negative integers")
    if (not isinstance(offsets, list) or len(offsets) != 2
            or not all(isinstance(o, int) and not isinstance(o, bool) for o in offsets)
            or not 0 <= offsets[0] <= offsets[1]):
        raise ValueError(f"tensor {name!r} has the data offsets {offsets!r}, not [start, end]")
    if offsets[1] > data:
        raise ValueError(f"tensor {name!r} ends at byte {offsets[1]} of the data but the file holds {data}")
    if dtype in _SAFE_DTYPES and math.prod(shape) * _SAFE_DTYPES[dtype] != offsets[1] - offsets[0]:
        raise ValueError(f"tensor {name!r} of shape {shape} and dtype {dtype} does not fill its "
                         f"{offsets[1] - offsets[0]} bytes")


def _numel(info: dict) -> int:
    return math.prod(info["shape"])


def tensor_shapes(files: list[Path]) -> dict[str, tuple[int, ...]] | None:
    """Every tensor's published name and shape, from the headers; None when a file is not safetensors."""
    if any(f.suffix != ".safetensors" for f in files):
        return None
    return {name: tuple(info["shape"]) for f in files for name, info in read_header(f).items()}


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
