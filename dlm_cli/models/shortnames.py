"""Short names for real models that dlm can find without a hub id (filled in by the SmolLM2 work)."""

from __future__ import annotations

from pathlib import Path
from typing import Any


def resolve_short_name(spec: str, opts: Any) -> Path | None:
    """The local directory for a short model name, or None when ``spec`` is not one."""
    return None
