"""What differs between the transformers releases dlm supports."""

from __future__ import annotations

import inspect
from functools import lru_cache
from typing import Any, Callable


@lru_cache(maxsize=None)
def _cache_kwarg_of(fn: Callable[..., Any]) -> str:
    params = inspect.signature(inspect.unwrap(fn)).parameters
    return "cache" if "cache" in params else "past_key_values"


def cache_kwarg(fn: Any) -> str:
    """The name of ``fn``'s KV-cache argument: ``cache`` from transformers 5.24, ``past_key_values`` before."""
    return _cache_kwarg_of(getattr(fn, "__func__", fn))
