"""Decoding: ``run(model, prompt_ids, settings)`` returns an iterator of events.

Importing this package registers every strategy and its keys.
"""

from __future__ import annotations

import random
from typing import Any, Iterator

import torch

from ..errors import DlmError
from . import ar  # noqa: F401  (the autoregressive strategies: ar, speculative, lookup)
from . import common  # noqa: F401  (registers the shared keys)
from . import gemma_native  # noqa: F401  (DiffusionGemma's own sampler)
from .events import Done, Event, Start, Step  # noqa: F401
from .keys import STRATEGIES
from .rules import adablock, baseline, credit, edit, entropy, freedave, localleap, prophet, s2d2, threshold  # noqa: F401,E501


def resolve_seed(settings: Any) -> int:
    """The run's seed: the one asked for, or a fresh one written back so --json can report it."""
    if settings.seed is None:
        settings.seed = random.SystemRandom().randrange(2**31)
    return settings.seed


def make_generator(device: torch.device, seed: int) -> torch.Generator:
    gen = torch.Generator(device=device)
    gen.manual_seed(seed)
    return gen


def run(model: Any, prompt_ids: list[int], settings: Any, *, draft: Any = None) -> Iterator[Event]:
    """Decode with the strategy named in ``settings``; the model's kind must match the strategy's."""
    strategy = STRATEGIES[settings.strategy]
    if strategy.kind != model.kind:
        have = "a diffusion LLM" if model.kind == "diffusion" else "an autoregressive LM"
        want = "a diffusion LLM" if strategy.kind == "diffusion" else "an autoregressive (causal) LM"
        fits = sorted(n for n, s in STRATEGIES.items() if s.kind == model.kind)
        hint = ("; for input-guided decoding of a dLLM use -p speedy-lookup (or --set lookup=true)"
                if strategy.name == "lookup" else "")
        raise DlmError(
            f"strategy {strategy.name!r} needs {want}, but {model.info.name} is {have}; "
            f"use a profile whose strategy is one of: {', '.join(fits)}{hint}"
        )
    if strategy.families and model.info.family not in strategy.families:
        raise DlmError(f"strategy {strategy.name!r} works only with {' or '.join(strategy.families)} models, but "
                       f"{model.info.name} is a {model.info.family} model; pick another strategy (e.g. -p speedy)")
    seed = resolve_seed(settings)
    if strategy.kind == "diffusion":
        from .diffusion import decode

        generator = make_generator(model.device, seed)
        rule = strategy.factory(settings)
        loop = getattr(rule, "loop", None)  # a method with its own loop (FreeDave's draft-and-verify)
        if loop is not None:
            return loop(model, prompt_ids, generator)
        return decode(model, prompt_ids, settings, rule, generator)
    if strategy.factory is None:
        raise DlmError(f"strategy {strategy.name!r} is not available yet")
    return strategy.factory(model, prompt_ids, settings, draft=draft, seed=seed)
