"""Convolutions and linear layers whose output channels do not fill the vector blocks (pruned and
factorized models, PP-OCR, squeezenet, ...): the CPU target pads each group's last block of
output channels (or columns) with zero filters, computes the padded register tile and writes
only the real channels, so that they keep the register-tiled rules instead of TVM's generic
loops. Every row is compiled for a pinned CPU (the block depends on the vector width) and
checked against the float64 interpreter on this host; the recorded blocks are checked per ISA."""
from __future__ import annotations

import numpy as np
import pytest

import graphopt as go
from graphopt import runtime
from graphopt.analysis import summary
from graphopt.frontends import dsl

tvm = pytest.importorskip("tvm")

from graphopt.ops.conv_kernel import pack_weight  # noqa: E402
from graphopt.ops.linear import pack_columns  # noqa: E402
from graphopt.targets.tvm.compile import optimize_for_target  # noqa: E402
from graphopt.targets.tvm.options import CompileOptions  # noqa: E402
from graphopt.targets.tvm.schedules import SCHEDULE_ATTR, VectorShape  # noqa: E402
from graphopt.targets.tvm.schedules.dense import dense_blocking  # noqa: E402
from graphopt.targets.tvm.schedules.tiled import channel_block, conv_row_tile  # noqa: E402

from test_schedules import AVX2_CPU, AVX512_CPU, _scheduled_kernels  # noqa: E402

AVX2 = VectorShape(lanes=8, accumulators=12)
AVX512 = VectorShape(lanes=16, accumulators=28)


def _residual(x, out, stride=1):
    """relu(conv3x3(x) + conv1x1(x)): one of the two becomes a fused_conv2d with a residual."""
    return dsl.relu(dsl.conv2d(x, out, 3, stride=stride, padding=1)
                    + dsl.conv2d(x, out, 1, stride=stride, bias=False))


# name: (input shape, layer, weight block on AVX2, on AVX-512; 0: the generic conv)
CONVS = {
    # narrow: too few output channels for a channel block; rows of whole vectors where a row
    # holds one (the block counts output columns; 11 columns hold no 16-lane vector)
    "narrow_out1_in3": ((1, 3, 9, 11), lambda x: dsl.conv2d(x, 1, 3, padding=1), 8, 0),
    "narrow_out3_in4_wide": ((1, 4, 7, 37), lambda x: dsl.tanh(dsl.conv2d(x, 3, 3, padding=1)),
                             8, 16),
    # 3 input channels, 27 products per output: too short a reduction for the channel tile
    "narrow_out20_in3_short": ((1, 3, 6, 40), lambda x: dsl.relu(dsl.conv2d(x, 20, 3, padding=1)),
                               8, 16),
    "out3_in1_s2": ((1, 1, 12, 12), lambda x: dsl.relu(dsl.conv2d(x, 3, 3, stride=2, padding=1)),
                    0, 0),
    "out4_in5_tanh": ((1, 5, 8, 9), lambda x: dsl.tanh(dsl.conv2d(x, 4, 3)), 8, 8),
    "out10_in5_relu": ((1, 5, 10, 13), lambda x: dsl.relu(dsl.conv2d(x, 10, 3, padding=1)), 16, 16),
    "out20_in5_s2_residual_batch2": ((2, 5, 11, 11), lambda x: _residual(x, 20, stride=2), 8, 32),
    "out24_in3_relu6": ((1, 3, 15, 15), lambda x: dsl.relu6(dsl.conv2d(x, 24, 3, stride=2)),
                        8, 32),
    "out39_in5_asym_pad": ((1, 5, 14, 15), lambda x: dsl.conv2d(x, 39, 3, padding=(1, 0, 1, 2)),
                           8, 16),
    "out39_in16_dilated_leaky": ((1, 16, 12, 12), lambda x: dsl.leaky_relu(dsl.conv2d(
        x, 39, 3, padding=2, dilation=2), 0.1), 8, 16),
    "out39_in32_1x1": ((1, 32, 7, 9), lambda x: dsl.conv2d(x, 39, 1), 8, 16),
    "out77_in5_1x1_no_bias": ((1, 5, 9, 9), lambda x: dsl.conv2d(x, 77, 1, bias=False), 16, 16),
    "out20_in64_small_plane_residual": ((1, 64, 7, 7), lambda x: _residual(x, 20), 8, 32),
    "out10_in1_7x7_stem": ((1, 1, 23, 21), lambda x: dsl.relu(dsl.conv2d(x, 10, 7, stride=2,
                                                                          padding=3)), 16, 16),
    # grouped: a group's channels padded inside one block; several padded blocks per group, or
    # more than twice the work, stay generic
    "grouped_g2_out20_in6": ((1, 6, 10, 10), lambda x: dsl.relu(dsl.conv2d(
        x, 20, 3, padding=1, groups=2)), 16, 16),
    "grouped_g3_out15_in9_s2": ((1, 9, 11, 11), lambda x: dsl.conv2d(x, 15, 3, stride=2,
                                                                      padding=1, groups=3), 8, 8),
    # several padded groups in one parallel kernel: a tile's epilogue writes its own group's
    # channels only (`conv_kernel.by_group`), with a residual; ResNeXt's 4 channels a group
    "grouped_g4_out48_in48_residual": ((1, 48, 28, 28), lambda x: dsl.relu(dsl.conv2d(
        x, 48, 3, padding=1, groups=4) + x), 16, 16),
    "grouped_g32_out128_in128": ((1, 128, 28, 28), lambda x: dsl.relu(dsl.conv2d(
        x, 128, 3, padding=1, groups=32)), 8, 8),
    "grouped_g4_out12_in8": ((1, 8, 9, 9), lambda x: dsl.conv2d(x, 12, 3, padding=1, groups=4),
                             0, 0),
    "grouped_g2_out78_in4": ((1, 4, 8, 8), lambda x: dsl.conv2d(x, 78, 3, padding=1, groups=2),
                             0, 0),
    # depthwise: rows of whole vectors (the block counts output columns; tests/test_depthwise.py)
    "depthwise_8": ((1, 8, 10, 10), lambda x: dsl.conv2d(x, 8, 3, padding=1, groups=8), 8, 16),
}

# name: (input shape, layer, column block on AVX2, on AVX-512; 0: the generic product)
LINEARS = {
    "linear_out1": ((4, 16), lambda x: dsl.linear(x, 1), 0, 0),
    "linear_out39_relu": ((5, 16), lambda x: dsl.relu(dsl.linear(x, 39)), 24, 48),
    "linear_out50": ((16, 33), lambda x: dsl.linear(x, 50), 16, 64),
    "linear_out97": ((2, 16), lambda x: dsl.linear(x, 97), 40, 112),
    "linear_out449_no_bias": ((3, 20), lambda x: dsl.linear(x, 449, bias=False), 32, 96),
}
CASES = {**CONVS, **LINEARS}


def _table(names, dtype="float32"):
    with dsl.Builder("odd_channels", seed=5) as b:
        outs = [CASES[n][1](b.input(n, CASES[n][0], dtype=dtype)) for n in names]
        return b.output(*outs, names=[f"{n}_out" for n in names])


def _feeds(graph):
    rng = np.random.default_rng(0)
    return {v.name: rng.standard_normal(v.shape).astype(v.dtype) for v in graph.inputs}


def _host_runs(mcpu: str) -> bool:
    return mcpu == AVX2_CPU or "avx512f" in (runtime.host_cpu_flags() or ())


HALVES = [sorted(CASES)[::2], sorted(CASES)[1::2]]


@pytest.mark.parametrize("mcpu, bounds_check", [(AVX2_CPU, False), (AVX512_CPU, False),
                                                (AVX2_CPU, True)],
                         ids=["avx2", "avx512", "avx2_bounds_checked"])
@pytest.mark.parametrize("names", HALVES, ids=["table0", "table1"])
def test_odd_channels_match_interpreter(names, mcpu, bounds_check):
    if not _host_runs(mcpu):
        pytest.skip(f"this CPU cannot run code compiled for {mcpu}")
    graph = _table(names)
    model = go.compile(graph, mcpu=mcpu, bounds_check=bounds_check)
    report = go.compare(graph, model, _feeds(graph))
    assert report.ok, str(report)


@pytest.mark.parametrize("mcpu, column", [(AVX2_CPU, 2), (AVX512_CPU, 3)], ids=["avx2", "avx512"])
@pytest.mark.parametrize("name", sorted(CASES))
def test_recorded_block_and_rule(name, mcpu, column):
    """The block each layer records (a conv's `weight_block`, a linear layer's column block),
    and the rule its kernel gets: the tiled one wherever a block was recorded, not TVM's
    generic loops."""
    graph = _table([name])
    optimized, _ = optimize_for_target(graph, "cpu", CompileOptions(mcpu=mcpu))
    blocks = {getattr(n.op, "conv", n.op).weight_block for n in optimized.graph.nodes
              if n.op_name in ("conv2d", "fused_conv2d", "linear")}
    assert blocks == {CASES[name][column]}
    tiled = ("dense" if name.startswith("linear") else
             "depthwise" if name.startswith("depthwise") else
             "narrow" if name.startswith("narrow") else "conv2d")
    rules = {str(f.attrs[SCHEDULE_ATTR]) for k, f in _scheduled_kernels(graph, mcpu).items()
             if "conv2d" in k or "matmul" in k}
    assert rules == {tiled if CASES[name][column] else "generic"}


def test_report_says_how_a_padded_conv_is_computed():
    """`summary(target_choices=True)` names the tiled kernel and its block, not the generic
    conv, for a pruned layer's 39 channels."""
    graph = _table(["out39_in5_asym_pad"])
    optimized, _ = optimize_for_target(graph, "cpu", CompileOptions(mcpu=AVX512_CPU))
    text = summary(optimized.graph, target_choices=True)
    assert "direct, 16-channel weight blocks" in text, text


def test_pruned_deep_convnet_keeps_the_tiled_rules():
    """DeepConvNet pruned from 16/32/64 to 10/20/39 channels: every conv and linear kernel is
    register-tiled on AVX-512, as the unpruned model's are."""
    pruned = go.prune(go.zoo.deep_convnet(), 0.4).graph
    channels = {n.outputs[0].shape[1] for n in pruned.nodes if n.op_name == "conv2d"}
    assert channels & {10, 20, 39}, channels
    kernels = _scheduled_kernels(pruned, mcpu=AVX512_CPU)
    for name, func in kernels.items():
        if "conv2d" in name:   # the 1-channel input's conv: a thin input's short reduction
            assert func.attrs[SCHEDULE_ATTR] == ("narrow" if "narrow" in name else "conv2d"), name
        if "matmul" in name:
            assert func.attrs[SCHEDULE_ATTR] == "dense", name


@pytest.mark.parametrize("dtype", ["float16", "bfloat16"])
def test_half_precision_odd_channels(dtype):
    """Half-precision convs and linear layers run the padded float32 kernels on widened
    operands (a linear layer's widened in registers), rounded once, as the interpreter
    computes them."""
    names = ["out20_in5_s2_residual_batch2", "grouped_g2_out20_in6", "out39_in32_1x1",
             "linear_out39_relu"]
    graph = go.quantize(_table(names), dtype).graph
    model = go.compile(graph, mcpu=AVX2_CPU)
    blocks = {getattr(n.op, "conv", n.op).weight_block for n in model.graph.nodes
              if hasattr(getattr(n.op, "conv", n.op), "weight_block")}
    assert 0 not in blocks, blocks
    report = go.compare(graph, model, _feeds(graph))
    assert report.ok, str(report)


@pytest.mark.parametrize("mcpu", [AVX2_CPU, AVX512_CPU])
@pytest.mark.parametrize("name, per_group", [("grouped_g4_out48_in48_residual", 12),
                                             ("grouped_g32_out128_in128", 4)])
def test_a_padded_group_s_tile_writes_its_own_channels(name, per_group, mcpu):
    """The epilogue under a tile of a padded group iterates that group's real channels, not
    the block's: with the block's, a parallel task wrote the next group's first channels from
    accumulators it never computed (a race, the results wrong wherever it lost)."""
    import tvm_ffi
    from tvm import s_tir
    [func] = [f for k, f in _scheduled_kernels(_table([name]), mcpu).items() if "conv2d" in k]
    sch = s_tir.Schedule(func)
    writer = sch.get_sblock("by_group")     # [N, groups, per_group, H, W]
    realize = tvm_ffi.get_global_func("s_tir.schedule.GetSBlockRealize")(sch, writer)
    channel = realize.iter_values[2]
    [loop] = [sch.get(loop) for loop in sch.get_loops(writer)
              if sch.get(loop).loop_var.same_as(channel)]
    assert int(loop.extent) == per_group, sch.mod.script()


# channels per group, groups -> block on AVX2, on AVX-512
CHANNEL_BLOCKS = {
    (3, 1): (0, 0), (4, 1): (8, 8), (8, 1): (8, 8), (10, 1): (16, 16), (16, 1): (16, 16),
    (20, 1): (8, 32), (24, 1): (8, 32), (32, 1): (16, 32), (39, 1): (8, 16), (40, 1): (8, 16),
    (48, 1): (16, 16), (64, 1): (16, 32), (77, 1): (16, 16), (96, 1): (16, 32),
    (112, 1): (16, 16), (200, 1): (16, 16), (1000, 1): (16, 32),
    (10, 2): (16, 16), (20, 4): (0, 32), (39, 2): (0, 0), (40, 2): (8, 8), (1, 32): (0, 0),
}


@pytest.mark.parametrize("channels, groups", sorted(CHANNEL_BLOCKS))
def test_channel_block_choice(channels, groups):
    """Fewest register steps, a one-register step weighing 5 % more (a two-register block
    wins where it pads at most 5 % more filters); a dividing block (the larger) on ties;
    never more than twice the real channels; a padded group within one block."""
    found = tuple(channel_block(channels, vec, groups) for vec in (AVX2, AVX512))
    assert found == CHANNEL_BLOCKS[channels, groups]


# rows, columns[, products per output] -> (columns per tile, lanes) on AVX2, on AVX-512
DENSE_BLOCKS = {
    (1, 1): (None, None), (1, 4096): ((96, 8), (256, 16)), (16, 96): ((24, 8), (96, 16)),
    (16, 39): ((24, 8), (48, 16)), (2, 97): ((40, 8), (112, 16)), (5, 10): ((16, 8), (16, 16)),
    (16, 448): ((24, 8), (112, 16)), (16, 449): ((24, 8), (96, 16)),
    # big enough to run in parallel: at least dense.PARALLEL_TASKS tiles
    (1, 1000): ((72, 8), (336, 16)), (1, 1000, 1280): ((72, 8), (112, 16)),
    (1, 512, 3136): ((64, 8), (64, 16)), (1, 1000, 100): ((72, 8), (336, 16)),
}


@pytest.mark.parametrize("shape", sorted(DENSE_BLOCKS))
def test_dense_blocking_choice(shape):
    rows, columns, *depth = shape
    found = tuple(dense_blocking(rows, columns, vec, *depth) for vec in (AVX2, AVX512))
    assert found == DENSE_BLOCKS[shape]


def test_packed_weights_pad_each_group_with_zero_filters():
    rng = np.random.default_rng(3)
    weight = rng.standard_normal((20, 3, 3, 3)).astype(np.float32)   # 2 groups of 10
    packed = pack_weight(weight, 16, groups=2)                      # [2 blocks, KH, KW, I, 16]
    assert packed.shape == (2, 3, 3, 3, 16)
    for group in range(2):
        np.testing.assert_array_equal(packed[group, ..., :10].transpose(3, 2, 0, 1),
                                      weight[10 * group: 10 * group + 10])
        assert not packed[group, ..., 10:].any()
    columns = rng.standard_normal((7, 39)).astype(np.float32)
    blocks = pack_columns(columns, 16)
    assert blocks.shape == (3, 7, 16)
    np.testing.assert_array_equal(blocks.transpose(1, 0, 2).reshape(7, 48)[:, :39], columns)
    assert not blocks[2, :, 7:].any()


# (output width, channel block, vector shape) -> (pixels per tile row, width computed)
ROW_TILES = {
    (56, 32, AVX512): (14, 56), (28, 32, AVX512): (14, 28), (7, 32, AVX512): (7, 7),
    (55, 32, AVX512): (11, 55),      # a divisor 2/3 as wide as the balanced tile
    (27, 32, AVX512): (14, 28), (111, 32, AVX512): (14, 112),   # padded to whole tiles
    (13, 16, AVX512): (13, 13), (7, 16, AVX2): (4, 8), (9, 8, AVX2): (9, 9),
}


@pytest.mark.parametrize("width, block, vec", sorted(ROW_TILES, key=str))
def test_row_tile_choice(width, block, vec):
    tile = conv_row_tile(width, block, vec)
    assert (tile, -(-width // tile) * tile) == ROW_TILES[width, block, vec]


def test_padded_rows_are_recorded_and_computed(direct_small_planes):
    """A row that does not divide into register tiles is computed to whole tiles, recorded as
    the conv's padded_width; the extra columns never reach the output (the 3x3 conv kept on the
    direct kernel: a 27x27 plane otherwise takes Winograd F(4x4))."""
    with dsl.Builder("rows", seed=2) as b:   # 80 input channels: no conv is narrow
        x = b.input("input", (1, 80, 27, 27))
        graph = b.output(dsl.relu(dsl.conv2d(x, 64, 3, padding=1) + dsl.conv2d(x, 64, 5,
                                                                                padding=2)))
    optimized, _ = optimize_for_target(graph, "cpu", CompileOptions(mcpu=AVX512_CPU))
    widths = {getattr(n.op, "conv", n.op).padded_width for n in optimized.graph.nodes
              if "conv" in n.op_name}
    assert widths == {28}
    # Run the AVX-512 build where this CPU can; elsewhere the host's own build (its tiles pad
    # rows too) is what runs.
    avx512 = {"avx512f", "avx512bw"} <= (runtime.host_cpu_flags() or set())
    model = go.compile(graph, mcpu=AVX512_CPU if avx512 else None, bounds_check=True)
    report = go.compare(graph, model, _feeds(graph))
    assert report.ok, str(report)


@pytest.mark.parametrize("mcpu, as_rows", [(AVX2_CPU, True), (AVX512_CPU, False)],
                         ids=["avx2", "avx512"])
def test_1x1_planes_of_padded_rows_run_as_one_row(mcpu, as_rows):
    """On 8 lanes a 1x1 conv whose 7-pixel rows the tiles would pad (two tiles of 4) runs over
    its plane as one row of 49 pixels (`planes_as_rows`), its residual reshaped alike; the
    16-lane tiles of 7 divide the rows, so those builds keep the plane, as every build keeps a
    plane of whole vectors (8x8: the pointwise rule's). The outputs are the interpreter's,
    bounds checked, wherever this CPU runs the build."""
    with dsl.Builder("rows", seed=3) as b:
        x = b.input("input", (2, 48, 7, 7))
        y = dsl.relu(dsl.conv2d(x, 48, 1) + x)             # a 1x1 conv with its residual
        graph = b.output(dsl.conv2d(y, 64, 1))
    optimized, _ = optimize_for_target(graph, "cpu", CompileOptions(mcpu=mcpu))
    convs = [n for n in optimized.graph.nodes if "conv" in n.op_name]
    shape = (2, 48, 1, 49) if as_rows else (2, 48, 7, 7)
    assert [n.inputs[0].shape for n in convs] == [shape, shape]
    assert any(getattr(n.op, "has_residual", False) for n in convs)
    with dsl.Builder("whole_vectors", seed=3) as b:
        x = b.input("input", (1, 48, 8, 8))
        whole = b.output(dsl.relu(dsl.conv2d(x, 40, 1)))
    optimized, _ = optimize_for_target(whole, "cpu", CompileOptions(mcpu=mcpu))
    assert [n.inputs[0].shape for n in optimized.graph.nodes if "conv" in n.op_name] == \
        [(1, 48, 8, 8)]
    # oneDNN's convs pass NHWC to each other: no reshapes between them on any build
    optimized, _ = optimize_for_target(graph, "cpu", CompileOptions(mcpu=mcpu, kernels="onednn"))
    assert [n.inputs[0].shape for n in optimized.graph.nodes if "conv" in n.op_name] == \
        [(2, 48, 7, 7)] * 2
    if not _host_runs(mcpu):
        pytest.skip(f"this CPU cannot run code compiled for {mcpu}")
    model = go.compile(graph, mcpu=mcpu, bounds_check=True)
    report = go.compare(graph, model, _feeds(graph))
    assert report.ok, str(report)
