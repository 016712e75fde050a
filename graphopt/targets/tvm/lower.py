"""IR -> Relax: one `main` function whose parameters are the graph inputs (in order), with the
weights embedded as constants; every node is lowered by its op's `lower_tvm`."""
from __future__ import annotations

from ...errors import GraphoptError, LoweringError
from ...ir import Graph
from ...ops.base import relax_constant, relax_type


def to_relax(graph: Graph, weights: str = "embedded"):
    """Build the Relax IRModule of `graph`. With `weights="params"`, every constant tensor
    that is not a scalar becomes a parameter of `main` after the graph inputs, so the library
    holds code only; returns (module, [(weight name, array)] in parameter order) then."""
    from tvm import relax

    bb = relax.BlockBuilder()
    params = [relax.Var(v.name, relax.TensorType(v.shape, v.dtype)) for v in graph.inputs]
    env = {id(v): p for v, p in zip(graph.inputs, params)}
    lifted = [c for c in graph.constants.values() if weights == "params" and c.data.ndim > 0]
    for c in lifted:
        var = relax.Var("w_" + _relax_name(c.name), relax.TensorType(c.shape, c.dtype))
        params.append(var)
        env[id(c)] = var
    attrs = {"num_input": len(graph.inputs)} if lifted else None
    with bb.function("main", params, attrs=attrs):
        with bb.dataflow():
            for c in graph.constants.values():
                if id(c) not in env:
                    env[id(c)] = relax_constant(c.data, c.dtype)
            outputs = {id(v) for v in graph.outputs}
            for node in graph.topological_order():
                args = [env[id(v)] for v in node.inputs]
                try:
                    expr = node.op.lower_tvm(bb, *args)
                except GraphoptError as e:
                    if e.node is not None:
                        raise
                    raise type(e)(e.detail, node=node.name, op=node.op_name) from None
                except Exception as e:  # TVM raises many types; all mean this node failed to lower
                    raise LoweringError(f"{type(e).__name__}: {str(e).splitlines()[0]}",
                                        node=node.name, op=node.op_name) from e
                if len(node.outputs) == 1:
                    results = [expr]
                else:
                    tup = bb.emit(expr)
                    results = [relax.TupleGetItem(tup, i) for i in range(len(node.outputs))]
                for out, e in zip(node.outputs, results):
                    # Graph outputs leave the dataflow block; the rest stay local.
                    emit = bb.emit_output if id(out) in outputs else bb.emit
                    var = emit(e, name_hint=_relax_name(out.name))
                    _check_type(node, out, var)
                    env[id(out)] = var
            # A graph output that is an input or a constant still needs a binding out of the block.
            for v in graph.outputs:
                if v.producer is None:
                    env[id(v)] = bb.emit_output(env[id(v)])
        result = [env[id(v)] for v in graph.outputs]
        bb.emit_func_output(result[0] if len(result) == 1 else relax.Tuple(result))
    if weights == "params":
        return bb.get(), [(c.name, c.data) for c in lifted]
    return bb.get()


def _relax_name(name: str) -> str:
    return "".join(ch if ch.isalnum() or ch == "_" else "_" for ch in name)


def _check_type(node, out, var) -> None:
    """The lowering must produce what the op's inference promised."""
    try:
        found = relax_type(var)
    except (TypeError, ValueError, AttributeError):
        found = None
    if found != out.type:
        raise LoweringError(f"lowering produced {var.ty}, expected {out.type}", node=node.name,
                            op=node.op_name)
