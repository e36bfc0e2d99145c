"""Makes lm-eval's own ``lm_eval`` command know ``--model dlm`` (issue 15).

lm-eval 0.4 discovers models only in its registry, filled when ``lm_eval.models`` is imported, and
has no plugin entry points. dlm installs ``dlm-cli-lmeval.pth`` beside itself; at interpreter
start-up that file calls :func:`install`, which puts a one-shot import hook on ``sys.meta_path``:
when ``lm_eval.models`` is first imported (by ``lm_eval``, ``simple_evaluate`` or anything else),
the hook lets it load as usual and then registers ``dlm`` as a lazy placeholder pointing at
:class:`dlm_cli.evals.lmeval.DlmLM`. Nothing of lm-eval or dlm's decoder is imported before that,
so the start-up cost is this small module; a process that never imports lm-eval never triggers it.
"""

from __future__ import annotations

import importlib.abc
import importlib.machinery
import sys
from types import ModuleType
from typing import Optional, Sequence

NAME = "dlm"
TARGET = "dlm_cli.evals.lmeval:DlmLM"
WATCHED = "lm_eval.models"


def register() -> None:
    """Register ``dlm`` in lm-eval's model registry as a lazy placeholder (no-op when present)."""
    from lm_eval.api.registry import model_registry

    if NAME not in model_registry:
        model_registry.register(NAME, target=TARGET)


class _RegisterAfterImport(importlib.abc.MetaPathFinder):
    """Finds ``lm_eval.models`` through the other finders and registers dlm once it has run."""

    def find_spec(self, fullname: str, path: Optional[Sequence[str]],
                  target: Optional[ModuleType] = None) -> Optional[importlib.machinery.ModuleSpec]:
        if fullname != WATCHED:
            return None
        for finder in sys.meta_path:
            if finder is self or not hasattr(finder, "find_spec"):
                continue
            spec = finder.find_spec(fullname, path, target)
            if spec is not None:
                break
        else:
            return None
        loader = spec.loader
        if loader is None or not hasattr(loader, "exec_module"):
            return spec
        spec.loader = _Loader(loader)
        return spec


class _Loader(importlib.abc.Loader):
    def __init__(self, inner: importlib.abc.Loader) -> None:
        self.inner = inner

    def create_module(self, spec: importlib.machinery.ModuleSpec) -> Optional[ModuleType]:
        return self.inner.create_module(spec)

    def exec_module(self, module: ModuleType) -> None:
        # The module's own loader stays the real one (resources, reloads), only this run goes through us.
        module.__loader__ = self.inner
        if module.__spec__ is not None:
            module.__spec__.loader = self.inner
        self.inner.exec_module(module)
        register()


def install() -> None:
    """Put the hook on ``sys.meta_path`` (once); register at once if lm-eval's models are loaded already."""
    if WATCHED in sys.modules:
        register()
        return
    if not any(isinstance(f, _RegisterAfterImport) for f in sys.meta_path):
        sys.meta_path.insert(0, _RegisterAfterImport())
