"""Closer to the machine: weight-only int8 (torchao), static KV caches and compiled decode steps.

Both are chosen per run by the profile keys ``quantize`` and ``compile`` and applied by
:func:`prepare` before the decode clock starts, so a compile's warm-up is reported on its own
(``compile_seconds``) and never counted as decode time.

**Quantization** replaces every ``nn.Linear`` weight by torchao's int8 weight-only (or int8
dynamic-activation) tensor, or its group-wise int4 tensor (bfloat16 activations; on a CPU PyTorch's
own tinygemm kernel, which reads the packed int4 weights directly, so a bandwidth-bound step moves
about an eighth of float32's bytes); no kernel is written here. A layer whose rows are not whole
int4 tiles (16), such as a dLLM adapter's head with its extra mask row, is padded with zero rows
and its output cut back (:class:`PaddedLinear`), so every linear layer is int4. The float weights are kept only when a run
in the same process may still want them (``dlm bench`` comparing rows); a plain generation
quantizes in place.

**Compiling** (AR models, gpt-fast's recipe): the decode step is a forward over a transformers
``StaticCache``, compiled by ``torch.compile`` (inductor on CPU; CUDA graphs, ``reduce-overhead``,
on CUDA), with static shapes so each shape compiles once per process:

- the static cache length is rounded up to a multiple of :data:`LENGTH_STEP`, so prompts of
  different lengths share one graph;
- one graph per width: 1 token (a plain step), and for a target that verifies drafts one width
  ``W``, the power of two above ``1 + draft_length`` (at most :data:`MAX_BUCKET`); a verify of
  fewer tokens is padded to ``W``. The padding comes after the real tokens, so causal attention
  keeps it out of every real row, and the cache is cropped back at once: the padded keys are
  overwritten before any later query can see them;
- the prompt's prefill (the first forward) and any longer forward run eagerly over the same cache,
  which is exact, only slower.

**Compiling a block-diffusion dLLM** (dlm's own stacks: SDAR, Fast-dLLM v2, the adapters) gives
its steps fixed shapes, gpt-fast's way: the static cache (:mod:`.kv`) is sized for the run's length
bucket, each window writes its keys and values at its positions (a tensor) and attends to the
whole buffer under its rows of the block-causal mask (a tensor), and the logits' rows are an
index. So one graph serves every block of a width (:func:`block_widths`: a block's steps, a
block's first step), compiled by :func:`warm_blocks` before the decode clock, and a run compiles
nothing more; other shapes (the prompt's prefill, a first block cut by the grid) run eagerly.

**Compiling a bidirectional dLLM's dual cache** (LLaDA, Dream on dlm's stack, ``cache = "dual"``) the
same way: the cache is one buffer of the run's length bucket, the full forward at each block's start
writes every canvas position into it (eagerly), and each step's window (the decode block, plus the row
before it for Dream's shift) writes its keys and values at its positions and attends to the whole
buffer under a mask that hides only the positions past the canvas. So the step is one graph per decode
block width (:func:`dual_widths`), compiled by :func:`warm_dual` before the decode clock.

**Compiling another dLLM's run** (the prefix cache, no cache, Elastic-Cache's refresh) compiles its
network with automatic dynamic shapes: canvas, window and cache lengths change from block to block, so
torch marks them dynamic after the first changes instead of compiling every length. Those first
forwards compile inside the run (a bench's warm-up run takes them).

inductor keeps its compiled kernels in its own on-disk cache (``TORCHINDUCTOR_CACHE_DIR``, by
default under ``~/.cache/dlm/inductor``), so a later process pays only the tracing part of the
warm-up. ``compile = "auto"`` compiles on CUDA only: on a CPU the warm-up (about a minute for
SmolLM2 on two cores) is longer than most generations.
"""

from __future__ import annotations

import copy
import os
import time
from pathlib import Path
from typing import Any, TYPE_CHECKING

import torch

from ..errors import DlmError, UsageError

if TYPE_CHECKING:
    from .protocols import Model

LENGTH_STEP = 256
MAX_BUCKET = 64
QUANTIZE = ("none", "int8", "int8-dynamic", "int4")
INT4_GROUP = 32  # weights per int4 scale/zero pair (SmolLM2's 576 = 18 groups)
COMPILE = ("auto", "on", "off", "max-autotune")
# compile = "max-autotune" on a CPU: inductor's options. The weights become constants of the graph (freezing),
# so inductor prepacks them itself, and every product is benchmarked against inductor's C++ GEMM templates
# for its shape on this machine (with this thread count), keeping the fastest.
AUTOTUNE_CPU = {"freezing": True, "max_autotune": True}


def want_compile(setting: str, device: torch.device) -> bool:
    """``compile = auto|on|off|max-autotune`` on ``device``: auto compiles on CUDA only (see module doc)."""
    if setting == "auto":
        return device.type == "cuda"
    return setting in ("on", "max-autotune")


def _compile(fn: Any, device: torch.device, autotune: bool) -> Any:
    """``torch.compile(fn)`` with static shapes as dlm's steps want them: CUDA graphs on CUDA; with ``autotune``,
    inductor's max-autotune (on a CPU: :data:`AUTOTUNE_CPU`)."""
    backend = os.environ.get("DLM_COMPILE_BACKEND", "inductor")  # tests: aot_eager, no code generation
    if backend != "inductor":
        return torch.compile(fn, dynamic=False, backend=backend)
    if device.type == "cuda":
        return torch.compile(fn, mode="max-autotune" if autotune else "reduce-overhead", dynamic=False)
    compiled = torch.compile(fn, dynamic=False)
    if not autotune:
        return compiled
    # Inductor's global config, patched around every call (compiling is lazy: the warm-up's calls compile):
    # passed as torch.compile's options instead, the same settings gave steps 2x slower (torch 2.13).
    import torch._inductor.config as inductor_config

    def step(*args: Any) -> Any:
        with inductor_config.patch(AUTOTUNE_CPU):
            return compiled(*args)

    return step


def bucket(n: int) -> int:
    """The padded length of a forward over ``n`` new tokens (a power of two)."""
    return 1 << (n - 1).bit_length()


def cache_dir() -> Path:
    base = os.environ.get("XDG_CACHE_HOME") or str(Path.home() / ".cache")
    return Path(base) / "dlm" / "inductor"


def _inductor_cache() -> None:
    if "TORCHINDUCTOR_CACHE_DIR" not in os.environ:
        path = cache_dir()
        try:
            path.mkdir(parents=True, exist_ok=True)
        except OSError:  # unwritable home: inductor falls back to its own temporary directory
            return
        os.environ["TORCHINDUCTOR_CACHE_DIR"] = str(path)


# ---------------------------------------------------------------------------------------------
# Quantization


def quiet_optional_libraries() -> None:
    """Keep import-time warnings a user can do nothing about off the terminal.

    transformers imports torchao when it is installed (the ``speed`` extra); torchao then logs each
    CUDA-only kernel library it cannot load on a CPU machine, and torch logs a note on torchao's
    enums. Errors still show.
    """
    import logging

    for name in ("torchao", "torch.utils._pytree"):
        log = logging.getLogger(name)
        if log.level < logging.ERROR:
            log.setLevel(logging.ERROR)


def quantize_net(net: torch.nn.Module, mode: str) -> None:
    """Quantize every linear layer of ``net`` in place (torchao)."""
    quiet_optional_libraries()
    try:
        from torchao.quantization import (
            Int8DynamicActivationInt8WeightConfig,
            Int8WeightOnlyConfig,
            quantize_,
        )
    except ImportError:
        raise DlmError(f"quantize = {mode!r} needs torchao: pip install 'dlm-cli[speed]' (or pip install "
                       "torchao)") from None
    if mode == "int4":
        config, keep = int4_config(net), {"filter_fn": int4_fits}
        pad_rows(net)
    else:
        config = Int8WeightOnlyConfig() if mode == "int8" else Int8DynamicActivationInt8WeightConfig()
        keep = {}  # torchao's default: every linear layer
    try:
        with torch.no_grad():
            quantize_(net, config, **keep)
    except (RuntimeError, ValueError, AssertionError) as exc:  # a kernel's shape or dtype limit, from torchao
        raise DlmError(f"quantize = {mode!r} does not work on this model ({str(exc).splitlines()[0]}); "
                       "use another quantize value or none") from None


INT4_ROWS = 16  # the tinygemm kernel's packed tiles hold 16 output rows


class PaddedLinear(torch.nn.Module):
    """A linear layer whose output rows are padded with zero rows to a multiple of :data:`INT4_ROWS`,
    so that the int4 kernel takes it (a dLLM adapter's head has the base vocabulary plus one mask row:
    49153 for smollm2-dlm); the output is cut back to the real rows, so callers see the same shape."""

    def __init__(self, linear: torch.nn.Linear) -> None:
        super().__init__()
        rows, cols = linear.weight.shape
        self.rows = rows
        padded = -(-rows // INT4_ROWS) * INT4_ROWS
        w = linear.weight
        self.inner = torch.nn.Linear(cols, padded, bias=linear.bias is not None, device=w.device, dtype=w.dtype)
        with torch.no_grad():
            self.inner.weight.zero_()
            self.inner.weight[:rows] = w
            if linear.bias is not None:
                self.inner.bias.zero_()
                self.inner.bias[:rows] = linear.bias

    @property
    def weight(self) -> torch.Tensor:  # device and dtype for OutputLayer; rows is the real count
        return self.inner.weight

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.inner(x)[..., : self.rows]


def pad_rows(net: torch.nn.Module) -> None:
    """Wrap every linear layer whose rows are not whole int4 tiles (and whose inputs are whole groups) in a
    :class:`PaddedLinear`; a tied head gets its own padded copy (the embedding keeps its float weight)."""
    for name, module in list(net.named_modules()):
        if (isinstance(module, torch.nn.Linear) and module.weight.shape[0] % INT4_ROWS
                and module.weight.shape[1] % INT4_GROUP == 0):
            parent, _, child = name.rpartition(".")
            setattr(net.get_submodule(parent) if parent else net, child, PaddedLinear(module))


def int4_fits(module: torch.nn.Module, name: str) -> bool:
    """Whether the int4 kernels take this layer: a linear layer whose rows come in 16s (the packed
    tiles) and whose inputs in whole groups; any other layer keeps its bfloat16 weight."""
    if not isinstance(module, torch.nn.Linear):
        return False
    rows, cols = module.weight.shape  # not out_features: a resized head (a dLLM's mask row) may not update it
    return rows % INT4_ROWS == 0 and cols % INT4_GROUP == 0


def int4_config(net: torch.nn.Module) -> Any:
    """torchao's group-wise int4 weight-only config for ``net``'s device: on a CPU its tinygemm kernel
    (``aten._weight_int4pack_mm_for_cpu``, torchao's ``PrototypeInt4WeightOnlyConfig``), on CUDA its
    tile-packed tinygemm tensor. Both take bfloat16 activations."""
    param = next(net.parameters())
    if param.dtype != torch.bfloat16:
        raise UsageError("quantize = 'int4' computes in bfloat16: add --dtype bfloat16")
    if param.device.type == "cuda":
        from torchao.quantization import Int4WeightOnlyConfig

        return Int4WeightOnlyConfig(group_size=INT4_GROUP, int4_packing_format="tile_packed_to_4d")
    if param.device.type != "cpu":
        raise UsageError(f"quantize = 'int4' runs on a CPU or a CUDA GPU, not {param.device.type}")
    from torchao.prototype.quantization.int4 import PrototypeInt4WeightOnlyConfig

    return PrototypeInt4WeightOnlyConfig(group_size=INT4_GROUP)


def use_quantized(model: Model, mode: str, keep_float: bool) -> None:
    """Give ``model`` the ``mode`` weights: quantize (a copy when ``keep_float``) or swap back to float."""
    variants = model.speed.variants
    current = model.speed.quantized
    if mode == current:
        return
    if current not in variants:
        variants[current] = model.net
    if mode not in variants:
        if mode == "none":
            raise UsageError("this model's float weights were quantized in place; load it again to run "
                             "quantize = 'none'")
        base = variants.get("none")
        if base is None:
            raise UsageError(f"cannot quantize {current}-quantized weights again as {mode}; load the model again")
        net = copy.deepcopy(base) if keep_float else base
        from .kernels import unpack

        unpack(net)  # torchao quantizes plain linear layers; a packed one would keep multiplying the float copy
        if not keep_float:
            variants.pop("none")
            model.speed.compiled = {}  # the same modules, new weights: compile again
            model.speed.warm = set()
        quantize_net(net, mode)
        variants[mode] = net
    model.net = variants[mode]
    model.speed.quantized = mode


# ---------------------------------------------------------------------------------------------
# Static cache and compiled steps (AR models)


def static_cache(model: Model, length: int) -> Any:
    """A transformers ``StaticCache`` for at least ``length`` positions, with a host-side fill count."""
    from transformers import StaticCache

    size = -(-max(length, 1) // LENGTH_STEP) * LENGTH_STEP
    if getattr(model, "max_length", None):
        size = min(size, max(int(model.max_length), length))
    cache = StaticCache(config=model.net.config, max_cache_len=size)
    cache.dlm_filled = 0  # positions written (kept on the host: reading the cache's counter would sync)
    cache.dlm_size = size
    return cache


def compiled_step(model: Model) -> Any:
    """``step(ids [1, n], cache) -> logits [n, V]``, compiled once per model (and weights)."""
    steps = model.speed.compiled  # per weights: a bench row may swap them
    step = steps.get(id(model.net))
    if step is None:
        _inductor_cache()
        from .compat import cache_kwarg

        net = model.net
        name = cache_kwarg(net.forward)

        def forward(ids: torch.Tensor, cache: Any) -> torch.Tensor:
            return net(input_ids=ids, use_cache=True, **{name: cache}).logits[0]

        # Every compiled model (a target and its draft) and cache size adds graphs to the one code
        # object above; torch's default limit of 8 would send a bench's later rows back to eager.
        torch._dynamo.config.recompile_limit = max(torch._dynamo.config.recompile_limit, 64)
        step = _compile(forward, net.device, autotune=False)  # AR steps: max-autotune compiles as on (prepare)
        steps[id(model.net)] = step
    return step


def compiled_net(model: Model) -> Any:
    """A dLLM's network compiled with automatic dynamic shapes (canvas and cache lengths vary)."""
    nets = model.speed.compiled
    net = nets.get(id(model.net))
    if net is None:
        _inductor_cache()
        torch._dynamo.config.recompile_limit = max(torch._dynamo.config.recompile_limit, 64)
        backend = os.environ.get("DLM_COMPILE_BACKEND", "inductor")
        net = torch.compile(model.net, dynamic=None, backend=backend)
        nets[id(model.net)] = net
    return net


def whole_size(length: int, block: int) -> int:
    """The static cache size of a compiled block-diffusion run: ``length`` up to a multiple of
    :data:`LENGTH_STEP` (and of the block), so runs of nearby lengths share every graph."""
    size = -(-max(length, 1) // LENGTH_STEP) * LENGTH_STEP
    return -(-size // block) * block


def block_widths(model: Model) -> tuple[tuple[int, int], ...]:
    """The (window, rows) shapes a block-diffusion run forwards again and again, one graph each: a step of a
    block (one model block, plus the row before it for an AR-shifted family) and a block's first step (the
    block just committed, rewritten with its final tokens, and the new one). Other shapes run eagerly: a
    prompt's prefill, a first block cut short by the model grid, sub-blocks smaller than the model's."""
    b = model.block_size
    return ((b + 1 if model.shift else b, b), (2 * b, b))


def whole_step(model: Model, ids: torch.Tensor, positions: torch.Tensor, cache: Any, mask: torch.Tensor,
               rows: torch.Tensor) -> torch.Tensor:
    """Logits of window rows ``rows`` (an index) over a whole-buffer cache: compiled at the run's
    :func:`block_widths`, eager at any other shape."""
    if not cache.layers or (ids.shape[1], rows.shape[0]) not in model.speed.block_widths:
        # The first forward allocates the cache's buffers (eagerly); other shapes are rare.
        return model.net(ids, cache=cache, mask=mask, rows=rows, positions=positions)
    # A fresh tensor made here, under inference mode, as the warm-up's was: the canvas slice has
    # another stride and other dispatch keys, which the compiled guards would not match.
    out = compiled_whole(model)(ids.clone(memory_format=torch.contiguous_format), positions, cache, mask, rows)
    return out.clone() if out.device.type == "cuda" else out  # CUDA graphs reuse their output buffers


def compiled_whole(model: Model) -> Any:
    """The block step ``(ids, positions, cache, mask, rows) -> logits``, compiled once per model (and weights)."""
    steps = model.speed.compiled
    key = ("whole", id(model.net), model.speed.autotune)
    step = steps.get(key)
    if step is None:
        _inductor_cache()
        net = model.net

        def forward(ids: torch.Tensor, positions: torch.Tensor, cache: Any, mask: torch.Tensor,
                    rows: torch.Tensor) -> torch.Tensor:
            return net(ids, cache=cache, mask=mask, rows=rows, positions=positions)

        torch._dynamo.config.recompile_limit = max(torch._dynamo.config.recompile_limit, 64)
        step = _compile(forward, net.device, model.speed.autotune)
        steps[key] = step
    return step


def warm_blocks(model: Model, length: int) -> float:
    """Compile (or load from inductor's cache) a block-diffusion model's :func:`block_widths` for a run of
    ``length`` positions, on a throwaway canvas of masks; return the seconds (0 when warm)."""
    size = whole_size(length, model.block_size)
    done = model.speed.warm
    key = ("whole", id(model.net), size, model.speed.autotune)
    if key in done:
        return 0.0
    t0 = time.perf_counter()
    b = model.block_size
    x = torch.full((1, size), model.mask_id, dtype=torch.long, device=model.device)
    cache = model.new_cache(size)
    model.logits(x, 0, b, cache=cache)  # eager: the first window
    for _ in range(2):  # CUDA graphs record on the second call
        model.logits(x, b, 2 * b, cache=cache, rows=(b, 2 * b))  # a step: one block (+ the shifted row)
        model.logits(x, b, 3 * b, cache=cache, rows=(2 * b, 3 * b))  # a first step: the last block and the new
    done.add(key)
    if model.device.type == "cuda":
        torch.cuda.synchronize(model.device)
    return time.perf_counter() - t0


def dual_widths(model: Model, block: int) -> tuple[tuple[int, int], ...]:
    """The one (window, rows) shape of a bidirectional dLLM's dual-cache step: the decode block (plus the row
    before it for an AR-shifted family). The full forward at a block's start, and a last block cut short by
    the canvas, run eagerly over the same buffer."""
    return ((block + 1 if model.shift else block, block),)


def warm_dual(model: Model, length: int, block: int) -> float:
    """Compile (or load from inductor's cache) a bidirectional dLLM's dual-cache step for a run of ``length``
    positions and decode blocks of ``block``, on a throwaway canvas of masks; the seconds (0 when warm)."""
    size = whole_size(length, 1)
    done = model.speed.warm
    key = ("dual", id(model.net), size, block, model.speed.autotune)
    if key in done or 2 * block > size:
        return 0.0
    t0 = time.perf_counter()
    n = min(size, max(length, 2 * block))
    x = torch.full((1, n), model.mask_id, dtype=torch.long, device=model.device)
    cache = model.new_cache(n)
    model.logits(x, 0, n, cache=cache, rows=(0, block))  # eager: the full forward of a block's start
    for _ in range(2):  # CUDA graphs record on the second call
        model.logits(x, block, 2 * block, cache=cache, rows=(block, 2 * block))
    done.add(key)
    if model.device.type == "cuda":
        torch.cuda.synchronize(model.device)
    return time.perf_counter() - t0


def static_forward(model: Model, ids: torch.Tensor, cache: Any, keep: int) -> torch.Tensor:
    """Logits of the last ``keep`` of ``ids`` over a static cache: compiled and padded, or eager for a prefill."""
    n = int(ids.shape[0])
    widths = model.speed.widths
    width = next((w for w in widths if w >= n), None)
    if cache.dlm_filled == 0 or width is None or not model.speed.compile_on:
        if cache.dlm_filled + n > cache.dlm_size:
            raise DlmError(f"the static KV cache holds {cache.dlm_size} positions but this run needs "
                           f"{cache.dlm_filled + n}; run with compile = 'off'")
        from .compat import cache_kwarg

        kw = {cache_kwarg(model.net.forward): cache}
        out = model.net(input_ids=ids[None], use_cache=True, logits_to_keep=keep, **kw).logits[0]
        cache.dlm_filled += n
        return out
    if cache.dlm_filled + width > cache.dlm_size:
        raise DlmError(f"the static KV cache holds {cache.dlm_size} positions but this run needs "
                       f"{cache.dlm_filled + width}; run with compile = 'off'")
    # A fresh tensor made here (under inference mode) every time: a caller's tensor made outside
    # inference mode has other dispatch keys, which would make torch compile the step again.
    ids = torch.cat([ids, ids.new_zeros(width - n)]) if width > n else ids.clone()
    out = compiled_step(model)(ids[None], cache)
    if width > n:
        cache.crop(-(width - n))
        out = out[:n]
    cache.dlm_filled += n
    return out[n - keep:].clone()  # out of the compiled graph's buffers, which the next call reuses


def crop_static(cache: Any, length: int) -> None:
    extra = cache.dlm_filled - length
    if extra > 0:
        cache.crop(-extra)
        cache.dlm_filled = length


def warm(model: Model) -> float:
    """Compile (or load from inductor's cache) every width this run may use; return the seconds (0 when warm).

    A throwaway static cache of the run's size goes through one eager prefill, then each width.
    """
    length = model.speed.length
    widths = model.speed.widths
    done = model.speed.warm
    size = -(-max(length, 1) // LENGTH_STEP) * LENGTH_STEP
    todo = [w for w in widths if (id(model.net), size, w) not in done]
    if not todo:
        return 0.0
    t0 = time.perf_counter()
    device = model.device
    # Made as a run makes it (outside inference mode): a cache whose tensors have other dispatch
    # keys would not match the compiled guards.
    cache = static_cache(model, length)
    model.forward(torch.zeros(1, dtype=torch.long, device=device), cache)
    for w in todo:
        for _ in range(2):  # CUDA graphs record on the second call
            if cache.dlm_filled + w <= cache.dlm_size:
                model.forward(torch.zeros(w, dtype=torch.long, device=device), cache, keep=1)
        done.add((id(model.net), size, w))
    if device.type == "cuda":
        torch.cuda.synchronize(device)
    return time.perf_counter() - t0


def prepare(model: Model, settings: Any, length: int, widths: tuple[int, ...] = (1,), keep_float: bool = True,
            static: bool = True) -> float:
    """Apply ``settings.quantize`` and ``settings.compile`` to ``model`` for a run; return the warm-up seconds.

    ``length`` is the most positions the run's cache holds; ``widths`` the forward widths compiled
    (a forward of ``n`` tokens uses the smallest width ``>= n``, or runs eagerly). ``static``
    False (token trees) keeps the run eager over a dynamic cache whatever ``compile`` says.
    """
    if model is None:
        return 0.0
    from .stack import DenoiserStack

    from . import kernels

    mode = getattr(settings, "quantize", "none")
    if mode != model.speed.quantized:
        use_quantized(model, mode, keep_float)
    setting = getattr(settings, "compile", "off")
    # max-autotune tunes a dLLM's steps only. An AR step's transformers StaticCache marks its tensors as static
    # addresses, which inductor's freezing would fold into constants (the cache would stop updating), and
    # measured, the tuned one-row step was no faster than dlm's packed products: an AR model compiles as "on".
    model.speed.autotune = autotune = setting == "max-autotune" and model.kind == "diffusion"
    # max-autotune tunes inductor's own products: dlm's packed ones are opaque custom ops to it.
    if kernels.use(model, "torch" if autotune else getattr(settings, "kernels", "torch")):
        # Another product in every layer of this network: its compiled steps are traced again.
        net = id(model.net)
        model.speed.compiled = {k: v for k, v in model.speed.compiled.items()
                                if k != net and not (isinstance(k, tuple) and net in k)}
        model.speed.warm = {k for k in model.speed.warm if not (isinstance(k, tuple) and net in k)}
    on = static and want_compile(setting, model.device) and getattr(model, "compilable", False)
    model.speed.compile_on = on
    model.speed.block_widths = ()
    if on and model.kind == "diffusion" and model.block_size and isinstance(model.net, DenoiserStack):
        # dlm's own block-diffusion stacks: fixed-shape steps over a whole-buffer cache (Denoiser.logits).
        model.speed.block_widths = block_widths(model)
        return warm_blocks(model, length)
    if (on and model.kind == "diffusion" and not model.block_size and isinstance(model.net, DenoiserStack)
            and getattr(settings, "cache", "none") == "dual" and not getattr(settings, "elastic_threshold", 0)
            and getattr(settings, "block_length", None)):
        # LLaDA, Dream: the dual cache's window steps have one shape; the rest of the run stays eager.
        block = min(int(settings.block_length), int(getattr(settings, "max_new_tokens", 0) or settings.block_length))
        model.speed.block_widths = dual_widths(model, block)
        return warm_dual(model, length, block)
    if not on or model.kind != "autoregressive":
        return 0.0  # other dLLMs compile on their first forwards (their shapes depend on the strategy)
    model.speed.length = length + MAX_BUCKET  # room for a padded verify past the last slot
    model.speed.widths = tuple(sorted({min(bucket(w), MAX_BUCKET) for w in widths}))
    return warm(model)
