"""`quantize`: a copy of a float32 graph that computes in a narrower dtype. float16 and bfloat16
need no calibration: graphopt's default pipeline runs first (batch norms fold into their layers
in float32, so each weight is rounded once), then `convert_float16` / `convert_bfloat16`
(`passes/convert_float_precision.py`: where the casts go, which nodes stay float32). int8 needs
a `Calibration` of the graph's activations: the default pipeline, then `quantize_int8`
(`passes/quantize_int8.py`: which layers compute in integers, where values are (de)quantized)."""
from __future__ import annotations

from typing import TYPE_CHECKING, Callable, Iterable, Mapping

import numpy as np

from ..errors import OptionError
from ..ir import HALF_DTYPES, Graph

if TYPE_CHECKING:
    from .calibration import Calibration
    from ..passes.manager import OptimizeResult

DTYPES = (*HALF_DTYPES, "int8")


def quantize(graph: Graph, calib: "Calibration | str | None" = None, dtype: str | None = None,
             keep: str | Iterable[str] = (), *, per_channel: bool = True,
             check: bool = False, inputs: Mapping[str, np.ndarray] | None = None,
             budget: float | None = None, eval_inputs=None,
             metric: "Callable[[Mapping[str, np.ndarray]], float] | None" = None
             ) -> "OptimizeResult":
    """`graph` (left unchanged) computing in `dtype`, its inputs and outputs still float32;
    returns an OptimizeResult (`.graph`, `.report`). `keep`: names of nodes (or of the original
    nodes a fused node stands for) and of ops that stay float32. `check=True` compares the graph
    before and after every pass on `inputs` (default: a seeded probe) within the tolerance of
    the least precise dtype computed (`compare.tolerance_for`).

    `budget` (int8): keep the fewest layers in float32, most sensitive first (`sensitivity`),
    for which the outputs on `eval_inputs` (a {input name: array} dict or a list of them) stay
    within it: the drop of `metric(outputs) -> float` (higher is better, e.g. top-1 accuracy,
    0.005 for half a point) with a metric, else the relative output error (max |quantized -
    float| / max |float|). Returns a `BudgetResult` whose report names the layers kept.

    dtype "float16" (the default without a calibration) or "bfloat16": `quantize(g, "float16")`.
    dtype "int8" (the default with one): `quantize(g, calib, keep=[...])`, `calib` made by
    `calibrate(g, ...)` on this graph. Convolutions and linear layers compute in integers
    (uint8 activations, int8 weights per output channel, or per tensor with
    per_channel=False). The default pipeline runs first and renames the values it fuses; a
    fused layer's output is quantized with the range calibrated for the output of the last
    original node it stands for (the relu after a conv and batch norm), which is the value it
    computes. A layer with a value the calibration has no range for stays float32, listed in
    the report's misses."""
    from ..passes import DEFAULT_PIPELINE, PassManager
    from ..passes.convert_float_precision import convert_precision
    from ..passes.quantize_int8 import quantize_int8
    from .calibration import Calibration
    if isinstance(calib, str) and dtype is None:   # quantize(g, "float16")
        calib, dtype = None, calib
    if dtype is None:
        dtype = "float16" if calib is None else "int8"
    if dtype not in DTYPES:
        raise OptionError(f"expected dtype one of {', '.join(DTYPES)}, found {dtype!r}")
    names = check_keep(graph, keep)
    if dtype == "int8":
        if not isinstance(calib, Calibration):
            raise OptionError(f"dtype='int8' needs a Calibration of the graph's activations "
                              f"(go.calibrate(graph, batches)), found {calib!r}")
        if calib.graph != graph.name:
            raise OptionError(f"the calibration was made on graph '{calib.graph}', not on "
                              f"'{graph.name}'")
        if budget is not None:
            from .sensitivity import quantize_within_budget
            if eval_inputs is None:
                raise OptionError("budget= needs eval_inputs= (the batches the budget is "
                                  "measured on)")
            return quantize_within_budget(graph, calib, budget, eval_inputs, metric, names,
                                          per_channel, check=check, inputs=inputs)
        last = quantize_int8(calib, per_channel=per_channel, keep=names, source=graph)
    elif calib is not None:
        raise OptionError(f"dtype={dtype!r} takes no calibration, found {calib!r}")
    elif budget is not None:
        raise OptionError(f"budget= applies to int8 quantization, not to dtype={dtype!r}")
    else:
        last = convert_precision(dtype, names)
    manager = PassManager([*DEFAULT_PIPELINE, last], check=check, fixed_point=True,
                          inputs=inputs)
    return manager.run(graph)


def check_keep(graph: Graph, keep: str | Iterable[str]) -> tuple[str, ...]:
    """`keep` as a tuple of names, each naming a node of `graph` (or an original node one
    stands for) or an op; an OptionError lists those that name nothing."""
    from ..ops import OPS
    names = (keep,) if isinstance(keep, str) else tuple(keep)
    if not all(isinstance(name, str) for name in names):
        raise OptionError(f"expected keep as node or op names (str), found {list(names)!r}")
    known = set(OPS) | {n.name for n in graph.nodes} | \
        {name for n in graph.nodes for name in n.provenance}
    unknown = [name for name in names if name not in known]
    if unknown:
        shown = ", ".join(n.name for n in graph.nodes[:12])
        raise OptionError(f"keep names {unknown}, which are no node of graph '{graph.name}' and "
                          f"no op; its nodes are {shown}" +
                          (f", ... ({len(graph.nodes)} in all)" if len(graph.nodes) > 12 else ""))
    return names
