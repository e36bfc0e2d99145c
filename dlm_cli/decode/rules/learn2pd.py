"""Learn2PD (Bao et al., 2025, arXiv 2509.25188): a learned filter says which masked positions are already final.

The filter is the paper's two-layer MLP ``Linear(W, W) → ReLU → Linear(W, W)`` (W = 32) over the
block's confidence vector ``p(x0)`` (every row of the block, committed ones included, zero-padded
to W). At each step the rule commits the masked rows whose ``sigmoid(f(c)) > filter_threshold``
(0.96, the paper's evaluation setting) plus the most confident one (LLaDA's one-per-step schedule).
The profile adds ``eotp = true``: part (a) of the paper's ``generate_l2p_eot`` (cut after a committed
end token); its part (b), cutting at a still-masked slot whose argmax is the end token, is not done. It is trained by ``dlm filter
train`` on the oracle of "extremely greedy parallel" decoding (:class:`Oracle`).

Where the filter comes from (``filter = ""``): the one shipped for an embedded model
(``dlm_cli/demo/filters/NAME.safetensors``), else the one ``dlm filter train`` wrote to the user
cache. (Not the model's directory: loaders read every safetensors file there as weights.)
"""

from __future__ import annotations

import os
import re
from pathlib import Path
from typing import Any, Optional, TYPE_CHECKING

import torch

from ...errors import UsageError
from .base import CommitRule, NeedsModel, StepState, top1

if TYPE_CHECKING:
    from ..keys import RunSettings
    from ...models.protocols import DLLM

WIDTH = 32
SHIPPED = Path(__file__).resolve().parents[2] / "demo" / "filters"


class Filter(torch.nn.Module):
    def __init__(self, width: int = WIDTH) -> None:
        super().__init__()
        self.width = width
        self.l1 = torch.nn.Linear(width, width)
        self.l2 = torch.nn.Linear(width, width)

    def forward(self, c: torch.Tensor) -> torch.Tensor:
        return self.l2(torch.relu(self.l1(c)))


def cache_path(model_name: str) -> Path:
    """Where ``dlm filter train`` writes a model's filter by default."""
    base = os.environ.get("XDG_CACHE_HOME") or str(Path.home() / ".cache")
    return Path(base) / "dlm" / "filters" / (re.sub(r"[^A-Za-z0-9._-]+", "_", model_name) + ".safetensors")


def find_filter(model: DLLM, given: str) -> Path:
    if given:
        path = Path(given).expanduser()
        if not path.is_file():
            raise UsageError(f"filter = {given!r}: no such file; train one with dlm filter train -m MODEL --out FILE")
        return path
    for path in (SHIPPED / f"{model.info.name}.safetensors", cache_path(model.info.name)):
        if path.is_file():
            return path
    raise UsageError(f"no Learn2PD filter for {model.info.name}; train one with `dlm filter train -m "
                     f"{model.info.name}` (minutes on a CPU), or set filter = \"PATH\"")


def load_filter(path: Path, device: Any) -> tuple[Filter, dict[str, str]]:
    from safetensors import SafetensorError
    from safetensors.torch import load_file, safe_open

    try:
        with safe_open(str(path), "pt") as f:
            meta = dict(f.metadata() or {})
        state = load_file(str(path))
    except (SafetensorError, OSError, ValueError) as exc:
        raise UsageError(f"{path} is not a Learn2PD filter file ({exc}); train it again with dlm filter train") from None
    w = state.get("l1.weight")
    if w is None or w.ndim != 2 or w.shape[0] != w.shape[1]:
        raise UsageError(f"{path} is not a Learn2PD filter (no square l1.weight); train it again with dlm filter train")
    net = Filter(int(w.shape[0]))
    try:
        net.load_state_dict(state, strict=True)
    except RuntimeError as exc:
        raise UsageError(f"{path} does not hold the filter's four tensors ({str(exc).splitlines()[0]})") from None
    return net.to(device=device, dtype=torch.float32).eval(), meta


def features(probability: torch.Tensor, width: int) -> torch.Tensor:
    """The block's confidence vector, zero-padded to the filter's width."""
    out = torch.zeros(width, dtype=torch.float32, device=probability.device)
    out[: probability.shape[0]] = probability.float()
    return out


class Learn2PD(CommitRule, NeedsModel):
    name = "learn2pd"

    def __init__(self, settings: RunSettings) -> None:
        super().__init__(settings)
        self.net: Optional[Filter] = None
        self.source = ""

    def bind(self, model: DLLM) -> list[str]:
        path = find_filter(model, self.settings.filter)
        self.net, meta = load_filter(path, model.device)
        self.source = str(path)
        if meta.get("model") and meta["model"] != model.info.name:
            return [f"the Learn2PD filter {path} was trained on {meta['model']}, not {model.info.name}"]
        return []

    def select(self, state: StepState) -> torch.Tensor:
        assert self.net is not None and state.probability is not None
        rows = state.candidates.shape[0]
        if rows > self.net.width:
            raise UsageError(f"learn2pd's filter takes blocks of at most {self.net.width} slots, but this block has "
                             f"{rows}; use --set block_length={self.net.width} or less")
        with torch.no_grad():
            score = torch.sigmoid(self.net(features(state.probability, self.net.width)))[:rows]
        return (state.candidates & (score > self.settings.filter_threshold)) | top1(state.confidence)


class Oracle(CommitRule):
    """Extremely greedy parallel decoding (the filter's labels): commit every masked row whose ``x0`` is the reference.

    ``reference`` holds the one-token-per-step answer of every slot. At each step it records the
    block's confidence vector and which rows' ``x0`` equal the reference (all rows, as the paper
    does). When nothing matches and ``x0`` has not changed since the last step, the block's masked
    rows get the reference tokens (the paper's stall guard), written into ``x0`` before the commit.
    """

    name = "oracle"

    def __init__(self, settings: RunSettings, reference: torch.Tensor, width: int = WIDTH) -> None:
        super().__init__(settings)
        self.reference, self.width = reference, width
        self.offset, self.block, self.rows = 0, 0, 0
        self.last: Optional[torch.Tensor] = None
        self.samples: list[tuple[torch.Tensor, torch.Tensor, int]] = []  # (confidences, labels, rows)

    def select(self, state: StepState) -> torch.Tensor:
        assert state.probability is not None
        rows = state.candidates.shape[0]
        if state.block != self.block:
            self.offset, self.block, self.last = self.offset + self.rows, state.block, None
        self.rows = rows
        ref = self.reference[self.offset: self.offset + rows].to(state.x0.device)
        match = state.x0 == ref
        if rows <= self.width:
            self.samples.append((features(state.probability, self.width).cpu(),
                                 features(match.float(), self.width).cpu(), rows))
        sel = state.candidates & match
        if not bool(sel.any()) and self.last is not None and torch.equal(self.last, state.x0):
            state.x0[state.candidates] = ref[state.candidates]  # stall guard: copy the reference in
            sel = state.candidates.clone()
        self.last = state.x0.clone()
        return sel if bool(sel.any()) else top1(state.confidence)
