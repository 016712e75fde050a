"""The reference interpreter: runs any graph with the ops' numpy kernels, each value in its own
dtype (as written: float32, or float16 / bfloat16 computed in float32 and rounded, as their
kernels do) or every float in float64 (the high-precision reference), optionally keeping every
intermediate value."""
from __future__ import annotations

from typing import Mapping

import numpy as np

from ..errors import GraphoptError
from ..ir import Graph, is_float_dtype
from ..signature import Signature


def _widen(array: np.ndarray, dtype) -> np.ndarray:
    """Floating arrays move to the requested float dtype; integers and bools stay as they are."""
    if dtype is None or not is_float_dtype(array.dtype):
        return array
    return array.astype(dtype, copy=False)


def interpret(graph: Graph, inputs: Mapping[str, np.ndarray], *, dtype=np.float32,
              keep: bool = False) -> dict[str, np.ndarray]:
    """Run `graph` on `inputs` (name -> array). Returns output name -> array, or with `keep=True`
    every value (inputs, constants, node outputs) by name.

    `dtype=np.float64` computes every floating value in float64: the values a graph stores
    (constants) or converts (a `cast` to float16 rounds) keep their rounding, nothing else
    rounds. The default keeps each value's own dtype (float32 graphs compute in float32; float16
    and bfloat16 values are computed in float32 and rounded to their dtype, op by op)."""
    if not graph.outputs:
        raise GraphoptError(f"graph '{graph.name}' has no outputs: nothing to compute (set them "
                            f"with graph.set_outputs, or b.output in the DSL)")
    widen = np.float64 if np.dtype(dtype) == np.float64 else None
    env: dict[int, np.ndarray] = {}
    feeds = Signature.of(graph).check(inputs)
    for v in graph.inputs:
        env[id(v)] = _widen(feeds[v.name], widen)
    for c in graph.constants.values():
        env[id(c)] = _widen(c.data, widen)
    named = {}
    for node in graph.topological_order():
        args = [env[id(v)] for v in node.inputs]
        try:
            with np.errstate(all="ignore"):
                results = node.op.run(*args)
        except GraphoptError as e:
            if e.node is None:     # a kernel's own check (an index out of range): say where
                raise type(e)(e.detail, node=node.name, op=node.op_name) from e
            raise
        except Exception as e:  # a kernel bug must still say where it happened
            raise GraphoptError(f"reference kernel failed: {type(e).__name__}: {e}",
                                node=node.name, op=node.op_name) from e
        for out, array in zip(node.outputs, results):
            expected = out.type.shape
            if array.shape != expected:
                raise GraphoptError(f"reference kernel returned shape {array.shape}, expected "
                                    f"{expected}", node=node.name, op=node.op_name)
            # numpy quietly widens some results (bfloat16 matmul and clip give float32).
            if widen is None and str(array.dtype) != out.dtype:
                raise GraphoptError(f"reference kernel returned {array.dtype}, expected "
                                    f"{out.dtype}", node=node.name, op=node.op_name)
            env[id(out)] = _widen(np.asarray(array), widen)
        if keep:
            named.update({out.name: env[id(out)] for out in node.outputs})
    result = {v.name: env[id(v)] for v in graph.outputs}
    if keep:
        named.update({v.name: env[id(v)] for v in graph.inputs})
        named.update({c.name: env[id(c)] for c in graph.constants.values()})
        named.update(result)
        return named
    return result
