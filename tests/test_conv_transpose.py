"""Transposed convolutions on the CPU: select_conv_algorithm records the stride-1 convolution that
computes them (`as_conv`, with its weight block) where the weight is constant and groups is 1 —
with a stride and no dilation the sub-pixel convolution (every output phase as channels, then a
pixel shuffle; or each phase convolved on its own where that computes fewer products), else the
convolution over the zero-inserted input — and the compiled model
(AVX2 and AVX-512 builds, bounds-checked) computes what the interpreter does; grouped ones keep
TVM's own transposed convolution."""
from __future__ import annotations

import pytest

import graphopt as go
from graphopt import dsl
from graphopt.passes import probe_inputs
from graphopt.runtime import host_cpu_flags

pytest.importorskip("tvm")

# (in channels, out channels, kernel, stride, padding, output_padding, dilation, groups, bias)
CASES = {
    "fcn-2x2-s2": (8, 16, 2, 2, 0, 0, 1, 1, True),
    "dcgan-4x4-s2-p1": (16, 8, 4, 2, 1, 0, 1, 1, False),
    "3x3-s2-outpad": (3, 5, 3, 2, 1, 1, 1, 1, True),
    "odd-channels-s3": (7, 13, 3, 3, 0, 2, 1, 1, True),
    "asym-kernel-dilated": (4, 6, (3, 2), 1, 0, 0, 2, 1, True),
    "grouped": (4, 6, 3, 2, 1, 0, 1, 2, True),
    "crop-beyond-border": (4, 4, 2, 2, 2, 0, 1, 1, True),
    "fcn-16x16-s8-p4": (4, 3, 16, 8, 4, 0, 1, 1, True),
    "dilated-s2": (3, 4, 3, 2, 1, 1, 2, 1, False),
    # a 1x1 input (DCGAN's first layer): a product whatever the stride
    "latent-4x4-s1": (10, 6, 4, 1, 0, 0, 1, 1, False),
    # DCGAN's layers: 4x4 stride 2 pad 1 to 32 channels, each output phase convolved on its own
    "phases-32ch": (16, 32, 4, 2, 1, 0, 1, 1, True),
    "phases-32ch-3x3-s2-outpad": (6, 32, 3, 2, 1, 1, 1, 1, False),
}
TVM_OWN = {"grouped"}
# stride 1 (on a plane) or dilated: the convolution over the zero-inserted input
INSERTED = {"asym-kernel-dilated", "dilated-s2"}
# each output phase its own convolution (`ConvTranspose2d.by_phase`): fewer products than the
# sub-pixel convolution's, counting the rows, columns and channels each pads (8 or 16 lanes)
BY_PHASE = {"haswell": {"phases-32ch", "phases-32ch-3x3-s2-outpad", "dcgan-4x4-s2-p1"}}
BY_PHASE["skylake-avx512"] = BY_PHASE["haswell"] | {"3x3-s2-outpad"}


def graph_for(case: str) -> go.Graph:
    c, o, k, s, p, op, d, g, bias = CASES[case]
    with dsl.Builder(case, seed=1) as b:
        x = b.input("input", (2, c, 1, 1) if case.startswith("latent") else (1, c, 7, 6))
        y = dsl.conv_transpose2d(x, o, k, stride=s, padding=p, output_padding=op, dilation=d,
                                 groups=g, bias=bias, name="up")
        return b.output(dsl.relu(y))


ISAS = [("skylake-avx512", "avx512f"), ("haswell", "avx2")]


@pytest.mark.parametrize("mcpu, flag", ISAS, ids=[m for m, _ in ISAS])
@pytest.mark.parametrize("case", CASES)
def test_compiled_matches_the_interpreter(case, mcpu, flag):
    if flag not in (host_cpu_flags() or ()):
        pytest.skip(f"this CPU lacks {flag}: a {mcpu} build cannot run here")
    graph = graph_for(case)
    model = go.compile(graph, "cpu", mcpu=mcpu, bounds_check=True)
    (node,) = [n for n in model.graph.nodes if n.op_name == "conv_transpose2d"]
    if case in TVM_OWN:
        assert node.op.as_conv is None
    else:
        lanes = 16 if mcpu == "skylake-avx512" else 8
        assert node.op.as_conv is not None and node.op.as_conv.weight_block % (lanes // 2) == 0
        assert node.op.subpixel == (case not in INSERTED)
        assert node.op.by_phase == (case in BY_PHASE[mcpu])
        expected = "over the stride-inserted input" if case in INSERTED else \
            "each output phase its own" if case in BY_PHASE[mcpu] else "sub-pixel"
        assert expected in node.op.target_choice()
    report = go.compare(graph, model, probe_inputs(graph))
    assert report.ok, str(report)


def test_the_zoo_deconvolutions_take_the_convolution_kernel():
    for model in (go.zoo.fcn(), go.zoo.dcgan_generator()):
        compiled = go.compile(model, "cpu")
        nodes = [n for n in compiled.graph.nodes if n.op_name == "conv_transpose2d"]
        assert nodes and all(n.op.as_conv is not None for n in nodes)
        assert go.compare(model, compiled, probe_inputs(model)).ok


@pytest.mark.parametrize("dtype", ["float16", "bfloat16"])
def test_half_precision_deconvolutions_take_the_convolution_kernel(dtype):
    """In half precision too, on the float32 kernels with widened operands (TVM's own
    transposed convolution took DCGAN's generator 97x its float32 time in bfloat16)."""
    model = go.quantize(go.zoo.dcgan_generator(), dtype).graph
    compiled = go.compile(model, "cpu", bounds_check=True)
    nodes = [n for n in compiled.graph.nodes if n.op_name == "conv_transpose2d"]
    assert nodes and all(n.op.as_conv is not None for n in nodes)
    assert "generic" not in {rule for name, rule in compiled.schedules.items() if "conv" in name}
    assert go.compare(model, compiled, probe_inputs(model)).ok


def test_bfloat16_deconvolutions_fill_amx_tiles():
    """bfloat16 sub-pixel convolutions that fill AMX tiles run on them where the CPU has
    AMX-BF16 (built for sapphirerapids on any x86 host; run where this host has it), DCGAN's
    4x4 stride-2 layers, the 3-channel output layer among them (its 4 phases x 3 channels fit
    one block of 16 output channels); the 1x1 input's layer stays on the widened kernel."""
    model = go.quantize(go.zoo.dcgan_generator(), "bfloat16").graph
    compiled = go.compile(model, "cpu", mcpu="sapphirerapids", bounds_check=True)
    algorithms = [n.op.as_conv.algorithm for n in compiled.graph.nodes
                  if n.op_name == "conv_transpose2d"]
    assert algorithms == ["direct", "amx", "amx", "amx", "amx"], algorithms
    assert list(compiled.schedules.values()).count("tile_epilogue") == 4, compiled.schedules
    if "amx_bf16" not in (host_cpu_flags() or ()):
        pytest.skip("this CPU has no AMX-BF16: the amx build is compile-checked only")
    assert go.compare(model, compiled, probe_inputs(model)).ok


def test_phase_paddings():
    """Each kept output phase's own convolution pads the input so that it computes exactly the
    pixels the crop keeps; phases keeping unequal counts (an odd output side) have none."""
    from graphopt.ops import ConvTranspose2d
    dcgan = ConvTranspose2d(stride=(2, 2), padding=(1, 1, 1, 1))
    # kept row 2m is the uncropped row 2m + 1 (phase 1, from input rows m - 1 and m: padded
    # by one before); kept row 2m + 1 is phase 0 of q = m + 1 (input rows m and m + 1)
    assert dcgan.phase_paddings((4, 4), (4, 4)) == {
        (0, 0): (1, 1, 0, 0), (0, 1): (1, 0, 0, 1), (1, 0): (0, 1, 1, 0), (1, 1): (0, 0, 1, 1)}
    odd = ConvTranspose2d(stride=(2, 2), padding=(1, 1, 1, 1))
    assert odd.out_hw(7, 7, 3, 3) == (13, 13) and odd.phase_paddings((3, 3), (7, 7)) is None
    dilated = ConvTranspose2d(stride=(2, 2), dilation=(2, 2))
    assert dilated.phase_paddings((3, 3), (7, 7)) is None
