"""`quantize`: a copy of a float32 graph that computes in a narrower dtype. float16 and bfloat16
need no calibration: graphopt's default pipeline runs first (batch norms fold into their layers
in float32, so each weight is rounded once), then `convert_float16` / `convert_bfloat16`
(`passes/convert_float_precision.py`: where the casts go, which nodes stay float32)."""
from __future__ import annotations

from typing import TYPE_CHECKING, Iterable, Mapping

import numpy as np

from ..errors import OptionError
from ..ir import HALF_DTYPES, Graph

if TYPE_CHECKING:
    from ..passes.manager import OptimizeResult

DTYPES = (*HALF_DTYPES, "int8")


def quantize(graph: Graph, dtype: str = "float16", keep: str | Iterable[str] = (), *,
             check: bool = False,
             inputs: Mapping[str, np.ndarray] | None = None) -> "OptimizeResult":
    """`graph` (left unchanged) computing in `dtype`, "float16" or "bfloat16", its inputs and
    outputs still float32; returns an OptimizeResult (`.graph`, `.report`). `keep`: names of
    nodes (or of the original nodes a fused node stands for) and of ops that stay float32.
    `check=True` compares the graph before and after every pass on `inputs` (default: a seeded
    probe) within the tolerance of the least precise dtype computed (`compare.tolerance_for`)."""
    from ..passes import DEFAULT_PIPELINE, PassManager
    from ..passes.convert_float_precision import convert_precision
    if dtype == "int8":
        raise OptionError("dtype='int8' needs a calibration of the activations and is not "
                          "available in this version of graphopt; float16 and bfloat16 are")
    if dtype not in DTYPES:
        raise OptionError(f"expected dtype one of {', '.join(DTYPES)}, found {dtype!r}")
    names = check_keep(graph, keep)
    manager = PassManager([*DEFAULT_PIPELINE, convert_precision(dtype, names)], check=check,
                          fixed_point=True, inputs=inputs)
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
