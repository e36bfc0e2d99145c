"""What every family loader reads and checks: device and dtype, config, weight files, tensors, tokenizer.

Family modules (:mod:`.families`) build on these; :mod:`.loading` resolves a spec and picks the family.
"""

from __future__ import annotations

import pickle
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Iterator

import torch

from ..errors import DlmError, UsageError
from .base import ModelInfo


@dataclass
class LoadOptions:
    device: str = "auto"
    dtype: str = "auto"
    trust_remote_code: bool = False
    allow_pickle: bool = False
    device_map: str | None = None
    revision: str | None = None


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


def pick_dtype(name: str, device: torch.device) -> torch.dtype:
    if name == "auto":
        return torch.bfloat16 if device.type == "cuda" else torch.float32
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


def read_tensors(files: list[Path], rename: Callable[[str], str | None], dtype: torch.dtype,
                 device: torch.device | str = "cpu") -> dict[str, torch.Tensor]:
    """All tensors of the checkpoint under our names, cast to ``dtype`` on ``device``, one at a time.

    ``rename`` returns our name, None to keep the name verbatim, or "" to skip a tensor that is not
    a weight (a saved buffer). Moving each tensor as it is read keeps host memory at one tensor.
    """
    from safetensors import SafetensorError, safe_open

    def put(name: str, t: torch.Tensor) -> None:
        ours = rename(name)
        if ours == "":
            return
        out[ours or name] = t.to(device=device, dtype=dtype) if t.is_floating_point() else t.to(device)

    out: dict[str, torch.Tensor] = {}
    for f in files:
        if f.suffix != ".safetensors":
            try:
                state = torch.load(f, map_location="cpu", weights_only=True)
            except (pickle.UnpicklingError, RuntimeError, EOFError, OSError, ValueError) as exc:
                raise DlmError(f"weights file {f} cannot be read as a restricted pickle ({str(exc).splitlines()[0]}); "
                               "convert it to safetensors") from None
            for name, t in state.items():
                put(name, t)
            continue
        try:
            with safe_open(str(f), framework="pt") as fh:
                for name in fh.keys():
                    put(name, fh.get_tensor(name))
        except (SafetensorError, OSError, RuntimeError) as exc:
            raise DlmError(f"weights file {f} is corrupt or truncated ({exc}); delete it and download it again") from None
    return out


def build_meta(net_factory: Callable[[], torch.nn.Module]) -> torch.nn.Module:
    """The network with every parameter on the meta device: its names and shapes, no memory."""
    with torch.device("meta"):
        return net_factory()


def published_shapes(files: list[Path], rename: Callable[[str], str | None], family: str | None = None,
                     where: str = "") -> dict[str, tuple[int, ...]] | None:
    """The checkpoint's tensors under our names with their header shapes (None for pickle weights).

    With ``family``, a name ``rename`` does not know (None) is refused as another family's weight.
    """
    from .memory import tensor_shapes

    shapes = tensor_shapes(files)
    if shapes is None:
        return None
    out: dict[str, tuple[int, ...]] = {}
    foreign = []
    for name, shape in shapes.items():
        ours = rename(name)
        if ours == "":
            continue
        if ours is None and family is not None:
            foreign.append(name)
        out[ours or name] = shape
    if foreign:
        raise DlmError(f"{where} holds weights that are not {family}'s ({', '.join(sorted(foreign)[:3])}"
                       f"{' ...' if len(foreign) > 3 else ''}); its weights are of another family than its "
                       "config.json says")
    return out


def check_weights(net: torch.nn.Module, shapes: dict[str, tuple[int, ...]], where: str) -> None:
    """The weights' names and shapes against the network the config describes (built on meta)."""
    expected = {k: tuple(v.shape) for k, v in net.state_dict().items()}
    tied = getattr(net.config, "tie_word_embeddings", False)
    missing = sorted(set(expected) - set(shapes) - ({"lm_head.weight"} if tied else set()))
    unexpected = sorted(set(shapes) - set(expected))
    if missing:
        raise DlmError(f"{where} lacks weights {', '.join(missing[:3])}{' ...' if len(missing) > 3 else ''}; "
                       "the checkpoint is incomplete or of another family")
    if unexpected:
        raise DlmError(f"{where} has weights dlm does not expect ({', '.join(unexpected[:3])}); "
                       "the checkpoint is of another architecture")
    for name, shape in shapes.items():
        if tuple(shape) != expected[name]:
            raise DlmError(f"{where}: weight {name} has shape {tuple(shape)} but config.json implies "
                           f"{expected[name]}; config and weights do not match")


def load_into(net_factory: Callable[[], torch.nn.Module] | torch.nn.Module, tensors: dict[str, torch.Tensor],
              device: torch.device, where: str) -> torch.nn.Module:
    """Assign the loaded tensors to the network built on the meta device (no double allocation).

    ``net_factory`` is a factory, or a network :func:`build_meta` already built.
    """
    net = net_factory if isinstance(net_factory, torch.nn.Module) else build_meta(net_factory)
    check_weights(net, {k: tuple(t.shape) for k, t in tensors.items()}, where)
    tied = getattr(net.config, "tie_word_embeddings", False)
    net.load_state_dict(tensors, strict=False, assign=True)
    if tied:
        net.lm_head.weight = net.model.embed_tokens.weight
    # Non-persistent buffers (rotary frequencies) were created on meta: rebuild them on the device.
    rotary = net.model.rotary_emb
    with torch.device(device):
        fresh = type(rotary)(config=net.config)
    net.model.rotary_emb = fresh
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
