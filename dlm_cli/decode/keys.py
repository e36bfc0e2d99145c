"""Declared settings keys, their conflicts, the strategy registry, and the typed settings of a run.

Every setting is declared once, as a :class:`Key` with its type, default and range; profile
validation, ``--set`` parsing, ``dlm profiles show`` and the strategy and key tables of
docs/strategies.md (written by ``python -m dlm_cli.doctables``) all derive from these declarations.
A strategy registers its keys with :func:`register_strategy`; a feature that composes with every
strategy of a kind (EoTP, caches, lookup, ...) registers with :func:`register_keys`; the calls are
in :mod:`dlm_cli.decode.declared`, which imports no torch. Settings that cannot go together are
declared the same way, as data: a value a key refuses for a strategy (:attr:`Key.refuse`), or a
:class:`Conflict` on a strategy or a kind. :func:`frozen` turns validated settings into the frozen dataclass a decode loop reads.
"""

from __future__ import annotations

import difflib
import importlib
import math
from dataclasses import dataclass, field, make_dataclass
from typing import Any, Callable, Mapping, Protocol

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
    refuse: tuple[tuple[Any, str], ...] = ()  # (value, why): allowed in general, refused by this strategy
    old: tuple[str, ...] = ()  # former names, still read (with a warning that gives this name)

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
            if not math.isfinite(value):  # nan passes every comparison, and --json cannot carry it
                raise ValueError(f"is not a finite number; allowed: {self.allowed()}")
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


@dataclass(frozen=True)
class Conflict:
    """Values that cannot go together: when ``test(values)`` holds, the settings are refused with ``why``.

    ``why`` may be a function of the values, for a message that quotes them.
    """

    test: Callable[[Mapping[str, Any]], bool]
    why: str | Callable[[Mapping[str, Any]], str]

    def message(self, values: Mapping[str, Any]) -> str:
        return self.why(values) if callable(self.why) else self.why


def no_cache(method: str, why: str) -> Conflict:
    """``method`` runs its forwards without a KV cache."""
    return Conflict(lambda v: v.get("cache", "none") != "none",
                    lambda v: f"strategy {method!r} cannot be used with cache = {v['cache']!r}: {why}; "
                              "set cache = \"none\"")


def at_most(lo: str, hi: str) -> Conflict:
    """``lo ≤ hi``."""
    return Conflict(lambda v: v[lo] > v[hi], lambda v: f"{lo} = {v[lo]} is above {hi} = {v[hi]}; lower {lo}")


def own_loop(method: str) -> Conflict:
    """``lookup`` adds commits to the block loop, which ``method`` does not run."""
    return Conflict(lambda v: bool(v.get("lookup")),
                    f"lookup = true adds input-guided commits to the diffusion decode loop, but strategy "
                    f"{method!r} runs its own draft-and-verify loop; drop lookup or pick another strategy")


@dataclass
class Strategy:
    """A named decoding method: its kind, its own keys, its loop, and a factory for the loop's part.

    ``loop`` names the decode loop (:mod:`dlm_cli.decode.loops`) that runs it: ``"blocks"`` (the
    dLLM block driver, with the commit rule ``factory(settings)`` returns), ``"freedave"``,
    ``"s2d2"``, ``"gemma-native"``, ``"window"``, or ``"ar"`` (the AR loop, with the draft source
    ``factory(model, settings, draft)`` returns).

    Strategies are declared in :mod:`dlm_cli.decode.declared`, which imports no torch (``dlm profiles
    show`` and the early checks read the declarations alone): ``impl`` names the factory as
    ``"module:attribute"``, imported on first use by :attr:`factory`. (A callable is taken as it is.)
    """

    name: str
    kind: str
    summary: str
    keys: tuple[Key, ...] = ()
    impl: str | Callable[..., Any] | None = None  # the factory: "module:attribute", imported when first used
    conflicts: tuple[Conflict, ...] = ()
    needs: tuple[str, ...] = ()  # what the run must offer (:mod:`dlm_cli.capabilities`): model capabilities, a draft
    loop: str = "blocks"
    drafts: bool = False  # it drafts and verifies: its Done counts drafted and accepted tokens
    hidden: bool = False  # it reads the target's hidden states from the verify forward: the run stays eager
    _factory: Callable[..., Any] | None = field(default=None, init=False, repr=False, compare=False)

    @property
    def factory(self) -> Callable[..., Any] | None:
        """The factory of the loop's part (a commit rule class, a draft source maker), or None; ``impl`` is
        imported the first time it is asked for."""
        if self._factory is None and self.impl is not None:
            self._factory = resolve(self.impl) if isinstance(self.impl, str) else self.impl
        return self._factory


def resolve(ref: str) -> Any:
    """The object ``"package.module:attribute"`` names (importing the module)."""
    module, _, name = ref.partition(":")
    if not name:
        raise ValueError(f"{ref!r} is not \"module:attribute\"")
    obj: Any = importlib.import_module(module)
    for part in name.split("."):
        obj = getattr(obj, part)
    return obj


STRATEGIES: dict[str, Strategy] = {}
COMMON: dict[str, dict[str, Key]] = {kind: {} for kind in KINDS}
SHARED: dict[str, Key] = {}  # keys every kind has (sampling, length)
KIND_CONFLICTS: dict[str, list[Conflict]] = {kind: [] for kind in KINDS}


def register_strategy(strategy: Strategy) -> Strategy:
    if strategy.kind not in KINDS:
        raise ValueError(strategy.kind)
    STRATEGIES[strategy.name] = strategy
    return strategy


def register_keys(kind: str | None, keys: list[Key] | tuple[Key, ...], conflicts: tuple[Conflict, ...] = ()) -> None:
    """Keys (and their conflicts) that apply to every strategy of ``kind`` (or of every kind when None)."""
    target = SHARED if kind is None else COMMON[kind]
    for key in keys:
        target[key.name] = key
    for kind_ in ([kind] if kind else KINDS):
        KIND_CONFLICTS[kind_].extend(conflicts)


def keys_for(strategy: str) -> dict[str, Key]:
    """All keys a profile using ``strategy`` may set, by name."""
    s = STRATEGIES[strategy]
    out = dict(SHARED)
    out.update(COMMON[s.kind])
    out.update({k.name: k for k in s.keys})
    return out


def renamed(strategy: str) -> dict[str, str]:
    """Former key names still read for ``strategy``: old name -> current name."""
    return {old: k.name for k in keys_for(strategy).values() for old in k.old}


def conflict(strategy: str, values: Mapping[str, Any]) -> str | None:
    """Why these values cannot go together for ``strategy``, or None when they can."""
    s = STRATEGIES[strategy]
    for key in keys_for(strategy).values():
        for value, why in key.refuse:
            if values.get(key.name) == value:
                return f"strategy {strategy!r} cannot be used with {key.name} = {value!r}: {why}"
    for c in (*s.conflicts, *KIND_CONFLICTS[s.kind]):
        if c.test(values):
            return c.message(values)
    return None


_TYPES: dict[str, type] = {}


def settings_type(strategy: str) -> type:
    """The frozen dataclass of a run of ``strategy``: one typed field per declared key, plus ``strategy``."""
    if strategy not in _TYPES:
        fields = [("strategy", str)] + [(k.name, k.type if not k.optional else k.type | None, field(default=k.default))
                                         for k in keys_for(strategy).values()]
        fields[0] = ("strategy", str, field(default=strategy))
        name = "".join(p.capitalize() for p in strategy.replace("-", "_").split("_")) + "Settings"
        _TYPES[strategy] = make_dataclass(name, fields, frozen=True, slots=True)
    return _TYPES[strategy]


class RunSettings(Protocol):
    """The frozen settings a decode loop reads (:func:`frozen`): the keys every strategy has, and its own
    (typed per strategy by :func:`settings_type`; read here as attributes)."""

    strategy: str
    max_new_tokens: int
    temperature: float
    top_k: int
    top_p: float
    seed: int | None

    def __getattr__(self, name: str) -> Any: ...


def frozen(strategy: str, values: Mapping[str, Any]) -> RunSettings:
    """Validated ``values`` as the run's frozen settings (every key present; unknown names ignored)."""
    cls = settings_type(strategy)
    names = keys_for(strategy)
    return cls(**{k: v for k, v in values.items() if k in names})


def every_key() -> dict[str, list[Key]]:
    """Every declared key by name, over all strategies (a name may be declared with different ranges)."""
    out: dict[str, list[Key]] = {}
    for strategy in STRATEGIES:
        for name, key in keys_for(strategy).items():
            if key not in out.setdefault(name, []):
                out[name].append(key)
            for old in key.old:
                out.setdefault(old, [])
    return out


def check_anywhere(name: str, value: Any, label: str, meta: Mapping[str, str]) -> str | None:
    """Why ``name = value`` fits no strategy at all (an unknown key, a value no declaration allows), or None.

    Checked before a model loads, when the strategy is not known yet: the full check follows it.
    """
    if name in meta:
        return None
    keys = every_key()
    if name not in keys:
        return f"{label}: unknown key {name!r}{suggest(name, sorted(keys))}; `dlm profiles show NAME` lists a " \
               "profile's keys"
    problems = []
    for key in keys[name]:
        try:
            key.check(value)
            return None
        except ValueError as exc:
            problems.append(str(exc))
    return f"{label}: {name} = {value!r} {problems[0]}" if problems else None


def suggest(name: str, options: list[str]) -> str:
    close = difflib.get_close_matches(name, options, n=1)
    return f" (did you mean {close[0]!r}?)" if close else ""
