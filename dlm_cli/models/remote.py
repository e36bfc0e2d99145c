"""A dLLM of a family dlm does not know, run with its repository's own code (``--trust-remote-code``).

This runs arbitrary Python shipped with the checkpoint, so it only happens when the user passes
the flag, and a warning says so on stderr. dlm knows nothing of such a model's internals, so the
generic adapter assumes the most common convention (LLaDA's: masked diffusion, bidirectional
attention, the logits at position ``i`` predict token ``i``), reads the mask token from
``mask_token_id`` in config.json or the tokenizer's mask token, and runs every step as a full
forward over the canvas: the decode loop's caches are accepted and ignored.
"""

from __future__ import annotations

import traceback
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, TypeVar

import torch

from ..errors import DlmError, warning
from .base import Denoiser

FAMILY = "remote-code"
T = TypeVar("T")
# The auto classes a dLLM repository maps its model to, most specific first.
_AUTO = ("AutoModelForMaskedLM", "AutoModel", "AutoModelForCausalLM")


@dataclass(eq=False)
class RemoteDenoiser(Denoiser):
    """A remote-code model: full forward every step, logits taken in place (see module doc)."""

    @torch.inference_mode()
    def logits(self, x: torch.Tensor, start: int = 0, end: int | None = None, *, cache: Any = None,
               rows: tuple[int, int] | None = None) -> torch.Tensor:
        end = x.shape[1] if end is None else end
        r0, r1 = rows if rows is not None else (start, end)
        out = self.net(input_ids=x).logits[:, r0:r1]
        return out if self.token_count is None else out[..., : self.token_count]


def repository_code(name: str, run: Callable[[], T]) -> T:
    """``run()``, which imports and runs the repository's own code: whatever that code raises is one line.

    The code is arbitrary (it may fail to import, or raise anything while building the model), so
    this is the one place that catches every ``Exception``: the user needs to know that it was the
    repository's code, and its last traceback line, not dlm's traceback.
    """
    try:
        return run()
    except DlmError:
        raise
    except Exception as exc:  # noqa: BLE001 - see the docstring
        last = "".join(traceback.format_exception_only(type(exc), exc)).strip().splitlines()[-1].strip()
        if not last.startswith(type(exc).__name__):
            last = f"{type(exc).__name__}: {last}"
        raise DlmError(f"{name}: the repository's own code (run by --trust-remote-code) failed: {last}; "
                       "check the repository's requirements (its transformers version, extra packages)") from None


def load_remote(path: Path, cfg: dict[str, Any], opts: Any, name: str) -> RemoteDenoiser:
    import transformers

    from .files import eos_ids, load_tokenizer, model_info, prepare, pretrained_kwargs, quiet_transformers

    auto_map = cfg.get("auto_map") or {}
    auto = next((a for a in _AUTO if a in auto_map), None)
    if auto is None:
        raise DlmError(f"{name}: its config.json auto_map names no model class dlm can use "
                       f"({', '.join(auto_map) or 'none'}); it needs one of {', '.join(_AUTO)}")
    warning(f"running the model code shipped with {name} ({auto_map[auto]}): --trust-remote-code lets it do "
         "anything your user can; dlm decodes it as an in-place masked-diffusion model, without a cache")
    # Sizes were checked in load(); its layers may mean anything, so they are not counted against the weights.
    prep = prepare(path, cfg, opts, name, layers=False,
                   tokenizer=lambda p: repository_code(name, lambda: load_tokenizer(p, trust_remote_code=True)))
    kwargs = {**pretrained_kwargs(prep), "trust_remote_code": True}

    def build() -> Any:
        with quiet_transformers():
            return getattr(transformers, auto).from_pretrained(str(path), **kwargs)

    net = repository_code(name, build).eval()
    tok = prep.tokenizer
    mask = cfg.get("mask_token_id")
    if mask is None:
        mask = getattr(tok, "mask_token_id", None)
    if mask is None:
        raise DlmError(f"{name}: cannot tell its mask token (no mask_token_id in config.json and no mask token in "
                       "the tokenizer); dlm can only decode masked-diffusion models")
    vocab = int(cfg.get("vocab_size") or 0) or None
    return RemoteDenoiser(net=net, tokenizer=tok, info=model_info(name, FAMILY, path, net, tok), mask_id=int(mask),
                          eos_ids=eos_ids(cfg, tok, path), max_length=int(cfg.get("max_position_embeddings")
                                                                     or cfg.get("max_sequence_length") or 4096),
                          token_count=vocab)
