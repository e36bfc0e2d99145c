"""Load a model: resolve its spec (:mod:`.resolve`), read its config, and hand it to the family that claims it.

Families are detected from ``config.json`` (:mod:`.families`); each family module supplies a
transformers ``PreTrainedModel`` class, its config, the weight-name mapping where a published
layout differs and the token conventions; :mod:`.files` holds the checks every loader makes (the
pickle gate, sizes, memory) and the one ``from_pretrained`` call, so a model is built on the meta
device and filled once, never needing twice its size in memory.
"""

from __future__ import annotations

from dataclasses import replace
from pathlib import Path
from typing import Any

from ..errors import DlmError
from .files import LoadOptions, read_config  # noqa: F401  (re-exported: the loading API)
from .resolve import DEMO_DIR, EMBEDDED, REAL_DEFAULT, TOY_DEFAULT, default_model, embedded_installed  # noqa: F401
from .resolve import resolve_path


def load(spec: str | None, opts: LoadOptions | None = None, *, role: str = "model") -> Any:
    """Load the model ``spec`` names (default: the embedded demo dLLM)."""
    from .families import FAMILIES
    from .speed import quiet_optional_libraries

    quiet_optional_libraries()
    from .sizes import check_values

    opts = replace(opts) if opts is not None else LoadOptions()  # a spec's @revision is this load's alone
    if spec is not None and "@" in spec and not Path(spec).exists():
        spec, opts.revision = spec.split("@", 1)
    name, path = resolve_path(spec or default_model()[0], opts)
    cfg = read_config(path)
    check_values(cfg, str(path))  # before a family translates a single size
    for family in FAMILIES:
        if family.detect(cfg):
            return dtype_choice(family.load(path, cfg, opts, name), opts)
    known = ", ".join(f.name for f in FAMILIES)
    mt = cfg.get("model_type") or "?"
    archs = ",".join(cfg.get("architectures") or []) or "?"
    what = f"{name}: unknown model family (model_type={mt!r}, architectures={archs}); dlm supports: {known}"
    if cfg.get("auto_map"):
        if opts.trust_remote_code:
            from .remote import load_remote

            return dtype_choice(load_remote(path, cfg, opts, name), opts)
        raise DlmError(f"{what}. The repository ships its own modeling code: --trust-remote-code runs it "
                       "(arbitrary Python from the repository, with your permissions), decoding without a cache")
    raise DlmError(what)


def dtype_choice(model: Any, opts: LoadOptions) -> Any:
    """Note on ``model.info`` how its dtype was chosen (``--json`` and the stats line name it)."""
    import torch

    from .files import native_bf16

    if opts.dtype != "auto":
        model.info.dtype_choice = "--dtype"
    else:
        why = native_bf16(torch.device(model.info.device)) if model.info.dtype == "bfloat16" else None
        model.info.dtype_choice = f"auto: {why}" if why else "auto: no native bfloat16"
    return model
