"""Small elementwise results that a much larger kernel broadcasts stay kernels of their own (CPU).

TVM's FuseOps inlines an elementwise producer into its broadcasting consumer, which then
recomputes it for every element it writes: a squeeze-excite block's sigmoid of [1, C, 1, 1]
scales, fused into the multiply by [1, C, H, W] activations, ran H x W times per channel
(int8 EfficientNet-B0: 16 such kernels, 1.2 ms of a 9 ms run). This pass runs between TVM's
AnnotateTIROpPattern and FuseOps and marks such producers opaque, so FuseOps leaves them
alone: a call whose result has at most SMALL_ELEMENTS elements, of an elementwise or
broadcast kernel, read by a kernel writing at least RECOMPUTE_RATIO times as many. The mark
is on the kernel (PrimFunc), so other calls of that same kernel stay unfused too. What it
reads is then computed by small kernels too (one call each, a microsecond)."""
from __future__ import annotations

import math

from ...ops.base import OPAQUE

# Elements up to which a result is a per-channel vector rather than an activation map ...
SMALL_ELEMENTS = 4096
# ... and how many times that a consumer writing more would recompute it per element.
RECOMPUTE_RATIO = 16
# TVM's OpPatternKind: kElemWise and kBroadcast (include/tvm/relax/op_attr_types.h)
_FUSABLE_PATTERNS = (0, 1)


def keep_small_producers_apart():
    """The module pass (see the module docstring)."""
    import tvm
    from tvm import relax

    @tvm.transform.module_pass(opt_level=0, name="graphopt.KeepSmallProducersApart")
    def _pass(mod, _ctx):
        call_tir = tvm.ir.Op.get("relax.call_tir")
        made_by, largest_reader = {}, {}
        for func in mod.functions.values():
            if not isinstance(func, relax.Function):
                continue
            for block in func.body.blocks:
                for binding in block.bindings:
                    call = binding.value
                    if not (isinstance(call, relax.Call) and call.op == call_tir):
                        continue
                    size = _elements(binding.var.ty)
                    made_by[binding.var] = (call.args[0], size)
                    for arg in call.args[1].fields:
                        if isinstance(arg, relax.Var) and size is not None:
                            largest_reader[arg] = max(largest_reader.get(arg, 0), size)
        for var, (gv, size) in made_by.items():
            func = mod[gv]
            pattern = func.attrs.get("op_pattern") if func.attrs is not None else None
            if (size is not None and size <= SMALL_ELEMENTS and pattern is not None
                    and int(pattern) in _FUSABLE_PATTERNS
                    and largest_reader.get(var, 0) >= RECOMPUTE_RATIO * size):
                mod[gv] = func.with_attr("op_pattern", OPAQUE)
        return mod

    return _pass


def _elements(ty) -> int | None:
    """Elements of a tensor's static shape; None for anything else."""
    shape = getattr(ty, "shape", None)
    values = getattr(shape, "values", None)
    if values is None or not all(hasattr(v, "value") for v in values):
        return None
    return math.prod(int(v.value) for v in values)
