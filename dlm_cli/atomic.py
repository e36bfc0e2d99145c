"""Files written whole or not at all: write a temporary file beside the target, then rename it."""

from __future__ import annotations

import os
import shutil
from pathlib import Path
from typing import Callable


def replace_atomically(path: Path, write: Callable[[Path], None]) -> None:
    """``write`` fills a temporary path beside ``path``, which then replaces ``path`` in one rename.

    A failure (raised as the OSError it was) leaves ``path`` as it was and no temporary file behind.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.tmp{os.getpid()}")
    try:
        write(tmp)
        os.replace(tmp, path)
    finally:
        if tmp.exists():
            tmp.unlink()


def write_text_atomically(path: Path, text: str) -> None:
    replace_atomically(path, lambda tmp: tmp.write_text(text, encoding="utf-8"))


def swap_in(tmp: Path, out: Path) -> Path:
    """Put the finished directory ``tmp`` at ``out`` by renames: a reader sees the old one or the new one whole."""
    if out.exists():
        old_dir = out.with_name(f".{out.name}.old-{os.getpid()}")
        os.replace(out, old_dir)
        os.replace(tmp, out)
        shutil.rmtree(old_dir, ignore_errors=True)
    else:
        out.parent.mkdir(parents=True, exist_ok=True)
        os.replace(tmp, out)
    return out
