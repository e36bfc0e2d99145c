"""What the commands and the decoder need from a loaded model, as typing ``Protocol`` s.

Every family module returns an object that satisfies :class:`DLLM` (a :class:`~.base.Denoiser`
or a subclass) or :class:`ARModel` (a :class:`~.causal.CausalLM`); code outside ``models/`` is
typed against these, never against a family's class.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any, Protocol

if TYPE_CHECKING:
    import torch

    from .info import ModelInfo, SpeedState


class Model(Protocol):
    """Any loaded model: what it is, its tokenizer, its context, what it offers the strategies."""

    net: Any
    tokenizer: Any
    info: ModelInfo
    eos_ids: tuple[int, ...]
    max_length: int
    kind: str  # "diffusion" or "autoregressive"
    token_count: int | None
    speed: SpeedState

    @property
    def capabilities(self) -> frozenset[str]: ...

    @property
    def device(self) -> torch.device: ...

    @property
    def vocab_size(self) -> int: ...


class DLLM(Model, Protocol):
    """A diffusion LLM: a mask token, an optional block grid, logits for any rows of a canvas."""

    mask_id: int
    shift: bool
    block_size: int | None
    profile: str | None

    def new_cache(self, size: int = 0) -> Any: ...

    def begin(self, prompt_tokens: int, generator: torch.Generator | None = None) -> None: ...

    def block_end(self, pos: int) -> int | None: ...

    def logits(self, x: torch.Tensor, start: int = 0, end: int | None = None, **kwargs: Any) -> torch.Tensor: ...


class ARModel(Model, Protocol):
    """An autoregressive LM: a KV cache and a forward over new tokens."""

    def new_cache(self) -> Any: ...

    def forward(self, ids: torch.Tensor, cache: Any, keep: int = 1, mask: torch.Tensor | None = None,
                positions: torch.Tensor | None = None, hidden: tuple[int, ...] = ()) -> Any: ...
