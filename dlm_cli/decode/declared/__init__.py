"""Every strategy and every settings key, declared: importing this package registers them all.

The declarations are data (:mod:`..keys`: :class:`~..keys.Key`, :class:`~..keys.Strategy`,
:class:`~..keys.Conflict`) and import no torch, so that profile validation, ``dlm profiles show`` and
the checks made before a model loads stay fast. A strategy names its implementation as a string
(``Strategy.impl``, ``"module:attribute"``), imported the first time a run needs it.

One module per implementation module: the keys of ``rules/threshold.py`` are declared in
``threshold.py`` here, and an implementation that reads a key constant imports it from here. The
modules are imported in :data:`ORDER` (the order of the registry, of ``dlm profiles show``'s keys and of
the tables in docs/strategies.md), then any other module of the package in name order.
"""

from __future__ import annotations

import importlib
import pkgutil

ORDER = ("ar", "common", "repetition", "freedave", "gemma_native", "threshold", "s2d2", "baseline", "window",
         "adablock", "cad", "credit", "dparallel", "edit", "entropy", "ete", "learn2pd", "localleap", "prophet")

for _name in (*ORDER, *sorted(m.name for m in pkgutil.iter_modules(__path__) if m.name not in ORDER)):
    importlib.import_module(f"{__name__}.{_name}")
