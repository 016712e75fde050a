"""Concatenations without copies (CPU): the inputs of each concatenation that the target pass
`place_concatenations` marked `in_place` are computed straight into their slices of its output,
and its copy kernel is not called.

The marked concatenation lowers to a kernel that TVM does not fuse, carrying IN_PLACE_ATTR (the
byte offsets of its inputs' slices, which the graph pass checked to be contiguous and aligned).
This pass runs on the VM's explicit allocations (after TVM's CallTIRRewrite, before its
memory planning). Where every input is a fresh tensor that one kernel writes (an allocation whose
first use is a kernel's output argument, possibly seen through reshapes, which are views), the
output's allocation moves before the first of those kernels, each input becomes a view of its
slice, and the concatenation's call is dropped. The views are TVM's own `relax.memory.view`
(plus `ensure_zero_offset`, which makes a view's data pointer its start, as compiled kernels
expect), which TVM's memory planner (`StaticPlanBlockMemory`) counts as uses of the tensor they
view, so the concatenated tensor lives from its first input's kernel to its last reader. A
concatenation whose inputs the graph pass could not see fully (one that fusion made part of
another kernel's outputs, or a tensor a later concatenation already placed) keeps its copy."""
from __future__ import annotations

from ...ops.shape import IN_PLACE_ATTR


def concatenate_in_place():
    """The module pass computing concatenations' inputs in place (see the module docstring);
    it runs on the explicit allocations CallTIRRewrite leaves."""
    import tvm
    from tvm import relax

    @tvm.transform.module_pass(opt_level=0, name="graphopt.ConcatenateInPlace")
    def _pass(mod, _ctx):
        concat_funcs = {gv: [int(o) for o in f.attrs[IN_PLACE_ATTR]]
                        for gv, f in mod.functions.items()
                        if f.attrs is not None and IN_PLACE_ATTR in f.attrs}
        if not concat_funcs:
            return mod
        for gv, func in list(mod.functions.items()):
            if isinstance(func, relax.Function):
                mod[gv] = _rewrite_function(func, mod, concat_funcs)
        called = _called_global_vars(mod)
        for gv in concat_funcs:
            if gv not in called:
                mod = _without(mod, gv)
        return mod

    return _pass


class _Block:
    """One binding block's allocations, their aliases and the calls that write them."""

    def __init__(self, bindings, mod, returned):
        import tvm
        from tvm import relax, tirx
        self.alloc_at = {}      # allocation var -> index of its binding
        self.root = {}          # var -> the allocation var it names
        self.first_use = {}     # allocation var -> (binding index, call) of its first use
        alloc_op = tvm.ir.Op.get("relax.builtin.alloc_tensor")
        reshape_op = tvm.ir.Op.get("relax.reshape")
        escaped = set()
        for i, binding in enumerate(bindings):
            value = binding.value
            if isinstance(value, relax.Call) and value.op.same_as(alloc_op):
                self.alloc_at[binding.var] = i
                self.root[binding.var] = binding.var
            elif isinstance(value, relax.Var) and value in self.root:
                self.root[binding.var] = self.root[value]
            elif isinstance(value, relax.Call) and value.op.same_as(reshape_op) and \
                    value.args[0] in self.root:     # a view of the same bytes
                self.root[binding.var] = self.root[value.args[0]]
            elif isinstance(value, relax.Call) and not any(
                    isinstance(a, (relax.Call, relax.Tuple, relax.TupleGetItem, relax.If))
                    for a in value.args):
                for arg in value.args:
                    alloc = self.root.get(arg) if isinstance(arg, relax.Var) else None
                    if alloc is not None and alloc not in self.first_use:
                        self.first_use[alloc] = (i, value)
            else:   # a tuple, a nested call...: the tensors it names are left as they are
                escaped |= {self.root[v] for v in _all_vars(value) if v in self.root}
        self.unmovable = escaped | {self.root[v] for v in returned if v in self.root}
        self.prim_funcs = {gv for gv, f in mod.functions.items() if isinstance(f, tirx.PrimFunc)}

    def written_by_one_kernel(self, var, before: int):
        """The allocation `var` names, where its first use is as an argument (once) of a kernel
        call before binding `before`, which therefore writes it, and it is not returned or
        named by anything but calls; else None."""
        from tvm import relax
        alloc = self.root.get(var) if isinstance(var, relax.Var) else None
        if alloc is None or alloc in self.unmovable or alloc not in self.first_use:
            return None
        index, call = self.first_use[alloc]
        args = [self.root.get(a) if isinstance(a, relax.Var) else None for a in call.args]
        if index >= before or call.op not in self.prim_funcs or args.count(alloc) != 1:
            return None
        return alloc


def _rewrite_function(func, mod, concat_funcs):
    from tvm import relax
    body = func.body
    if not isinstance(body, relax.SeqExpr):
        return func
    returned = _all_vars(body.body)
    blocks = [_rewrite_block(block, mod, concat_funcs, returned) for block in body.blocks]
    return relax.Function(func.params, relax.SeqExpr(blocks, body.body), func.ret_ty,
                          func.is_pure, func.attrs, func.span)


def _rewrite_block(block, mod, concat_funcs, returned):
    from tvm import relax
    if isinstance(block, relax.DataflowBlock):
        return block
    bindings = list(block.bindings)
    info = _Block(bindings, mod, returned)
    placed = {}         # allocation var -> (allocation var it is a slice of, byte offset)
    dropped = set()     # indices of concatenation calls no longer made
    for i in reversed(range(len(bindings))):
        call = bindings[i].value
        if not (isinstance(call, relax.Call) and call.op in concat_funcs):
            continue
        *inputs, out = call.args
        out = info.written_by_one_kernel(out, i + 1)
        if out is None or info.first_use[out][0] != i:
            continue
        slices = _slices(inputs, concat_funcs[call.op], info, i)
        if slices is None or any(alloc in placed for alloc, _ in slices):
            continue
        for alloc, offset in slices:
            placed[alloc] = (out, offset)
        dropped.add(i)
    if not placed:
        return block
    return relax.BindingBlock(_placed_bindings(bindings, info, placed, dropped), block.span)


def _slices(inputs, offsets: list[int], info: _Block, at: int):
    """[(allocation, byte offset in the concatenation)] for the inputs of the concatenation
    bound at `at`, or None where one is not a distinct fresh tensor one kernel writes."""
    allocs = [info.written_by_one_kernel(var, at) for var in inputs]
    if any(a is None for a in allocs) or \
            any(a.same_as(b) for i, a in enumerate(allocs) for b in allocs[:i]):
        return None
    return list(zip(allocs, offsets))


def _placed_bindings(bindings, info: _Block, placed, dropped):
    """The block's bindings with each tree of placed allocations bound where its first member
    was: the outermost allocation, then each slice as a view of its parent (parents first)."""
    from tvm import relax
    children = {}
    for alloc, (parent, _) in placed.items():
        children.setdefault(parent, []).append(alloc)

    def members(alloc):
        yield alloc
        for child in children.get(alloc, ()):
            yield from members(child)

    trees = {alloc: list(members(alloc)) for alloc in children if alloc not in placed}
    start = {min(info.alloc_at[m] for m in tree): root for root, tree in trees.items()}
    moved = {m for tree in trees.values() for m in tree}
    builder = relax.BlockBuilder()
    result = []
    for i, binding in enumerate(bindings):
        if i in start:
            tree = trees[start[i]]
            result.append(bindings[info.alloc_at[tree[0]]])
            for alloc in tree[1:]:
                result.extend(_view_bindings(builder, alloc, *placed[alloc]))
        if i in dropped or binding.var in moved:
            continue
        result.append(binding)
    return result


def _view_bindings(builder, alloc, parent, offset: int):
    """Bindings making `alloc` the slice of `parent` at `offset` bytes."""
    from tvm import relax
    ty = alloc.ty
    view = builder.normalize(relax.op.memory.view(
        parent, [int(d) for d in ty.shape.values], str(ty.dtype), offset))
    view_var = relax.Var(f"{alloc.name}_slice", view.ty)
    zero_offset = builder.normalize(relax.op.memory.ensure_zero_offset(view_var))
    return [relax.VarBinding(view_var, view), relax.VarBinding(alloc, zero_offset)]


def _all_vars(expr):
    """Every relax variable `expr` names."""
    import tvm_ffi
    from tvm import relax
    found = []
    tvm_ffi.structural_map(expr, (relax.Var, lambda v: found.append(v) or v), order="pre")
    return found


def _called_global_vars(mod):
    """The functions some relax function of `mod` calls."""
    import tvm_ffi
    from tvm import ir, relax
    called = set()

    def visit(call):
        if isinstance(call.op, ir.GlobalVar):
            called.add(call.op)
        return call

    for func in mod.functions.values():
        if isinstance(func, relax.Function):
            tvm_ffi.structural_map(func, (relax.Call, visit), order="pre")
    return called


def _without(mod, gv):
    """`mod` without the function `gv`."""
    import tvm
    kept = {g: f for g, f in mod.functions.items() if not g.same_as(gv)}
    return tvm.IRModule(kept, attrs=mod.attrs, global_infos=mod.global_infos)
