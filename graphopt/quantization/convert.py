"""`convert`: a copy of a float32 graph that computes in a narrower dtype (`quantize` checks the
options and calls it). float16 and bfloat16 need no calibration: graphopt's default pipeline
runs first (batch norms fold into their layers in float32, so each weight is rounded once),
then `convert_float16` / `convert_bfloat16`
(`passes/convert_float_precision.py`: where the casts go, which nodes stay float32). int8 needs
a `Calibration` of the graph's activations: the default pipeline, then `quantize_int8`
(`passes/quantize_int8.py`: which layers compute in integers, where values are (de)quantized)."""
from __future__ import annotations

from typing import TYPE_CHECKING, Iterable, Mapping

import numpy as np

from ..errors import OptionError
from ..ir import HALF_DTYPES, Graph

if TYPE_CHECKING:
    from .calibration import Calibration
    from ..passes.manager import OptimizeResult

DTYPES = (*HALF_DTYPES, "int8")


def convert(graph: Graph, calib: "Calibration | None", dtype: str, keep: tuple[str, ...],
            per_channel: bool = True, check: bool = False,
            inputs: Mapping[str, np.ndarray] | None = None,
            reduce_range: bool = False) -> "OptimizeResult":
    """The default pipeline, then the pass converting to `dtype` ("int8" with `calib`, a
    Calibration made on `graph`; "float16" or "bfloat16" without), `keep` (checked names)
    staying float32. The options are checked by `quantize`."""
    from ..passes import DEFAULT_PIPELINE, PassManager
    from ..passes.convert_float_precision import convert_precision
    from ..passes.fuse_conv_epilogue import fuse_conv_integer_epilogue
    from ..passes.quantize_int8 import quantize_int8
    from ..passes.tabulate_quantized_activations import tabulating
    pipeline = list(DEFAULT_PIPELINE)
    if dtype == "int8":
        last = quantize_int8(calib, per_channel=per_channel, keep=keep, source=graph,
                             reduce_range=reduce_range)
        # activations without an integer epilogue stay nodes: the conv before them is quantized
        pipeline[pipeline.index("fuse_conv_epilogue")] = fuse_conv_integer_epilogue
        # kept nodes stay float32 nodes of the quantized graph (the compile may tabulate them)
        pipeline[pipeline.index("tabulate_quantized_activations")] = tabulating(frozenset(keep))
    else:
        last = convert_precision(dtype, keep)
    manager = PassManager([*pipeline, last], check=check, fixed_point=True, inputs=inputs)
    return manager.run(graph)


def check_calibration(graph: Graph, calib) -> None:
    """OptionError unless `calib` is a Calibration made on `graph`."""
    from .calibration import Calibration
    if not isinstance(calib, Calibration):
        raise OptionError(f"dtype='int8' needs a Calibration of the graph's activations "
                          f"(go.calibrate(graph, batches)), found {calib!r}")
    if calib.graph != graph.name:
        raise OptionError(f"the calibration was made on graph '{calib.graph}', not on "
                          f"'{graph.name}'")


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
