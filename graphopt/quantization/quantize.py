"""`quantize` (`go.quantize`): the options checked, then `convert` (the passes) or, with an
accuracy budget, `sensitivity.quantize_within_budget`."""
from __future__ import annotations

from typing import TYPE_CHECKING, Callable, Iterable, Mapping

import numpy as np

from ..errors import OptionError
from ..ir import Graph
from .convert import DTYPES, check_calibration, check_keep, convert
from .sensitivity import quantize_within_budget

if TYPE_CHECKING:
    from ..passes.manager import OptimizeResult
    from .calibration import Calibration


def quantize(graph: Graph, calib: "Calibration | str | None" = None, dtype: str | None = None,
             keep: str | Iterable[str] = (), *, per_channel: bool = True,
             reduce_range: bool = False,
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
    per_channel=False); `reduce_range=True` quantizes the weights to 7 bits, as ORT's option
    does, so that x86 CPUs without VNNI multiply them with `vpmaddubsw` (faster, and exact only
    for weights that small; compiles choose it where the weights allow). The default pipeline
    runs first and renames the values it fuses; a fused layer's output is quantized with the
    range calibrated for the output of the last original node it stands for (the relu after a conv and batch norm), which is the value it
    computes. A layer with a value the calibration has no range for stays float32, listed in
    the report's misses."""
    if isinstance(calib, str) and dtype is None:   # quantize(g, "float16")
        calib, dtype = None, calib
    if dtype is None:
        dtype = "float16" if calib is None else "int8"
    if dtype not in DTYPES:
        raise OptionError(f"expected dtype one of {', '.join(DTYPES)}, found {dtype!r}")
    names = check_keep(graph, keep)
    if dtype == "int8":
        check_calibration(graph, calib)
        if budget is not None:
            if eval_inputs is None:
                raise OptionError("budget= needs eval_inputs= (the batches the budget is "
                                  "measured on)")
            return quantize_within_budget(graph, calib, budget, eval_inputs, metric, names,
                                          per_channel, check=check, inputs=inputs,
                                          reduce_range=reduce_range)
    elif calib is not None:
        raise OptionError(f"dtype={dtype!r} takes no calibration, found {calib!r}")
    elif budget is not None:
        raise OptionError(f"budget= applies to int8 quantization, not to dtype={dtype!r}")
    elif reduce_range:
        raise OptionError(f"reduce_range applies to int8 quantization, not to dtype={dtype!r}")
    return convert(graph, calib, dtype, names, per_channel, check, inputs, reduce_range)
