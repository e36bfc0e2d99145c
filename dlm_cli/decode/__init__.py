"""Decoding: ``run(model, prompt_ids, settings)`` returns an iterator of events.

Reading order: :func:`run` picks the strategy's loop (:mod:`.loops`), which is handed the
strategy's part (a commit rule from :mod:`.rules` for the block driver, a draft source from
:mod:`.drafts` for the AR loop) and the run's frozen settings (:func:`.keys.frozen`). Importing
this package registers every strategy and its keys (:mod:`.declared`) without importing torch: the
loops, rules and draft sources are imported when a run first needs them.
"""

from __future__ import annotations

import importlib
import pkgutil
import random
from typing import TYPE_CHECKING, Any, Callable, Iterator

from ..capabilities import describe, missing
from ..errors import UsageError
from . import declared  # noqa: F401  (registers every strategy and its keys; imports no torch)
from .events import Clock, Done, Event, Start, Step, timed  # noqa: F401
from .keys import STRATEGIES

if TYPE_CHECKING:
    import torch

    from .keys import RunSettings
    from ..models.protocols import Model

_LOOPS: dict[str, Callable[..., Iterator[Event]]] = {}


def loops_by_name() -> dict[str, Callable[..., Iterator[Event]]]:
    """The decode loops, by the name a Strategy's ``loop`` gives (the module's, with - for _): every module
    of :mod:`.loops`, imported in name order on first use (they import torch), so adding a loop is adding
    its module."""
    if not _LOOPS:
        from . import loops as package

        names = sorted(m.name for m in pkgutil.iter_modules(package.__path__))
        _LOOPS.update({name.replace("_", "-"): importlib.import_module(f"{package.__name__}.{name}").run
                       for name in names})
    return _LOOPS


def __getattr__(name: str) -> Any:
    if name == "LOOPS":
        return loops_by_name()
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


def resolve_seed(settings: RunSettings) -> int:
    """The run's seed: the one asked for, or a fresh one written back so --json can report it."""
    if settings.seed is None:
        settings.seed = random.SystemRandom().randrange(2**31)
    return settings.seed


def make_generator(device: torch.device, seed: int) -> torch.Generator:
    import torch

    gen = torch.Generator(device=device)
    gen.manual_seed(seed)
    return gen


def check_fits(strategy: Any, model: Model) -> None:
    """The model's kind must be the strategy's, and it must offer every capability the strategy needs."""
    if strategy.kind != model.kind:
        have = "a diffusion LLM" if model.kind == "diffusion" else "an autoregressive LM"
        want = "a diffusion LLM" if strategy.kind == "diffusion" else "an autoregressive (causal) LM"
        fits = sorted(n for n, s in STRATEGIES.items() if s.kind == model.kind)
        hint = ("; for input-guided decoding of a dLLM use -p speedy-lookup (or --set lookup=true)"
                if strategy.name == "lookup" else "")
        raise UsageError(
            f"strategy {strategy.name!r} needs {want}, but {model.info.name} is {have}; "
            f"use a profile whose strategy is one of: {', '.join(fits)}{hint}"
        )
    lacking = missing(strategy.needs, model.capabilities)
    if lacking:
        fits = sorted(n for n, s in STRATEGIES.items() if s.kind == model.kind and not missing(s.needs, model.capabilities))
        raise UsageError(f"strategy {strategy.name!r} needs {describe(lacking)}; {model.info.name} is not one; "
                         f"pick another strategy ({', '.join(fits)})")


def run(model: Model, prompt_ids: list[int], settings: RunSettings, *, draft: Any = None) -> Iterator[Event]:
    """Decode with the strategy named in ``settings`` (a :class:`~dlm_cli.profiles.Settings`)."""
    import torch

    from .rules.base import NeedsModel

    strategy = STRATEGIES[settings.strategy]
    check_fits(strategy, model)
    resolve_seed(settings)
    cfg = settings.frozen()
    warmup = speed_up(model, draft, cfg, len(prompt_ids))
    generator = make_generator(model.device, cfg.seed)
    notes: list[str] = []
    if strategy.kind == "diffusion":
        part = strategy.factory(cfg) if strategy.factory is not None else None
        if isinstance(part, NeedsModel):
            notes = part.bind(model)
    else:
        part = strategy.factory(model, cfg, draft)
    clock = Clock(cpu=torch.device(model.device).type == "cpu")
    loop = "pearl" if strategy.loop == "ar" and getattr(cfg, "pearl", False) else strategy.loop  # speculative's PEARL schedule
    events = timed(loops_by_name()[loop](model, prompt_ids, cfg, part, generator, clock), clock)
    if notes:
        events = with_notes(events, notes)
    return with_warmup(events, warmup) if warmup else events


def speed_up(model: Model, draft: Any, cfg: RunSettings, prompt_tokens: int) -> float:
    """Quantize and compile the run's models as ``cfg`` says (:mod:`..models.speed`); the warm-up seconds.

    Runs before the decode clock starts, so the warm-up is reported apart (``compile_seconds``).
    """
    from ..models.speed import prepare

    length = prompt_tokens + cfg.max_new_tokens + 1
    widths = [1]
    if cfg.strategy != "ar" and getattr(cfg, "draft_length", None):
        widths.append(1 + cfg.draft_length)
        if getattr(cfg, "adaptive_draft", False):  # the draft length grows after full accepts
            widths.append(2 * (1 + cfg.draft_length))
    # A token tree's forwards carry their own 4-D masks over a dynamic cache: such runs stay eager.
    # So do the runs that read the target's hidden states (a learned drafter, Mirror-SD's early exit),
    # which the static step does not return.
    static = ((getattr(cfg, "tree_width", 1) or 1) <= 1 and getattr(draft, "kind", None) != "drafter"
              and not STRATEGIES[cfg.strategy].hidden)
    seconds = prepare(model, cfg, length, widths=tuple(widths), keep_float=True, static=static)
    if draft is not None and getattr(draft, "kind", None) == "autoregressive":
        seconds += prepare(draft, cfg, length, widths=(1, 2), keep_float=True, static=static)
    return seconds


def with_notes(events: Iterator[Event], notes: list[str]) -> Iterator[Event]:
    for ev in events:
        if isinstance(ev, Start):
            ev.notes.extend(notes)
        yield ev


def with_warmup(events: Iterator[Event], seconds: float) -> Iterator[Event]:
    for ev in events:
        if isinstance(ev, Done):
            ev.compile_seconds = seconds
        yield ev
