"""Weights as runtime parameters instead of constants baked into the library.

`lift_weights(mod, graph)` turns every Relax constant that is one of the graph's weights into a
parameter of `main` (after the graph inputs), so an exported library holds code only: the caller
binds the weights at load time (`LoadedModel.bind_weights`). This keeps big models (vgg16: 528 MiB
of weights) small enough to carry, e.g. to a GPU machine that rebuilds the weights from the zoo.
Constants an op's lowering makes itself (scalars, shapes) stay embedded.
"""
from __future__ import annotations

from ...ir import Graph
from ...runtime import content_key


def lift_weights(mod, graph: Graph):
    """(the module with weights as extra `main` parameters, [(weight name, array)] in their
    parameter order). A weight used several times becomes one parameter."""
    from tvm import relax

    by_key = {content_key(c.data): (name, c.data) for name, c in graph.constants.items()
              if c.data.ndim > 0}
    lifted: dict[str, tuple] = {}   # weight name -> (relax.Var, array)

    @relax.expr_functor.mutator
    class Lift(relax.PyExprMutator):
        def visit_generic_const_(self, const):
            value = const.value.numpy() if hasattr(const.value, "numpy") else None
            found = by_key.get(content_key(value)) if value is not None and value.ndim else None
            if found is None:
                return const
            name, array = found
            if name not in lifted:
                var = relax.Var("w_" + "".join(ch if ch.isalnum() else "_" for ch in name),
                                relax.TensorType(array.shape, str(array.dtype)))
                lifted[name] = (var, array)
            return lifted[name][0]

    main = mod["main"]
    body = Lift().visit_expr(main.body)
    params = list(main.params) + [var for var, _ in lifted.values()]
    mod["main"] = relax.Function(params, body, main.ret_ty, main.is_pure, main.attrs) \
        .with_attr("num_input", len(main.params))
    return mod, [(name, array) for name, (_, array) in lifted.items()]
