"""Declared settings keys and the strategy registry.

Every setting is declared once, as a :class:`Key` with its type, default and range; profile
validation, ``--set`` parsing, ``dlm profiles show`` and the README's key table all derive from
these declarations. A strategy registers its keys with :func:`register_strategy`; a feature that
composes with every strategy of a kind (EoTP, caches, editing, ...) registers with
:func:`register_keys`.
"""

from __future__ import annotations

import difflib
from dataclasses import dataclass, field
from typing import Any, Callable

KINDS = ("diffusion", "autoregressive")


@dataclass(frozen=True)
class Key:
    """One setting: ``type`` is int, float, bool or str; ``min``/``max`` bound numbers; ``choices`` strings."""

    name: str
    type: type
    default: Any
    help: str
    min: float | None = None
    max: float | None = None
    choices: tuple[str, ...] | None = None
    optional: bool = False  # None (absent) is allowed and means "derive it" (see help)
    min_open: bool = False  # the bound is exclusive: min < value

    def allowed(self) -> str:
        """The allowed values, in words, for error messages and docs."""
        if self.choices:
            return "one of " + ", ".join(repr(c) for c in self.choices)
        if self.type is bool:
            return "true or false"
        kind = {int: "an integer", float: "a number", str: "a string"}[self.type]
        if self.min is not None and self.max is not None:
            lo = "<" if self.min_open else "≤"
            return f"{kind} with {self.min:g} {lo} {self.name} ≤ {self.max:g}"
        if self.min is not None:
            return f"{kind} {'>' if self.min_open else '≥'} {self.min:g}"
        if self.max is not None:
            return f"{kind} ≤ {self.max:g}"
        return kind

    def check(self, value: Any) -> Any:
        """Return ``value`` coerced to this key's type, or raise ValueError with the reason."""
        if value is None and self.optional:
            return None
        t = self.type
        if t is bool:
            if not isinstance(value, bool):
                raise ValueError(f"must be {self.allowed()}")
        elif t is int:
            if isinstance(value, bool) or not isinstance(value, int):
                raise ValueError(f"must be {self.allowed()}")
        elif t is float:
            if isinstance(value, bool) or not isinstance(value, (int, float)):
                raise ValueError(f"must be {self.allowed()}")
            value = float(value)
        elif t is str:
            if not isinstance(value, str):
                raise ValueError(f"must be {self.allowed()}")
        if self.choices is not None and value not in self.choices:
            raise ValueError(f"must be {self.allowed()}")
        if t in (int, float):
            too_low = self.min is not None and (value <= self.min if self.min_open else value < self.min)
            too_high = self.max is not None and value > self.max
            if too_low or too_high:
                raise ValueError(f"is out of range; allowed: {self.allowed()}")
        return value


@dataclass
class Strategy:
    """A named decoding method: its kind, its own keys, and a factory for its rule/loop object."""

    name: str
    kind: str
    summary: str
    keys: tuple[Key, ...] = ()
    factory: Callable[..., Any] | None = None
    conflicts: tuple[tuple[str, Any, str], ...] = field(default_factory=tuple)  # (key, value, why)
    families: tuple[str, ...] = ()  # model families it works with (a model's own sampler); empty: all


STRATEGIES: dict[str, Strategy] = {}
COMMON: dict[str, dict[str, Key]] = {kind: {} for kind in KINDS}
SHARED: dict[str, Key] = {}  # keys every kind has (sampling, length)


def register_strategy(strategy: Strategy) -> Strategy:
    if strategy.kind not in KINDS:
        raise ValueError(strategy.kind)
    STRATEGIES[strategy.name] = strategy
    return strategy


def register_keys(kind: str | None, keys: list[Key] | tuple[Key, ...]) -> None:
    """Keys that apply to every strategy of ``kind`` (or of every kind when None)."""
    target = SHARED if kind is None else COMMON[kind]
    for key in keys:
        target[key.name] = key


def keys_for(strategy: str) -> dict[str, Key]:
    """All keys a profile using ``strategy`` may set, by name."""
    s = STRATEGIES[strategy]
    out = dict(SHARED)
    out.update(COMMON[s.kind])
    out.update({k.name: k for k in s.keys})
    return out


def suggest(name: str, options: list[str]) -> str:
    close = difflib.get_close_matches(name, options, n=1)
    return f" (did you mean {close[0]!r}?)" if close else ""
