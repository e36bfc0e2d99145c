"""How to load a model (device, dtype, trust): torch-free, so the CLI builds it before anything heavy is imported."""

from __future__ import annotations

from dataclasses import dataclass


@dataclass
class LoadOptions:
    device: str = "auto"
    dtype: str = "auto"
    trust_remote_code: bool = False
    allow_pickle: bool = False
    device_map: str | None = None
    revision: str | None = None
