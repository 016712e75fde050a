"""Depthwise convolutions (groups == input == output channels) on the CPU: the "depthwise"
algorithm, rows of whole vectors of output columns (`schedules/depthwise.py`). A kernel table
(channel counts 8..96 and odd ones, strides 1 and 2, 3x3 and 5x5, symmetric and asymmetric
padding, dilation, batches, planes wider than the register tile, fused epilogues: relu, relu6,
leaky_relu, residual, sigmoid, hard_sigmoid, hard_swish, silu) compiled for
pinned CPUs and checked against the float64 interpreter; the recorded algorithm and block per
ISA; what stays with the other rules."""
from __future__ import annotations

import numpy as np
import pytest

import graphopt as go
from graphopt import runtime
from graphopt.frontends import dsl

tvm = pytest.importorskip("tvm")

from graphopt.targets.tvm.compile import optimize_for_target  # noqa: E402
from graphopt.targets.tvm.options import CompileOptions  # noqa: E402
from graphopt.targets.tvm.schedules import SCHEDULE_ATTR  # noqa: E402

from test_schedules import AVX2_CPU, AVX512_CPU, _scheduled_kernels  # noqa: E402


def _dw(channels, kernel=3, stride=1, padding=None, dilation=1, bias=True):
    padding = dilation * (kernel // 2) if padding is None else padding
    return lambda x: dsl.conv2d(x, channels, kernel, stride=stride, padding=padding,
                                dilation=dilation, groups=channels, bias=bias)


def _bn_relu6(layer):
    return lambda x: dsl.relu6(dsl.batch_norm(layer(x)))


# name: (input shape, layer)
CASES = {
    "c8_3x3_s1": ((1, 8, 10, 10), _dw(8)),
    "c13_3x3_s2_relu": ((1, 13, 15, 17), lambda x: dsl.relu(_dw(13, stride=2)(x))),
    "c16_5x5_s1_relu6": ((1, 16, 14, 14), _bn_relu6(_dw(16, 5, bias=False))),
    "c24_5x5_s2": ((1, 24, 19, 21), _dw(24, 5, stride=2)),
    "c32_3x3_s1_wide_112": ((1, 32, 9, 112), _bn_relu6(_dw(32, bias=False))),
    "c33_3x3_s2_no_pad": ((1, 33, 12, 12), _dw(33, stride=2, padding=0)),
    "c40_3x3_asym_pad": ((1, 40, 11, 9), _dw(40, padding=(0, 1, 1, 2))),
    "c48_3x3_dilated_leaky": ((1, 48, 12, 12), lambda x: dsl.leaky_relu(
        _dw(48, dilation=2)(x), 0.1)),
    "c57_3x3_residual": ((1, 57, 7, 7), lambda x: dsl.relu(_dw(57)(x) + x)),
    "c64_5x5_s2_pad1": ((2, 64, 9, 9), _dw(64, 5, stride=2, padding=1)),
    "c96_3x3_s2_relu6": ((1, 96, 16, 16), _bn_relu6(_dw(96, stride=2, bias=False))),
    "c96_3x3_s1_7x7": ((1, 96, 7, 7), _bn_relu6(_dw(96, bias=False))),
    "c20_3x3_hard_swish": ((1, 20, 10, 10), lambda x: dsl.hard_swish(dsl.batch_norm(
        _dw(20, bias=False)(x)))),
    "c72_5x5_s2_silu": ((1, 72, 13, 13), lambda x: dsl.silu(_dw(72, 5, stride=2)(x))),
    "c17_3x3_sigmoid_residual": ((1, 17, 8, 8), lambda x: dsl.sigmoid(_dw(17)(x) + x)),
    "c24_3x3_s2_hard_sigmoid": ((1, 24, 11, 11), lambda x: dsl.hard_sigmoid(
        _dw(24, stride=2)(x), 0.2, 0.5)),
    "c9_3x3_wider_than_tile": ((1, 9, 5, 401), _dw(9)),   # 51 AVX2 vectors per row > 12
    "c11_3x3_stride_2x1": ((1, 11, 10, 10), lambda x: dsl.conv2d(x, 11, 3, stride=(2, 1),
                                                                  padding=1, groups=11)),
    "c24_3x3_s2_4x4": ((1, 24, 8, 8), lambda x: dsl.relu6(_dw(24, stride=2)(x))),
    "c16_3x3_24_wide": ((1, 16, 6, 24), _dw(16)),   # 3 AVX2 vectors; 2 AVX-512 ones, padded
    # 1x1 and strided: the input copy read at one column phase (its phase loop dropped)
    "c8_1x1_s2": ((1, 8, 13, 13), lambda x: dsl.relu(_dw(8, 1, stride=2)(x))),
    "c16_1x1_s3_pad1": ((1, 16, 28, 28), _dw(16, 1, stride=3, padding=1)),
}


def _table(names):
    with dsl.Builder("depthwise_table", seed=11) as b:
        outs = [CASES[n][1](b.input(n, CASES[n][0])) for n in names]
        return b.output(*outs, names=[f"{n}_out" for n in names])


def _feeds(graph):
    rng = np.random.default_rng(0)
    return {v.name: rng.standard_normal(v.shape).astype(np.float32) for v in graph.inputs}


def _host_runs(mcpu: str) -> bool:
    return mcpu == AVX2_CPU or "avx512f" in (runtime.host_cpu_flags() or ())


HALVES = [sorted(CASES)[::2], sorted(CASES)[1::2]]


@pytest.mark.parametrize("mcpu", [AVX2_CPU, AVX512_CPU], ids=["avx2", "avx512"])
@pytest.mark.parametrize("names", HALVES, ids=["table0", "table1"])
def test_depthwise_matches_interpreter(names, mcpu):
    if not _host_runs(mcpu):
        pytest.skip(f"this CPU cannot run code compiled for {mcpu}")
    graph = _table(names)
    report = go.compare(graph, go.compile(graph, mcpu=mcpu), _feeds(graph))
    assert report.ok, str(report)


def test_half_vector_rows_on_split_512_cores():
    """On a core that splits 512-bit instructions (Zen 4), rows that 8-lane vectors pad less
    run on them: the whole table against the interpreter, where the host is one
    (compile-checked above elsewhere)."""
    from graphopt.targets.tvm.cpu import host_target
    if str(host_target().attrs.get("mcpu", "")) != SPLIT_512_CPU:
        pytest.skip(f"this CPU is not {SPLIT_512_CPU}: its half-vector rows are compile-checked "
                    "only (test_recorded_algorithm_and_rule)")
    graph = _table(sorted(CASES))
    report = go.compare(graph, go.compile(graph, mcpu=SPLIT_512_CPU, bounds_check=True),
                        _feeds(graph))
    assert report.ok, str(report)


@pytest.mark.parametrize("dtype", ["float16", "bfloat16"])
def test_half_precision_depthwise_widens_into_the_phase_buffer(dtype):
    """A half-precision depthwise conv takes the depthwise rule too: its input widened to
    float32 as it is copied into the phase buffer, its weight at lowering, one rounding at the
    end, as the interpreter computes it (bounds-checked)."""
    names = ["c13_3x3_s2_relu", "c16_5x5_s1_relu6", "c57_3x3_residual", "c72_5x5_s2_silu"]
    half = go.quantize(_table(names), dtype).graph
    model = go.compile(half, mcpu=AVX2_CPU, bounds_check=True)
    convs = [getattr(n.op, "conv", n.op) for n in model.graph.nodes
             if n.op_name in ("conv2d", "fused_conv2d")]
    assert [c.algorithm for c in convs] == ["depthwise"] * len(names)
    assert {rule for name, rule in model.schedules.items() if "conv2d" in name} == {"depthwise"}
    report = go.compare(half, model, _feeds(half))
    assert report.ok, str(report)


def test_depthwise_bounds_checked():
    graph = _table(["c13_3x3_s2_relu", "c40_3x3_asym_pad", "c64_5x5_s2_pad1",
                    "c9_3x3_wider_than_tile"])
    report = go.compare(graph, go.compile(graph, mcpu=AVX2_CPU, bounds_check=True),
                        _feeds(graph))
    assert report.ok, str(report)


SPLIT_512_CPU = "znver4"   # AVX-512, each 512-bit instruction run as two 256-bit halves

# name: output row width, row vector width on AVX2 (8 lanes), on AVX-512 (16), on Zen 4
ROW_BLOCKS = {"c16_5x5_s1_relu6": (14, 8, 16, 16), "c57_3x3_residual": (7, 8, 8, 8),
              "c13_3x3_s2_relu": (9, 8, 16, 16), "c72_5x5_s2_silu": (7, 8, 8, 8),
              "c24_3x3_s2_4x4": (4, 4, 8, 8), "c16_3x3_24_wide": (24, 8, 16, 8)}


@pytest.mark.parametrize("mcpu, isa", [(AVX2_CPU, 1), (AVX512_CPU, 2), (SPLIT_512_CPU, 3)],
                         ids=["avx2", "avx512", "split512"])
def test_recorded_algorithm_and_rule(mcpu, isa):
    """Each depthwise conv records the algorithm and its row vector width: the target's
    lanes, or half of them where the output row fits in half a vector or, on a core that
    splits 512-bit instructions in two, where half vectors pad the row less; its kernel runs
    rows of that width and gets the depthwise rule with the epilogue fused."""
    for name, row in ROW_BLOCKS.items():
        graph = _table([name])
        assert graph.outputs[0].shape[3] == row[0]
        optimized, _ = optimize_for_target(graph, "cpu", CompileOptions(mcpu=mcpu))
        [conv] = [getattr(n.op, "conv", n.op) for n in optimized.graph.nodes
                  if n.op_name in ("conv2d", "fused_conv2d")]
        assert (conv.algorithm, conv.weight_block) == ("depthwise", row[isa]), name
        [kernel] = [f.script() for f in _scheduled_kernels(graph, mcpu).values()
                    if f.attrs[SCHEDULE_ATTR] == "depthwise"]
        assert f'"graphopt.row_block": {row[isa]}' in kernel, name
        assert f"T.vectorized(T.int64({row[isa]}))" in kernel, name
    names = list(ROW_BLOCKS)
    graph = _table(names)
    kernels = _scheduled_kernels(graph, mcpu)
    conv_kernels = {k: str(f.attrs[SCHEDULE_ATTR]) for k, f in kernels.items() if "conv2d" in k}
    assert set(conv_kernels.values()) == {"depthwise"}
    assert all(k.startswith("fused_") for k in conv_kernels), conv_kernels


@pytest.mark.parametrize("layer, dtype", [
    (lambda x: dsl.conv2d(x, 16, 3, padding=1, groups=8), "float32"),     # multiplier 2
    (lambda x: dsl.conv2d(x, 8, 3, padding=1, groups=4), "float32"),      # 2 channels per group
    (lambda x: dsl.conv2d(x, 8, 3, padding=1, groups=4), "float16"),
], ids=["multiplier2", "grouped", "grouped-float16"])
def test_other_grouped_convs_keep_their_algorithm(layer, dtype):
    with dsl.Builder("grouped", seed=1) as b:
        graph = b.output(layer(b.input("input", (1, 8, 9, 9), dtype=dtype)))
    optimized, _ = optimize_for_target(graph, "cpu", CompileOptions(mcpu=AVX512_CPU))
    convs = [getattr(n.op, "conv", n.op) for n in optimized.graph.nodes if "conv" in n.op_name]
    assert all(c.algorithm == "direct" for c in convs)


def test_weight_block_required_for_depthwise():
    from graphopt.errors import GraphoptError
    from graphopt.ops import Conv2d
    with pytest.raises(GraphoptError, match="weight_block for depthwise"):
        Conv2d(groups=8, algorithm="depthwise")


def test_small_planes_are_copied_in_groups_and_the_kernel_rows_stay_a_loop():
    """96 planes of 7x7 (3x3, AVX-512: rows of 8 lanes, phase buffers of 9 x 10 floats, 360
    bytes): the phase buffers are copied 16 planes at a time (the largest divisor of 96 whose
    buffers fit PHASE_GROUP_BYTES), so the parallel loop runs over 6 groups; in the conv, the
    kernel's rows are a serial loop and its columns unrolled."""
    from graphopt.targets.tvm.schedules import depthwise
    assert depthwise.PHASE_GROUP_BYTES // 360 in range(16, 32)
    kernels = _scheduled_kernels(_table(["c96_3x3_s1_7x7"]), AVX512_CPU)
    [kernel] = [f for f in kernels.values() if f.attrs[SCHEDULE_ATTR] == "depthwise"]
    text = kernel.script()
    assert "T.parallel(T.int64(6))" in text, text
    assert "for ry in range(T.int64(3))" in text and "for rx in T.unroll(T.int64(3))" in text
