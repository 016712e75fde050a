"""A CPU model's intermediate tensors allocated once per VM, not on every run.

After TVM's memory planning (`StaticPlanBlockMemory`) the VM still runs an `alloc_storage` for
each planned block of memory and an `alloc_tensor` for each intermediate on every call, and a
`kill_object` for each after its last use: VM calls into the pooled allocator (LeNet-5: 4
storages, 7 tensors and 10 kills around 7 kernels; made once per VM, its run took 0.92-0.97 of
the time on a Zen 4 core, `benchmarks/LOG.md#zen4-workspace`). This pass moves every planned
storage that no output of `main` is allocated in, with the tensors on it, into a function of
its own, `WORKSPACE_FUNCTION`, which returns those tensors; `main` takes them as parameters
after its own. The runtime calls that function once per VM (each thread has its own, so no two
runs share one) and passes its tensors to every run.

The outputs stay allocated per run: a caller may keep a returned tensor (`run_device`), and the
next run must not write into it. Storages are kept out of the workspace when anything other
than a tensor allocation or a kill reads them, or when their size is not a constant. The pass
runs last, after `VMShapeLower`, so the new parameters get no per-run shape checks. TVM offers
this only for CUDA graphs (`RewriteCUDAGraph`), hence this pass."""
from __future__ import annotations

from ...runtime import WORKSPACE_FUNCTION


def lift_workspace():
    """The module pass (see the module docstring)."""
    import tvm

    @tvm.transform.module_pass(opt_level=0, name="graphopt.LiftWorkspace")
    def _pass(mod, _ctx):
        main = next((gv for gv in mod.functions if gv.name_hint == "main"), None)
        lifted = _with_workspace(mod[main]) if main is not None else None
        if lifted is not None:
            mod[main], mod[tvm.ir.GlobalVar(WORKSPACE_FUNCTION)] = lifted
        return mod

    return _pass


def _with_workspace(main):
    """(`main` taking its liftable intermediates as parameters, the function making them), or
    None where there is nothing to lift."""
    from tvm import relax
    from tvm.ir import Op
    if not isinstance(main, relax.Function) or not isinstance(main.body, relax.SeqExpr):
        return None
    alloc_storage, alloc_tensor = Op.get("relax.vm.alloc_storage"), Op.get("relax.vm.alloc_tensor")
    kill = Op.get("relax.vm.kill_object")
    blocks = list(main.body.blocks)
    if any(isinstance(block, relax.DataflowBlock) for block in blocks):
        return None
    bindings = [b for block in blocks for b in block.bindings]
    if not all(isinstance(b, relax.VarBinding) for b in bindings):
        return None

    def is_call(value, op):
        return isinstance(value, relax.Call) and value.op == op

    storages = {b.var: b for b in bindings
                if is_call(b.value, alloc_storage) and _static_shape(b.value.args[0])}
    tensors = {b.var: b for b in bindings if is_call(b.value, alloc_tensor)
               and b.value.args[0] in storages and _static_shape(b.value.args[2])}
    # a storage is lifted only if tensor allocations and kills are all that read it
    for b in bindings:
        if b.var in tensors or is_call(b.value, kill):
            continue
        for var in relax.analysis.free_vars(b.value):
            storages.pop(var, None)
    # ... and no output of main is allocated in it (the outputs stay fresh every run)
    for var in _reaching(main.body.body, {b.var: b.value for b in bindings}):
        storages.pop(var, None)
    tensors = {var: b for var, b in tensors.items() if b.value.args[0] in storages}
    if not tensors:
        return None

    workspace_bindings, new_storage, outputs, param_of = [], {}, [], {}
    for b in bindings:       # the workspace function: the same allocations, in order
        if b.var in storages:
            new_storage[b.var] = relax.Var(b.var.name, b.var.ty)
            workspace_bindings.append(relax.VarBinding(new_storage[b.var], b.value))
        elif b.var in tensors:
            call = b.value
            tensor = relax.Var(b.var.name, b.var.ty)
            workspace_bindings.append(relax.VarBinding(tensor, relax.Call(
                call.op, [new_storage[call.args[0]], *call.args[1:]], call.attrs,
                call.ty_args)))
            outputs.append(tensor)
            param_of[b.var] = relax.Var(f"workspace_{b.var.name}", b.var.ty)
    lifted = set(storages) | set(tensors)
    kept = []
    for b in bindings:       # main: each lifted tensor an alias of its parameter (no instruction)
        if b.var in storages or (is_call(b.value, kill) and b.value.args[0] in lifted):
            continue
        kept.append(relax.VarBinding(b.var, param_of[b.var]) if b.var in tensors else b)
    new_main = relax.Function(list(main.params) + list(param_of.values()),
                              relax.SeqExpr([relax.BindingBlock(kept)], main.body.body),
                              main.ret_ty, main.is_pure, main.attrs, main.span)
    returned = relax.Tuple(outputs)
    workspace = relax.Function([], relax.SeqExpr([relax.BindingBlock(workspace_bindings)],
                                                 returned),
                               relax.TupleType([t.ty for t in outputs]), main.is_pure)
    pure = {"relax.force_pure": main.attrs["relax.force_pure"]} \
        if main.attrs and "relax.force_pure" in main.attrs else {}
    return new_main, workspace.with_attrs({**pure, "global_symbol": WORKSPACE_FUNCTION})


def _static_shape(expr) -> bool:
    """Whether `expr` is a shape of constant dimensions."""
    from tvm import relax, tirx
    return isinstance(expr, relax.ShapeExpr) and all(isinstance(v, tirx.IntImm)
                                                    for v in expr.values)


def _reaching(expr, value_of: dict) -> set:
    """Every variable `expr`'s value is computed from, through the bindings `value_of`."""
    from tvm import relax
    seen, pending = set(), list(relax.analysis.free_vars(expr))
    while pending:
        var = pending.pop()
        if var in seen:
            continue
        seen.add(var)
        if var in value_of:
            pending.extend(relax.analysis.free_vars(value_of[var]))
    return seen
