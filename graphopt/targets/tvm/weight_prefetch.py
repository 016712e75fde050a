"""Software prefetch of a conv's next input-channel block of weights: a pass of graphopt's CPU
TIR pipeline (`tir_lowering.py`), run on the scheduled kernels before TVM lowers them.

The conv2d rule's small-plane schedule (`schedules/conv2d.py`, `_input_channel_block`) keeps
one input-channel block of packed weights in L1 while every tile of the output plane uses it,
then moves to the next block. Inside a whole run the next block comes from L3 or memory (a
model's weights do not stay in L2 from one run to the next), and the first output row of
each block waits on it: ResNet-18's layer4 convs took 1.58-1.61 ms inside the model against
1.26-1.28 alone. The rule annotates the loop over a block's output rows with PREFETCH_ATTR
(the block's input channels); this pass puts at the top of that loop's body a short loop of
prefetches that together, over the block's rows, fetch every cache line of the next block
(each row its share), clamped to the weight buffer. The prefetches sit outside the loops that
keep the accumulators in registers: inside the innermost reduction loop a prefetch (a call to
LLVM) kept LLVM from holding them there, and every step stored them back (a 3x3 stride-2 256
-> 512 ch conv ran 2x slower).

The Winograd GEMMs (`schedules/winograd.py`) read their transformed weights as contiguous
slices, one per (point, output-channel block, input-channel block), each used by every tile
of the plane and then left. The rule annotates the loop over a slice's tiles with
NEXT_SLICE_ATTR (the slice's elements); this pass gives each iteration of that loop its share
of prefetches of the slice that follows in memory (clamped to the buffer). ResNet-18's
128-channel 28x28 F(4x4) convs (2.4 MB of weights each) took 0.90-1.04 ms inside the model
against 0.74-0.75 alone; with the prefetches 0.79-0.91."""
from __future__ import annotations

import math

# The loop annotation: input channels per block of the packed weight the loop's rows use.
PREFETCH_ATTR = "graphopt.prefetch_next_block"
# The loop annotation: elements of the contiguous weight slice the loop's iterations read; they
# prefetch the slice that follows it in memory, each iteration its share of the lines (the
# Winograd GEMMs, which stream their transformed weights slice after slice).
NEXT_SLICE_ATTR = "graphopt.prefetch_next_slice"
CACHE_LINE_BYTES = 64


def weight_prefetch_pass():
    """The pass: `with_weight_prefetches` on every PrimFunc."""
    from tvm.tirx.transform import prim_func_pass
    return prim_func_pass(lambda func, _mod, _ctx: with_weight_prefetches(func), opt_level=0,
                          name="graphopt.WeightPrefetch")


def with_weight_prefetches(func):
    """`func` with each PREFETCH_ATTR loop prefetching its share of the next weight block (and
    the annotation removed). TVM's Python API has no TIR mutator: tvm_ffi's structural_map
    rewrites the loops."""
    import tvm_ffi
    from tvm import tirx
    params = list(func.params)

    def rewrite(loop):
        if PREFETCH_ATTR in loop.annotations:
            attr, prefetch_loop = PREFETCH_ATTR, _prefetch_loop
        elif NEXT_SLICE_ATTR in loop.annotations:
            attr, prefetch_loop = NEXT_SLICE_ATTR, _next_slice_loop
        else:
            return loop
        annotations = {k: v for k, v in loop.annotations.items() if k != attr}
        body = loop.body
        prefetches = prefetch_loop(loop, int(loop.annotations[attr]), params)
        if prefetches is not None:
            body = tirx.SeqStmt([prefetches, body])
        return tirx.For(loop.loop_var, loop.min, loop.extent, loop.kind, body,
                        loop.thread_binding, annotations)

    return tvm_ffi.structural_map(func, (tirx.For, rewrite), order="post")


def _prefetch_loop(loop, ic_block: int, params):
    """The loop of prefetches for one iteration of `loop` (a row of the conv's output plane), or
    None where its body has no single update block reading a packed weight parameter (one of
    `params`) [O / b, KH, KW, I, b]: a block is `ic_block` input channels of every tap."""
    import tvm
    from tvm import tirx
    found = _first_weight_read(loop, params)
    if found is None:
        return None
    weight, start = found        # the element the body's first step reads: the block's start
    shape = [int(d) for d in weight.shape]
    in_channels, lanes = shape[3], shape[4]
    k_h, k_w = shape[1], shape[2]
    taps, rows = k_h * k_w, int(loop.extent)
    line = CACHE_LINE_BYTES * 8 // tvm.runtime.DataType(str(weight.dtype)).bits
    per_tap = -(-ic_block * lanes // line)           # lines of one tap's block
    ty, index_ty = str(loop.loop_var.ty), str(start[3].ty)
    c = lambda value: tirx.const(value, ty)
    as_index = lambda e: tirx.Cast(index_ty, e) if str(e.ty) != index_ty else e
    row = loop.loop_var - loop.min
    # Each row takes whole taps where there are as many taps as rows (a 3x3 conv's 9 on 7
    # rows: 2 taps a row, the last rows repeating the last tap), else a share of one tap's
    # lines: the address of each line is then the tap's plus a multiple of the line, with no
    # division inside the loop.
    t, k = tirx.Var("tap", ty), tirx.Var("line", ty)
    if taps >= rows:
        per_row = -(-taps // rows)
        tap = tirx.min(row * c(per_row) + t, c(taps - 1))
        first, lines = c(0), per_tap
    else:
        per_row, rows_per_tap = 1, rows // taps
        tap = tirx.min(row // c(rows_per_tap), c(taps - 1))
        lines = -(-per_tap // rows_per_tap)
        first = (row % c(rows_per_tap)) * c(lines)
    nth = tirx.min(first + k, c(per_tap - 1)) if taps < rows else k
    offset = nth * c(line)
    next_block = tirx.min(start[3] + tirx.const(ic_block, index_ty),
                          tirx.const(in_channels - ic_block, index_ty))
    index = [start[0], as_index(tap // c(k_w)), as_index(tap % c(k_w)),
             next_block + as_index(offset // c(lanes)), as_index(offset % c(lanes))]
    inner = tirx.For(k, c(0), c(lines), tirx.ForKind.SERIAL, _prefetch(weight, index))
    return tirx.For(t, c(0), c(per_row), tirx.ForKind.SERIAL, inner)


def _next_slice_loop(loop, slice_elements: int, params):
    """The loop of prefetches for one iteration of `loop`, whose iterations together read
    `slice_elements` contiguous elements of a 5-D weight parameter (one of `params`) from the
    element its body reads first: its share of the lines of the slice that follows (clamped to
    the buffer), or None where its body has no single update block reading such a weight."""
    import tvm
    from tvm import tirx
    found = _first_weight_read(loop, params)
    if found is None:
        return None
    weight, start = found
    shape = [int(d) for d in weight.shape]
    index_ty = str(start[0].ty)
    c = lambda value: tirx.const(value, index_ty)
    as_index = lambda e: tirx.Cast(index_ty, e) if str(e.ty) != index_ty else e
    flat = as_index(start[0])
    for index, extent in zip(start[1:], shape[1:]):
        flat = flat * c(extent) + as_index(index)
    line = CACHE_LINE_BYTES * 8 // tvm.runtime.DataType(str(weight.dtype)).bits
    slice_lines = -(-slice_elements // line)
    lines = -(-slice_lines // int(loop.extent))      # each iteration's share
    k = tirx.Var("line", index_ty)
    nth = tirx.min(as_index(loop.loop_var - loop.min) * c(lines) + k, c(slice_lines - 1))
    element = tirx.min(flat + c(slice_elements) + nth * c(line), c(math.prod(shape) - 1))
    index, rest = [], element
    for extent in reversed(shape[1:]):
        index.insert(0, rest % c(extent))
        rest = rest // c(extent)
    index.insert(0, rest)
    return tirx.For(k, c(0), c(lines), tirx.ForKind.SERIAL, _prefetch(weight, index))


def _first_weight_read(loop, params):
    """(the 5-D weight parameter the update block in `loop`'s body reads, the indices of the
    element it reads first in an iteration of `loop`: every loop inside at 0), or None."""
    from tvm import tirx
    from tvm.sym.analyzer import Analyzer
    found = _update_block_and_weight_load(loop.body, params)
    if found is None:
        return None
    realize, load, inner_vars = found
    bound = {iv.var: value for iv, value in zip(realize.block.iter_vars, realize.iter_values)}
    bound_inner = {v: tirx.const(0, str(v.ty)) for v in inner_vars}
    analyzer = Analyzer()
    return load.source, [analyzer.simplify(_substitute(_substitute(i, bound), bound_inner))
                         for i in load.indices]


def _prefetch(weight, index):
    """TIR: prefetch the cache line of weight[index]: llvm.prefetch(address, read, locality 3
    (keep in all levels), data cache)."""
    from tvm import tirx
    address = tirx.call_intrin("handle", "tirx.address_of", tirx.BufferLoad(weight, index))
    return tirx.Evaluate(tirx.call_llvm_intrin("void", "llvm.prefetch.p0", address,
                                               tirx.const(0, "int32"), tirx.const(3, "int32"),
                                               tirx.const(1, "int32")))


def _update_block_and_weight_load(body, params):
    """(the conv's update block realize, its load of the 5-D weight parameter, the loop
    variables inside `body`), or None."""
    import tvm
    import tvm_ffi
    from tvm import tirx
    realizes, inner_vars, loads = [], [], []

    def visit(node):
        if isinstance(node, tirx.For):
            inner_vars.append(node.loop_var)
        elif node.block.name_hint.endswith("_update"):
            realizes.append(node)
        return node

    tvm_ffi.structural_map(body, ((tirx.For, tvm.s_tir.SBlockRealize), visit), order="pre")
    if len(realizes) != 1:
        return None

    def weight_load(node):
        if len(node.indices) == 5 and any(node.source.same_as(p) for p in params):
            loads.append(node)
        return node

    tvm_ffi.structural_map(realizes[0].block.body, (tvm.ir.TensorLoad, weight_load), order="pre")
    if len({load.source for load in loads}) != 1:
        return None
    return realizes[0], loads[0], inner_vars


def _substitute(expr, values: dict):
    """`expr` with each variable in `values` replaced by its value."""
    import tvm_ffi
    from tvm import tirx

    def replace(var):
        return next((value for v, value in values.items() if var.same_as(v)), var)

    return tvm_ffi.structural_map(expr, (tirx.Var, replace), order="post")
