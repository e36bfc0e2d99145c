"""What a loaded model is (:class:`ModelInfo`) and what dlm keeps with it between runs (:class:`SpeedState`)."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any


@dataclass
class SpeedState:
    """What dlm keeps with a loaded model between runs, typed (:mod:`.speed` owns it): the weights by
    quantization, the compiled steps and the shapes already warm, the current run's compile plan, and
    the precomputed masks and position ids of the block grid."""

    quantized: str = "none"  # which weights the model runs now
    kernels: str = "torch"  # the linear layers' products now: torch's own or oneDNN's packed (.kernels)
    variants: dict[str, Any] = field(default_factory=dict)  # quantization mode -> network
    compiled: dict[int, Any] = field(default_factory=dict)  # id(network) -> its compiled steps
    warm: set[Any] = field(default_factory=set)  # (network, shape) pairs already run once
    compile_on: bool = False  # the current run compiles
    autotune: bool = False  # ... with compile = "max-autotune" (its own graphs: .speed._compile)
    block_widths: tuple[tuple[int, int], ...] = ()  # the compiled block steps' (query, rows) widths
    length: int = 0  # the static caches' length for the current run
    widths: tuple[int, ...] = ()  # the compiled AR steps' widths
    masks: dict[Any, Any] = field(default_factory=dict)  # (size, device) -> block-causal mask
    positions: dict[Any, Any] = field(default_factory=dict)  # (n, device) -> position ids


@dataclass
class ModelInfo:
    """What the CLI, the views and bench report about a loaded model."""

    name: str
    family: str
    path: str
    parameters: int
    dtype: str
    device: str
    chat_template: bool
    dtype_choice: str = ""  # how the dtype was chosen: "--dtype", or auto's reason ("auto: avx512_bf16")
