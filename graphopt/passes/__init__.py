"""Graph passes: each is a function `Graph -> PassResult(graph, changed, stats)` in its own
module, registered by name in `PASSES`; `optimize` runs a list of them through a `PassManager`.

    res = go.optimize(g, passes=["fold_batch_norm", "fuse_conv_epilogue"], check=True)
    print(res.report)
"""
from __future__ import annotations

from typing import Mapping, Sequence

import numpy as np

from ..ir import Graph
from . import (convert_float_precision, eliminate_common_subexpressions,  # noqa: F401
               eliminate_dead_code, fold_batch_norm, fold_constants, fold_pad, fuse_conv_epilogue,
               remove_identities, tabulate_quantized_activations, trim_conv_taps)
from .bisection import BisectResult, bisect
from .manager import (PASSES, OptimizeResult, Pass, PassManager, PassRecord, PassResult,
                      fingerprint, pass_list, probe_inputs, register_pass)

# Cleanups first so that the folds see plain conv -> batch_norm chains, fusion last.
DEFAULT_PIPELINE = ("remove_identities", "fold_constants", "eliminate_common_subexpressions",
                    "fold_pad", "trim_conv_taps", "fold_batch_norm", "fuse_conv_epilogue",
                    "tabulate_quantized_activations", "eliminate_dead_code")


def optimize(graph: Graph, passes: str | Pass | Sequence[str | Pass] | None = None, *,
             check: bool = False, fixed_point: bool | None = None,
             inputs: Mapping[str, np.ndarray] | None = None,
             tolerance: float | None = None) -> OptimizeResult:
    """Run `passes` (names or pass functions, or one str of comma-separated names; None:
    `DEFAULT_PIPELINE`, repeated to a fixed point) on `graph`, which is left unchanged.
    `check=True` compares the graph before and after every pass on `inputs` (default: a seeded
    random probe) and raises PassError on a change. A pass that fails, changes its input or
    returns no PassResult raises PassError naming it; an unknown pass name, OptionError."""
    if fixed_point is None:
        fixed_point = passes is None
    manager = PassManager(DEFAULT_PIPELINE if passes is None else passes, check=check,
                          fixed_point=fixed_point, inputs=inputs, tolerance=tolerance)
    return manager.run(graph)


__all__ = ["BisectResult", "DEFAULT_PIPELINE", "PASSES", "OptimizeResult", "Pass", "PassManager",
           "PassRecord", "PassResult", "bisect", "fingerprint", "optimize", "pass_list",
           "probe_inputs", "register_pass"]
