"""Files written whole or not at all: write a temporary file beside the target, then rename it."""

from __future__ import annotations

import os
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
