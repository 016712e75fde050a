"""bfloat16 convolutions on AVX512-BF16's vdpbf16ps (schedules/conv2d_bf16.py): which CPUs'
builds send bfloat16 convolutions to it, that the instruction is in the code built for a CPU
that has it (on any x86 host), and, where this host has AVX512-BF16, that the kernel computes
what the interpreter does over a table of shapes (odd channel counts, strides, padding,
dilation, batches, epilogues): float32 sums in another order, then one rounding to bfloat16,
so an output may differ by one bfloat16 rounding of the largest output."""
from __future__ import annotations

import re
from dataclasses import dataclass

import numpy as np
import pytest

import graphopt as go
from graphopt import dsl, runtime
from graphopt.errors import GraphoptError

from conftest import skip_unless_this_cpu_runs

pytest.importorskip("tvm")

from graphopt.targets.tvm.compile import optimize_for_target  # noqa: E402
from graphopt.targets.tvm.cpu import cpu_assembly  # noqa: E402
from graphopt.targets.tvm.options import CompileOptions  # noqa: E402
from graphopt.targets.tvm.schedules import conv2d_bf16  # noqa: E402

BF16_CPU = "cooperlake"          # AVX512-BF16, no AMX
INSTRUCTION = r"vdpbf16ps\s+.*zmm"


def host_has_bf16() -> bool:
    return "avx512_bf16" in (runtime.host_cpu_flags() or frozenset())


@dataclass(frozen=True)
class Case:
    id: str
    in_channels: int
    out_channels: int
    size: int
    kernel: int
    stride: int = 1
    padding: int | tuple = 0
    dilation: int = 1
    batch: int = 1
    activation: str | None = None
    residual: bool = False
    groups: int = 1
    bias: bool = True


CASES = [
    Case("3x3-64-to-48ch-relu", 64, 48, 14, 3, padding=1, activation="relu"),
    Case("stem-3ch-7x7-s2", 3, 32, 30, 7, stride=2, padding=3, activation="relu"),
    Case("odd-17-to-10-s2-relu6", 17, 10, 9, 3, stride=2, padding=1, activation="relu6"),
    Case("5x5-5ch-batch2", 5, 16, 13, 5, batch=2),
    Case("1x1-residual-batch2", 32, 48, 8, 1, batch=2, residual=True, activation="relu"),
    Case("dilated-33ch", 33, 40, 11, 3, padding=2, dilation=2),
    Case("asymmetric-padding-7-wide", 24, 40, 7, 3, padding=(0, 1, 1, 0)),
    # images of few channels whose kernel rows' taps are the pairs ("dpbf16_taps": the input
    # copied unfolded along the rows, per output column): strides, dilation, asymmetric
    # padding (the unfolded columns reading the left and right padding), batches, a residual
    Case("3ch-5x5-batch2-relu6", 3, 48, 20, 5, padding=2, batch=2, activation="relu6"),
    Case("1ch-7x7-dilated-s2-asymmetric", 1, 32, 33, 7, stride=2, padding=(1, 5, 2, 0),
         dilation=2),
    Case("3ch-7x7-s2-residual", 3, 64, 21, 7, stride=2, padding=3, residual=True,
         activation="relu"),
    # grouped convs whose groups are whole blocks (`conv2d_bf16.applies`): each block reads its
    # group's pairs of channels; 16 channels a group at stride 2, two tiles' blocks apart
    Case("grouped-2-residual-relu", 64, 64, 14, 3, padding=1, groups=2, residual=True,
         activation="relu"),
    Case("grouped-4x16-s2-batch2", 64, 64, 15, 3, stride=2, padding=1, groups=4, batch=2),
    # rows of a prime width above 28 computed to whole tiles (`conv2d_int8.padded_row`: 37 ->
    # 38, 31 -> 32), the epilogue on the tile's channel vectors
    Case("1x1-37-wide-padded-row-relu", 64, 80, 37, 1, activation="relu"),
    Case("3x3-s2-31-wide-padded-row-residual", 32, 48, 61, 3, stride=2, padding=1,
         residual=True),
]
ROW_TAPS_CASES = {"stem-3ch-7x7-s2", "3ch-5x5-batch2-relu6", "1ch-7x7-dilated-s2-asymmetric",
                  "3ch-7x7-s2-residual"}


def conv_graph(case: Case):
    """One convolution (bias, residual, activation fused into it) as go.quantize makes it
    bfloat16: float32 at the graph's edges, bfloat16 inside."""
    with dsl.Builder(f"bf16_{case.id}".replace("-", "_"), seed=0) as b:
        x = b.input("input", (case.batch, case.in_channels, case.size, case.size))
        y = dsl.conv2d(x, case.out_channels, case.kernel, stride=case.stride,
                       padding=case.padding, dilation=case.dilation, groups=case.groups,
                       bias=case.bias, name="conv")
        if case.residual:
            y = dsl.add(y, b.input("residual", y.shape))
        if case.activation:
            y = getattr(dsl, case.activation)(y)
        graph = b.output(y)
    return go.quantize(graph, "bfloat16").graph


def feeds(graph, seed: int = 1) -> dict[str, np.ndarray]:
    rng = np.random.default_rng(seed)
    return {v.name: rng.standard_normal(v.shape).astype(np.float32) for v in graph.inputs}


def algorithm(model_or_graph) -> tuple[str, int]:
    graph = getattr(model_or_graph, "graph", model_or_graph)
    [conv] = [getattr(n.op, "conv", n.op) for n in graph.nodes
              if n.op_name in ("conv2d", "fused_conv2d")]
    return conv.algorithm, conv.weight_block


def chosen_for(graph, mcpu: str) -> tuple[str, int]:
    return algorithm(optimize_for_target(graph, "cpu", CompileOptions(mcpu=mcpu))[0])


def assert_one_rounding_from(found: np.ndarray, expected: np.ndarray) -> None:
    """Within one bfloat16 rounding (2^-8 relative, doubled for a value near a rounding
    boundary) of the largest expected output, and mostly identical."""
    found, expected = found.astype(np.float32), expected.astype(np.float32)
    scale = float(np.abs(expected).max())
    assert np.abs(found - expected).max() <= scale * 2 ** -7
    assert np.mean(found == expected) >= 0.99


def check_built_kernel(case: Case, expected: tuple[str, int], schedule: str, within) -> None:
    """Build `case` for an AVX512-BF16 CPU without AMX (on any x86 host) with bounds checks
    (an access outside a buffer fails the run): the conv takes `expected` (algorithm, weight
    block), its one kernel the rule `schedule`, vdpbf16ps is in the code; where this host can
    run that code, `within(found, expected)` holds for each output on two inputs."""
    graph = conv_graph(case)
    model = go.compile(graph, "cpu", mcpu=BF16_CPU, bounds_check=True)
    assert algorithm(model) == expected
    assert re.search(INSTRUCTION, cpu_assembly(model.executable))
    assert list(model.schedules.values()).count(schedule) == 1
    if not host_has_bf16():
        pytest.skip(f"this CPU has no avx512_bf16: the {BF16_CPU} build is compile-checked only")
    for seed in (1, 2):
        inputs = feeds(graph, seed)
        found, reference = model.run(inputs), go.interpret(graph, inputs)
        for name in reference:
            within(found[name], reference[name])


@pytest.mark.parametrize("case", CASES, ids=[c.id for c in CASES])
def test_vdpbf16ps_convolutions_compute_what_the_interpreter_does(case):
    """The conv runs on vdpbf16ps (an image's few channels with its kernel rows' taps as the
    pairs); the outputs are the interpreter's within one rounding."""
    algorithm = conv2d_bf16.ROW_TAPS if case.id in ROW_TAPS_CASES else conv2d_bf16.ALGORITHM
    check_built_kernel(case, (algorithm, conv2d_bf16.LANES), conv2d_bf16.NAME,
                       assert_one_rounding_from)



# Convs of few channels the float32 rules take as rows of vectors (`narrow.applies`), of stride
# 1: a kernel row's neighbouring taps in pairs on vdpbf16ps ("narrow_dpbf16"): odd and even
# kernel widths (an odd row's last tap alone), rows padded to whole vectors and rows of several
# tiles, padding on any side, batches, several output channel tiles, epilogues.
NARROW_PAIRS_CASES = [
    Case("lenet-1-to-6ch-5x5-tanh", 1, 6, 28, 5, activation="tanh"),
    Case("3-to-64ch-3x3-batch2-relu", 3, 64, 20, 3, padding=1, batch=2, activation="relu"),
    Case("2-to-5ch-4x4-asymmetric-residual", 2, 5, 19, 4, padding=(1, 2, 0, 1),
         residual=True),
    Case("3-to-3ch-7x7-wide-rows", 3, 3, 45, 7, padding=3, activation="relu6"),
    Case("1-to-3ch-2x2-no-bias", 1, 3, 33, 2, bias=False),
]


@pytest.mark.parametrize("case", NARROW_PAIRS_CASES, ids=[c.id for c in NARROW_PAIRS_CASES])
def test_rows_of_vectors_on_vdpbf16ps_compute_what_the_interpreter_does(case):
    """The narrow rule's tiles with each step a vdpbf16ps on a kernel row's pair of taps; the
    outputs are the interpreter's within one rounding."""
    check_built_kernel(case, (conv2d_bf16.NARROW_PAIRS, conv2d_bf16.LANES), conv2d_bf16.NAME,
                       assert_one_rounding_from)


def test_rows_of_vectors_on_vdpbf16ps_keep_infinities_outside_the_window():
    """An odd kernel row's last tap is paired with a zero input, not a zero weight: an infinity
    just right of a window leaves that output finite, as in the interpreter, and the outputs
    whose windows hold it are infinite or NaN as there."""
    graph = conv_graph(Case("inf", 1, 6, 28, 5))
    model = go.compile(graph, "cpu", mcpu=BF16_CPU)
    assert algorithm(model)[0] == conv2d_bf16.NARROW_PAIRS
    if not host_has_bf16():
        pytest.skip("this CPU has no avx512_bf16")
    inputs = feeds(graph)
    inputs["input"][0, 0, 10, 9] = np.inf
    inputs["input"][0, 0, 3, 20] = -np.inf
    (name, expected), = go.interpret(graph, inputs).items()
    found, expected = model.run(inputs)[name].astype(np.float32), expected.astype(np.float32)
    assert np.isfinite(expected[0, :, :, 4]).all() and not np.isfinite(expected).all()
    np.testing.assert_array_equal(np.isnan(found), np.isnan(expected))
    np.testing.assert_array_equal(np.isinf(found), np.isinf(expected))
    finite = np.isfinite(expected)
    np.testing.assert_array_equal(found[~finite], expected[~finite])
    assert_one_rounding_from(found[finite], expected[finite])


def test_narrow_pairs_weight():
    """A kernel row's taps in pairs, an odd row's last pair completed by a zero tap."""
    weight = (np.arange(2 * 3 * 4 * 5) + 1).reshape(2, 3, 4, 5).astype("bfloat16")
    packed = conv2d_bf16.pack_weight_pairs(weight)
    assert packed.shape == (2, 3, 4, 3, 2) and packed.dtype == np.uint16
    bits = weight.view(np.uint16)
    assert packed[1, 2, 3, 1, 1] == bits[1, 2, 3, 3] and packed[0, 1, 2, 0, 0] == bits[0, 1, 2, 0]
    assert (packed[..., 2, 1] == 0).all() and (packed[..., 2, 0] == bits[..., 4]).all()
    with pytest.raises(GraphoptError, match="bfloat16"):
        conv2d_bf16.pack_weight_pairs(np.zeros((2, 1, 3, 3), np.float32))


def test_row_taps_weight_and_choice():
    """The unfolded weight holds tap kx of channel c as channel kx * I + c of a KH x 1 kernel;
    row taps are taken where they save instructions (3 channels x 7 taps: 11 pairs a row
    against 14), not for a 1-wide kernel or channels already in whole pairs."""
    weight = np.arange(2 * 3 * 5 * 7).reshape(2, 3, 5, 7)
    unfolded = conv2d_bf16.unfold_row_taps(weight)
    assert unfolded.shape == (2, 21, 5, 1)
    for o, c, ky, kx in [(0, 0, 0, 0), (1, 2, 4, 6), (0, 1, 3, 2)]:
        assert unfolded[o, kx * 3 + c, ky, 0] == weight[o, c, ky, kx]
    assert conv2d_bf16.row_taps_save(3, 7) and conv2d_bf16.row_taps_save(1, 3)
    assert not conv2d_bf16.row_taps_save(3, 1) and not conv2d_bf16.row_taps_save(4, 3)


# 3x3 'same' convs that take Winograd F(2x2) on vdpbf16ps: partial tiles (odd planes), input
# channels in whole GEMM channel blocks or not, batches, rows of tiles (the 56x56 plane),
# epilogues.
WINOGRAD_CASES = [
    Case("64ch-14x14-relu", 64, 64, 14, 3, padding=1, activation="relu"),
    Case("34-to-64ch-odd-plane-residual", 34, 64, 9, 3, padding=1, residual=True),
    Case("96-to-64ch-7x7-batch2", 96, 64, 7, 3, padding=1, batch=2, activation="relu6"),
    Case("256-to-64ch-4x4-no-bias", 256, 64, 4, 3, padding=1, bias=False),
    Case("32-to-128ch-rows-of-tiles", 32, 128, 56, 3, padding=1, activation="relu"),
]


def assert_within_roundings(found: np.ndarray, expected: np.ndarray) -> None:
    """Winograd in bfloat16 rounds the transformed input and weight: within a few bfloat16
    roundings of the largest output, and an rms difference of about one rounding."""
    found, expected = found.astype(np.float64), expected.astype(np.float64)
    scale = float(np.abs(expected).max())
    assert np.abs(found - expected).max() <= scale * 2 ** -6
    assert np.sqrt(np.mean((found - expected) ** 2)) <= np.sqrt(np.mean(expected ** 2)) * 2 ** -7


@pytest.mark.parametrize("case", WINOGRAD_CASES, ids=[c.id for c in WINOGRAD_CASES])
def test_winograd_on_vdpbf16ps_computes_what_the_interpreter_does(case):
    """The conv is Winograd F(2x2) with its GEMMs on vdpbf16ps; the outputs are the
    interpreter's within a few roundings."""
    from graphopt.targets.tvm.schedules import winograd
    check_built_kernel(case, ("winograd_dpbf16", 32), winograd.NAME, assert_within_roundings)


def test_winograd_on_vdpbf16ps_keeps_nans_and_infinities():
    """A NaN or infinite input gives NaN where the interpreter's output is NaN, and the same
    finite outputs elsewhere (rounding a transformed value to bfloat16 keeps a NaN a NaN)."""
    graph = conv_graph(Case("nan", 32, 64, 6, 3, padding=1, bias=False))
    model = go.compile(graph, "cpu", mcpu=BF16_CPU)
    assert algorithm(model)[0] == "winograd_dpbf16"
    if not host_has_bf16():
        pytest.skip("this CPU has no avx512_bf16")
    inputs = feeds(graph)
    bits = np.array([0x7FC00000, 0x7FFFFFFF, 0xFFFFFFFF, 0x7F800000], np.uint32)
    inputs["input"][0, :4, 2, 3] = bits.view(np.float32)
    (name, expected), = go.interpret(graph, inputs).items()
    found, expected = model.run(inputs)[name].astype(np.float32), expected.astype(np.float32)
    assert np.array_equal(np.isnan(found), np.isnan(expected)) and np.isnan(found).any()
    finite = np.isfinite(expected)
    assert np.abs(found[finite] - expected[finite]).max() <= \
        np.abs(expected[finite]).max() * 2 ** -6


def test_winograd_on_vdpbf16ps_streams_its_weights_without_prefetches():
    """The bfloat16 GEMMs read their 1.5 MB of transformed weights (256 -> 192 ch, a 7x7
    plane: too large to go by rows of tiles) without software prefetches, which measured slower
    there (`winograd._schedule_paired_gemm`); the float32 GEMMs of the same conv prefetch
    them."""
    graph = conv_graph(Case("streamed", 256, 192, 7, 3, padding=1))
    model = go.compile(graph, "cpu", mcpu=BF16_CPU)
    assert algorithm(model)[0] == "winograd_dpbf16"
    assert "prefetcht0" not in cpu_assembly(model.executable)
    widened = go.compile(graph, "cpu", mcpu="cascadelake")     # float32's F(2x2), widened
    assert algorithm(widened)[0] == "winograd"
    assert "prefetcht0" in cpu_assembly(widened.executable)


def test_winograd_weights_in_pairs():
    """The transformed weight of F(2x2), rounded to bfloat16, as [4, 4, O / block, I / 2, block,
    2]: element (e, v, o // block, c // 2, o % block, c % 2) is U[e, v, o, c]."""
    import ml_dtypes

    from graphopt.targets.tvm.schedules import winograd
    weight = np.random.default_rng(0).standard_normal((64, 6, 3, 3)).astype("bfloat16")
    packed = winograd.transform_weight_in_pairs(weight, 32)
    _, g, _ = winograd.TRANSFORMS[2]
    u = np.einsum("ea,kcab,vb->evkc", g, weight.astype(np.float64), g)
    assert packed.shape == (4, 4, 2, 3, 32, 2) and packed.dtype == np.uint16
    for e, v, o, c in [(0, 0, 0, 0), (1, 2, 33, 5), (3, 3, 63, 4), (2, 1, 17, 1)]:
        assert packed[e, v, o // 32, c // 2, o % 32, c % 2] == \
            np.float32(u[e, v, o, c]).astype(ml_dtypes.bfloat16).view(np.uint16)


def test_winograd_on_vdpbf16ps_is_f2x2_only():
    with pytest.raises(GraphoptError, match="output_tile"):
        go.ops.Conv2d(algorithm="winograd_dpbf16", weight_block=32, output_tile=4)


AMX_CASES = [
    Case("amx-padded-channels-17-wide", 48, 80, 17, 3, padding=1, activation="relu"),
    Case("amx-35-wide-residual", 96, 48, 35, 3, padding=1, residual=True),
    Case("amx-1x1-400ch-7x7-batch2", 400, 400, 7, 1, batch=2, activation="relu"),
    Case("amx-1x1-40-to-240-s2", 40, 240, 27, 1, stride=2),
    Case("amx-1x1-58-to-116-residual", 58, 116, 14, 1, residual=True),
    # a kernel row's taps as one tile row (`amx.folded_channels`): 3 channels rounded up to 4,
    # 7 x 4 values of a row's 32, stride 2; 5 channels as 6, asymmetric padding, two images;
    # 10 channels 3 x 10, a residual
    Case("amx-folded-stem-3ch-7x7-s2", 3, 64, 30, 7, stride=2, padding=3, activation="relu"),
    Case("amx-folded-5ch-5x5-batch2", 5, 32, 13, 5, padding=(2, 1, 2, 0), batch=2),
    Case("amx-folded-10-to-48-residual", 10, 48, 12, 3, padding=1, residual=True),
    # up to 16 output channels: one block of C tiles (LeNet-5's second conv, and a 1x1 one)
    Case("amx-folded-6-to-16-tanh", 6, 16, 14, 5, activation="tanh"),
    Case("amx-1x1-96-to-12-odd-rows", 96, 12, 13, 1),
]


@pytest.mark.parametrize("case", AMX_CASES, ids=[c.id for c in AMX_CASES])
def test_amx_tiles_round_channels_and_rows_up(case):
    """Built for an AMX-BF16 CPU (on any x86 host), convolutions whose channels are not whole
    tile rows or blocks of 32 (zero weights fill them) and whose rows no divisor tiles (17 as
    two tiles of 9, 35 as three of 12) run on tiles; where this host has AMX-BF16 the outputs
    are the interpreter's within one rounding (built with bounds checks)."""
    from graphopt.targets.tvm.schedules import amx
    graph = conv_graph(case)
    model = go.compile(graph, "cpu", mcpu="sapphirerapids", bounds_check=True)
    assert algorithm(model)[0] == amx.AMX
    assert list(model.schedules.values()).count("tile_epilogue") == 1, model.schedules
    if "amx_bf16" not in (runtime.host_cpu_flags() or ()):
        pytest.skip("this CPU has no AMX-BF16: the amx build is compile-checked only")
    for seed in (1, 2):
        inputs = feeds(graph, seed)
        found, expected = model.run(inputs), go.interpret(graph, inputs)
        for name in expected:
            assert_one_rounding_from(found[name], expected[name])


def two_convs(precision: str, shared: bool):
    """conv -> relu -> conv (64 channels, 3x3, 13x13: an odd row, computed to whole tiles),
    the first conv's output also added to the end where `shared`; quantized to `precision`
    (int8 calibrated on two random inputs). The two epilogues differ, so each is a kernel of
    its own."""
    with dsl.Builder(f"two_convs_{precision}_{shared}", seed=0) as b:
        x = b.input("input", (1, 64, 13, 13))
        y = dsl.relu(dsl.conv2d(x, 64, 3, padding=1, name="first"))
        z = dsl.conv2d(y, 64, 3, padding=1, name="second")
        graph = b.output(z + y if shared else z)
    if precision == "int8":
        return go.quantize(graph, go.calibrate(graph, [feeds(graph, 3), feeds(graph, 4)])).graph
    return go.quantize(graph, precision).graph


@pytest.mark.parametrize("shared", [False, True], ids=["alone", "shared"])
@pytest.mark.parametrize("precision", ["bfloat16", "int8"])
def test_an_amx_conv_copies_its_input_from_the_previous_ones_tiles(precision, shared):
    """Built for an AMX CPU (on any x86 host), a conv whose input is another AMX conv's output
    (no residual in its epilogue) computes that epilogue in its input copy, from the tiles: the
    first conv's NCHW epilogue is built only where something else reads it. Where this host has
    AMX the outputs are the interpreter's (bfloat16 within one rounding, int8 exactly), built
    with bounds checks."""
    graph = two_convs(precision, shared)
    model = go.compile(graph, "cpu", mcpu="sapphirerapids", bounds_check=True)
    rules = model.schedules
    assert [name for name in rules if name.startswith("amx_pack")] == \
        ["amx_pack", "amx_pack_epilogue"], rules
    assert list(rules.values()).count("tile_epilogue") == (2 if shared else 1), rules
    feature = "amx_bf16" if precision == "bfloat16" else "amx_int8"
    if feature not in (runtime.host_cpu_flags() or ()):
        pytest.skip(f"this CPU has no {feature}: the amx build is compile-checked only")
    for seed in (1, 2):
        inputs = feeds(graph, seed)
        found, expected = model.run(inputs), go.interpret(graph, inputs)
        for name in expected:
            if precision == "int8":
                np.testing.assert_array_equal(found[name], expected[name])
            else:
                assert_one_rounding_from(found[name], expected[name])


@pytest.mark.parametrize("width, expected", [(56, (14, 56)), (28, (14, 28)), (7, (7, 7)),
                                             (112, (16, 112)), (17, (9, 18)), (35, (12, 36)),
                                             (73, (15, 75)), (3, (3, 3))])
def test_rows_take_the_fewest_tiles_then_the_least_padding(width, expected):
    from graphopt.targets.tvm.schedules import amx
    assert amx.row_tiles(width) == expected


@pytest.mark.parametrize("channels, kernel, fills", [
    ((64, 64), 3, True), ((48, 80), 3, True),     # 64 x 96 products for 48 x 80: 1.6x
    ((16, 96), 1, False),      # 16 products per output: the pointwise rule is faster
    ((16, 96), 3, True), ((40, 40), 1, False),    # 64 x 64 products for 40 x 40: 2.6x
    ((64, 40), 3, True), ((58, 116), 1, True),    # output channels beyond whole vectors
    # a kernel row's taps fold into one tile row: one row of 32 products per kernel row
    ((3, 64), 7, True),        # 7 x 32 for 7 x 7 x 3: 1.5x
    ((3, 64), 3, False),       # 3 x 32 for 3 x 3 x 3: 3.6x
    ((6, 16), 5, True),        # one block of 16 outputs: 5 x 32 x 16 for 5 x 5 x 6 x 16: 1.1x
    ((6, 20), 5, True),        # two blocks: 5 x 32 x 32 for 5 x 5 x 6 x 20: 1.7x
    ((1, 6), 5, False),        # 5 x 32 x 16 for 5 x 5 x 1 x 6: 17x
    ((48, 16), 1, True),       # 64 x 16 for 48 x 16: 1.3x
    ((10, 48), 3, True),       # 3 x 32 x 64 for 3 x 3 x 10 x 48: 1.4x
    ((8, 64), 3, True),        # 24 values folded: 1.3x (a tap at a time 4x)
    ((8, 64), 5, False),       # 40 values: a tap at a time, 32 x 64 for 8 x 64: 4x
    ((12, 64), 3, False),      # 36 values: not folded, 2.7x
])
def test_which_convolutions_take_amx_tiles(channels, kernel, fills):
    from graphopt.targets.tvm.schedules import amx
    taps = kernel * kernel
    assert amx.applies(amx.BFLOAT16, *channels, 14, 1, taps, kernel) == fills
    assert not amx.applies(amx.BFLOAT16, *channels, 14, 2, taps, kernel)     # grouped
    assert not amx.applies(amx.BFLOAT16, *channels, 3, 1, taps, kernel)      # 3-pixel tiles


# (input channels, kernel side, dilation, channels per pixel folded in bfloat16 (pairs, 32
# values a tile row) and in int8 (fours, 64 values)); 0: not folded
@pytest.mark.parametrize("channels, kernel, dilation, bfloat16, int8", [
    (3, 7, 1, 4, 4), (1, 5, 1, 2, 4), (6, 5, 1, 6, 8), (16, 2, 1, 16, 16),
    (12, 3, 1, 0, 12),         # 36 values: more than a bfloat16 tile row
    (3, 7, 2, 0, 0),           # dilated: a row's taps are not consecutive
    (3, 1, 1, 0, 0),           # a 1x1 conv's one tap is a tile row already
])
def test_a_kernel_rows_taps_fold_into_one_tile_row(channels, kernel, dilation, bfloat16, int8):
    from graphopt.targets.tvm.schedules import amx
    assert amx.folded_channels(amx.BFLOAT16, channels, kernel, dilation) == bfloat16
    assert amx.folded_channels(amx.INT8, channels, kernel, dilation) == int8


@pytest.mark.parametrize("mcpu, expected", [
    # vdpbf16ps but for the 3x3 'same' convs of an even number of input channels and two GEMM
    # blocks of output channels, on Winograd F(2x2) with its GEMMs on vdpbf16ps; float32
    # Winograd F(4x4) on the widened input for the odd number on a 28x28 plane, but not for one
    # block of output channels (DenseNet-121's 128 -> 32 ch convs; select_conv_algorithm.py's
    # docstring); and for the convs but 1x1 ones that the float32 rules take as rows of vectors
    # (`narrow.applies`): LeNet-5's 1 -> 6 channel 5x5 conv, a 3 -> 64 channel 3x3 one on an
    # image, their steps on vdpbf16ps with a kernel row's taps in pairs, a strided one widened;
    # ResNet-18's 64 -> 128 channel 1x1 downsample is faster on vdpbf16ps; the 7x7 stem's 3
    # channels with its kernel rows' taps as the pairs
    (BF16_CPU, {"fills": "winograd_dpbf16", "partial": "dpbf16", "grouped": "dpbf16",
                "grouped-12": "direct",
                "winograd": "winograd_dpbf16", "odd-input": "winograd",
                "one-block": "dpbf16", "large-plane": "winograd_dpbf16",
                "lenet": "narrow_dpbf16", "image": "narrow_dpbf16", "image-s2": "narrow",
                "downsample": "dpbf16", "stem": "dpbf16_taps"}),
    # AMX-BF16 hosts keep AMX tiles where the layer fills them (the 7x7 stem's rows of taps
    # folded into tile rows) and the widened float32 kernel elsewhere (measured faster there
    # than vdpbf16ps: see the module's docstring)
    ("sapphirerapids", {"fills": "amx", "partial": "direct", "grouped": "direct",
                        "grouped-12": "direct",
                        "winograd": "amx", "odd-input": "amx", "one-block": "amx",
                        "large-plane": "amx", "lenet": "narrow", "image": "narrow",
                        "image-s2": "narrow", "downsample": "amx", "stem": "amx"}),
    # no BF16: the widened float32 kernels, Winograd where float32 takes it (F(2x2) on a 14x14
    # plane of 64 channels), the direct one for the strided 1x1 downsample (`narrow.applies`)
    ("cascadelake", {"fills": "winograd", "partial": "direct", "grouped": "direct",
                     "grouped-12": "direct",
                     "winograd": "winograd", "odd-input": "winograd", "one-block": "winograd",
                     "large-plane": "winograd", "lenet": "narrow", "image": "narrow",
                     "image-s2": "narrow", "downsample": "direct", "stem": "direct"}),
], ids=[BF16_CPU, "sapphirerapids", "cascadelake"])
def test_each_cpu_gets_its_bfloat16_kernel(mcpu, expected):
    graphs = {"fills": conv_graph(Case("fills", 64, 64, 14, 3, padding=1)),
              "partial": conv_graph(Case("partial", 48, 40, 14, 3, padding=1)),
              "grouped": conv_graph(Case("grouped", 32, 32, 14, 3, padding=1, groups=2)),
              # 12 output channels a group: no whole block of 16
              "grouped-12": conv_graph(Case("grouped-12", 24, 24, 14, 3, padding=1, groups=2)),
              "winograd": conv_graph(Case("winograd", 64, 64, 28, 3, padding=1)),
              "odd-input": conv_graph(Case("odd-input", 65, 64, 28, 3, padding=1)),
              "one-block": conv_graph(Case("one-block", 128, 32, 28, 3, padding=1)),
              "large-plane": conv_graph(Case("large-plane", 64, 64, 112, 3, padding=1)),
              "lenet": conv_graph(Case("lenet", 1, 6, 32, 5)),
              "image": conv_graph(Case("image", 3, 64, 32, 3, padding=1)),
              "image-s2": conv_graph(Case("image-s2", 3, 16, 64, 3, stride=2, padding=1)),
              "downsample": conv_graph(Case("downsample", 64, 128, 56, 1, stride=2)),
              "stem": conv_graph(Case("stem", 3, 64, 32, 7, stride=2, padding=3))}
    assert {name: chosen_for(g, mcpu)[0] for name, g in graphs.items()} == expected


def test_only_builds_for_avx512_bf16_cpus_hold_the_instruction():
    graph = conv_graph(WINOGRAD_CASES[0])
    model = go.compile(graph, "cpu", mcpu="cascadelake")
    assert algorithm(model)[0] == "winograd"   # float32's F(2x2) on the widened input
    assert "vdpbf16ps" not in cpu_assembly(model.executable)


@pytest.mark.parametrize("mcpu, batch, out_channels", [("cascadelake", 3, 4), ("znver3", 2, 16)])
def test_a_batch_of_one_value_per_image_widens_on_cpus_without_bf16(mcpu, batch, out_channels):
    """A 1-channel 1x1 input (a squeeze-excite bottleneck of one channel) widened to float32
    image by image has no loop left under the batch loop: the widened kernel's schedule
    stopped the compile on it."""
    with dsl.Builder("one_value", seed=0) as b:
        x = b.input("input", (batch, 1, 1, 1))
        graph = go.quantize(b.output(dsl.sigmoid(dsl.conv2d(x, out_channels, 1))),
                            "bfloat16").graph
    model = go.compile(graph, "cpu", mcpu=mcpu)
    skip_unless_this_cpu_runs(model)
    feeds = {"input": np.random.default_rng(0).standard_normal((batch, 1, 1, 1))
             .astype(np.float32)}
    assert go.compare(graph, model, feeds).ok


def test_weights_as_parameters_stay_direct():
    """The packed weight is made at lowering from the constant: a parameter cannot be."""
    graph = conv_graph(CASES[0])
    options = CompileOptions(mcpu=BF16_CPU, weights="params")
    assert algorithm(optimize_for_target(graph, "cpu", options)[0])[0] == "direct"


def test_denormal_inputs_count_as_zero():
    """vdpbf16ps treats bfloat16 denormals as zero and flushes denormal results (DAZ/FTZ);
    the interpreter does neither: on denormal inputs the kernel gives zeros where the
    interpreter gives values below float32's smallest normal, 2^-126."""
    graph = conv_graph(Case("denormals", 16, 16, 6, 3, padding=1, bias=False))
    model = go.compile(graph, "cpu", mcpu=BF16_CPU)
    if not host_has_bf16():
        pytest.skip("this CPU has no avx512_bf16")
    rng = np.random.default_rng(0)
    inputs = {"input": (rng.standard_normal(graph.inputs[0].shape) * 2.0 ** -130)
              .astype(np.float32)}
    (name, expected), = go.interpret(graph, inputs).items()
    expected = expected.astype(np.float32)
    assert 0 < np.abs(expected).max() < 2.0 ** -126
    assert not model.run(inputs)[name].astype(np.float32).any()


def test_pack_weight_refuses_other_dtypes():
    with pytest.raises(GraphoptError, match="bfloat16"):
        conv2d_bf16.pack_weight(np.zeros((16, 2, 3, 3), np.float32))
    packed = conv2d_bf16.pack_weight(np.arange(17 * 3 * 2 * 1, dtype=np.float32)
                                     .reshape(17, 3, 2, 1).astype("bfloat16"))
    assert packed.shape == (2, 2, 2, 1, 16, 2) and packed.dtype == np.uint16
    assert packed[1, 1, 0, 0, 0, 1] == 0 and packed[1, 0, 0, 0, 1, 0] == 0   # zero padding


def test_the_algorithm_needs_its_weight_block():
    with pytest.raises(GraphoptError, match="weight_block"):
        go.ops.Conv2d(algorithm="dpbf16")


def test_an_exported_library_keeps_the_kernel(tmp_path):
    """The instruction's wrapper is linked into the kernels' module, so an exported library
    loads and runs as the in-process model does."""
    graph = conv_graph(CASES[2])
    model = go.compile(graph, "cpu", mcpu=BF16_CPU)
    path = model.export(str(tmp_path / "dpbf16.so"))
    if not host_has_bf16():
        pytest.skip("this CPU has no avx512_bf16")
    inputs = feeds(graph)
    loaded, expected = go.load(path).run(inputs), model.run(inputs)
    assert loaded.keys() == expected.keys()
    for name, array in expected.items():
        np.testing.assert_array_equal(loaded[name], array)
