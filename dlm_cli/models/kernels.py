"""Linear layers on oneDNN's prepacked weights: the CPU products that use both cores and a block's rows.

torch's own ``F.linear`` on a CPU calls MKL's general product on the weight as stored. For the shapes a
small model decodes with (M = 1 token, or the 9-33 rows of a block or a verify, times 576-1536 wide
weights) that path uses no second thread and is slow for a few rows. Measured on this project's
2-core AVX2 EPYC, float32, SmolLM2's 30 layers' weights streamed from memory
(``benchmarks/linear_kernels.py``), ms for all of them:

| rows | torch, 1 thread | oneDNN packed, 1 thread | torch, 2 threads | oneDNN packed, 2 threads |
|---|---|---|---|---|
| M = 1 | **26.2** | 29.9 | 30.4 | **19.7** |
| M = 9 | 63.5 | **49.9** | 63.0 | **33.5** |

and SmolLM2's 49,152-row head at M = 1, one thread: torch 7.6 ms, oneDNN 6.2, MKL's packed product
(``torch.ops.mkl``) 3.6; at M = 9: 22, 12.4 and 18.7 ms.

oneDNN, which torch ships (``torch.ops.mkldnn``, the ops inductor's ``freezing`` emits), multiplies a
weight reordered once into its blocked layout. So a packed layer keeps its weight and chooses per call
by the rows it is given and the thread count it was packed for: several rows -> oneDNN packed; one row
on two or more threads -> oneDNN packed; one row on one thread -> torch's own, or MKL's packed product
for a layer wider than :data:`WIDE_ROWS` outputs (a head). No kernel is written here.

The products are exact in float32 up to the order of their sums (about 1e-6 relative, as torch's own
M = 1 and M = 9 paths differ from each other). ``kernels = "auto"`` packs float32 weights on a CPU
whose torch has oneDNN, for networks up to :data:`AUTO_MAX_BYTES` while the free memory holds twice their
linear weights (the packed copies double those weights' memory); ``onednn`` packs whenever it can (bfloat16 too, where oneDNN multiplies it natively);
``torch`` leaves every layer as it is.
"""

from __future__ import annotations

from typing import Any

import torch
import torch.nn.functional as F

KERNELS = ("auto", "onednn", "torch")


# The packed products as custom ops: a compiled step (inductor) calls them as opaque kernels. Inductor's own
# lowering of the oneDNN op wants its weight to be a frozen constant of the graph, which ours is not.
@torch.library.custom_op("dlm::onednn_linear", mutates_args=())
def onednn_linear(x: torch.Tensor, packed: torch.Tensor, bias: torch.Tensor | None, rows: int) -> torch.Tensor:
    return torch.ops.mkldnn._linear_pointwise(x, packed, bias, "none", [], "")


@onednn_linear.register_fake
def _(x: torch.Tensor, packed: torch.Tensor, bias: torch.Tensor | None, rows: int) -> torch.Tensor:
    return x.new_empty((*x.shape[:-1], rows))


@torch.library.custom_op("dlm::mkl_linear", mutates_args=())
def mkl_linear(x: torch.Tensor, packed: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None
               ) -> torch.Tensor:
    return torch.ops.mkl._mkl_linear(x, packed, weight, bias, 1)


@mkl_linear.register_fake
def _(x: torch.Tensor, packed: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None) -> torch.Tensor:
    return x.new_empty((*x.shape[:-1], weight.shape[0]))
WIDE_ROWS = 8192  # a layer with more output rows than this is a head: MKL's packed product for one row
AUTO_MAX_BYTES = 2 << 30  # auto packs networks whose linear weights hold at most this many bytes
PACK_ROWS = 16  # the row count oneDNN's reorder is tuned for (9-33 measured alike; 1 costs M > 1 dearly)


def available(dtype: torch.dtype) -> bool:
    """Whether this torch can run oneDNN's packed product for ``dtype`` on this CPU."""
    if not torch.backends.mkldnn.is_available():
        return False
    if dtype == torch.float32:
        return True
    if dtype == torch.bfloat16:
        return bool(torch.ops.mkldnn._is_mkldnn_bf16_supported())
    return False


class PackedLinear(torch.nn.Linear):
    """An ``nn.Linear`` (its class swapped in place: the same parameters, names and ties) that multiplies
    through packed copies of its weight (see the module doc). :func:`pack` makes the copies and remakes
    them when the weight changed (a merged LoRA, loaded weights); :func:`unpack` turns it back."""

    dlm_packed: torch.Tensor
    dlm_mkl: torch.Tensor | None  # MKL's packed copy for one row (a head on one thread), else None
    dlm_one: bool  # one row goes to oneDNN's packed product (packed for two or more threads)
    dlm_version: int  # the weight's version when packed
    dlm_threads: int  # the thread count it was packed for

    def __deepcopy__(self, memo: dict[int, Any]) -> torch.nn.Linear:
        """A copy is a plain ``nn.Linear`` (oneDNN's packed tensors cannot be copied; the copy packs anew)."""
        import copy

        new = torch.nn.Linear.__new__(torch.nn.Linear)
        memo[id(self)] = new
        state = {k: v for k, v in self.__dict__.items() if not k.startswith("dlm_")}
        new.__dict__.update(copy.deepcopy(state, memo))
        return new

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        w = self.weight
        if torch.is_grad_enabled() or x.dtype != w.dtype or x.device.type != "cpu":
            # Training (a LoRA's gradient flows through this product): torch's, which has a backward.
            return F.linear(x, w, self.bias)
        rows = x.numel() // x.shape[-1] if x.shape[-1] else 0
        if rows == 1 and not self.dlm_one:
            if self.dlm_mkl is None:
                return F.linear(x, w, self.bias)
            if torch.compiler.is_compiling():
                return mkl_linear(x, self.dlm_mkl, w, self.bias)
            return torch.ops.mkl._mkl_linear(x, self.dlm_mkl, w, self.bias, 1)
        if rows == 0:
            return F.linear(x, w, self.bias)
        if torch.compiler.is_compiling():  # the custom op: one opaque kernel call in the compiled graph
            return onednn_linear(x, self.dlm_packed, self.bias, w.shape[0])
        return torch.ops.mkldnn._linear_pointwise(x, self.dlm_packed, self.bias, "none", [], "")  # eager: no wrapper


def _reorder(w: torch.Tensor, rows: int) -> torch.Tensor:
    return torch.ops.mkldnn._reorder_linear_weight(w, rows)


def _pack_one(module: torch.nn.Linear, threads: int) -> None:
    w = module.weight.detach()
    if getattr(module, "dlm_version", None) != module.weight._version or module.dlm_packed.dtype != w.dtype:
        module.dlm_packed = _reorder(w, PACK_ROWS)
        module.dlm_mkl = None
    module.dlm_one = threads > 1
    if threads == 1 and w.shape[0] > WIDE_ROWS and w.dtype == torch.float32 and torch._C.has_mkl:
        if module.dlm_mkl is None:
            module.dlm_mkl = torch.ops.mkl._mkl_reorder_linear_weight(w, 1)
    else:
        module.dlm_mkl = None
    module.dlm_version = module.weight._version
    module.dlm_threads = threads


def packable(module: torch.nn.Module, dtype: torch.dtype) -> bool:
    """A plain linear layer of ``dtype`` on the CPU (a torchao-quantized or LoRA-wrapped one is not)."""
    if not isinstance(module, torch.nn.Linear):
        return False
    w = module.weight
    return (type(w) in (torch.nn.Parameter, torch.Tensor) and w.dtype == dtype and w.device.type == "cpu"
            and w.dim() == 2 and w.shape[0] > 0 and w.shape[1] > 0)


def linear_bytes(net: torch.nn.Module) -> int:
    return sum(m.weight.numel() * m.weight.element_size() for m in net.modules() if isinstance(m, torch.nn.Linear))


def want(setting: str, net: torch.nn.Module, packed: bool = False) -> bool:
    """Whether ``kernels = setting`` packs ``net``'s linear layers (see the module doc)."""
    if setting not in KERNELS:
        raise ValueError(f"kernels = {setting!r}: one of {', '.join(KERNELS)}")
    if setting == "torch":
        return False
    param = next(net.parameters(), None)
    if param is None or param.device.type != "cpu" or not available(param.dtype):
        return False
    if setting == "onednn":
        return True
    if param.dtype != torch.float32:
        return False
    size = linear_bytes(net)
    if size > AUTO_MAX_BYTES:
        return False
    from .memory import available_ram

    free = available_ram()
    # The packed copies, and room to spare after them (once packed, the copies are already in use).
    return packed or free is None or free > 2 * size


def pack(net: torch.nn.Module) -> int:
    """Swap every packable linear layer of ``net`` to :class:`PackedLinear` (packing changed weights again);
    returns how many layers are packed."""
    param = next(net.parameters(), None)
    if param is None:
        return 0
    n = 0
    threads = torch.get_num_threads()
    with torch.no_grad():
        for module in net.modules():
            if isinstance(module, PackedLinear):
                if (module.dlm_version != module.weight._version or module.dlm_packed.dtype != module.weight.dtype
                        or module.dlm_threads != threads):
                    _pack_one(module, threads)
                n += 1
            elif type(module) is torch.nn.Linear and packable(module, param.dtype):
                _pack_one(module, threads)
                module.__class__ = PackedLinear
                n += 1
    return n


def unpack(net: torch.nn.Module) -> int:
    """Turn every :class:`PackedLinear` of ``net`` back into a plain ``nn.Linear``; returns how many."""
    n = 0
    for module in net.modules():
        if isinstance(module, PackedLinear):
            module.__class__ = torch.nn.Linear
            for attr in ("dlm_packed", "dlm_mkl", "dlm_one", "dlm_version", "dlm_threads"):
                module.__dict__.pop(attr, None)
            n += 1
    return n


def is_packed(net: torch.nn.Module) -> bool:
    return any(isinstance(m, PackedLinear) for m in net.modules())


def use(model: Any, setting: str) -> bool:
    """Apply ``kernels = setting`` to ``model``'s network for a run (``model.speed.kernels`` says which
    products it now uses); returns whether that changed the network's layers (compiled steps are stale)."""
    net = model.net
    was = is_packed(net)
    if want(setting, net, packed=was):
        try:
            on = pack(net) > 0
        except (RuntimeError, NotImplementedError):  # a oneDNN build without these reorders (another CPU)
            if setting == "onednn":
                unpack(net)
                from ..errors import UsageError

                raise UsageError("kernels = 'onednn': this torch cannot prepack linear weights with oneDNN on "
                                 "this CPU; use kernels = auto or torch") from None
            unpack(net)
            on = False
    else:
        unpack(net)
        on = False
    model.speed.kernels = "onednn" if on else "torch"
    return on != was
