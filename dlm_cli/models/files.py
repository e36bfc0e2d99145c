"""What every family loader reads and checks: device and dtype, config, weight files, tokenizer; then
``from_pretrained`` and its loading report.

Family modules (:mod:`.families`) build on these; :mod:`.loading` resolves a spec and picks the family.
"""

from __future__ import annotations

import os
import pickle
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Iterator

import torch

from ..errors import DlmError, UsageError
from .base import ModelInfo
from .options import LoadOptions  # noqa: F401  (re-exported: the loading API)


def pick_device(name: str) -> torch.device:
    if name == "auto":
        if torch.cuda.is_available():
            return torch.device("cuda")
        if getattr(torch.backends, "mps", None) and torch.backends.mps.is_available():
            return torch.device("mps")
        return torch.device("cpu")
    if name == "cuda" and not torch.cuda.is_available():
        raise UsageError("--device cuda was asked for but no CUDA GPU is available; use --device cpu or auto")
    if name == "mps" and not (getattr(torch.backends, "mps", None) and torch.backends.mps.is_available()):
        raise UsageError("--device mps was asked for but MPS is not available; use --device cpu or auto")
    return torch.device(name)


NATIVE_BF16_FLAGS = ("amx_bf16", "avx512_bf16")  # /proc/cpuinfo flags of x86 CPUs that multiply bfloat16


def native_bf16(device: torch.device) -> str | None:
    """Why ``device`` multiplies bfloat16 natively (``"cuda"``, a CPU flag), or None when it does not.

    A CPU qualifies with AVX-512 BF16 or AMX (its /proc/cpuinfo flags) while torch runs its AVX-512
    kernels (``torch.backends.cpu.get_cpu_capability()``); elsewhere bfloat16 is converted to float32
    around every product and is slower than float32. ``DLM_NATIVE_BF16=0`` (or ``1``) overrides the
    test: the test suite sets 0, so its results do not depend on the machine's CPU.
    """
    override = os.environ.get("DLM_NATIVE_BF16")
    if override is not None:
        return "DLM_NATIVE_BF16=1" if override.strip() not in ("", "0", "false", "no") else None
    if device.type == "cuda":
        return "cuda"
    if device.type != "cpu" or not torch.backends.cpu.get_cpu_capability().startswith("AVX512"):
        return None
    flags = cpu_flags()
    return next((f for f in NATIVE_BF16_FLAGS if f in flags), None)


def cpu_flags() -> set[str]:
    """The CPU's feature flags from /proc/cpuinfo (empty where there is none: macOS, Windows)."""
    try:
        text = Path("/proc/cpuinfo").read_text(errors="replace")
    except OSError:
        return set()
    return set(next((line.split(":", 1)[1].split() for line in text.splitlines() if line.startswith("flags")), []))


def pick_dtype(name: str, device: torch.device) -> torch.dtype:
    """``--dtype``: ``auto`` is bfloat16 where the device multiplies it natively (:func:`native_bf16`), else float32."""
    if name == "auto":
        return torch.bfloat16 if native_bf16(device) else torch.float32
    dtype = {"bfloat16": torch.bfloat16, "float16": torch.float16, "float32": torch.float32}[name]
    if dtype == torch.float16 and device.type == "cpu":
        raise UsageError("--dtype float16 is not supported on the CPU; use --dtype float32 or bfloat16")
    return dtype


def read_config(path: Path) -> dict[str, Any]:
    """``config.json`` of a model directory, after checking that no file the loaders read escapes it."""
    from .modeldir import check_dir, read_json

    cfg_path = path / "config.json"
    if not cfg_path.is_file():
        raise UsageError(f"{path} is not a model directory: it has no config.json")
    check_dir(path)
    return read_json(cfg_path, "re-download the model")


def weight_files(path: Path, allow_pickle: bool) -> list[Path]:
    """The checkpoint's weight files (:func:`dlm_cli.models.modeldir.weight_files`: pickle gate, inside the directory)."""
    from .modeldir import weight_files as files

    return files(path, allow_pickle)


@dataclass
class Prepared:
    """What a family loader knows before it builds anything: where, in which dtype, from which files."""

    device: torch.device
    dtype: torch.dtype
    files: list[Path]
    tokenizer: Any
    device_map: str | None = None  # "auto": accelerate spreads the layers over every GPU and the CPU


def prepare(path: Path, cfg: dict[str, Any], opts: LoadOptions, name: str, *, layers: bool = True,
            names: Callable[[dict[str, tuple[int, ...]] | None], None] | None = None,
            tokenizer: Callable[[Path], Any] | None = None) -> Prepared:
    """The checks every family loader makes first, in this order, before a weight is read.

    Device and dtype; the weight files (pickle gate, nothing outside the directory); ``names`` on
    the published tensor names and shapes (a family with its own layout refuses another's); no
    PEFT adapter for transformers to merge in behind these checks; the config's layer count against
    the weights (unless ``layers`` is False: remote code's layers may mean anything); the memory
    check; the tokenizer (``tokenizer`` replaces :func:`load_tokenizer`).
    """
    from .memory import check_fits, tensor_shapes
    from .sizes import check_config

    device = pick_device(opts.device)
    dtype = pick_dtype(opts.dtype, device)
    files = weight_files(path, opts.allow_pickle)
    shapes = tensor_shapes(files)
    if names is not None:
        names(shapes)
    if (path / "adapter_config.json").is_file():
        raise DlmError(f"{path} holds a PEFT adapter (adapter_config.json) beside its weights, which transformers "
                       "would merge into them only where peft is installed; move the adapter's files out of the "
                       "directory, or merge the adapter into the weights")
    if layers:
        check_config(cfg, shapes, str(path))
    check_fits(files, dtype, device, name, opts.device_map)
    return Prepared(device, dtype, files, (tokenizer or load_tokenizer)(path), opts.device_map)


def need_accelerate() -> None:
    import importlib.util

    if importlib.util.find_spec("accelerate") is None:
        raise DlmError("--device-map auto needs accelerate: pip install 'accelerate>=1.0'")


def pretrained_kwargs(prep: Prepared) -> dict[str, Any]:
    """``from_pretrained`` arguments: our dtype, our device (or accelerate's map), safetensors only.

    Pickle weights reach here only past the ``--allow-pickle`` gate; transformers then finds them by
    its own file names (``use_safetensors=None``).
    """
    if prep.device_map:
        need_accelerate()
    safe = all(f.suffix == ".safetensors" for f in prep.files)
    return {"dtype": prep.dtype, "use_safetensors": True if safe else None,
            "device_map": prep.device_map or (None if prep.device.type == "cpu" else prep.device)}


def pretrained(cls: Any, path: Path, prep: Prepared, name: str, *, what: str, other: str, strict: bool = False,
               **kwargs: Any) -> Any:
    """``cls.from_pretrained(path)`` in eval mode, its failures and its loading report as one line each.

    ``what`` names the model in the failure line ("a causal LM"); ``other`` ends the missing-weights
    line ("the checkpoint is incomplete or of another <other>"). A missing weight is always refused
    (transformers would initialise it at random and decode garbage), and so is a weight of another
    shape; ``strict`` also refuses weights the network has no place for (dlm's own networks).
    """
    kw = {**pretrained_kwargs(prep), "output_loading_info": True, "ignore_mismatched_sizes": True, **kwargs}
    try:
        with quiet_transformers():
            net, report = cls.from_pretrained(str(path), **kw)
    # Pickle weights (past --allow-pickle) fail with the unpickler's own errors, or EOFError when truncated.
    except (OSError, ValueError, KeyError, TypeError, RuntimeError, EOFError, pickle.UnpicklingError) as exc:
        first = str(exc).splitlines()[0] if str(exc) else ""
        raise DlmError(f"{name}: transformers could not load it as {what} ({type(exc).__name__}: {first}); "
                       "the checkpoint is incomplete or does not match its config.json") from None
    missing = sorted(report.get("missing_keys") or [])
    unexpected = sorted(report.get("unexpected_keys") or []) if strict else []
    mismatched = sorted(report.get("mismatched_keys") or [])
    if missing:
        raise DlmError(f"{path} lacks weights {', '.join(missing[:3])}{' ...' if len(missing) > 3 else ''}; "
                       f"the checkpoint is incomplete or of another {other}")
    if unexpected:
        raise DlmError(f"{path} has weights dlm does not expect ({', '.join(unexpected[:3])}); "
                       "the checkpoint is of another architecture")
    if mismatched:
        key, got, want = mismatched[0]
        raise DlmError(f"{path}: weight {key} has shape {tuple(got)} but config.json implies {tuple(want)}; "
                       "config and weights do not match")
    return net.eval()


@contextmanager
def quiet_transformers() -> Iterator[None]:
    """No transformers progress bars or info logs on stderr while it loads: the CLI owns the terminal."""
    from transformers.utils import logging as hf_logging

    level, bars = hf_logging.get_verbosity(), hf_logging.is_progress_bar_enabled()
    hf_logging.set_verbosity_error()
    hf_logging.disable_progress_bar()
    try:
        yield
    finally:
        hf_logging.set_verbosity(level)
        if bars:
            hf_logging.enable_progress_bar()


def load_tokenizer(path: Path, trust_remote_code: bool = False) -> Any:
    """The checkpoint's tokenizer, without running repository code unless ``trust_remote_code``.

    Some dLLM repositories name a tokenizer class of their own (Dream's ``DreamTokenizer``) that is
    a copy of Qwen2's byte-level BPE: its ``vocab.json`` and ``merges.txt`` load with transformers'
    ``Qwen2Tokenizer`` instead. ``trust_remote_code=False`` is always passed explicitly, or
    transformers would stop and ask on the terminal.
    """
    import warnings

    from huggingface_hub.errors import StrictDataclassError
    from transformers import AutoTokenizer
    from transformers.utils import logging as hf_logging

    # AutoTokenizer reads config.json and warns about model types it does not know (llada, Dream...)
    # and about their legacy keys: expected for the families dlm loads natively.
    level = hf_logging.get_verbosity()
    hf_logging.set_verbosity_error()
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            try:
                return AutoTokenizer.from_pretrained(str(path), trust_remote_code=trust_remote_code)
            except ValueError as exc:
                if trust_remote_code or "trust_remote_code" not in str(exc):
                    raise
                if (path / "vocab.json").is_file() and (path / "merges.txt").is_file():
                    from transformers import Qwen2Tokenizer

                    return Qwen2Tokenizer.from_pretrained(str(path))
                raise DlmError(f"the tokenizer of {path} is defined by code shipped with the model; rerun with "
                               "--trust-remote-code to run it (arbitrary Python, with your permissions)") from None
    except DlmError:
        raise
    # Hostile or broken tokenizer files fail inside transformers and tokenizers with any of these
    # (a tokenizer.json of the wrong shape: KeyError, TypeError; nested too deep: RecursionError).
    except (OSError, ValueError, LookupError, TypeError, AttributeError, RecursionError,
            StrictDataclassError) as exc:  # the last: config.json fails validation
        first = str(exc).splitlines()[0] if str(exc) else type(exc).__name__
        raise DlmError(f"cannot load the tokenizer of {path} ({first}); "
                       "the model directory needs tokenizer.json or the tokenizer's own files") from None
    finally:
        hf_logging.set_verbosity(level)


def eos_ids(cfg: dict[str, Any], tokenizer: Any, path: Path | None = None) -> tuple[int, ...]:
    """End-of-text ids: the config's, generation_config.json's (when ``path`` is given; chat models
    often end turns with a token config.json omits), the tokenizer's, and an end-of-turn token if
    the vocab has one."""
    ids: list[int] = []
    raws = [cfg.get("eos_token_id")]
    gen = path / "generation_config.json" if path is not None else None
    if gen is not None and gen.is_file():
        from .modeldir import read_json

        try:
            raws.append(read_json(gen, "").get("eos_token_id"))
        except DlmError:
            pass  # a broken generation config only loses these extra end ids
    for raw in raws:
        for v in raw if isinstance(raw, list) else [raw]:
            if isinstance(v, int):
                ids.append(v)
    if tokenizer.eos_token_id is not None:
        ids.append(tokenizer.eos_token_id)
    vocab = tokenizer.get_vocab()
    for tok in ("<|eot_id|>", "<|im_end|>", "<|endoftext|>", "<end_of_turn>"):
        if tok in vocab:
            ids.append(vocab[tok])
    seen: list[int] = []
    for i in ids:
        if i not in seen:
            seen.append(i)
    if not seen:
        raise DlmError("the model defines no end-of-text token (eos_token_id); add it to config.json")
    return tuple(seen)


def param_count(net: torch.nn.Module) -> int:
    return sum(p.numel() for p in net.parameters())


def model_info(name: str, family: str, path: Path, net: torch.nn.Module, tokenizer: Any) -> ModelInfo:
    p = next(net.parameters())
    return ModelInfo(name=name, family=family, path=str(path), parameters=param_count(net),
                     dtype=str(p.dtype).replace("torch.", ""), device=str(p.device),
                     chat_template=bool(getattr(tokenizer, "chat_template", None)))
