"""int8 convolutions on x86 dot-product instructions (schedules/conv2d_int8.py): which quantized
convolutions the CPU target pass sends to them, that each instruction appears in the code built
for a CPU that has it (on any x86 host), and, for every instruction this host has, that the
kernel computes what the interpreter does, exactly, over a table of shapes (odd channel counts,
strides, padding, dilation, batches, epilogues)."""
from __future__ import annotations

import math
import re
from dataclasses import dataclass

import numpy as np
import pytest

import graphopt as go
from conftest import skip_unless_this_cpu_runs
from graphopt import ops, runtime
from graphopt.ir import Graph, TensorType

pytest.importorskip("tvm")

from graphopt.targets.tvm.cpu import cpu_assembly  # noqa: E402
from graphopt.targets.tvm.schedules.conv2d_int8 import STREAMED_WEIGHT_PIXELS  # noqa: E402

# (LLVM CPU, the largest weight magnitude, the algorithm chosen for it, lanes, an instruction
# its kernel must contain); on an AMX CPU the layers that fill AMX tiles get "amx"
# (`AMX_BUILD`), the others VNNI. Without VNNI, 7-bit weights (reduce_range) are multiplied
# by vpmaddubsw, full-range ones widened to int16 (vpmaddwd), both exactly; layers of few
# output pixels keep those weights in int8 and widen them as they load (`pmaddwd_s8`).
BUILDS = [("cascadelake", 127, "vnni", 16, r"vpdpbusd\s+.*zmm"),
          ("skylake-avx512", 127, "pmaddwd", 16, r"vpmaddwd\s+.*zmm"),
          ("skylake-avx512", 64, "pmaddubsw", 16, r"vpmaddubsw\s+.*zmm"),
          ("haswell", 127, "pmaddwd", 8, r"vpmaddwd\s+.*ymm"),
          ("haswell", 64, "pmaddubsw", 8, r"vpmaddubsw\s+.*ymm"),
          ("alderlake", 127, "vnni", 8, r"\{vex\}\s*vpdpbusd\s+.*ymm"),     # AVX-VNNI
          ("sapphirerapids", 127, "vnni", 16, r"vpdpbusd\s+.*zmm")]
AMX_BUILD = ("sapphirerapids", "amx", 32, r"tdpbusd\s+%tmm")
VNNI_CPU = "cascadelake"


def host_flags() -> frozenset[str]:
    return runtime.host_cpu_flags() or frozenset()


@dataclass(frozen=True)
class Case:
    id: str
    in_channels: int
    out_channels: int
    size: int
    kernel: int
    stride: int = 1
    padding: tuple[int, int, int, int] = (0, 0, 0, 0)
    dilation: int = 1
    batch: int = 1
    activation: object = None
    residual: bool = False
    groups: int = 1
    w_zero_point: int = 0


CASES = [
    Case("3x3-64ch-relu", 64, 64, 14, 3, padding=(1, 1, 1, 1), activation=ops.Relu()),
    Case("stem-3ch-7x7-s2", 3, 64, 32, 7, stride=2, padding=(3, 3, 3, 3),
         activation=ops.Relu()),
    Case("5x5-6ch-batch2", 6, 16, 14, 5, batch=2),
    Case("odd-17-to-10-s2-relu6", 17, 10, 9, 3, stride=2, padding=(1, 1, 1, 1),
         activation=ops.Clip(0.0, 6.0)),
    Case("1x1-residual-batch3", 32, 48, 8, 1, batch=3, residual=True, activation=ops.Relu()),
    Case("dilated", 16, 32, 11, 3, padding=(2, 2, 2, 2), dilation=2),
    Case("asymmetric-padding-7-wide", 24, 40, 7, 3, padding=(0, 1, 1, 0)),
    Case("linear-as-1x1", 120, 84, 1, 1, batch=4),
    # AVX-VNNI tiles of two channel groups a step on AMD cores (`paired_tile_shape`; also
    # `test_paired_avx_vnni_tiles_are_exact`) in blocks of input channels
    # (`input_channel_block`: 24 groups in 2), 2 rows x 2 pixels, with a residual and with
    # relu6; a 14-pixel row computed to 15 on Intel's (`padded_row`); a 13-pixel row on one
    # block (`ONE_BLOCK_YMM_ACCUMULATORS`)
    Case("3x3-96ch-residual-8-wide", 96, 32, 8, 3, padding=(1, 1, 1, 1), residual=True,
         activation=ops.Relu()),
    Case("3x3-96-to-16-14-wide-relu6", 96, 16, 14, 3, padding=(1, 1, 1, 1),
         activation=ops.Clip(0.0, 6.0)),
    Case("3x3-40-to-24-13-wide", 40, 24, 13, 3, padding=(1, 1, 1, 1), activation=ops.Relu()),
    # AVX-VNNI rows of 17 pixels computed to 18 (`padded_row`), with a residual, at batch 2
    Case("3x3-17-wide-padded-row-residual", 24, 48, 17, 3, padding=(1, 1, 1, 1), batch=2,
         residual=True, activation=ops.Relu()),
    # rows of 29 pixels computed to 30 (`padded_row`) on every build but vpmaddubsw's
    Case("3x3-29-wide-padded-row-relu6", 16, 32, 29, 3, padding=(1, 1, 1, 1),
         activation=ops.Clip(0.0, 6.0)),
    # a one-pixel row: 8 blocks of output channels a tile (`ONE_PIXEL_BLOCKS`)
    Case("linear-8-blocks-relu", 200, 128, 1, 1, activation=ops.Relu()),
    # grouped convs whose groups fill whole blocks (`grouped_fits`): a block reads its group's
    # input channels; with 16 lanes a tile's two blocks lie in two groups of 16 channels
    Case("grouped-2-3x3-relu", 64, 64, 14, 3, padding=(1, 1, 1, 1), groups=2,
         activation=ops.Relu()),
    Case("grouped-4x16-s2-residual", 64, 64, 15, 3, stride=2, padding=(1, 1, 1, 1), groups=4,
         residual=True, activation=ops.Relu()),
    Case("grouped-2-5x5-13-wide-batch2", 32, 64, 13, 5, padding=(2, 2, 2, 2), groups=2,
         batch=2),
    # grouped, its 29-pixel rows computed to 30 (`padded_row`), with a residual, at batch 2
    Case("grouped-2-29-wide-padded-residual", 64, 64, 29, 3, padding=(1, 1, 1, 1), groups=2,
         batch=2, residual=True, activation=ops.Relu()),
    # AMX tiles: 64 input channels a step, 32 output channels, pairs of output rows
    Case("amx-3x3-64ch", 64, 64, 14, 3, padding=(1, 1, 1, 1), activation=ops.Relu()),
    Case("amx-1x1-residual-batch2", 128, 64, 16, 1, batch=2, residual=True,
         activation=ops.Relu()),
    Case("amx-s2-odd-input-relu6", 64, 128, 15, 3, stride=2, padding=(1, 1, 1, 1),
         activation=ops.Clip(0.0, 6.0)),
    Case("amx-dilated-96ch", 64, 96, 12, 3, padding=(2, 2, 2, 2), dilation=2),
    Case("amx-7x7-odd-rows-batch2", 128, 64, 7, 3, padding=(1, 1, 1, 1), batch=2),
    # channels rounded up to whole tile rows (48 -> 64) and blocks (80 -> 96), a 17-pixel row
    # computed as two tiles of 9, a 35-pixel one as three of 12
    Case("amx-padded-channels-17-wide", 48, 80, 17, 3, padding=(1, 1, 1, 1),
         activation=ops.Relu()),
    Case("amx-35-wide-residual", 96, 48, 35, 3, padding=(1, 1, 1, 1), residual=True),
    # 40 output channels: the epilogue's last block of 16 stores 8
    Case("amx-40-channels-relu", 64, 40, 9, 3, padding=(1, 1, 1, 1), activation=ops.Relu()),
    # a kernel row's taps as one tile row (`amx.folded_channels`): 5 x 12 values of 64, the
    # input padded with its zero point
    Case("amx-folded-12ch-5x5", 12, 32, 13, 5, padding=(2, 2, 2, 2), activation=ops.Relu()),
    # up to 16 output channels: one block of C tiles
    Case("amx-one-block-64-to-16", 64, 16, 9, 3, padding=(1, 1, 1, 1)),
]


def fills_amx_tiles(case: Case) -> bool:
    from graphopt.targets.tvm.schedules import amx
    batch, _, height, width = quantized_conv(case).node("conv").output.shape
    if batch > 1 and height == width == 1 and case.kernel == 1:
        width = batch      # the target computes the images as one row's pixels
    return amx.applies(amx.INT8, case.in_channels, case.out_channels, width, case.groups,
                       case.kernel ** 2, case.kernel, case.dilation)


def quantized_conv(case: Case, seed: int = 0, weight_max: int = 127) -> Graph:
    """One qlinear_conv2d with a bias (and a residual), as quantize_int8 builds it, its weights
    drawn from [-weight_max, weight_max]."""
    rng = np.random.default_rng(seed)
    g = Graph(f"qconv_{case.id}")
    shape = (case.batch, case.in_channels, case.size, case.size)
    x = g.add_input("x", TensorType(shape, "uint8"))
    weight = rng.integers(-weight_max, weight_max + 1,
                          (case.out_channels, case.in_channels // case.groups, case.kernel,
                           case.kernel)).astype(np.int8)
    conv = ops.Conv2d((case.stride,) * 2, case.padding, (case.dilation,) * 2, case.groups)
    c = g.add_constant
    inputs = [x, c("x_scale", np.float32(0.02)), c("x_zp", np.uint8(rng.integers(0, 256))),
              c("w", weight), c("w_scale", rng.uniform(0.001, 0.01, case.out_channels)
                                .astype(np.float32)),
              c("w_zp", np.full(case.out_channels, case.w_zero_point, np.int8)),
              c("y_scale", np.float32(case.in_channels * case.kernel ** 2 * 0.03)),
              c("y_zp", np.uint8(rng.integers(0, 256))),
              c("bias", rng.integers(-5000, 5000, case.out_channels).astype(np.int32))]
    if case.residual:
        out = ops.QLinearConv2d(conv).infer(*(v.type for v in inputs))
        inputs += [g.add_input("r", out), c("r_scale", np.float32(0.05)),
                   c("r_zp", np.uint8(rng.integers(0, 256)))]
    op = ops.QLinearConv2d(conv, case.activation, True, case.residual)
    g.set_outputs([g.add_node(op, inputs, name="conv", output_names=["y"]).output])
    return g


def feeds(graph: Graph, seed: int = 1) -> dict[str, np.ndarray]:
    rng = np.random.default_rng(seed)
    return {v.name: rng.integers(0, 256, v.shape).astype(np.uint8) for v in graph.inputs}


def the_conv(graph: Graph):
    """The graph's one qlinear_conv2d (the CPU target may rename it: `images_as_pixels`)."""
    [conv] = [n for n in graph.nodes if n.op_name == "qlinear_conv2d"]
    return conv


def chosen(model) -> str:
    return the_conv(model.graph).op.conv.algorithm


@pytest.mark.parametrize("mcpu, weight_max, algorithm, lanes, instruction", BUILDS,
                         ids=[f"{b[0]}-{b[2]}" for b in BUILDS])
@pytest.mark.parametrize("case", CASES, ids=[c.id for c in CASES])
def test_each_cpu_gets_its_instruction_and_the_interpreter_s_results(case, mcpu, weight_max,
                                                                     algorithm, lanes,
                                                                     instruction):
    """Compiled for `mcpu` (on any x86 host), the layer is that CPU's kernel and its assembly
    holds the instruction; where this host can run that code, the results are exact (built with
    bounds checks: an access outside a buffer fails the run)."""
    if mcpu == AMX_BUILD[0] and fills_amx_tiles(case):
        mcpu, algorithm, lanes, instruction = AMX_BUILD
    graph = quantized_conv(case, weight_max=weight_max)
    model = go.compile(graph, "cpu", mcpu=mcpu, bounds_check=True)
    node = the_conv(model.graph)
    conv = node.op.conv
    streamed = algorithm == "pmaddwd" and \
        math.prod(node.output.shape[:1] + node.output.shape[2:]) <= STREAMED_WEIGHT_PIXELS
    if streamed:
        algorithm = "pmaddwd_s8"
    assert (conv.algorithm, conv.weight_block) == (algorithm, lanes)
    if algorithm == "amx":   # the tiles read back through the transposing epilogue rule
        assert model.schedules["requantize_tiles"] == "tile_epilogue", model.schedules
    assembly = cpu_assembly(model.executable)
    assert re.search(instruction, assembly)
    if streamed:     # the int8 weights widened as they load
        assert re.search(r"vpmovsxbw\s+-?\d*\(%\w+", assembly)
    if algorithm != "vnni":
        assert "vpdpbusd" not in assembly
    skip_unless_this_cpu_runs(model)   # the layer's instruction, or another of `mcpu`'s (AMX)
    for seed in (1, 2):
        inputs = feeds(graph, seed)
        np.testing.assert_array_equal(model.run(inputs)["y"], go.interpret(graph, inputs)["y"])


@pytest.mark.filterwarnings("error::graphopt.ScheduleFallbackWarning")
@pytest.mark.parametrize("mcpu", ["haswell", "skylake-avx512"])
def test_a_one_channel_conv_with_a_residual_on_one_pixel_tiles_keeps_its_rule(mcpu):
    """One output channel (one block) on 31-pixel rows takes vpmaddubsw tiles of one pixel; with
    a residual its writer's loop was refused vectorizing part-way through the rule (the
    generic rule then scheduled the layer): it stays a scalar loop instead."""
    graph = quantized_conv(Case("1ch-1x1-residual-31-wide", 1, 1, 31, 1, residual=True,
                                activation=ops.Relu()))
    model = go.compile(graph, "cpu", mcpu=mcpu, bounds_check=True)
    assert chosen(model) == "pmaddubsw"
    assert set(model.schedules.values()) >= {"conv2d_int8"}, model.schedules
    skip_unless_this_cpu_runs(model)
    inputs = feeds(graph, 1)
    np.testing.assert_array_equal(model.run(inputs)["y"], go.interpret(graph, inputs)["y"])


# (pair of weights of input channels 2k, 2k + 1, whether vpmaddubsw computes it exactly for
# every uint8 input): 255 * 128 = 32640 fits int16, 255 * 129 does not, on either side.
PAIRS = [((127, 1), True), ((127, 2), False), ((-64, -64), True), ((-65, -64), False),
         ((127, -128), True), ((-128, -1), False), ((64, 64), True), ((0, 0), True)]


@pytest.mark.parametrize("pair, fits", PAIRS, ids=[str(p) for p, _ in PAIRS])
@pytest.mark.parametrize("mcpu", ["haswell", "skylake-avx512"])
def test_vpmaddubsw_only_where_no_pair_of_products_saturates(pair, fits, mcpu):
    """Weights whose pair of products can pass int16's range for some uint8 input go to the
    exact vpmaddwd kernel; the others to vpmaddubsw. Checked where it matters: one output
    channel whose only weights are the pair, inputs of 255 under them, and a requantize step
    of 300 accumulator units about 128 (a saturated 32767 instead of 255 * 129 = 32895 would
    be one step off)."""
    from graphopt.targets.tvm.schedules.conv2d_int8 import pairs_fit_int16
    case = Case("pair", 5, 16, 6, 3, padding=(1, 1, 1, 1))   # odd channels: a zero-padded pair
    graph = quantized_conv(case, weight_max=32)    # the other channels' pairs fit
    constants = {v.name: v.data for v in graph.nodes[0].inputs if v.is_constant}
    constants["w"][3] = 0
    constants["w"][3, 2:4, 1, 1] = pair       # input channels 2 and 3: one packed pair
    for name, value in (("x_zp", 0), ("bias", 0), ("w_scale", 0.01), ("x_scale", 0.02),
                        ("y_scale", 0.02 * 0.01 * 300), ("y_zp", 128)):
        constants[name][...] = value
    assert pairs_fit_int16(constants["w"]) == fits
    model = go.compile(graph, "cpu", mcpu=mcpu)
    assert chosen(model) == ("pmaddubsw" if fits else "pmaddwd")
    skip_unless_this_cpu_runs(model)
    x = np.zeros((1, 5, 6, 6), np.uint8)
    x[0, 2:4] = 255 * (np.array(pair) != 0).reshape(2, 1, 1)
    expected = go.interpret(graph, {"x": x})["y"]
    assert abs(int(expected[0, 3, 2, 2]) - 128) == round(255 * abs(sum(pair)) / 300)
    for inputs in ({"x": x}, feeds(graph)):
        np.testing.assert_array_equal(model.run(inputs)["y"], go.interpret(graph, inputs)["y"])


@pytest.mark.parametrize("mcpu", ["cascadelake", "haswell"])
def test_requantize_epilogue_is_vector_code(mcpu):
    """The epilogue rounds (`nearbyint`) as vectors and stores each channel's row of pixels in
    a few stores: while TVM's vectorizer left loops computing `nearbyint` scalar, LLVM
    vectorized them across channels instead and stored every output byte on its own
    (`vpextrb`), a third of an int8 VGG-11's time. With AVX2 the tile is 7 pixels of a
    14-pixel row, each channel's written as 4 + 2 + 1 bytes: one byte store per dword store."""
    case = Case("3x3-64ch-relu", 64, 64, 14, 3, padding=(1, 1, 1, 1), activation=ops.Relu())
    assembly = cpu_assembly(go.compile(quantized_conv(case), "cpu", mcpu=mcpu).executable)
    memory = r"-?\d*\(%\w+(,%\w+(,\d)?)?\)"
    byte_stores = len(re.findall(rf"\tvpextrb\s+\$\d+, %xmm\d+, {memory}", assembly))
    dword_stores = len(re.findall(rf"\tvmovd\s+%xmm\d+, {memory}", assembly))
    assert byte_stores <= max(1, dword_stores)
    assert re.search(r"(vrndscaleps|vroundps)\s+\$12, %[xyz]mm", assembly)    # vector nearbyint


@pytest.mark.parametrize("case", [
    Case("3x3-64ch-relu", 64, 64, 14, 3, padding=(1, 1, 1, 1), activation=ops.Relu()),
    Case("1x1-stride-2", 64, 128, 28, 1, stride=2),
    Case("3x3-64-to-128ch-56", 64, 128, 56, 3, padding=(1, 1, 1, 1)),
], ids=lambda case: case.id)
def test_avx2_tiles_write_channel_rows_by_shuffles(case):
    """On 8 lanes the requantized tile of channel vectors goes out one channel's row of pixels
    at a time, each a shuffle of the tile's pixel vectors (`transpose.channel_rows`): left to
    LLVM, the copy gathered each row byte by byte (`vpextrb` into a register, then `vpinsrb`)."""
    model = go.compile(quantized_conv(case, weight_max=64), "cpu", mcpu="haswell")
    assert chosen(model) == "pmaddubsw"
    assembly = cpu_assembly(model.executable)
    assert not re.search(r"\tvpextrb\s+\$\d+, %xmm\d+, %e", assembly)
    skip_unless_this_cpu_runs(model)
    graph = quantized_conv(case, weight_max=64)
    model = go.compile(graph, "cpu", mcpu="haswell", bounds_check=True)
    for seed in (1, 2):
        inputs = feeds(graph, seed)
        np.testing.assert_array_equal(model.run(inputs)["y"], go.interpret(graph, inputs)["y"])


def test_a_rule_refused_part_way_is_reported(monkeypatch):
    """A schedule primitive that refuses the int8 rule part-way leaves the kernel to a later
    rule (the generic one: right, but many times slower); the compile says so, naming the
    kernel, the rule and the refusal."""
    from tvm.s_tir import ScheduleError
    from graphopt.targets.tvm.schedules import conv2d_int8, dispatch

    def refusing(*args, **kwargs):
        raise ScheduleError("ScheduleError: An error occurred in the schedule primitive "
                            "'tensorize'.\nError message: the copy refused for this test")

    monkeypatch.setattr(conv2d_int8.interleave, "schedule_copy", refusing)
    case = Case("3x3-16ch", 16, 16, 8, 3, padding=(1, 1, 1, 1))
    graph = quantized_conv(case, weight_max=64)
    with pytest.warns(go.ScheduleFallbackWarning,
                      match=r"qlinear_conv2d_\w+: the conv2d_int8 rule \(the copy refused for "
                            r"this test\) failed part-way; the generic rule scheduled it"):
        model = go.compile(graph, "cpu", mcpu="haswell")
    assert model.schedules[next(k for k in model.schedules if "qlinear" in k)] == "generic"
    assert dispatch.RULES[0] is conv2d_int8
    skip_unless_this_cpu_runs(model)
    inputs = feeds(graph)
    np.testing.assert_array_equal(model.run(inputs)["y"], go.interpret(graph, inputs)["y"])


@pytest.mark.parametrize("mcpu", [VNNI_CPU, "haswell"])
def test_the_input_copy_moves_rows_as_vectors(mcpu):
    """The padded copy of a 56-pixel-wide input moves each row as its padding and its input
    columns, vectors without per-column checks: checked a column at a time, LLVM copied it a
    byte at a time (`movzbl` then a byte store, 60 of each here)."""
    case = Case("3x3-16ch-56", 16, 32, 56, 3, padding=(1, 1, 1, 1))
    model = go.compile(quantized_conv(case, weight_max=64), "cpu", mcpu=mcpu)
    assembly = cpu_assembly(model.executable)
    assert len(re.findall(r"\tmovb?\s+%[a-z0-9]+b,", assembly)) < 8


@pytest.mark.parametrize("blocks, lanes, vector_lanes, accumulators, expected", [
    (512, 8, 8, 8, (8, 1)),        # VGG-11's 4096 outputs at batch 1, AVX2
    (256, 16, 16, 28, (8, 1)),     # the same on AVX-512
    (12, 8, 8, 8, (4, 1)),         # the largest dividing block count
    (125, 8, 8, 8, (1, 1)),        # 1000 outputs: 125 blocks, odd
    (64, 16, 8, 8, (4, 1)),        # 16 lanes on 8-lane vectors: 2 registers a block
])
def test_a_one_pixel_row_tiles_several_blocks(blocks, lanes, vector_lanes, accumulators,
                                              expected):
    """A dense layer at batch 1 (a row of one pixel) streams its weights once: its tile takes
    up to 8 blocks of output channels, as many as divide the blocks and fit the accumulators,
    so that one broadcast feeds them all."""
    from graphopt.targets.tvm.schedules.common import VectorShape
    from graphopt.targets.tvm.schedules.conv2d_int8 import tile_shape
    vec = VectorShape(lanes=vector_lanes, accumulators=28)
    assert tile_shape(blocks, 1, lanes, vec, accumulators) == expected


@pytest.mark.parametrize("width, blocks, expected", [
    (48, 8, (2, 6)),     # 12 accumulators where the row divides by 6
    (35, 8, (2, 5)),
    (27, 8, (1, 9)),     # 3 would pair the blocks; 9 pixels of one block fill more
    (56, 8, (2, 4)),     # ResNet's and VGG's rows of 2^k x 7 pixels
    (14, 8, (1, 7)),
    (13, 8, (1, 13)),    # one block: 13 accumulators (SqueezeNet's and AlexNet's 13x13)
    (17, 8, (2, 1)),     # a prime beyond them
    (6, 5, (1, 6)),      # an odd number of blocks: one a tile
])
def test_avx_vnni_tiles_take_up_to_12_accumulators(width, blocks, expected):
    """AVX-VNNI (vpdpbusd on 16 ymm registers): a tile of up to 12 accumulators, 13 on one
    block (its one weight register leaves room), whole pixels of the row (`YMM_TILES`,
    `ONE_BLOCK_YMM_ACCUMULATORS`)."""
    from graphopt.targets.tvm.schedules.common import VectorShape
    from graphopt.targets.tvm.schedules.conv2d_int8 import (ONE_BLOCK_YMM_ACCUMULATORS,
                                                            YMM_TILES, tile_shape)
    vec = VectorShape(lanes=8, accumulators=12, avx_vnni=True)
    assert tile_shape(blocks, width, 8, vec, YMM_TILES["vnni"][0],
                      ONE_BLOCK_YMM_ACCUMULATORS) == expected


@pytest.mark.parametrize("blocks, height, width, groups, unpaired, expected", [
    (8, 56, 56, 16, (2, 4), (2, 1, 4)),     # VGG's and ResNet's rows of 2^k x 7 pixels
    (8, 14, 14, 64, (1, 7), (2, 2, 2)),     # 14-wide: two rows of two pixels
    (8, 7, 7, 128, (1, 7), None),           # 7x7: no such tile, 7 accumulators unpaired
    (8, 48, 48, 16, (2, 6), None),          # 12 accumulators: chains enough unpaired
    (5, 56, 56, 16, (1, 8), None),          # an odd number of blocks
    (8, 56, 56, 9, (2, 4), None),           # an odd number of groups (36 input channels)
    (128, 1, 1, 64, (8, 1), None),          # a dense layer's one-pixel row
])
def test_avx_vnni_8_accumulator_tiles_take_two_channel_groups_a_step(blocks, height, width,
                                                                     groups, unpaired, expected):
    """AVX-VNNI tiles that hold 8 accumulators (rows of 56, 28 or 14 pixels) take two
    input-channel groups a step (`PAIRED_TILE`): 2 blocks x 4 pixels, or x 2 rows x 2."""
    from graphopt.targets.tvm.schedules.conv2d_int8 import paired_tile_shape
    assert paired_tile_shape(blocks, height, width, groups, unpaired) == expected


@pytest.mark.parametrize("width, expected, paired_expected", [
    (17, 18, 18),     # Inception-v3's 17x17: 2 x 6 tiles
    (71, 72, 72),     # its 71x71 stem conv
    (19, 20, 20),     # 2 x 5: the narrowest of 10 accumulators or more
    (13, 13, 13),     # one block of 13
    (14, 15, 14),     # 1 x 7 -> 2 x 5 unpaired (VGG-11's 14x14); paired: 2 x 2 x 2
    (21, 22, 21),     # 1 x 7 -> 1 x 11
    (7, 7, 7),        # one block of 7: no wider row within an eighth
    (56, 56, 56),     # 2 x 4
    (1, 1, 1),
])
def test_avx_vnni_rows_of_a_large_prime_width_are_computed_wider(width, expected,
                                                                  paired_expected):
    """An AVX-VNNI row whose tile would hold 2 accumulators (a prime width above 13) is
    computed to a few more columns that whole tiles of 10 or more divide (`padded_row`); where
    tiles take no pairs of channel groups (Intel's cores), one of 4-7 accumulators is too, by
    at most an eighth of the row."""
    from graphopt.targets.tvm.schedules.common import VectorShape
    from graphopt.targets.tvm.schedules.conv2d_int8 import padded_row
    vec = VectorShape(lanes=8, accumulators=12, avx_vnni=True)
    assert padded_row(8, width, vec) == expected
    paired = VectorShape(lanes=8, accumulators=12, avx_vnni=True, vnni_pairs=True)
    assert padded_row(8, width, paired) == paired_expected


@pytest.mark.parametrize("width, expected", [
    (13, 14),     # SqueezeNet's and AlexNet's 13x13: 1 x 7
    (17, 18),     # 2 x 3: the narrowest of 6 accumulators or more
    (71, 72),
    (27, 27),     # 2 x 3 already
    (56, 56),
])
def test_avx2_vpmaddwd_rows_of_a_prime_width_are_computed_wider(width, expected):
    """On AVX2's vpmaddwd tiles (8 accumulators) a row of a prime width from 13 is computed to
    whole tiles of 6 or more (`PADDED_ROW_AVX2_ACCUMULATORS`); vpmaddubsw's are not."""
    from graphopt.targets.tvm.schedules.common import VectorShape
    from graphopt.targets.tvm.schedules.conv2d_int8 import PADDED_ROW_ALGORITHMS, padded_row
    vec = VectorShape(lanes=8, accumulators=12)
    assert padded_row(8, width, vec, "pmaddwd") == expected
    assert "pmaddubsw" not in PADDED_ROW_ALGORITHMS[8]


@pytest.mark.parametrize("width, expected", [
    (71, 72), (73, 75), (149, 150),   # Inception-v3's rows: 2 x 12, 1 x 25, 1 x 25
    (29, 30), (17, 17), (13, 13), (56, 56),
])
def test_16_lane_rows_of_a_large_prime_width_are_computed_wider(width, expected):
    """With 16 lanes (28 accumulators) rows of a prime width above 28 had 2 x 1 tiles; they are
    computed to whole tiles of 10 or more (`padded_row`)."""
    from graphopt.targets.tvm.schedules.common import VectorShape
    from graphopt.targets.tvm.schedules.conv2d_int8 import PADDED_ROW_ALGORITHMS, padded_row
    vec = VectorShape(lanes=16, accumulators=28, vnni=True)
    assert padded_row(8, width, vec) == expected
    assert PADDED_ROW_ALGORITHMS[16] == ("vnni", "pmaddwd")


@pytest.mark.parametrize("height, width, expected", [
    (56, 56, (2, 2, 2)),     # VGG's 128-256 ch 56x56 convs
    (28, 28, (2, 2, 2)),
    (7, 28, (2, 1, 4)),      # an odd number of rows: one row of 4
])
def test_paired_tiles_of_blocked_convs_take_two_rows_first(height, width, expected):
    """Where a paired tile's input channels come in blocks, each block's input rows serve two
    output rows: 2 rows x 2 pixels before one row of 4 (`TWO_ROW_BLOCKED`)."""
    from graphopt.targets.tvm.schedules.conv2d_int8 import paired_tile_shape
    assert paired_tile_shape(32, height, width, 64, (2, 4), blocked=True) == expected


@pytest.mark.parametrize("groups, expected", [
    (16, None),     # 64 channels: 9 KiB of a 2 x 4 tile's 3x3 weights fit
    (24, 12),       # 96: in two blocks
    (128, 16),      # 512: in eight
])
def test_paired_tiles_block_their_input_channels(groups, expected):
    """A paired tile's weights (2 blocks of 8 lanes x 4 channels x 9 taps = 576 bytes a group)
    pass over the row in blocks that fit PAIRED_K_BLOCK_BYTES, an even number of groups."""
    from graphopt.targets.tvm.schedules.conv2d_int8 import input_channel_block
    assert input_channel_block(groups, 576) == expected


@pytest.mark.parametrize("groups, expected", [
    (8, None),      # 32 channels: 4.5 KiB of a 2 x 4 tile's 3x3 weights fit
    (16, 8),        # 64: in two blocks
    (24, 12),       # 96
    (128, 8),       # 512: in sixteen
])
def test_unpaired_avx_vnni_tiles_block_their_input_channels(groups, expected):
    """An unpaired AVX-VNNI tile's weights (2 blocks of 8 lanes x 4 channels x 9 taps = 576
    bytes a group) pass over the row in blocks within UNPAIRED_K_BLOCK_BYTES."""
    from graphopt.targets.tvm.schedules.conv2d_int8 import (UNPAIRED_K_BLOCK_BYTES,
                                                            input_channel_block)
    assert input_channel_block(groups, 576, UNPAIRED_K_BLOCK_BYTES) == expected


@pytest.mark.parametrize("case, pairing_cpu, paired", [
    (Case("3x3-64ch-56-wide", 64, 64, 56, 3, padding=(1, 1, 1, 1)), True, True),
    (Case("3x3-36ch-56-wide", 36, 64, 56, 3, padding=(1, 1, 1, 1)), True, False),  # 9 groups
    (Case("3x3-64ch-56-wide", 64, 64, 56, 3, padding=(1, 1, 1, 1)), False, False),
], ids=["64ch", "36ch", "64ch-intel"])
def test_paired_avx_vnni_tiles_add_the_second_group_s_products(case, pairing_cpu, paired,
                                                               monkeypatch):
    """In a paired AVX-VNNI kernel (CPUs in `VNNI_PAIR_CPUS`, AMD's; here alderlake counted in
    to build it on any host) every other vpdpbusd accumulates into a zeroed register that a
    vpaddd adds to the tile; an odd number of groups keeps one vpdpbusd a step, and Intel's
    CPUs (alderlake as it is) take no pairs. Exact where this host runs AVX-VNNI."""
    from graphopt.targets.tvm.schedules import common
    if pairing_cpu:
        monkeypatch.setattr(common, "VNNI_PAIR_CPUS", (*common.VNNI_PAIR_CPUS, "alderlake"))
    graph = quantized_conv(case)
    model = go.compile(graph, "cpu", mcpu="alderlake", bounds_check=True)
    assembly = cpu_assembly(model.executable)
    products, adds = (len(re.findall(rf"{op}\s+%ymm", assembly)) for op in ("vpdpbusd", "vpaddd"))
    assert products and (adds >= products // 2) == paired, (products, adds)
    skip_unless_this_cpu_runs(model)
    inputs = feeds(graph)
    np.testing.assert_array_equal(model.run(inputs)["y"], go.interpret(graph, inputs)["y"])


PAIRED_CASES = [c for c in CASES if c.id in (
    "3x3-64ch-relu", "3x3-96ch-residual-8-wide", "3x3-96-to-16-14-wide-relu6",
    "3x3-17-wide-padded-row-residual", "grouped-2-3x3-relu", "5x5-6ch-batch2")]


@pytest.mark.parametrize("case", PAIRED_CASES, ids=[c.id for c in PAIRED_CASES])
def test_paired_avx_vnni_tiles_are_exact(case, monkeypatch):
    """The paired AVX-VNNI tiles AMD cores take (`VNNI_PAIR_CPUS`; alderlake counted in to
    build them on any host): in blocks of input channels (96 ch: 24 groups in 2), 2 rows x 2
    pixels, with a residual and relu6, padded rows, grouped; exact against the interpreter where
    this host runs AVX-VNNI (the op table covers the unpaired tiles)."""
    from graphopt.targets.tvm.schedules import common
    monkeypatch.setattr(common, "VNNI_PAIR_CPUS", (*common.VNNI_PAIR_CPUS, "alderlake"))
    graph = quantized_conv(case)
    model = go.compile(graph, "cpu", mcpu="alderlake", bounds_check=True)
    assert the_conv(model.graph).op.conv.algorithm == "vnni"
    skip_unless_this_cpu_runs(model)
    for seed in (1, 2):
        inputs = feeds(graph, seed)
        np.testing.assert_array_equal(model.run(inputs)["y"], go.interpret(graph, inputs)["y"])


def test_only_amd_cpus_pair_avx_vnni_channel_groups():
    """`VectorShape.vnni_pairs`: AVX-VNNI targets of AMD cores pair channel groups, Intel's
    (the CPUs with AVX-VNNI and no AVX-512) do not; AVX-512 and AVX2 targets have no AVX-VNNI
    tiles."""
    from graphopt.targets.tvm.cpu import host_target
    from graphopt.targets.tvm.schedules.common import VNNI_PAIR_CPUS, VectorShape
    assert VectorShape.of(host_target("alderlake")).avx_vnni
    assert not VectorShape.of(host_target("alderlake")).vnni_pairs
    assert not VectorShape.of(host_target("znver5")).vnni_pairs      # AVX-512: 16 lanes
    assert not VectorShape.of(host_target("znver3")).vnni_pairs      # no AVX-VNNI
    assert "znver5".startswith(VNNI_PAIR_CPUS)


@pytest.mark.parametrize("residual", [True, False], ids=["residual", "no-residual"])
def test_avx512_tiles_write_back_whole_vectors(residual):
    """On 16 lanes an epilogue reading a residual (NCHW: a channel's pixels contiguous) takes
    each channel's pixels out of the tile by a register transpose (whole vectors: its rows
    padded to 16 pixels); one without runs on the tile's channel vectors, each converted and
    narrowed to 16 bytes whole (`UNFUSED_CHANNEL_EPILOGUE_LANES`); neither gathers one
    accumulator at a time from the spilled tile (`vpinsrd`)."""
    case = Case("3x3-64ch-relu", 64, 64, 14, 3, padding=(1, 1, 1, 1), activation=ops.Relu(),
                residual=residual)
    model = go.compile(quantized_conv(case), "cpu", mcpu=VNNI_CPU)
    assembly = cpu_assembly(model.executable)
    assert assembly.count("vpinsrd") < 16      # 15 per channel where gathered
    transposed = len(re.findall(r"vpunpckldq\s+%zmm", assembly))
    on_channels = len(re.findall(r"vpmovdb\s+%zmm", assembly))
    # a tile of 2 blocks x 14 pixels: 28 channel vectors
    assert (transposed > 0, on_channels >= 28) == (residual, not residual), \
        (transposed, on_channels)


@pytest.mark.parametrize("case, why", [
    (Case("asymmetric-weights", 16, 16, 8, 3, w_zero_point=3), "w zero point"),
    # 128 x 9 weights of about 64 in magnitude per output: 255 times their sum passes 2^24,
    # so the sums may not be exact in float32; 8 output channels a group fill no VNNI block
    (Case("grouped-deep", 256, 16, 6, 3, groups=2), "sums beyond float32's integers"),
], ids=["weight-zero-point", "grouped-deep"])
def test_layers_no_kernel_computes_stay_as_written(case, why):
    graph = quantized_conv(case)
    model = go.compile(graph, "cpu", mcpu=VNNI_CPU)
    assert the_conv(model.graph).op.conv == ops.Conv2d(
        (case.stride,) * 2, case.padding, (case.dilation,) * 2, case.groups), why
    if "avx512_vnni" in host_flags():
        inputs = feeds(graph)
        np.testing.assert_array_equal(model.run(inputs)["y"], go.interpret(graph, inputs)["y"])


@pytest.mark.parametrize("out_channels, in_channels, groups, lanes, group, fits", [
    (128, 48, 2, 16, 4, True),       # AlexNet's 96 -> 256 ch conv, two groups
    (64, 16, 4, 16, 4, True),        # RegNetX's groups of 16 channels: one block each
    (64, 16, 4, 8, 4, True),         # two blocks each on 8 lanes
    (48, 12, 4, 16, 4, False),       # 12 outputs a group: no whole block
    (16, 4, 4, 8, 2, False),         # 4 outputs a group on 8 lanes
    (32, 6, 2, 16, 4, False),        # 6 inputs a group: a channel group would span two
    (32, 6, 2, 16, 2, True),         # ... but not vpmaddwd's pairs
    (32, 1, 32, 8, 4, False),        # depthwise
    (24, 40, 1, 16, 4, True),        # ungrouped convs pad their blocks
])
def test_grouped_convs_whose_groups_fill_whole_blocks_take_dot_products(
        out_channels, in_channels, groups, lanes, group, fits):
    from graphopt.targets.tvm.schedules.conv2d_int8 import grouped_fits
    assert grouped_fits((out_channels, in_channels, 3, 3), groups, lanes, group) == fits


GROUPED = [
    Case("depthwise-3x3-relu6", 32, 32, 14, 3, padding=(1, 1, 1, 1), groups=32,
         activation=ops.Clip(0.0, 6.0)),
    Case("depthwise-s2-odd-batch2", 24, 24, 15, 3, stride=2, padding=(1, 1, 1, 1), groups=24,
         batch=2),
    Case("depthwise-5x5-weight-zero-point", 16, 16, 9, 5, padding=(2, 2, 2, 2), groups=16,
         w_zero_point=-3),
    Case("grouped-4x4-relu", 16, 16, 8, 3, padding=(1, 1, 1, 1), groups=4,
         activation=ops.Relu()),
    Case("grouped-4x12-7-wide-residual", 48, 48, 7, 3, padding=(1, 1, 1, 1), groups=4,
         residual=True),
]


@pytest.mark.parametrize("mcpu, lanes", [("skylake-avx512", 16), ("haswell", 8)])
@pytest.mark.parametrize("case", GROUPED, ids=[c.id for c in GROUPED])
def test_grouped_convs_run_exactly_on_float32_kernels(case, mcpu, lanes):
    """Depthwise int8 convolutions, and grouped ones whose groups fill no whole block of
    output channels (`grouped_fits`), which no dot-product kernel computes, run on the float32
    depthwise or blocked direct kernel, on x - xz and w - wz, whose sums float32 holds
    exactly: the results equal the interpreter's (the host's build, bounds-checked)."""
    graph = quantized_conv(case)
    conv = the_conv(go.compile(graph, "cpu", mcpu=mcpu).graph).op.conv
    expected = "depthwise" if case.groups == case.in_channels else "direct"
    assert conv.algorithm == expected and conv.weight_block, conv
    if expected == "depthwise":   # rows of whole vectors, half ones for rows that fit half
        out_w = graph.outputs[0].shape[3]
        assert conv.weight_block == (lanes // 2 if out_w <= lanes // 2 else lanes), out_w
    model = go.compile(graph, "cpu", bounds_check=True)
    # one kernel, the requantize epilogue inside it, on the float32 rule
    assert list(model.schedules.values()) == ["conv2d" if expected == "direct" else expected]
    for seed in (1, 2):
        inputs = feeds(graph, seed)
        np.testing.assert_array_equal(model.run(inputs)["y"], go.interpret(graph, inputs)["y"])


NARROW = [
    Case("lenet-1-to-6-5x5", 1, 6, 28, 5, padding=(2, 2, 2, 2), activation=ops.Relu()),
    Case("2-to-6-3x3-batch2-relu6", 2, 6, 32, 3, padding=(1, 1, 1, 1), batch=2,
         activation=ops.Clip(0.0, 6.0)),
]


@pytest.mark.parametrize("mcpu", [VNNI_CPU, "haswell"])
@pytest.mark.parametrize("case", NARROW, ids=[c.id for c in NARROW])
def test_convs_of_few_channels_run_exactly_on_the_narrow_float32_kernel(case, mcpu):
    """Convolutions the float32 rules compute as rows of vectors (a channel or two in, a few
    out: mostly padding in a dot-product tile) run on that kernel, on x - xz and w - wz, whose
    sums float32 holds exactly: the results equal the interpreter's (the host's build,
    bounds-checked)."""
    graph = quantized_conv(case)
    assert chosen(go.compile(graph, "cpu", mcpu=mcpu)) == "narrow"
    model = go.compile(graph, "cpu", bounds_check=True)
    assert list(model.schedules.values()) == ["narrow"], model.schedules
    for seed in (1, 2):
        inputs = feeds(graph, seed)
        np.testing.assert_array_equal(model.run(inputs)["y"], go.interpret(graph, inputs)["y"])


@pytest.mark.parametrize("stride, mcpu, expected", [
    (1, VNNI_CPU, "vnni"),          # three of each group of four input channels real
    (2, VNNI_CPU, "narrow"),        # measured no faster on VNNI at stride 2
    (1, "haswell", "narrow"),       # without VNNI, rows of vectors
])
def test_a_stride_1_image_conv_stays_on_vnni(stride, mcpu, expected):
    """A 3 -> 32 channel 3x3 conv on an image (what the float32 rules take as rows of vectors)
    runs on VNNI tiles at stride 1, where the CPU has VNNI, and computes what the interpreter
    does (the host's build, bounds-checked)."""
    case = Case(f"image-s{stride}", 3, 32, 34, 3, stride=stride, padding=(1, 1, 1, 1),
                activation=ops.Relu())
    graph = quantized_conv(case)
    assert chosen(go.compile(graph, "cpu", mcpu=mcpu)) == expected
    model = go.compile(graph, "cpu", bounds_check=True)
    for seed in (1, 2):
        inputs = feeds(graph, seed)
        np.testing.assert_array_equal(model.run(inputs)["y"], go.interpret(graph, inputs)["y"])


def test_weights_as_parameters_stay_as_written():
    """The packed weight is made at lowering from the constant: a parameter cannot be."""
    graph = quantized_conv(CASES[0])
    assert chosen(go.compile(graph, "cpu", mcpu=VNNI_CPU, weights="params")) == "direct"


@pytest.mark.skipif("amx_int8" not in host_flags(), reason="this CPU has no AMX-INT8: the amx "
                    "kernel is compile-checked only")
def test_amx_library_runs_in_a_fresh_process(tmp_path):
    """A fresh process must ask Linux for AMX tile data before the first tile instruction (or
    die of SIGILL): the runtime does, before every run."""
    from test_export import run_with_only_the_runtime
    graph = quantized_conv(CASES[-5])
    model = go.compile(graph, "cpu", mcpu=AMX_BUILD[0])
    assert chosen(model) == "amx"
    path = str(tmp_path / "amx.so")
    model.export(path)
    inputs = feeds(graph)
    for threads in (1, 2):
        found = run_with_only_the_runtime(path, inputs, tmp_path / str(threads), threads)
        np.testing.assert_array_equal(found["y"], go.interpret(graph, inputs)["y"])


def test_a_network_of_amx_layers_of_several_shapes():
    """One kernel per shape in one library (each layer's PrimFunc is named apart), each equal
    to the interpreter where the host has AMX."""
    with go.dsl.Builder("amx_net", seed=0) as b:
        x = b.input("input", (1, 64, 16, 16))
        y = go.dsl.relu(go.dsl.conv2d(x, 64, 3, padding=1, name="c1"))
        y = go.dsl.relu(go.dsl.conv2d(y, 128, 3, stride=2, padding=1, name="c2"))
        graph = b.output(go.dsl.conv2d(y, 64, 1, name="c3"))
    rng = np.random.default_rng(0)
    samples = [{"input": rng.standard_normal((1, 64, 16, 16)).astype(np.float32)}
               for _ in range(3)]
    q = go.quantize(graph, go.calibrate(graph, samples)).graph
    model = go.compile(q, "cpu", mcpu=AMX_BUILD[0])
    assert [n.op.conv.algorithm for n in model.graph.nodes if n.op_name == "qlinear_conv2d"] \
        == ["amx"] * 3
    if "amx_int8" in host_flags():
        np.testing.assert_array_equal(model.run(samples[0])["output"],
                                      go.interpret(q, samples[0])["output"])
