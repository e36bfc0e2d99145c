"""The one validator for model directories: what a directory may name, and how its files are read.

A model directory is data from whoever published it, so nothing it names is trusted:

- every file a loader reads (config, tokenizer files, chat template, weights, repository code) must
  resolve inside the directory; a symlink pointing elsewhere is refused. Hugging Face hub cache
  snapshots are the one legitimate exception: ``models--org--name/snapshots/<commit>/*`` are links
  into ``models--org--name/blobs/``, so for a snapshot the allowed root is the repository's cache
  folder;
- every weight file, however it is named (a glob, or a ``model.safetensors.index.json`` weight
  map), passes the same pickle gate, and index shard names must be relative paths inside the
  directory;
- JSON files are read with a size bound, and nesting too deep for the parser, a top level that is
  not an object, or bytes that are not UTF-8 are one :class:`~dlm_cli.errors.DlmError` line.
"""

from __future__ import annotations

import json
from pathlib import Path, PurePosixPath, PureWindowsPath
from typing import Any

from ..errors import DlmError

INDEX = "model.safetensors.index.json"
PICKLE_SUFFIXES = (".bin", ".pt", ".pth")
# The files the loaders (dlm's and transformers') read from a model directory: what the hub
# download fetches (hub.SAFE_PATTERNS), pickles, and repository code.
READ_PATTERNS = ("*.json", "*.safetensors", "*.model", "*.txt", "*.jinja", "*.tiktoken", "tokenizer*",
                 "*.bin", "*.pt", "*.pth", "*.py", "additional_chat_templates/*")
MAX_JSON_BYTES = 64 * 1024 * 1024  # tokenizer.json of the largest vocabularies is ~30 MB


def allowed_root(path: Path) -> Path:
    """The folder files of ``path`` may resolve into: the directory, or a hub snapshot's repository folder."""
    real = path.resolve()
    if real.parent.name == "snapshots" and real.parent.parent.name.startswith("models--"):
        return real.parent.parent
    return real


def inside(path: Path, file: Path, what: str | None = None) -> Path:
    """``file`` (a path under the model directory ``path``) if it resolves inside it; else one line."""
    root = allowed_root(path)
    try:
        real = file.resolve()
    except (OSError, RuntimeError) as exc:  # a symlink loop
        raise DlmError(f"{file} cannot be resolved ({exc}); fix or remove it") from None
    if real != root and root not in real.parents:
        label = what or f"{file.name}"
        raise DlmError(f"{label} of the model in {path} resolves outside the model directory (to {real}); "
                       "dlm only reads files inside it: copy the file into the directory instead of linking it")
    return file


def check_dir(path: Path) -> None:
    """Refuse a model directory any of whose readable files escapes it (see the module doc)."""
    seen: set[Path] = set()
    for pattern in READ_PATTERNS:
        for f in path.glob(pattern):
            if f not in seen:
                seen.add(f)
                inside(path, f)


def read_json(path: Path, fix: str, *, max_bytes: int = MAX_JSON_BYTES) -> dict[str, Any]:
    """A JSON object from ``path``; anything else (too big, too deep, not UTF-8, not an object) is one line.

    ``fix`` ends the message: what the user should do about a broken file.
    """
    try:
        with open(path, "rb") as fh:
            raw = fh.read(max_bytes + 1)
    except OSError as exc:
        raise DlmError(f"cannot read {path} ({exc.strerror or exc}); {fix}") from None
    if len(raw) > max_bytes:
        raise DlmError(f"{path} is larger than {max_bytes // (1024 * 1024)} MiB, too big for a model's JSON file; {fix}")
    try:
        data = json.loads(raw.decode("utf-8"))
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise DlmError(f"{path} is not valid JSON ({exc}); {fix}") from None
    except RecursionError:
        raise DlmError(f"{path} is nested too deeply to be a model's JSON file; {fix}") from None
    if not isinstance(data, dict):
        raise DlmError(f"{path} does not hold a JSON object; {fix}")
    return data


def _shard_path(path: Path, index: Path, name: Any) -> Path:
    if not isinstance(name, str) or not name:
        raise DlmError(f"{index} names a shard {name!r} that is not a file name; re-download the model")
    parts = PurePosixPath(name.replace("\\", "/")).parts
    if PureWindowsPath(name).is_absolute() or name.startswith(("/", "\\")) or ".." in parts or ":" in name:
        raise DlmError(f"{index} names the shard {name!r}, which is not a file inside the model directory; "
                       "dlm refuses shard paths that leave it (the index is broken or hostile)")
    return inside(path, path / name, f"shard {name!r}")


def _pickle_gate(path: Path, files: list[Path], allow_pickle: bool) -> None:
    pickles = [f for f in files if f.suffix != ".safetensors"]
    if pickles and not allow_pickle:
        raise DlmError(
            f"{path} has pickle weights ({pickles[0].name}); loading a pickle can run arbitrary code, "
            "so dlm refuses it: convert it to safetensors, or pass --allow-pickle if you trust the source"
        )


def weight_files(path: Path, allow_pickle: bool) -> list[Path]:
    """The checkpoint's weight files; every one of them passes the pickle gate and stays inside ``path``."""
    index = path / INDEX
    if index.is_file():
        inside(path, index)
        data = read_json(index, "re-download the model")
        weight_map = data.get("weight_map")
        if not isinstance(weight_map, dict) or not weight_map:
            raise DlmError(f"{index} is not a valid safetensors index (its weight_map is not a non-empty object); "
                           "re-download the model")
        names = []
        for shard in weight_map.values():
            if shard not in names:
                names.append(shard)
        files = sorted({_shard_path(path, index, s) for s in names})
        _pickle_gate(path, files, allow_pickle)
        missing = [str(f.relative_to(path)) for f in files if not f.is_file()]
        if missing:
            raise DlmError(f"{path} lacks weight shards {', '.join(missing)}; the download is incomplete, re-download it")
        return files
    files = sorted(path.glob("*.safetensors"))
    if not files:
        files = sorted(f for s in PICKLE_SUFFIXES for f in path.glob(f"*{s}"))
        if not files:
            raise DlmError(f"{path} has no weights (no *.safetensors file; pickle .bin weights are only used, and only "
                           "downloaded, with --allow-pickle)")
        _pickle_gate(path, files, allow_pickle)
    for f in files:
        inside(path, f)
    return files
