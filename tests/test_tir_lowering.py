"""graphopt's CPU lowering (targets/tvm/tir_lowering.py): kernel buffers on the stack, within a
budget, and the same outputs; weight prefetches that cover each next input-channel block."""
import numpy as np
import pytest

pytest.importorskip("tvm")

import tvm  # noqa: E402

import graphopt as go  # noqa: E402
from graphopt.frontends import dsl  # noqa: E402
from graphopt.targets.tvm.cpu import cpu_assembly  # noqa: E402
from graphopt.targets.tvm.tir_lowering import ON_STACK, on_stack  # noqa: E402
from graphopt.targets.tvm.schedules import SCHEDULE_ATTR  # noqa: E402
from graphopt.targets.tvm.weight_prefetch import PREFETCH_ATTR  # noqa: E402
from test_schedules import _scheduled_kernels  # noqa: E402

# 48 KiB of L1: small output planes take input-channel blocks of weights (`schedules/conv2d.py`)
BLOCKED_L1_CPU = "sapphirerapids"


def _depthwise_graph():
    """A depthwise conv whose per-channel input copy (56x56 padded, 13 KB) is allocated inside
    its parallel loop over channels."""
    with dsl.Builder("depthwise", seed=1) as b:
        x = b.input("x", (1, 32, 56, 56))
        return b.output(dsl.relu6(dsl.conv2d(x, 32, 3, padding=1, groups=32)))


def test_buffers_inside_parallel_loops_are_not_workspace_calls():
    model = go.compile(_depthwise_graph(), "cpu", threads=1, mcpu="skylake-avx512")
    assert "depthwise" in set(model.schedules.values()), model.schedules
    assert "TVMBackendAllocWorkspace" not in cpu_assembly(model.executable)


@pytest.mark.parametrize("bounds_check", [False, True], ids=["", "bounds_checked"])
def test_stack_buffers_compute_the_same(bounds_check):
    graph = _depthwise_graph()
    feeds = {"x": np.random.default_rng(0).standard_normal((1, 32, 56, 56)).astype(np.float32)}
    report = go.compare(graph, go.compile(graph, "cpu", bounds_check=bounds_check), feeds)
    assert report.ok, str(report)


def test_stack_budget_bounds_the_buffers_marked():
    """Buffers are marked in program order while they fit the budget together; one over the
    budget, of a size only known at run time, or empty (a zero-size batch), is left to TVM."""
    from tvm.script import tirx as T

    @T.prim_func
    def four_buffers(a: T.Buffer((4096,), "float32"), n: T.int32):
        small = T.alloc_buffer((1024,), "float32")      # 4 KiB
        large = T.alloc_buffer((16384,), "float32")     # 64 KiB
        dynamic = T.alloc_buffer((n,), "float32")
        empty = T.alloc_buffer((0,), "float32")
        for i in range(1024):
            small[i] = a[i]
        for i in range(16384):
            large[i] = small[i % 1024]
        for i in range(n):
            dynamic[i] = large[i]
        for i in range(4096):
            a[i] = dynamic[i]
        for i in range(0):
            empty[i] = a[i]

    marked = {}

    def collect(alloc):
        marked[alloc.buffer.name] = ON_STACK in alloc.annotations
        return alloc

    import tvm_ffi
    tvm_ffi.structural_map(on_stack(four_buffers, budget=32 * 1024),
                           (tvm.tirx.AllocBuffer, collect))
    assert marked == {"small": True, "large": False, "dynamic": False, "empty": False}, marked


def _small_plane_graph(batch: int = 1):
    """ResNet-18's layer4 shapes, narrowed: a stride-2 3x3 conv to a 7x7 plane, then a 3x3 conv
    on it (the conv2d rule blocks their input channels on 48 KiB L1 cores; 0.6 MB of weights
    each, above PREFETCH_MIN_WEIGHT_BYTES)."""
    with dsl.Builder("small_plane", seed=0) as b:
        x = b.input("x", (batch, 128, 14, 14))
        y = dsl.relu(dsl.conv2d(x, 128, 3, stride=2, padding=1))
        return b.output(dsl.relu(dsl.conv2d(y, 128, 3, padding=1)))


def _loops(stmt):
    import tvm_ffi
    found = []

    def visit(loop):
        found.append(loop)
        return loop

    tvm_ffi.structural_map(stmt, (tvm.tirx.For, visit), order="pre")
    return found


def _prefetched_load(stmt):
    """The one weight element whose address the prefetches in `stmt` take."""
    import tvm_ffi
    addresses = []

    def collect(call):
        if call.op.name == "tirx.address_of":
            addresses.append(call.args[0])
        return call

    tvm_ffi.structural_map(stmt, (tvm.ir.Call, collect))
    (load,) = addresses
    return load


@pytest.mark.parametrize("shape, out_channels, kernel, stride", [
    ((1, 128, 14, 14), 128, 3, 2), ((1, 128, 7, 7), 128, 3, 1), ((1, 400, 7, 7), 400, 1, 1),
    ((1, 192, 17, 17), 192, (1, 7), 1)])
def test_blocked_convs_prefetch_every_line_of_the_next_weight_block(shape, out_channels,
                                                                     kernel, stride,
                                                                     direct_small_planes):
    """The prefetch loops of each row of a weight block, evaluated for every block, row, tap and
    line: together the rows of block i prefetch every cache line of block i + 1 (the last
    block its own), and no address leaves the weight buffer. 3x3 convs (more taps than rows),
    RegNetX's 1x1 convs and Inception's 1x7 (fewer)."""
    from graphopt.targets.tvm.weight_prefetch import with_weight_prefetches
    with dsl.Builder("blocked", seed=0) as b:
        x = b.input("x", shape)
        padding = (0, 3) if kernel == (1, 7) else kernel // 2
        graph = b.output(dsl.relu(dsl.conv2d(x, out_channels, kernel, stride=stride,
                                             padding=padding)))
    (func,) = [f for f in _scheduled_kernels(graph, BLOCKED_L1_CPU).values()
               if f.attrs[SCHEDULE_ATTR] == "conv2d"]
    (annotated,) = [l for l in _loops(func.body) if PREFETCH_ATTR in l.annotations]
    ic_block = int(annotated.annotations[PREFETCH_ATTR])
    rewritten = with_weight_prefetches(func)
    assert not [l for l in _loops(rewritten.body) if PREFETCH_ATTR in l.annotations]
    (rows,) = [l for l in _loops(rewritten.body) if l.loop_var.name == annotated.loop_var.name]
    taps = rows.body.seq[0]
    lines = taps.body
    load = _prefetched_load(lines)
    weight = load.source
    blocks_loop, fused = ([l for l in _loops(rewritten.body) if l.loop_var.name == name][0]
                          for name in ("rc_0", "b_o_0_i_0_fused"))
    in_channels, lanes = int(weight.shape[3]), int(weight.shape[4])
    blocks = in_channels // ic_block
    assert int(blocks_loop.extent) == blocks > 1
    # every (block, row, tap, line) point at once, in the second task of the fused loop
    loops = [blocks_loop, rows, taps, lines]
    points = np.meshgrid(*[np.arange(int(l.extent)) for l in loops], indexing="ij")
    values = {**{l.loop_var: p for l, p in zip(loops, points)},
              fused.loop_var: np.ones_like(points[0])}
    index = [np.broadcast_to(_evaluate(i, values), points[0].shape) for i in load.indices]
    assert (index[0] == 1).all()
    for i, d in zip(index, weight.shape):
        assert (0 <= i).all() and (i < int(d)).all(), (int(i.min()), int(i.max()), int(d))
    for block in range(blocks):
        fetched = set(zip(*(i[block].ravel().tolist() for i in index[1:4]),
                          (index[4][block] // 16).ravel().tolist()))
        target = min(block + 1, blocks - 1) * ic_block
        expected = {(kh, kw, target + ic, lane // 16)
                    for kh in range(int(weight.shape[1])) for kw in range(int(weight.shape[2]))
                    for ic in range(ic_block) for lane in range(0, lanes, 16)}
        assert fetched == expected, (block, sorted(expected - fetched)[:5])


@pytest.mark.parametrize("prefetch", [False, True])
def test_weight_prefetches_are_in_the_code_where_the_schedule_asks(prefetch, monkeypatch,
                                                                  direct_small_planes):
    from graphopt.targets.tvm.schedules import conv2d
    monkeypatch.setattr(conv2d, "PREFETCH_NEXT_BLOCK", prefetch)
    model = go.compile(_small_plane_graph(), "cpu", mcpu=BLOCKED_L1_CPU)
    assert ("prefetcht0" in cpu_assembly(model.executable)) == prefetch


def test_small_weights_are_not_prefetched(direct_small_planes):
    """DeepConvNet's convs on the direct kernel (at most 147 KB of weights, cached from one run
    to the next; its 8x8 ones otherwise take F(2x2), whose 256 KB are prefetched)."""
    model = go.compile(go.zoo.deep_convnet(batch=1), "cpu", mcpu=BLOCKED_L1_CPU)
    assert "prefetcht0" not in cpu_assembly(model.executable)


@pytest.mark.parametrize("batch", [1, 2])
def test_weight_prefetches_compute_the_same(batch, monkeypatch, direct_small_planes):
    """Bounds-checked against the interpreter on one thread and two, built for the host with
    input-channel blocks whatever its L1 (the threshold lowered to 32 KiB)."""
    from graphopt.targets.tvm.schedules import conv2d
    monkeypatch.setattr(conv2d, "BLOCKED_L1D", 32 * 1024)
    graph = _small_plane_graph(batch)
    feeds = {"x": np.random.default_rng(0).standard_normal((batch, 128, 14, 14))
             .astype(np.float32)}
    model = go.compile(graph, "cpu", bounds_check=True)
    assert "prefetcht0" in cpu_assembly(model.executable)
    for threads in (1, 2):
        model.threads = threads
        assert go.compare(graph, model, feeds).ok


def _winograd_graph(channels: int, side: int, batch: int = 1):
    with dsl.Builder("winograd", seed=0) as b:
        x = b.input("x", (batch, channels, side, side))
        return b.output(dsl.relu(dsl.conv2d(x, channels, 3, padding=1)))


WINOGRAD_CPU = "skylake-avx512"     # 16 lanes, 32 KiB L1: F(4x4) from 28x28, F(2x2) on 14x14


@pytest.mark.parametrize("channels, side", [(128, 28), (256, 14), (160, 14)],
                         ids=["F4-128ch", "F2-256ch", "F2-160ch-one-channel-block"])
def test_winograd_gemms_prefetch_each_next_weight_slice(channels, side):
    """The prefetch loop of the Winograd GEMMs, evaluated for every iteration of the loops
    around it: the i-th slice of the transformed weights (the loops walk them in memory order)
    prefetches every cache line of slice i + 1 (the last its own last line), and no address
    leaves the weight buffer. 128 channels on F(4x4) and 256 on F(2x2) have weight blocks of 64
    input channels; 160 channels take all of them in one."""
    from graphopt.targets.tvm.weight_prefetch import NEXT_SLICE_ATTR, with_weight_prefetches
    (func,) = [f for f in _scheduled_kernels(_winograd_graph(channels, side),
                                             WINOGRAD_CPU).values()
               if f.attrs[SCHEDULE_ATTR] == "winograd"]
    # (the GEMM's init loop, split from it, carries the annotation too: no prefetches there)
    (annotated,) = [l for l in _loops(func.body) if NEXT_SLICE_ATTR in l.annotations
                    and not l.loop_var.name.endswith("_init")]
    slice_elements = int(annotated.annotations[NEXT_SLICE_ATTR])
    rewritten = with_weight_prefetches(func)
    assert not [l for l in _loops(rewritten.body) if NEXT_SLICE_ATTR in l.annotations]
    loops = _loops(rewritten.body)
    (tiles,) = [l for l in loops if l.loop_var.name == annotated.loop_var.name
                and isinstance(l.body, tvm.tirx.SeqStmt)]
    lines = tiles.body.seq[0]
    load = _prefetched_load(lines)
    weight = load.source
    shape = [int(d) for d in weight.shape]
    # the loops around the prefetches, outermost first: the (e, v, channel block) tasks and,
    # where the input channels come in blocks, that block
    outer = [l for l in loops[:loops.index(tiles)]
             if any(v.same_as(l.loop_var) for v in tvm.tirx.analysis.undefined_vars(
                 tvm.tirx.Evaluate(load.indices[0] + load.indices[1] + load.indices[2]
                                   + load.indices[3] + load.indices[4])))]
    line = 16          # float32 per cache line
    slice_lines = slice_elements // line
    total_lines = np.prod(shape) // line
    # every (outer iterations..., tile, line) point at once, outermost first
    loops = [*outer, tiles, lines]
    points = np.meshgrid(*[np.arange(int(l.extent)) for l in loops], indexing="ij")
    index = [np.broadcast_to(_evaluate(i, {l.loop_var: p for l, p in zip(loops, points)}),
                             points[0].shape) for i in load.indices]
    for i, d in zip(index, shape):
        assert (0 <= i).all() and (i < d).all(), (int(i.min()), int(i.max()), d)
    iterations = int(np.prod([int(l.extent) for l in outer]))
    assert iterations * slice_lines == total_lines
    fetched_lines = (np.ravel_multi_index(index, shape) // line).reshape(iterations, -1)
    for nth, fetched in enumerate(fetched_lines):
        expected = {min(l, total_lines - 1)
                    for l in range((nth + 1) * slice_lines, (nth + 2) * slice_lines)}
        assert set(fetched.tolist()) == expected, (nth, sorted(expected - set(fetched))[:5])


# An index expression's node types and what they compute on numpy arrays of loop values (TIR's
# floordiv / floormod round toward negative infinity, as numpy's // and % do).
_BINARY = {"Add": np.add, "Sub": np.subtract, "Mul": np.multiply, "FloorDiv": np.floor_divide,
           "FloorMod": np.mod, "Min": np.minimum, "Max": np.maximum}


def _evaluate(expr, values: dict):
    """`expr` (integer TIR arithmetic over loop variables) at every point of the arrays in
    `values` ({loop variable: its value at each point}), with numpy: one pass over the
    expression instead of a substitution and a simplification per point."""
    kind = type(expr).__name__
    if isinstance(expr, tvm.tirx.IntImm):
        return np.int64(expr.value)
    if isinstance(expr, tvm.tirx.Var):
        (value,) = [v for var, v in values.items() if var.same_as(expr)]
        return value.astype(np.int64)
    if isinstance(expr, tvm.tirx.Cast):
        return _evaluate(expr.value, values)
    if kind in _BINARY:
        return _BINARY[kind](_evaluate(expr.a, values), _evaluate(expr.b, values))
    raise AssertionError(f"index node {kind} not evaluated: {expr}")


@pytest.mark.parametrize("prefetch", [False, True])
def test_winograd_prefetches_are_in_the_code_where_the_schedule_asks(prefetch, monkeypatch):
    from graphopt.targets.tvm.schedules import winograd
    monkeypatch.setattr(winograd, "PREFETCH_NEXT_SLICE", prefetch)
    model = go.compile(_winograd_graph(128, 28), "cpu", mcpu=WINOGRAD_CPU)
    assert ("prefetcht0" in cpu_assembly(model.executable)) == prefetch


@pytest.mark.parametrize("batch", [1, 2])
def test_winograd_prefetches_compute_the_same(batch, monkeypatch):
    """Bounds-checked against the interpreter on one thread and two (128 channels: 2.4 MB of
    transformed weights with F(4x4), 1 MB with F(2x2)), every task a block of channels (with
    its weights small enough, a kernel would take a row of tiles per task and prefetch
    nothing: F(2x2) with 8 lanes)."""
    from graphopt.targets.tvm.schedules import winograd
    monkeypatch.setattr(winograd, "ROW_WEIGHT_BYTES", 0)
    graph = _winograd_graph(128, 28, batch)
    feeds = {"x": np.random.default_rng(0).standard_normal((batch, 128, 28, 28))
             .astype(np.float32)}
    model = go.compile(graph, "cpu", bounds_check=True)
    if not any(n.op.conv.algorithm == "winograd" for n in model.graph.nodes
               if n.op_name == "fused_conv2d"):
        pytest.skip("this host's conv is not on Winograd")
    assert "prefetcht0" in cpu_assembly(model.executable)
    for threads in (1, 2):
        model.threads = threads
        assert go.compare(graph, model, feeds).ok
