"""Profiles: TOML files that name a strategy and set its keys, validated strictly.

Precedence, highest first: CLI flags, then ``--set KEY=VALUE``, then the profile file, then the
model's defaults (:func:`dlm_cli.models.resolve.model_defaults`), then the declared defaults. Profiles are looked up by name in the user's config directory
(``$XDG_CONFIG_HOME/dlm/profiles``, default ``~/.config/dlm/profiles``), then among the built-in
ones; a name ending in ``.toml`` or containing a path separator is a file path.
"""

from __future__ import annotations

import os
import sys
from dataclasses import dataclass
from importlib import resources
from pathlib import Path
from typing import Any

if sys.version_info >= (3, 11):
    import tomllib
else:  # pragma: no cover
    import tomli as tomllib

from .errors import UsageError, warning

# Keys about the profile itself, not about decoding.
META = {
    "strategy": "the decoding method (see `dlm profiles list`)",
    "description": "one line shown by `dlm profiles list`",
    "model": "the model used when -m/--model is not given",
    "draft": "the draft model used when --draft is not given (speculative strategies)",
}


# The profile used when -p is not given, by what the model is (and whether a --draft is given).
DEFAULTS = {"speedy": "default for a dLLM", "ar": "default for an AR model", "speculative": "default for an AR "
            "model with --draft"}


def default_for(kind: str, draft: bool, preferred: str | None = None) -> str:
    """The profile a run takes when none is named: the model's own (a distilled delta's decoding), else by kind."""
    if preferred:
        return preferred
    if kind == "diffusion":
        return "speedy"
    return "speculative" if draft else "ar"


@dataclass(frozen=True)
class ProfileRef:
    name: str
    path: Path
    origin: str  # "built-in", "user" or "file"


def user_dir() -> Path:
    base = os.environ.get("XDG_CONFIG_HOME") or os.path.join(os.path.expanduser("~"), ".config")
    return Path(base) / "dlm" / "profiles"


def builtin_dir() -> Path:
    # Run from a source checkout (python -m dlm_cli in a git worktree), the checkout's own profiles/
    # win over whatever an editable install elsewhere maps dlm_cli.builtin_profiles to.
    here = Path(__file__).resolve().parent.parent
    if (here / "pyproject.toml").is_file() and (here / "profiles" / "__init__.py").is_file():
        return here / "profiles"
    return Path(str(resources.files("dlm_cli.builtin_profiles")))


def available() -> dict[str, ProfileRef]:
    """Every profile by name; a user profile shadows a built-in one of the same name."""
    out: dict[str, ProfileRef] = {}
    for origin, folder in (("built-in", builtin_dir()), ("user", user_dir())):
        if folder.is_dir():
            for path in sorted(folder.glob("*.toml")):
                out[path.stem] = ProfileRef(path.stem, path, origin)
    return out


def find(name: str) -> ProfileRef:
    """The profile a ``-p`` argument names; raises UsageError with the known names when there is none."""
    if name.endswith(".toml") or os.sep in name or "/" in name:
        path = Path(name).expanduser()
        if path.is_dir():
            raise UsageError(f"profile {name} is a directory; give a .toml file in it, or a profile name")
        if not path.is_file():
            raise UsageError(f"profile file {name} does not exist; give an existing .toml file or a profile name")
        return ProfileRef(path.stem, path, "file")
    known = available()
    if name not in known:
        from .decode.keys import suggest

        raise UsageError(
            f"unknown profile {name!r}{suggest(name, list(known))}; known profiles: {', '.join(sorted(known))} "
            f"(or put {name}.toml in {user_dir()})"
        )
    return known[name]


def read(ref: ProfileRef) -> dict[str, Any]:
    try:
        text = ref.path.read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as exc:
        raise UsageError(f"cannot read profile {ref.path}: {exc}") from None
    try:
        data = tomllib.loads(text)
    except tomllib.TOMLDecodeError as exc:
        raise UsageError(f"profile {ref.path} is not valid TOML: {exc}; fix the file's syntax") from None
    return data


class Settings:
    """Validated settings with attribute access; ``sources`` says where each value came from."""

    def __init__(self, profile: str, values: dict[str, Any], sources: dict[str, str], meta: dict[str, Any]) -> None:
        self.__dict__["profile"] = profile
        self.__dict__["values"] = values
        self.__dict__["sources"] = sources
        self.__dict__["meta"] = meta

    def __getattr__(self, name: str) -> Any:
        values = self.__dict__["values"]
        if name in values:
            return values[name]
        raise AttributeError(name)

    def __setattr__(self, name: str, value: Any) -> None:
        self.__dict__["values"][name] = value

    @property
    def strategy(self) -> str:
        return self.meta["strategy"]

    def as_dict(self) -> dict[str, Any]:
        return {"strategy": self.strategy, **self.values}

    def fill(self, defaults: dict[str, Any], where: str) -> None:
        """Take the model's ``defaults`` for the keys still at their declared default (source ``model``)."""
        from .decode.keys import keys_for

        keys = keys_for(self.strategy)
        for name, value in defaults.items():
            if name in keys and self.sources.get(name, "default") == "default":
                self.values[name] = keys[name].check(value)
                self.sources[name] = "model"
        check_combination(self, where)

    def frozen(self) -> Any:
        """The run's typed, frozen settings (a dataclass generated from the strategy's declared keys)."""
        from .decode.keys import frozen

        return frozen(self.strategy, self.values)


def parse_set(item: str) -> tuple[str, Any]:
    """``KEY=VALUE`` with VALUE read as a TOML value, or as a bare string when it is not one."""
    if "=" not in item:
        raise UsageError(f"--set {item!r} must look like KEY=VALUE, e.g. --set threshold=0.8")
    key, raw = item.split("=", 1)
    key, raw = key.strip(), raw.strip()
    if not key:
        raise UsageError(f"--set {item!r} has no key before '='")
    try:
        value = tomllib.loads(f"v = {raw}")["v"]
    except tomllib.TOMLDecodeError:
        value = raw
    return key, value


def build(
    data: dict[str, Any],
    where: str,
    *,
    profile: str,
    sets: list[str] | tuple[str, ...] = (),
    flags: dict[str, Any] | None = None,
) -> Settings:
    """Merge defaults < profile ``data`` < ``--set`` items < CLI ``flags`` and validate every value."""
    from .decode import declared  # noqa: F401  (registers every strategy and key; imports no torch)
    from .decode.keys import STRATEGIES, keys_for, renamed, suggest

    flags = {k: v for k, v in (flags or {}).items() if v is not None}
    overrides = [parse_set(item) for item in sets]
    meta: dict[str, Any] = {}
    strategy = data.get("strategy")
    for key, value in overrides:
        if key == "strategy":
            strategy = value
    if strategy is None:
        raise UsageError(f"{where}: no 'strategy' key; add e.g. strategy = \"threshold\" "
                         f"(one of: {', '.join(sorted(STRATEGIES))})")
    if not isinstance(strategy, str) or strategy not in STRATEGIES:
        raise UsageError(f"{where}: strategy = {strategy!r} is unknown{suggest(str(strategy), list(STRATEGIES))}; "
                         f"allowed: {', '.join(sorted(STRATEGIES))}")
    meta["strategy"] = strategy
    keys = keys_for(strategy)
    old_names = renamed(strategy)
    allowed = sorted(keys) + sorted(META)
    values = {name: key.default for name, key in keys.items()}
    sources = {name: "default" for name in keys}
    changed_strategy = strategy != data.get("strategy")

    def put(name: str, value: Any, origin: str, label: str) -> None:
        if name in META:
            if name == "strategy":
                return
            if not isinstance(value, str):
                raise UsageError(f"{label}: {name} = {value!r} must be a string")
            meta[name] = value
            return
        if name in old_names and name not in keys:
            new = old_names[name]
            warning(f"{label}: key {name!r} is now called {new!r}; the old name will stop working in the next "
                 f"release, so write {new} = {value!r}")
            name = new
        if name not in keys:
            if origin == "profile" and changed_strategy:
                return  # the profile's keys for its own strategy do not carry over to another one
            raise UsageError(f"{label}: unknown key {name!r} for strategy {strategy!r}{suggest(name, allowed)}; "
                             f"allowed keys: {', '.join(allowed)}")
        try:
            values[name] = keys[name].check(value)
        except ValueError as exc:
            raise UsageError(f"{label}: {name} = {value!r} {exc}") from None
        sources[name] = origin

    for name, value in data.items():
        if isinstance(value, dict):
            raise UsageError(f"{where}: [{name}] tables are not used; write the keys at the top level")
        put(name, value, "profile", where)
    for name, value in overrides:
        put(name, value, "--set", f"--set {name}={value}")
    for name, value in flags.items():
        put(name, value, "flag", f"--{name.replace('_', '-')}")
    settings = Settings(profile, values, sources, meta)
    check_combination(settings, where)
    return settings


def check_early(sets: list[str] | tuple[str, ...], flags: dict[str, Any] | None, profile: str | None) -> None:
    """Refuse, before a model loads, the ``--set`` items and flags that no strategy takes (unknown keys,
    values out of every declared range); with ``profile`` (the one the model will get), everything
    :func:`load` checks, conflicts included. Reads the declarations alone: no torch is imported."""
    from .decode import declared  # noqa: F401  (registers every strategy and key)
    from .decode.keys import check_anywhere

    if profile is not None:
        load(profile, sets=sets, flags=flags)
        return
    items = [(k, v, f"--set {k}={v}") for k, v in map(parse_set, sets)]
    items += [(k, v, f"--{k.replace('_', '-')}") for k, v in (flags or {}).items() if v is not None]
    for name, value, label in items:
        problem = check_anywhere(name, value, label, META)
        if problem:
            raise UsageError(problem)


def check_combination(settings: Settings, where: str) -> None:
    """Reject settings that cannot work together, with the reason (declared with the keys and strategies)."""
    from .decode.keys import conflict

    problem = conflict(settings.strategy, settings.values)
    if problem:
        raise UsageError(f"{where}: {problem}")


def load(
    name: str,
    *,
    sets: list[str] | tuple[str, ...] = (),
    flags: dict[str, Any] | None = None,
) -> Settings:
    """Find, read and validate profile ``name`` with the user's overrides."""
    ref = find(name)
    return build(read(ref), str(ref.path), profile=ref.name, sets=sets, flags=flags)
