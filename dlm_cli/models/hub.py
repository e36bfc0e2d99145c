"""Downloads from the Hugging Face hub through huggingface-hub: its cache, HF_HOME, HF_HUB_OFFLINE, and a rich progress bar."""

from __future__ import annotations

import os
from pathlib import Path
from typing import TYPE_CHECKING

from ..errors import DlmError

if TYPE_CHECKING:
    from .files import LoadOptions

# Weights in safetensors, configs and tokenizers. Pickles and code only when the user allows them.
SAFE_PATTERNS = ["*.json", "*.safetensors", "*.model", "*.txt", "*.jinja", "*.tiktoken", "tokenizer*"]


def _progress_class():
    try:
        from tqdm.rich import tqdm as rich_tqdm
    except ImportError:  # pragma: no cover - tqdm ships with huggingface-hub
        return None
    import warnings

    from tqdm import TqdmExperimentalWarning

    warnings.filterwarnings("ignore", category=TqdmExperimentalWarning)
    return rich_tqdm


def _truthy(value: str | None) -> bool:
    return (value or "").strip().lower() in ("1", "true", "yes", "on")


def cache_dir() -> str | None:
    """The hub cache as the environment says now (HF_HUB_CACHE, else HF_HOME/hub; None: the library's default).

    huggingface-hub reads these once, when it is imported; reading them at each call keeps dlm
    right when the environment changes in-process (embedding, tests).
    """
    if os.environ.get("HF_HUB_CACHE"):
        return os.environ["HF_HUB_CACHE"]
    if os.environ.get("HF_HOME"):
        return os.path.join(os.path.expanduser(os.environ["HF_HOME"]), "hub")
    return None


def download(repo_id: str, opts: "LoadOptions") -> Path:
    """The local snapshot of ``repo_id`` (downloaded on first use, then served from the cache)."""
    from huggingface_hub import snapshot_download
    from huggingface_hub.errors import (
        GatedRepoError,
        HfHubHTTPError,
        LocalEntryNotFoundError,
        RepositoryNotFoundError,
        RevisionNotFoundError,
    )

    patterns = list(SAFE_PATTERNS)
    if opts.allow_pickle:
        patterns += ["*.bin", "*.pt", "*.pth"]
    if opts.trust_remote_code:
        patterns += ["*.py"]
    try:
        path = snapshot_download(repo_id, revision=opts.revision, allow_patterns=patterns,
                                 tqdm_class=_progress_class(), cache_dir=cache_dir(),
                                 local_files_only=_truthy(os.environ.get("HF_HUB_OFFLINE")))
    except GatedRepoError:
        raise DlmError(f"{repo_id} is gated: accept its licence on huggingface.co and log in "
                       "(huggingface-cli login or HF_TOKEN)") from None
    except RepositoryNotFoundError:
        raise DlmError(f"{repo_id} was not found on the hub (or is private); check the name") from None
    except RevisionNotFoundError:
        raise DlmError(f"{repo_id} has no revision {opts.revision!r}; check the name after '@'") from None
    except LocalEntryNotFoundError:
        offline = _truthy(os.environ.get("HF_HUB_OFFLINE"))
        where = cache_dir() or "~/.cache/huggingface/hub"
        what = f"{repo_id}@{opts.revision}" if opts.revision else repo_id
        why = "HF_HUB_OFFLINE is set" if offline else "the hub could not be reached"
        raise DlmError(f"{what} is not in the local Hugging Face cache ({where}) and {why}; download it once "
                       "with network access (unset HF_HUB_OFFLINE), or pass a local model directory") from None
    except HfHubHTTPError as exc:
        raise DlmError(f"downloading {repo_id} failed: {str(exc).splitlines()[0]}") from None
    return Path(path)
