"""graphopt's CPU schedule rules: every rule is checked against the float64 interpreter over a table
of conv / dense / pool shapes (odd sizes, padding, strides, groups, channels that do not fill a
vector), and every PrimFunc of the zoo's CNNs must come out of the CPU pipeline scheduled.
Which rule a kernel gets depends on the vector width: those checks compile for a pinned CPU
(`AVX2_CPU`, or an AVX-512 one), whatever the host; results are checked on the host."""
from __future__ import annotations

import functools
import re

import numpy as np
import pytest

import graphopt as go
from conftest import skip_unless_this_cpu_runs
from graphopt.frontends import dsl

tvm = pytest.importorskip("tvm")

from graphopt.targets.tvm.compile import optimize_for_target  # noqa: E402
from graphopt.targets.tvm.cpu import cpu_assembly, cpu_pipeline  # noqa: E402
from graphopt.targets.tvm.lower import to_relax  # noqa: E402
from graphopt.targets.tvm.options import CompileOptions  # noqa: E402
from graphopt.targets.tvm.schedules import SCHEDULE_ATTR, VectorShape  # noqa: E402
from graphopt.targets.tvm.schedules.common import PARALLEL_MIN_ELEMENTS  # noqa: E402
from graphopt.targets.tvm.weight_prefetch import PREFETCH_ATTR  # noqa: E402

AVX2_CPU = "haswell"            # 8 float32 lanes: what the rule table below assumes
AVX512_CPU = "skylake-avx512"   # 16 lanes

# name: (input shape, layer builder, rule the main kernel must get on AVX2_CPU)
CASES = {
    "conv3x3_odd": ((1, 5, 9, 11), lambda x: dsl.conv2d(x, 16, 3, padding=1), "conv2d"),
    "conv3x3_s2_asym_pad": ((2, 8, 13, 13), lambda x: dsl.conv2d(x, 24, 3, stride=2,
                                                                  padding=(1, 0, 1, 2)), "conv2d"),
    # a 112x112 output plane: the tile is written back through the register transpose
    "conv3x3_large_plane": ((1, 5, 112, 112), lambda x: dsl.relu(dsl.conv2d(x, 32, 3, padding=1)),
                            "conv2d"),
    # a 17x17 output plane: input channels in L1-sized blocks, every tile of the plane per block
    "conv3x3_s2_small_plane": ((1, 48, 35, 35), lambda x: dsl.relu(dsl.conv2d(x, 40, 3, stride=2)),
                               "conv2d"),
    # ... with few channel blocks: threads also take bands of two output rows
    "conv1x1_small_plane_few_blocks": ((1, 192, 14, 14), lambda x: dsl.relu(dsl.conv2d(x, 40, 1)),
                                       "conv2d"),
    # weights (1.3 MB) larger than the activations and than half an L2: on 32 KiB L1 hosts each
    # channel block takes every row while its weights are in cache
    "conv3x3_streamed_weights": ((1, 160, 6, 5), lambda x: dsl.relu(dsl.conv2d(
        x, 232, 3, padding=1)), "conv2d"),
    # a 3-channel image's 3x3 conv: 27 products per output, rows as the vector axis
    "conv3x3_thin_input": ((1, 3, 20, 48), lambda x: dsl.relu(dsl.conv2d(x, 12, 3, stride=2,
                                                                          padding=1)), "narrow"),
    # ... whose rows are a prime number of vectors (7 on AVX2): tiles of 2 channels x 7 vectors
    "conv3x3_thin_input_prime_row": ((1, 3, 7, 114), lambda x: dsl.relu(dsl.conv2d(
        x, 32, 3, stride=2)), "narrow"),
    # 1x1 projections on planes of whole vectors are GEMMs with pixels as the lanes; the
    # second reads the first's flat output as its residual (no reshape copy between them)
    "conv1x1_projection": ((1, 48, 8, 8), lambda x: dsl.relu(dsl.conv2d(x, 16, 1)),
                           "pointwise"),
    "conv1x1_projection_residual": ((1, 48, 4, 12), lambda x: (lambda y: dsl.relu(
        dsl.conv2d(dsl.relu(dsl.conv2d(x, 32, 1)), 24, 1) + y))(dsl.conv2d(x, 24, 1)),
        "pointwise"),
    # ... and expansions, with the channel blocks outside the pixel tiles
    "conv1x1_expansion": ((1, 8, 8, 6), lambda x: dsl.clip(dsl.conv2d(x, 36, 1), 0, 6),
                          "pointwise"),
    # ... but not, with 8 lanes, expansions of 64 input channels or more
    "conv1x1_wide_expansion_avx2": ((1, 64, 8, 8), lambda x: dsl.relu(dsl.conv2d(x, 128, 1)),
                                    "conv2d"),
    # ... and on planes that are not whole vectors (13x11, 12x11): one vector per tile, the
    # last one partial, peeled off the loop of whole ones; with a batch, with a residual
    "conv1x1_partial_plane": ((2, 24, 13, 11), lambda x: dsl.relu(dsl.conv2d(x, 40, 1)),
                              "conv2d"),
    "conv1x1_partial_plane_residual": ((1, 32, 12, 11), lambda x: dsl.relu(
        dsl.conv2d(x, 32, 1) + x), "conv2d"),
    "conv1x1": ((1, 16, 7, 7), lambda x: dsl.conv2d(x, 32, 1, bias=False), "conv2d"),
    "conv1x1_s2": ((1, 8, 15, 15), lambda x: dsl.conv2d(x, 16, 1, stride=2), "conv2d"),
    "conv7x7_stem": ((1, 3, 23, 23), lambda x: dsl.relu(dsl.conv2d(x, 16, 7, stride=2, padding=3)),
                     "conv2d"),
    "conv_dilated": ((1, 4, 12, 12), lambda x: dsl.conv2d(x, 8, 3, padding=2, dilation=2), "conv2d"),
    "conv_grouped": ((1, 8, 10, 10), lambda x: dsl.conv2d(x, 32, 3, padding=1, groups=2), "conv2d"),
    "conv_depthwise": ((1, 8, 10, 10), lambda x: dsl.conv2d(x, 8, 3, padding=1, groups=8),
                       "depthwise"),
    "conv_depthwise_multiplier2": ((1, 4, 10, 10), lambda x: dsl.conv2d(x, 8, 3, padding=1,
                                                                        groups=4), "generic"),
    "conv_oc6": ((1, 3, 12, 12), lambda x: dsl.tanh(dsl.conv2d(x, 6, 5)), "conv2d"),  # 8, padded
    # too few output channels for a channel block (8 would be > 2x): rows as the vector axis
    "conv_oc3": ((1, 3, 12, 12), lambda x: dsl.conv2d(x, 3, 3), "narrow"),
    # a long reduction per output: vector partial sums (rfactor), then one sum per channel
    "global_avg_pool_long": ((2, 24, 16, 14), lambda x: dsl.global_avg_pool2d(x), "generic"),
    "global_max_pool_long": ((1, 24, 16, 14), lambda x: dsl.global_max_pool2d(x), "generic"),
    "conv_narrow_9x9_tanh": ((1, 8, 20, 21), lambda x: dsl.tanh(dsl.conv2d(
        x, 3, 9, padding=4)), "narrow"),                       # 21 wide rows: padded to vectors
    "conv_narrow_stride2_batch2": ((2, 5, 33, 40), lambda x: dsl.relu(dsl.conv2d(
        x, 1, 3, stride=2, padding=1)), "narrow"),
    "conv_narrow_dilated_residual": ((1, 2, 18, 18), lambda x: dsl.conv2d(
        x, 2, 3, padding=2, dilation=2, bias=False) + x, "narrow"),
    # a sub-pixel conv of 3 x 4 phases = 12 channels
    "conv_transpose_3_channels": ((1, 16, 9, 9), lambda x: dsl.sigmoid(dsl.conv_transpose2d(
        x, 3, 4, stride=2, padding=1)), "conv2d"),
    # 8 channels: from 16, 3x3 convs with 8 lanes are Winograd F(2x2) by rows of tiles
    "conv_bn_residual": ((1, 8, 9, 9), lambda x: dsl.relu(
        dsl.batch_norm(dsl.conv2d(x, 8, 3, padding=1, bias=False)) + x), "conv2d"),
    "winograd_7x7_residual": ((1, 256, 7, 7), lambda x: dsl.relu(
        dsl.batch_norm(dsl.conv2d(x, 256, 3, padding=1, bias=False)) + x), "winograd"),
    "winograd_odd_plane_batch2": ((2, 256, 5, 9), lambda x: dsl.conv2d(x, 32, 3, padding=1),
                                  "winograd"),
    "winograd_64_channels": ((1, 64, 10, 11), lambda x: dsl.relu(dsl.conv2d(x, 16, 3, padding=1)),
                             "winograd"),
    # 64 tiles per image, an odd height, transformed weights too large to stream by rows of
    # tiles (1.5 MB): transformed and multiplied one image at a time
    "winograd_per_image_batch2": ((2, 256, 15, 16), lambda x: dsl.relu(dsl.conv2d(
        x, 96, 3, padding=1)), "winograd"),
    # F(2x2) on a small plane, a row of tiles at a time, over a batch
    "winograd_f2_by_tile_rows_batch2": ((2, 32, 8, 8), lambda x: dsl.relu(dsl.conv2d(
        x, 64, 3, padding=1)), "winograd"),
    # AVX-512: F(4x4, 3x3) with the 29x30 plane computed to whole 4x4 tiles; AVX2: F(2x2)
    "winograd_odd_plane_f4": ((1, 64, 29, 30), lambda x: dsl.relu(dsl.conv2d(x, 32, 3, padding=1)),
                              "winograd"),
    # AVX-512: F(4x4) one row of tiles at a time (small transformed weights), over a batch too
    "winograd_f4_by_tile_rows": ((1, 64, 28, 32), lambda x: dsl.relu(dsl.conv2d(
        x, 32, 3, padding=1)), "winograd"),
    "winograd_f4_by_tile_rows_batch2": ((2, 64, 28, 28), lambda x: dsl.conv2d(
        x, 64, 3, padding=1) + x, "winograd"),
    # the output transform's values written back through the register transpose: a copy of
    # them where no epilogue writes the output; the whole plane at once (AVX-512: 14-pixel
    # steps); one image at a time (large weights, a batch)
    "winograd_no_epilogue": ((1, 64, 16, 16), lambda x: dsl.conv2d(x, 64, 3, padding=1,
                                                                   bias=False), "winograd"),
    "winograd_whole_plane_residual": ((1, 256, 14, 14), lambda x: dsl.relu(dsl.conv2d(
        x, 256, 3, padding=1) + x), "winograd"),
    "winograd_per_image_whole_tiles": ((2, 256, 16, 16), lambda x: dsl.relu(dsl.conv2d(
        x, 128, 3, padding=1)), "winograd"),
    "winograd_skipped_for_stride2": ((1, 256, 8, 8), lambda x: dsl.conv2d(x, 32, 3, stride=2,
                                                                          padding=1), "conv2d"),
    "dense": ((3, 37), lambda x: dsl.relu(dsl.linear(x, 24)), "dense"),
    "dense_gemv_wide": ((1, 64), lambda x: dsl.linear(x, 200), "dense"),
    "dense_odd_out": ((5, 16), lambda x: dsl.linear(x, 10), "dense"),
    "dense_half_vectors": ((7, 30), lambda x: dsl.tanh(dsl.linear(x, 84)), "dense"),
    "dense_prime_out": ((2, 16), lambda x: dsl.linear(x, 97), "dense"),    # padded columns
    "dense_one_out": ((4, 16), lambda x: dsl.linear(x, 1), "generic"),
    "max_pool_s2_p1": ((1, 8, 11, 11), lambda x: dsl.max_pool2d(x, 3, stride=2, padding=1), "pool2d"),
    "max_pool_ceil_s1": ((1, 5, 9, 10), lambda x: dsl.max_pool2d(x, 3, stride=1, padding=1,
                                                                  ceil_mode=True), "pool2d"),
    "max_pool_ceil_s2": ((2, 4, 14, 13), lambda x: dsl.max_pool2d(x, 3, stride=2, ceil_mode=True),
                         "pool2d"),
    "max_pool_rect_asym": ((1, 3, 12, 17), lambda x: dsl.max_pool2d(
        x, (2, 3), stride=(2, 1), padding=(0, 1, 1, 2)), "pool2d"),
    "max_pool_dilated_relu": ((1, 4, 13, 13), lambda x: dsl.relu(dsl.max_pool2d(
        dsl.tanh(x), 3, stride=2, dilation=2, padding=2)), "pool2d"),
    "avg_pool": ((2, 3, 10, 9), lambda x: dsl.avg_pool2d(x, 2), "pool2d"),   # separable
    "global_pools": ((2, 16, 5, 5), lambda x: dsl.global_avg_pool2d(x) + dsl.global_max_pool2d(x),
                     "generic"),
    "softmax": ((4, 33), lambda x: dsl.softmax(x), "generic"),
    # concatenations: split into a piece per input (with their elementwise tail)
    "concat_bn_relu": ((1, 16, 5, 7), lambda x: dsl.relu(dsl.batch_norm(dsl.concat(
        [x, dsl.tanh(dsl.split(x, [8, 8])[0]), dsl.sigmoid(x)], axis=1))), "generic"),
    "concat_odd_sizes": ((1, 5, 4, 6), lambda x: dsl.concat(
        [x, dsl.tanh(dsl.split(x, [3, 2])[0])], axis=1), "generic"),
    "concat_rows": ((2, 3, 6, 5), lambda x: dsl.relu(dsl.concat([x, dsl.tanh(x)], axis=2)),
                    "generic"),
}


def _table_graph(names):
    """One graph holding several cases (one input and one output each): one compile for many."""
    with dsl.Builder("schedule_table", seed=3) as b:
        outs = [CASES[n][1](b.input(n, CASES[n][0])) for n in names]
        return b.output(*outs, names=[f"{n}_out" for n in names])


@functools.lru_cache(maxsize=None)
def _zoo_kernels(model: str, **kwargs):
    return _scheduled_kernels(go.zoo.MODELS[model](**kwargs))


def _scheduled_kernels(graph, mcpu=AVX2_CPU):
    """The PrimFuncs `compile` builds for `graph` on `mcpu` for two threads, whatever the host's
    cores (graphopt's passes, then the CPU pipeline without tuning records)."""
    optimized, target = optimize_for_target(graph, "cpu", CompileOptions(mcpu=mcpu, threads=2))
    with target:
        lowered = cpu_pipeline(target)(to_relax(optimized.graph))
    return {gv.name_hint: f for gv, f in lowered.functions.items()
            if isinstance(f, tvm.tirx.PrimFunc)}


HALVES = [sorted(CASES)[::2], sorted(CASES)[1::2]]


@pytest.mark.parametrize("bounds_check", [False, True], ids=["", "bounds_checked"])
@pytest.mark.parametrize("names", HALVES, ids=["table0", "table1"])
def test_schedules_match_interpreter(names, bounds_check):
    graph = _table_graph(names)
    rng = np.random.default_rng(0)
    feeds = {v.name: rng.standard_normal(v.shape).astype(np.float32) for v in graph.inputs}
    report = go.compare(graph, go.compile(graph, bounds_check=bounds_check), feeds)
    assert report.ok, str(report)


@pytest.mark.parametrize("name", sorted(CASES))
def test_expected_rule(name):
    kernels = _scheduled_kernels(_table_graph([name]))
    rules = {f.attrs[SCHEDULE_ATTR] for f in kernels.values()}
    assert CASES[name][2] in rules, (name, {k: f.attrs[SCHEDULE_ATTR] for k, f in kernels.items()})


def _loop_kinds(func) -> set[str]:
    text = func.script()
    return {kind for kind in ("parallel", "vectorized", "unroll") if f"T.{kind}(" in text}


# Innermost iterations a loop nest may run with neither a parallel nor a vector loop (tens of
# microseconds): a small global mean's is not worth a parallel loop, a pool's output copy is.
SERIAL_NEST_LIMIT = 4 * PARALLEL_MIN_ELEMENTS


def _statements_under(stmt) -> list:
    """The statements directly under a TIR statement (TVM's Python API has no TIR visitor)."""
    children = list(stmt.seq) if isinstance(stmt, tvm.tirx.SeqStmt) else []
    children += [getattr(stmt, a, None) for a in ("block", "body", "init", "then_case", "else_case")]
    return [c for c in children if isinstance(c, tvm.tirx.Stmt)]


def _serial_work(stmt) -> tuple[int, bool]:
    """(innermost iterations under `stmt`, whether a parallel or vectorized loop is among them)."""
    children = [_serial_work(c) for c in _statements_under(stmt)]
    work = sum(w for w, _ in children) or 1
    scheduled = any(s for _, s in children)
    if isinstance(stmt, tvm.tirx.For):
        work *= int(stmt.extent)
        scheduled = scheduled or stmt.kind in (tvm.tirx.ForKind.PARALLEL,
                                               tvm.tirx.ForKind.VECTORIZED)
    return work, scheduled


def _serial_loop_nests(func) -> list[int]:
    """Iterations of each top-level loop nest of `func` that has neither a parallel nor a
    vectorized loop."""
    root = func.body.block.body
    nests = [_serial_work(n) for n in (root.seq if isinstance(root, tvm.tirx.SeqStmt) else [root])]
    return [work for work, scheduled in nests if not scheduled and work > 1]


def assert_all_scheduled(kernels):
    """Every PrimFunc carries a rule name, and every one with real work has parallel or vector
    loops (none is left as the naive loop nest legalization produces), in each of its stages:
    a Winograd conv's bias and activation ran as a serial scalar pass after its scheduled
    stages."""
    for name, func in kernels.items():
        assert func.attrs.get("tirx.is_scheduled"), name
        assert SCHEDULE_ATTR in func.attrs, name
        work = sum(int(np.prod([int(d) for d in p.shape])) for p in func.params[-1:])
        if work >= PARALLEL_MIN_ELEMENTS:
            assert _loop_kinds(func) & {"parallel", "vectorized"}, (name, func.script())
        big = [n for n in _serial_loop_nests(func) if n >= SERIAL_NEST_LIMIT]
        assert not big, (name, big, func.script())


ZOO_SIZES = {"lenet5": {"batch": 4}, "resnet18": {"image_size": 64}, "vgg11": {"image_size": 32},
             "vgg16": {"image_size": 32}, "resnet50": {"image_size": 64},
             "googlenet": {"image_size": 96}, "alexnet": {}, "deep_convnet": {}, "fcn": {},
             "dcgan_generator": {}, "mobilenet_v2": {"image_size": 64},
             "mobilenet_v3_small": {"image_size": 64}, "mobilenet_v3_large": {"image_size": 64},
             "efficientnet_b0": {"image_size": 64}, "shufflenet_v2_x1_0": {"image_size": 64},
             "squeezenet1_1": {"image_size": 64}, "regnet_x_400mf": {"image_size": 64},
             "densenet121": {"image_size": 64}, "inception_v3": {"image_size": 75},
             "dqn": {}, "yolov3_tiny": {"image_size": 96}, "style_transfer": {"image_size": 32},
             "nic_captioning": {}, "segnet": {"image_size": 48, "width": 16},
             "deeplabv3_mobilenet_v3_large": {"image_size": 64}}


def test_every_zoo_model_is_in_the_table():
    assert set(ZOO_SIZES) == set(go.zoo.MODELS)


# a rule that fails part-way on a zoo kernel (`ScheduleFallbackWarning`) fails these tests
@pytest.mark.filterwarnings("error::graphopt.ScheduleFallbackWarning")
# DenseNet-121's 120 convs and concatenations take 8.5 s on a 2-core host; GoogLeNet's and
# Inception-v3's run by default and cover the same kernel kinds.
@pytest.mark.parametrize("model", [pytest.param(m, marks=pytest.mark.slow)
                                   if m == "densenet121" else m for m in sorted(ZOO_SIZES)])
def test_zoo_kernels_all_scheduled(model):
    assert_all_scheduled(_zoo_kernels(model, **ZOO_SIZES[model]))


@pytest.mark.filterwarnings("error::graphopt.ScheduleFallbackWarning")
@pytest.mark.parametrize("model", ["squeezenet1_1", "yolov3_tiny", "googlenet", "inception_v3"])
def test_full_size_kernels_are_scheduled(model):
    """At full size their concatenations split into pieces large enough to run in parallel,
    and the reshapes and concatenations fused after their pools are big enough to need loops
    of their own, sizes the small images above never reach (those kernels, or those stages,
    were left as serial loops)."""
    assert_all_scheduled(_scheduled_kernels(go.zoo.MODELS[model](), AVX512_CPU))


def test_winograd_takes_the_deep_3x3_convs():
    rules = {f.attrs[SCHEDULE_ATTR] for f in _zoo_kernels("resnet18", image_size=64).values()}
    assert "winograd" in rules


def test_gemm_kernels_get_the_tiled_rules():
    """ResNet-18's convolutions and classifier all get the register-tiled kernels: Winograd for
    the 3x3 stride-1 convs, the direct conv for the rest."""
    kernels = _zoo_kernels("resnet18", image_size=64)
    for name, func in kernels.items():
        if "conv2d" in name:
            expected = "winograd" if "winograd" in name else "conv2d"
            assert func.attrs[SCHEDULE_ATTR] == expected, name
        if "matmul" in name:
            assert func.attrs[SCHEDULE_ATTR] == "dense", name


@pytest.mark.parametrize("mcpu, lanes, l1d_kib", [("skylake-avx512", 16, 32), ("haswell", 8, 32),
                                                   ("znver3", 8, 32), ("znver4", 16, 32),
                                                   ("znver5", 16, 48),
                                                   ("sapphirerapids", 16, 48)])
def test_vector_shape_follows_target_cpu(mcpu, lanes, l1d_kib):
    target = tvm.target.Target({"kind": "llvm", "mcpu": mcpu})
    assert VectorShape.of(target).lanes == lanes
    assert VectorShape.of(target).l1d == l1d_kib * 1024


@pytest.mark.parametrize("mcpu, blocked", [("sapphirerapids", True), ("znver5", True),
                                            ("znver4", False)])
def test_small_planes_block_input_channels_on_48_kib_l1(mcpu, blocked):
    """A deep conv on a small plane splits its input channels into L1 weight blocks on cores
    with 48 KiB of L1 data cache; on 32 KiB the blocks thrashed L1 and it reads them whole."""
    with dsl.Builder("deep_small_plane", seed=0) as b:
        x = b.input("x", (1, 512, 7, 7))
        graph = b.output(dsl.relu(dsl.conv2d(x, 512, 3, padding=1)))
    text = _scheduled_kernels(graph, mcpu)["fused_conv2d"].script()
    assert bool(re.search(r"for [\w, ]*\brc_0\b", text)) == blocked, text
    if blocked:   # blocks of 8 input channels: 9 KiB of weights (18 KiB ran ResNet-18 slower)
        assert re.search(r"rc_0 \* T\.int64\(8\) \+ rc_1", text), text
        # each block's rows prefetch the next block (weight_prefetch.py)
        assert f'annotations={{"{PREFETCH_ATTR}": 8}}' in text, text


@pytest.mark.parametrize("mcpu", [AVX2_CPU, AVX512_CPU])
def test_dividing_epilogues_run_on_channel_vectors(mcpu):
    """A conv tile's SiLU on a small plane is computed on the tile's channel vectors (its loop
    over the channel block innermost and vectorized), then a copy writes the pixels out; a relu
    stays in the write. Both match the interpreter."""
    with dsl.Builder("dividing_epilogue", seed=0) as b:
        x = b.input("x", (1, 64, 7, 7))
        graph = b.output(dsl.silu(dsl.conv2d(x, 64, 1)), dsl.relu(dsl.conv2d(x, 64, 1)),
                         names=["gated", "rectified"])
    texts = [f.script() for f in _scheduled_kernels(graph, mcpu).values()
             if f.attrs[SCHEDULE_ATTR] == "conv2d"]
    [silu] = [t for t in texts if 'sblock("silu"' in t]
    [relu] = [t for t in texts if 'sblock("silu"' not in t]
    assert 'sblock("silu_local")' in silu, silu
    assert re.search(r"in T\.vectorized\(T\.int64\((16|32)\)\):\s+with T\.sblock\(\"silu\"\)",
                     silu), silu
    assert not re.search(r'sblock\("\w+_local"\)', relu), relu
    rng = np.random.default_rng(0)
    feeds = {"x": rng.standard_normal((1, 64, 7, 7)).astype(np.float32)}
    report = go.compare(graph, go.compile(graph), feeds)
    assert report.ok, str(report)


@pytest.mark.parametrize("mcpu", [AVX2_CPU, "znver4"])
def test_weights_larger_than_the_input_are_read_once_per_channel_block(mcpu):
    """A 512-channel 3x3 conv on a 7x7 plane (9 MB of weights, 166 KB of input) runs each
    channel block over every row (the parallel loop fuses blocks, then rows); a stride-2 conv
    from a 56x56 input (295 KB of weights) keeps threads on bands of rows over every block."""
    with dsl.Builder("streamed_weights", seed=0) as b:
        x, y = b.input("x", (1, 512, 9, 9)), b.input("y", (1, 64, 56, 56))
        graph = b.output(dsl.relu(dsl.conv2d(x, 512, 3)),
                         dsl.relu(dsl.conv2d(y, 128, 3, stride=2, padding=1)))
    kernels = _scheduled_kernels(graph, mcpu)
    order = {}
    for name, func in kernels.items():
        if func.attrs[SCHEDULE_ATTR] == "conv2d":
            fused = re.findall(r"for (\w+)_fused in T\.parallel", func.script())[-1]
            order[tuple(func.params[0].shape)[2]] = fused
    assert order == {9: "b_o_0_i", 56: "b_i_o_0"}, order


@pytest.mark.parametrize("mcpu", [AVX2_CPU, AVX512_CPU])
def test_small_convs_pad_their_rows_inside_each_parallel_task(mcpu):
    """A small padded conv (3x3 8 -> 16 ch on 27x27, 0.8 M products; from 16 input channels it
    is a Winograd kernel with 8 lanes) pads its input inside each parallel task, the rows that
    task reads: no stage before the parallel loop.
    A large one (ResNet-18's stride-2 64 -> 128 ch from 56x56) pads once, before it: its
    tasks would repeat the padding more than TASK_PADDING_LARGE_REPEATS times. A large
    grouped one with a padded input of 0.8 MB (RegNetX's stride-2 convs, each task reading its
    group's channels) pads inside the tasks again: padded once, such a copy leaves the cache.
    Wherever it pads, the copy is vectorized: the left zeros, the input's row, the right zeros."""
    with dsl.Builder("task_padding", seed=0) as b:
        x, y = b.input("x", (1, 8, 27, 27)), b.input("y", (1, 64, 56, 56))
        z = b.input("z", (1, 32, 80, 80))
        graph = b.output(dsl.relu(dsl.conv2d(x, 16, 3, padding=1)),
                         dsl.relu(dsl.conv2d(y, 128, 3, stride=2, padding=1)),
                         dsl.relu(dsl.conv2d(z, 32, 3, stride=2, padding=1, groups=2)))
    padded_in_tasks = {}
    for func in _scheduled_kernels(graph, mcpu).values():
        if func.attrs[SCHEDULE_ATTR] == "conv2d":
            text = func.script()   # one parallel loop, the conv's, with the padding inside
            width = int(func.params[0].shape[3])
            padded_in_tasks[int(func.params[0].shape[1])] = text.count("T.parallel(") == 1 \
                and text.index("T.parallel(") < text.index('T.sblock("pad_temp')
            # either way the input's columns are copied as one vector loop between the zeros
            assert f"in T.vectorized(T.int64(1), T.int64({width + 1})):" in text, text
    assert padded_in_tasks == {8: True, 64: False, 32: True}, padded_in_tasks


def test_padding_before_the_tile_copies_rows_as_vectors():
    """A 7x7 stride-2 stem pads its input once, before the tile, parallel over the planes, with
    the padding rows, the input's rows and the rows below in loops of their own: the copy is
    vector loads and stores, and on this 112x112 output plane (tiles written back through the
    register transpose) the kernel has no scalar load or insert at all. (In one loop over every
    row, whether a row was the input's was a run-time select of the whole row, which LLVM built
    element by element: 1,120 scalar loads and 840 inserts.) Bounds-checked, the host's build
    computes the interpreter's outputs."""
    with dsl.Builder("stem", seed=0) as b:
        x = b.input("x", (1, 3, 224, 224))
        graph = b.output(dsl.relu(dsl.conv2d(x, 64, 7, stride=2, padding=3)))
    (func,) = [f for f in _scheduled_kernels(graph, AVX512_CPU).values()
               if f.attrs[SCHEDULE_ATTR] == "conv2d"]
    text = func.script()
    rows = [f'T.sblock("pad_temp_i2{part}_partition")' for part in range(3)]
    assert all(r in text for r in rows), text
    assert text.index("T.parallel(") < text.index(rows[0])
    model = go.compile(graph, mcpu=AVX512_CPU)
    assembly = cpu_assembly(model.executable)
    assert not re.search(r"\bvinsertps\b|\bvmovss\b", assembly)
    skip_unless_this_cpu_runs(model)
    feeds = {"x": np.random.default_rng(0).standard_normal((1, 3, 224, 224)).astype(np.float32)}
    assert go.compare(graph, go.compile(graph, mcpu=AVX512_CPU, bounds_check=True), feeds).ok


@pytest.mark.parametrize("shape, out_channels, stride, groups", [
    ((1, 16, 28, 28), 16, 1, 1), ((1, 32, 8, 8), 64, 1, 1), ((2, 16, 28, 28), 16, 1, 1),
    ((1, 24, 13, 13), 40, 1, 1), ((1, 32, 80, 80), 32, 2, 2), ((1, 64, 8, 8), 32, 2, 1)])
def test_convs_padded_inside_their_tasks_match_the_interpreter(shape, out_channels, stride,
                                                               groups):
    """Bounds-checked, on one thread and two, batch 1 and 2 (the batch pads image by image),
    small convs, a large grouped one and a stride-2 one whose tasks leave the last padded
    column unread."""
    with dsl.Builder("task_padding", seed=0) as b:
        x = b.input("x", shape)
        graph = b.output(dsl.relu(dsl.conv2d(x, out_channels, 3, stride=stride, padding=1,
                                             groups=groups)))
    feeds = {"x": np.random.default_rng(0).standard_normal(shape).astype(np.float32)}
    for threads in (1, 2):
        model = go.compile(graph, threads=threads, bounds_check=True)
        assert go.compare(graph, model, feeds).ok


def test_non_constant_weight_falls_back_and_stays_correct():
    """A matmul whose right-hand side is an input cannot be repacked offline: generic rule."""
    with dsl.Builder("two_inputs", seed=0) as b:
        graph = b.output(dsl.matmul(b.input("a", (6, 40)), b.input("b", (40, 16))))
    kernels = _scheduled_kernels(graph)
    assert {f.attrs[SCHEDULE_ATTR] for f in kernels.values()} == {"generic"}
    rng = np.random.default_rng(1)
    feeds = {"a": rng.standard_normal((6, 40)).astype(np.float32),
             "b": rng.standard_normal((40, 16)).astype(np.float32)}
    assert go.compare(graph, go.compile(graph), feeds).ok


def test_lowering_leaves_no_constant_arithmetic():
    """graphopt's passes fold batch norms and constants, and lowering transposes constant linear
    weights itself: no all-constant call is left for TVM (whose FoldConstant builds each one
    with LLVM), so TVM's constant folder is not in the pipeline at all."""
    from tvm import relax
    graph = _table_graph(["conv_bn_residual", "dense"])
    optimized, _ = optimize_for_target(graph, "cpu", CompileOptions(mcpu=AVX2_CPU))
    leftovers = []

    def visit(expr):
        if isinstance(expr, relax.Call) and isinstance(expr.op, tvm.ir.Op) and expr.args and all(
                isinstance(a, (tvm.ir.Constant, relax.ShapeExpr)) for a in expr.args):
            leftovers.append(expr.op.name)

    relax.analysis.post_order_visit(to_relax(optimized.graph)["main"], visit)
    assert leftovers == []


def test_batch_norm_left_unfolded_lowers_without_constant_kernels():
    """With no graphopt passes, a batch norm lowers to a multiply-add by constants computed at
    lowering, and the model still matches the interpreter."""
    from tvm import relax
    graph = _table_graph(["conv_bn_residual"])
    mod = to_relax(graph)
    names = []
    relax.analysis.post_order_visit(mod["main"], lambda e: names.append(e.op.name) if isinstance(
        e, relax.Call) and isinstance(e.op, tvm.ir.Op) else None)
    assert "relax.nn.batch_norm" not in names and "relax.multiply" in names
    feeds = {"conv_bn_residual": np.random.default_rng(2).standard_normal(
        CASES["conv_bn_residual"][0]).astype(np.float32)}
    assert go.compare(graph, go.compile(graph, passes=()), feeds).ok


def test_float64_model_keeps_its_dtype_through_folding_and_repacking():
    """Folded batch-norm weights and repacked kernels stay float64 (relax.const would narrow
    them to float32 and the compile would fail on a dtype mismatch)."""
    with dsl.Builder("float64_block", seed=2) as b:
        x = b.input("x", (2, 16, 9, 9), dtype="float64")
        y = dsl.relu(dsl.batch_norm(dsl.conv2d(x, 16, 3, padding=1)) + x)
        graph = b.output(dsl.linear(dsl.flatten(dsl.max_pool2d(y, 3, stride=2)), 10))
    feeds = {"x": np.random.default_rng(4).standard_normal((2, 16, 9, 9))}
    report = go.compare(graph, go.compile(graph), feeds)
    assert report.ok, str(report)


def test_rules_apply_for_an_avx512_target():
    """The 16-lane path (this machine may lack AVX-512): every kernel is scheduled, with the
    same rules as on AVX2."""
    kernels = _scheduled_kernels(go.zoo.resnet18(image_size=128), mcpu=AVX512_CPU)
    assert_all_scheduled(kernels)
    rules = {f.attrs[SCHEDULE_ATTR] for f in kernels.values()}
    assert {"winograd", "conv2d", "dense", "pool2d"} <= rules


@pytest.mark.parametrize("name", ["conv3x3_s2_asym_pad", "conv_grouped", "dense",
                                  "winograd_odd_plane_f4", "max_pool_s2_p1"])
def test_expected_rule_on_avx512(name):
    """The rule table's tiled cases keep their rule with 16 lanes where the channels fill
    16-lane blocks."""
    kernels = _scheduled_kernels(_table_graph([name]), mcpu=AVX512_CPU)
    rules = {f.attrs[SCHEDULE_ATTR] for f in kernels.values()}
    assert CASES[name][2] in rules, (name, {k: f.attrs[SCHEDULE_ATTR] for k, f in kernels.items()})


# (in, out channels, plane, batch) -> Winograd output tile side on AVX2 (8 lanes), on AVX-512
# with 32 KiB of L1 (16 lanes), on AVX-512 with 48 KiB; 0: the direct kernel
WINOGRAD_CHOICES = {
    (64, 64, 56, 1): (2, 4, 4),      # 16 lanes: F(4x4) beats the direct kernel, F(2x2) does not
    (32, 32, 56, 1): (2, 4, 4),      # F(4x4) from 32 channels (16 with 32 KiB of L1)
    (16, 64, 56, 1): (2, 4, 0),      # ... 16 on 32 KiB cores, timed; 48 KiB lost at two threads;
    (16, 64, 55, 1): (2, 4, 0),      # 8 lanes: F(2x2) from 16 channels a row of tiles at a
                                     # time, the last row of tiles partial
    (128, 128, 28, 1): (2, 4, 4),
    (256, 256, 14, 1): (2, 2, 2),    # F(4x4)'s 4x4 tiles waste 30 % of a 14x14 plane
    (512, 512, 7, 1): (2, 0, 0),     # 16 tiles: streaming the transformed weights loses
    (512, 512, 7, 8): (2, 2, 2),     # 128 tiles over the batch
    (16, 16, 56, 1): (2, 0, 0),      # too few channels for the transforms to pay, but with 8
    (8, 16, 56, 1): (0, 0, 0),       # lanes by rows of tiles (from 16 channels: above)
    (64, 64, 224, 1): (2, 4, 4),     # by rows of tiles: F(2x2) up to 224x224 with 8 lanes,
    (64, 32, 256, 1): (0, 4, 0),     # F(4x4) up to 256x256 with 32 KiB, 224x224 with 48 KiB
    (64, 64, 225, 1): (0, 4, 0),     # ... and not beyond 224x224, odd planes too
    (32, 64, 257, 1): (0, 0, 0),
    (32, 64, 147, 1): (2, 4, 4),     # Inception-v3's third conv (8 lanes: by rows of tiles)
    (32, 128, 27, 1): (2, 4, 4),     # SqueezeNet's: F(4x4) from 25x25 planes
    (64, 256, 13, 1): (2, 2, 2),     # ... but not F(4x4) on 13x13 (it lost on 14x14 planes)
    (64, 64, 8, 1): (2, 2, 2),       # 16 tiles, but small weights on a plane of short rows
    (32, 128, 14, 1): (2, 2, 2),     # GoogLeNet's 3x3 branch convs
    (128, 32, 7, 1): (2, 0, 0),      # one output-channel block: the transform does not pay
    (256, 256, 8, 1): (2, 2, 2),     # 4 MiB of transformed weights on 16 tiles
    (256, 256, 4, 1): (2, 0, 0),     # 4 tiles: too few to reuse them
    (32, 64, 32, 1): (2, 4, 4),      # NIC's: F(4x4) from 25x25 planes
    (32, 64, 24, 1): (2, 2, 2),      # ... F(2x2) below them (planes up to 32x32)
    (32, 32, 24, 1): (2, 0, 0),      # ... with two output-channel blocks
    (128, 32, 3, 1): (2, 0, 0),      # rows of two F(2x2) tiles (one partial)
    (128, 32, 2, 1): (0, 0, 0),      # rows of one tile: the rule does not schedule them
    (128, 32, 2, 8): (0, 0, 0),      # (DenseNet-121's 2x2 planes at 64x64), batch or not
}


@pytest.mark.parametrize("shape", sorted(WINOGRAD_CHOICES))
def test_winograd_choice_per_vector_width(shape):
    from graphopt.targets.tvm.schedules import winograd
    in_c, out_c, plane, batch = shape
    found = tuple(winograd.output_tile(in_c, out_c, plane, plane, (3, 3), (1, 1), (1, 1), 1,
                                       (1, 1, 1, 1), VectorShape.of(tvm.target.Target(
                                           {"kind": "llvm", "mcpu": mcpu})), batch)
                  for mcpu in (AVX2_CPU, AVX512_CPU, "sapphirerapids"))
    assert found == WINOGRAD_CHOICES[shape]


@pytest.mark.parametrize("mcpu", [AVX2_CPU, AVX512_CPU])
@pytest.mark.parametrize("name, tasks", [("winograd_f2_by_tile_rows_batch2", 1),
                                         ("winograd_per_image_batch2", 3)])
def test_small_winograd_weights_go_a_row_of_tiles_a_task(mcpu, name, tasks):
    """F(2x2) with small transformed weights: each parallel task transforms, multiplies and
    writes back one row of tiles (one parallel loop); larger ones over a batch keep the three
    stages per image, each parallel over its own axis."""
    (kernel,) = [f for k, f in _scheduled_kernels(_table_graph([name]), mcpu).items()
                 if "winograd" in k]
    assert kernel.script().count("T.parallel(") == tasks


@pytest.mark.parametrize("mcpu, dtype, algorithm", [
    (AVX2_CPU, "float32", "winograd F(2x2, 3x3)"), (AVX512_CPU, "float32", "winograd F(4x4, 3x3)"),
    (AVX512_CPU, "float16", "winograd F(4x4, 3x3)"),     # its input widened a channel's rows
    ("cooperlake", "bfloat16", "winograd_dpbf16 F(2x2, 3x3)")])
def test_winograd_goes_by_rows_of_tiles_on_planes_of_partial_rows(mcpu, dtype, algorithm):
    """A plane that is not whole rows of tiles (29 rows: 14.5 rows of 2x2 tiles, 7.25 of 4x4)
    still goes a row of tiles a task (one parallel loop), over a batch too: the last row of
    tiles computes the rows past the edge and writes only the plane's. Bounds-checked, where
    this CPU runs the build, it computes the interpreter's outputs."""
    with dsl.Builder("wino_partial_rows", seed=7) as b:
        x = b.input("x", (2, 32, 29, 30))
        graph = b.output(dsl.relu(dsl.conv2d(x, 64, 3, padding=1)))
    if dtype != "float32":
        graph = go.quantize(graph, dtype).graph
    (kernel,) = [f for k, f in _scheduled_kernels(graph, mcpu).items() if "winograd" in k]
    assert kernel.script().count("T.parallel(") == 1
    model = go.compile(graph, mcpu=mcpu, bounds_check=True)
    (choice,) = [n.op.target_choice() for n in model.graph.nodes if "conv" in n.op_name]
    assert choice.startswith(algorithm), choice
    skip_unless_this_cpu_runs(model)
    feeds = {"x": np.random.default_rng(7).standard_normal((2, 32, 29, 30)).astype(np.float32)}
    report = go.compare(graph, model, feeds)
    assert report.ok, str(report)


@pytest.mark.parametrize("height, width, side, lanes, pixels", [
    (56, 56, 4, 16, 8), (32, 32, 4, 16, 16), (28, 28, 4, 16, 4), (14, 14, 2, 16, 14),
    (14, 14, 2, 8, 2), (56, 56, 2, 8, 8), (36, 36, 4, 16, 12), (29, 30, 4, 16, 0),
    (15, 16, 2, 8, 0)])
def test_winograd_output_pixels_per_transposed_step(height, width, side, lanes, pixels):
    from graphopt.targets.tvm.schedules.winograd import output_pixels
    assert output_pixels(height, width, side, lanes) == pixels


@pytest.mark.parametrize("mcpu", [AVX2_CPU, AVX512_CPU])
@pytest.mark.parametrize("name, transposed", [
    ("winograd_no_epilogue", True), ("winograd_whole_plane_residual", True),
    ("winograd_per_image_whole_tiles", True), ("winograd_f4_by_tile_rows_batch2", True),
    ("winograd_f2_by_tile_rows_batch2", True), ("winograd_odd_plane_f4", False),
    ("winograd_per_image_batch2", False)])
def test_winograd_writes_whole_tiles_through_the_register_transpose(mcpu, name, transposed):
    """On planes of whole tiles the output transform's values (vectors over output channels)
    reach the NCHW output through the register transpose, each channel's pixels one vector;
    elsewhere each value is stored lane by lane (the transform writes straight to the
    output)."""
    (kernel,) = [f for k, f in _scheduled_kernels(_table_graph([name]), mcpu).items()
                 if "winograd" in k]
    text = kernel.script()
    output = text[text.index('T.sblock("wino_columns")'):]     # the stages after the GEMM
    assert ("T.Shuffle(" in output) == transposed


@pytest.mark.parametrize("mcpu, deinterleaved", [(AVX2_CPU, False), (AVX512_CPU, True)])
@pytest.mark.parametrize("name", ["winograd_no_epilogue", "winograd_odd_plane_f4"])
def test_winograd_row_pass_reads_contiguous_columns_with_16_lanes(mcpu, deinterleaved, name):
    """With 16 lanes the row pass runs over each row's contiguous columns and one shuffle a
    row splits them into the tile-side column phases (`DEINTERLEAVED_ROW_LANES`); with 8 the
    pass is computed for each phase's strided columns."""
    (kernel,) = [f for k, f in _scheduled_kernels(_table_graph([name]), mcpu).items()
                 if "winograd" in k]
    text = kernel.script()
    rows = text[text.index('T.sblock("wino_rows'):text.index('T.sblock("wino_input")')]
    assert ("T.Shuffle(" in rows) == deinterleaved
    assert ('T.sblock("wino_row_pass")' in text) == deinterleaved


def test_winograd_row_pass_tests_a_padding_column_once_per_value():
    """The row pass (B^T down the padded input's columns) tests whether a column is padding
    once per value, around the sum of its reads, not in each read: a branch each, which
    doubled the kernel's LLVM IR and made its build a quarter longer."""
    kernels = _scheduled_kernels(_table_graph(["winograd_odd_plane_f4"]), mcpu=AVX512_CPU)
    [func] = [f for f in kernels.values() if f.attrs[SCHEDULE_ATTR] == "winograd"]
    text = func.script()
    rows = text[text.index('T.sblock("wino_row_pass")'):]
    rows = rows[:rows.index("T.sblock(", 1)]
    assert rows.count("v_col - T.int64(1)]") > 6     # the reads of the six terms
    assert rows.count("<= v_col") == 1, rows


def test_winograd_residual_output_is_not_stored_lane_by_lane():
    """ResNet-18's 64-channel 56x56 F(4x4) conv with its residual and relu, for AVX-512: its
    output vectors and residual reads are whole rows of pixels, not lanes inserted one at a
    time (321 `vinsertps` when the transform wrote the output directly, 69 with the
    transpose)."""
    with dsl.Builder("wino_residual", seed=7) as b:
        x = b.input("x", (1, 64, 56, 56))
        graph = b.output(dsl.relu(dsl.conv2d(x, 64, 3, padding=1) + x))
    model = go.compile(graph, mcpu=AVX512_CPU)
    assert cpu_assembly(model.executable).count("vinsertps") < 120


@pytest.mark.parametrize("plane, out_channels", [(115, 64), (27, 128)],
                         ids=["beyond_112x112", "squeezenet_27x27"])
def test_winograd_f4_on_planes_of_partial_tiles_matches_the_interpreter(plane, out_channels):
    """With 48 KiB of L1, 32-channel convs on planes that are not whole 4x4 tiles take F(4x4):
    one larger than 112x112, and SqueezeNet's 32 -> 128 ch on 27x27 (from 25x25 up); bounds-
    checked, they compute the interpreter's outputs."""
    with dsl.Builder("wino_partial_tiles", seed=5) as b:
        x = b.input("x", (1, 32, plane, plane))
        graph = b.output(dsl.relu(dsl.conv2d(x, out_channels, 3, padding=1)))
    model = go.compile(graph, mcpu="icelake-server", bounds_check=True)
    conv = [n.op.conv for n in model.graph.nodes if n.op_name == "fused_conv2d"][0]
    assert (conv.algorithm, conv.output_tile) == ("winograd", 4)
    skip_unless_this_cpu_runs(model)
    x = np.random.default_rng(0).standard_normal((1, 32, plane, plane)).astype(np.float32)
    assert go.compare(graph, model, {"x": x}).ok


@pytest.mark.parametrize("channels, plane", [(32, 114), (16, 28)],
                         ids=["beyond_112x112", "16_channels"])
def test_winograd_f2_by_rows_with_8_lanes_matches_the_interpreter(channels, plane):
    """With 8 lanes, F(2x2) a row of tiles at a time takes planes beyond 112x112 (up to
    224x224) and convs from 16 input channels; bounds-checked, it computes the interpreter's
    outputs."""
    with dsl.Builder("wino_f2_rows", seed=6) as b:
        x = b.input("x", (1, channels, plane, plane))
        graph = b.output(dsl.relu(dsl.conv2d(x, 16, 3, padding=1)))
    model = go.compile(graph, mcpu=AVX2_CPU, bounds_check=True)
    conv = [n.op.conv for n in model.graph.nodes if n.op_name == "fused_conv2d"][0]
    assert (conv.algorithm, conv.output_tile) == ("winograd", 2)
    skip_unless_this_cpu_runs(model)
    x = np.random.default_rng(1).standard_normal((1, channels, plane, plane)).astype(np.float32)
    assert go.compare(graph, model, {"x": x}).ok


@pytest.mark.parametrize("tile", [2, 4])
def test_winograd_transforms_compute_the_convolution(tile):
    """Both transform sets, applied in float64 to every tile of a padded plane, give the direct
    convolution (to rounding), independently of TVM."""
    from graphopt.targets.tvm.schedules.winograd import TRANSFORMS
    b_t, g, a_t = TRANSFORMS[tile]
    rng = np.random.default_rng(tile)
    d, w = rng.standard_normal((tile + 2, tile + 2)), rng.standard_normal((3, 3))
    y = a_t @ ((g @ w @ g.T) * (b_t @ d @ b_t.T)) @ a_t.T
    direct = np.array([[(d[i:i + 3, j:j + 3] * w).sum() for j in range(tile)]
                       for i in range(tile)])
    np.testing.assert_allclose(y, direct, atol=1e-12)


@pytest.mark.parametrize("lanes", [4, 8, 16])
def test_register_transpose_network_transposes(lanes):
    """The shuffle rounds of the write-back transpose, applied to index vectors as LLVM's
    shufflevector would, turn rows of channels into rows of pixels."""
    from graphopt.targets.tvm.schedules.transpose import _bit_swap_masks
    rows = [np.arange(lanes) + lanes * r for r in range(lanes)]   # rows[pixel][channel]
    for bit in range(lanes.bit_length() - 1):
        low, high = _bit_swap_masks(lanes, bit)
        step = 1 << bit
        for r in range(lanes):
            if not r & step:
                pair = np.concatenate([rows[r], rows[r + step]])
                rows[r], rows[r + step] = pair[low], pair[high]
    np.testing.assert_array_equal(np.array(rows), np.arange(lanes * lanes).reshape(
        lanes, lanes).T)


def test_1x1_convs_on_planes_of_partial_vectors_take_the_pointwise_rule_on_avx512():
    """SqueezeNet's expand 1x1 conv (16 -> 64 ch on 55x55, not whole 16-lane vectors): pixels as
    the vector axis on AVX-512, the conv2d rule with 8 lanes; the same outputs either way."""
    with dsl.Builder("expand1x1", seed=3) as b:
        graph = b.output(dsl.relu(dsl.conv2d(b.input("x", (1, 16, 55, 55)), 64, 1)))
    for mcpu, rule in ((AVX512_CPU, "pointwise"), (AVX2_CPU, "conv2d")):
        rules = {f.attrs[SCHEDULE_ATTR] for f in _scheduled_kernels(graph, mcpu).values()}
        assert rule in rules, (mcpu, rules)
    # compiled for 8 threads, its 4 blocks of 16 channels would idle half of them: a rule that
    # splits the rows instead (here "narrow": a thin input, a short reduction)
    optimized, _ = optimize_for_target(graph, "cpu", CompileOptions(mcpu=AVX512_CPU, threads=8))
    assert optimized.graph.nodes[0].op.conv.algorithm == "narrow"
    feeds = {"x": np.random.default_rng(0).standard_normal((1, 16, 55, 55)).astype(np.float32)}
    assert go.compare(graph, go.compile(graph, bounds_check=True), feeds).ok


def test_strided_1x1_convs_of_few_channels_stay_on_the_conv2d_rule_on_avx512():
    """RegNetX's stride-2 projections (1x1, 32 input channels) on AVX-512: not rows of vectors,
    whose column-phase copy would read the whole input of which the conv reads one pixel in
    four, but the conv2d rule, reading only those; the interpreter's outputs."""
    shape = (1, 32, 30, 38)
    with dsl.Builder("projection_s2", seed=3) as b:
        graph = b.output(dsl.relu(dsl.conv2d(b.input("x", shape), 32, 1, stride=2)))
    rules = {f.attrs[SCHEDULE_ATTR] for f in _scheduled_kernels(graph, AVX512_CPU).values()}
    assert "conv2d" in rules and "narrow" not in rules, rules
    feeds = {"x": np.random.default_rng(0).standard_normal(shape).astype(np.float32)}
    assert go.compare(graph, go.compile(graph, bounds_check=True), feeds).ok


@pytest.mark.parametrize("name", ["conv1x1_projection", "conv1x1_projection_residual",
                                  "conv1x1_expansion", "conv1x1_wide_expansion_avx2"])
def test_1x1_convs_take_the_pointwise_rule_on_avx512(name):
    optimized, target = optimize_for_target(_table_graph([name]), "cpu",
                                            CompileOptions(mcpu=AVX512_CPU, threads=2))
    with target:
        lowered = cpu_pipeline(target)(to_relax(optimized.graph))
    main = lowered["main"].script()
    called = {gv.name_hint: f for gv, f in lowered.functions.items()
              if isinstance(f, tvm.tirx.PrimFunc)
              and re.search(rf"\b{gv.name_hint}\(", main)}
    rules = sorted(f.attrs[SCHEDULE_ATTR] for f in called.values())
    assert "pointwise" in rules, rules
    # the flat views between the convs and the graph output's are not copies
    # (`output_views.py`), and the copy kernels they replace are not built
    assert not any("reshape" in gv.name_hint for gv in lowered.functions), sorted(called)


@pytest.mark.parametrize("pixels, outer", [(8, "o"), (56, "p")])
def test_few_uneven_pixel_tiles_share_the_channel_blocks_between_threads(pixels, outer):
    """A projection on an 8x8 plane (tiles of 3 vectors: 48 pixels, then 16) splits its
    parallel tasks by channel block, so no thread gets only whole tiles; on 56x56 (66 tiles)
    the pixel tiles stay outermost, each tile's input read from cache by every block."""
    with dsl.Builder("projection", seed=0) as b:
        x = b.input("x", (1, 256, pixels, pixels))
        graph = b.output(dsl.conv2d(x, 64, 1))
    (kernel,) = [f for f in _scheduled_kernels(graph, AVX512_CPU).values()
                 if f.attrs[SCHEDULE_ATTR] == "pointwise"]
    assert re.search(rf"for b_{outer}_0_\w+_fused in T.parallel", kernel.script())


def test_pointwise_tile_fills_the_accumulators():
    from graphopt.targets.tvm.schedules.pointwise import tile
    vec = VectorShape.of(tvm.target.Target({"kind": "llvm", "mcpu": AVX512_CPU}))
    assert tile(56 * 56, 64, vec) == (3, 8)       # 24 accumulators, the last tile partial
    assert tile(56 * 56, 24, vec) == (4, 6)
    # accumulators, input vectors and a broadcast weight fit the 32 registers (4 x 7 spilled)
    assert tile(8 * 8, 448, vec) == (2, 14)
    for pixels in (64, 128, 256, 784, 3136):
        for channels in range(1, 513):
            vectors, block = tile(pixels, channels, vec)
            assert vectors * (block + 1) < 32, (pixels, channels, vectors, block)
    # planes of partial vectors: one vector, the largest block leaving two blocks or more
    assert tile(35 * 35, 64, vec) == (1, 16)
    assert tile(17 * 17, 192, vec) == (1, 24)
    assert tile(55 * 55, 16, vec) == (1, 8)
    assert tile(7 * 7, 64, vec) is None            # too small a plane of partial vectors
    # ... and a channel block for each thread, else the conv2d rule's bands of rows
    assert tile(35 * 35, 64, vec, batch=1, threads=4) == (1, 16)
    assert tile(35 * 35, 64, vec, batch=1, threads=8) is None
    assert tile(35 * 35, 64, vec, batch=2, threads=8) == (1, 16)


def test_partial_planes_stay_on_the_conv2d_rule_with_48_kib_of_l1():
    """Planes of partial vectors are taken on 32 KiB L1 cores only (measured slower with the
    Intel Xeon's 48 KiB); planes of whole vectors on both."""
    from graphopt.targets.tvm.schedules.pointwise import tile
    for mcpu, partial in ((AVX512_CPU, (1, 16)), ("sapphirerapids", None), ("znver4", (1, 16))):
        vec = VectorShape.of(tvm.target.Target({"kind": "llvm", "mcpu": mcpu}))
        assert tile(35 * 35, 64, vec, in_channels=288) == partial, mcpu
        assert tile(56 * 56, 64, vec, in_channels=256) == (3, 8), mcpu


def test_pointwise_tile_with_8_lanes():
    """AVX2: 12 accumulators and their inputs within 16 registers, planes of whole vectors
    only, and no expansion of 64 input channels or more (the conv2d rule keeps those)."""
    from graphopt.targets.tvm.schedules.pointwise import tile
    vec = VectorShape.of(tvm.target.Target({"kind": "llvm", "mcpu": AVX2_CPU}))
    assert tile(56 * 56, 64, vec, in_channels=256) == (3, 4)    # a projection
    assert tile(112 * 112, 96, vec, in_channels=16) == (2, 6)   # an expansion of few channels
    assert tile(56 * 56, 256, vec, in_channels=64) is None
    assert tile(35 * 35, 64, vec, in_channels=288) is None      # a plane of partial vectors
    for pixels in (64, 784, 3136):
        for channels in range(1, 257):
            vectors, block = tile(pixels, channels, vec)
            assert vectors * block <= 12 and vectors * (block + 1) < 16, (pixels, channels)


def test_partial_planes_compute_whole_vectors_outside_the_last():
    """A 1x1 conv on a plane of 8 vectors and 15 pixels: the loop over the whole vectors has no
    predicate, so it is vector code (16-lane products of a broadcast weight), not the scalar
    copy TVM makes of a loop whose lanes are guarded."""
    with dsl.Builder("partial_plane", seed=3) as b:
        graph = b.output(dsl.relu(dsl.conv2d(b.input("x", (1, 64, 13, 11)), 32, 1)))
    model = go.compile(graph, "cpu", mcpu=AVX512_CPU, threads=2)
    assert set(model.schedules.values()) >= {"pointwise"}, model.schedules
    assembly = cpu_assembly(model.executable)
    broadcast_products = re.findall(r"vfmadd\d+ps\s+[^\n]*\{1to16\}[^\n]*%zmm", assembly)
    assert len(broadcast_products) >= 16, len(broadcast_products)   # a 16-channel block


def test_narrow_tile_loads_least_per_product():
    """Channels x row vectors within the accumulator budget, fewest loads per product: a row
    of 7 vectors gets 2 channels x 7 vectors, not 4 channels x 1 (a load per product)."""
    from graphopt.targets.tvm.schedules.narrow import tile
    assert tile(64, 7) == (2, 7)       # SqueezeNet's stride-2 stem on AVX-512
    assert tile(64, 14) == (8, 2)      # VGG-11's first conv
    assert tile(64, 1) == (16, 1)
    assert tile(3, 16) == (3, 4)       # 3 output channels: all of them, 4 vectors
    assert tile(6, 2) == (6, 2)        # LeNet-5's first conv
    assert tile(64, 14, 12) == (4, 2)  # AVX2's 12 accumulators (16 spilled: 2.6x the time)


def test_narrow_tile_fits_avx2_registers():
    """SqueezeNet's 3 -> 64 channel stride-2 stem (111 columns, 14 vectors on AVX2): 4 channels
    x 2 vectors, within the 12 accumulators of 16 registers, not 8 x 2."""
    with dsl.Builder("stem", seed=0) as b:
        graph = b.output(dsl.relu(dsl.conv2d(b.input("x", (1, 3, 32, 224)), 64, 3, stride=2)))
    kernels = _scheduled_kernels(graph, AVX2_CPU)
    [narrow] = [f for f in kernels.values() if f.attrs[SCHEDULE_ATTR] == "narrow"]
    unrolled = re.findall(r"for (\w+) in T\.unroll\(T\.int64\((\d+)\)\)", narrow.script())
    # the tile's loops: output channels (o_1) x row vectors (j_0_1), unrolled
    assert {loop: int(n) for loop, n in unrolled if "init" not in loop} == \
        {"o_1": 4, "j_0_1": 2}, unrolled


def _lane_predicated_loops(func) -> list[str]:
    """Predicates of blocks under a vector loop that read that loop's own variable: TVM writes
    such a loop element by element."""
    found = []

    def walk(stmt, lanes: list[str]) -> None:
        if isinstance(stmt, tvm.tirx.For) and stmt.kind == tvm.tirx.ForKind.VECTORIZED:
            lanes = lanes + [stmt.loop_var.name]
        predicate = str(getattr(stmt, "predicate", ""))
        if any(re.search(rf"\b{v}\b", predicate) for v in lanes):
            found.append(predicate)
        for child in _statements_under(stmt):
            walk(child, lanes)
    walk(func.body, [])
    return found


@pytest.mark.parametrize("mcpu", [AVX2_CPU, AVX512_CPU])
def test_narrow_rows_are_written_as_whole_vectors(mcpu):
    """LeNet-5's first conv (28 of 32 columns, two tiles a row with 8 lanes) with its tanh: the
    writer runs once the row's tiles are done, over the 28 real columns, not over each tile's
    lanes with a predicate (TVM computed that tanh element by element, 8x the time)."""
    kernels = _scheduled_kernels(go.zoo.lenet5(batch=2), mcpu)
    narrow = [f for f in kernels.values() if f.attrs[SCHEDULE_ATTR] == "narrow"]
    assert len(narrow) == 1
    assert "fast_tanh" in narrow[0].script()
    assert _lane_predicated_loops(narrow[0]) == []


@pytest.mark.parametrize("width", [112, 104, 110])   # 14 vectors; 13 (prime); 14, padded
def test_wide_depthwise_rows_are_written_as_whole_vectors(width):
    """Depthwise rows wider than the accumulators (8 lanes: 12 vectors) with a SiLU: tiles of
    whole vectors that divide the row, or the row written once all its tiles are done; never a
    writer predicated on its lanes (EfficientNet's 112-wide conv: 5.4 ms, 13x ORT's)."""
    with dsl.Builder("wide_depthwise", seed=0) as b:
        x = b.input("x", (1, 4, 6, width))
        graph = b.output(dsl.silu(dsl.conv2d(x, 4, 3, padding=1, groups=4)))
    kernels = _scheduled_kernels(graph, AVX2_CPU)
    [depthwise] = [f for f in kernels.values() if f.attrs[SCHEDULE_ATTR] == "depthwise"]
    assert _lane_predicated_loops(depthwise) == []
    feeds = {"x": np.random.default_rng(0).standard_normal((1, 4, 6, width)).astype(np.float32)}
    assert go.compare(graph, go.compile(graph, bounds_check=True), feeds).ok


# kernel, stride, padding, ceil_mode, count_include_pad, input shape
AVG_POOLS = [((3, 3), (1, 1), (1, 1, 1, 1), False, True, (1, 5, 17, 17)),   # Inception's
             ((3, 3), (1, 1), (1, 1, 1, 1), False, False, (1, 5, 17, 17)),
             ((2, 2), (2, 2), (0, 0, 0, 0), False, False, (1, 4, 14, 14)),  # DenseNet's
             ((3, 3), (2, 2), (1, 1, 1, 1), True, True, (1, 3, 10, 11)),    # ceil-mode overhang
             ((3, 3), (2, 2), (1, 1, 1, 1), True, False, (1, 3, 10, 11)),
             ((3, 2), (2, 1), (1, 0, 0, 1), True, True, (2, 3, 9, 8)),
             ((5, 5), (3, 3), (2, 2, 2, 2), True, False, (1, 2, 13, 16)),
             ((3, 3), (1, 1), (0, 1, 2, 0), False, True, (1, 3, 7, 9)),
             # one column (torch's LocalResponseNorm export): its build crashed
             ((3, 1), (1, 1), (1, 0, 1, 0), False, True, (1, 1, 5, 1)),
             ((2, 1), (2, 1), (0, 0, 0, 0), False, False, (2, 16, 6, 1))]


@pytest.mark.parametrize("kernel, stride, padding, ceil_mode, include_pad, shape", AVG_POOLS)
def test_separable_average_pools_match_the_interpreter(kernel, stride, padding, ceil_mode,
                                                       include_pad, shape):
    """Average pools computed as a row sum then a column sum, times the reciprocal of each
    window's count of the region that counts (with or without the explicit padding, never the
    ceil-mode overhang), on the pool2d rule and bounds-checked."""
    with dsl.Builder("avg_pool", seed=0) as b:
        graph = b.output(dsl.avg_pool2d(b.input("x", shape), kernel, stride=stride,
                                        padding=padding, ceil_mode=ceil_mode,
                                        count_include_pad=include_pad))
    model = go.compile(graph, bounds_check=True)
    assert set(model.schedules.values()) == {"pool2d"}, model.schedules
    feeds = {"x": np.random.default_rng(1).standard_normal(shape).astype(np.float32)}
    assert go.compare(graph, model, feeds).ok


def test_average_pools_sum_padded_rows_as_vectors_and_multiply():
    """Inception's 3x3 stride-1 average pool (zero padding counted, 17x17 planes): the rows
    pass sums its padding and the input's columns in separate vector loops (no lane reads
    under a bounds check, which TVM writes element by element), and every window's count is
    9, so the kernel multiplies by a constant instead of dividing."""
    with dsl.Builder("avg_pool", seed=0) as b:
        graph = b.output(dsl.avg_pool2d(b.input("x", (1, 8, 17, 17)), 3, stride=1, padding=1,
                                        count_include_pad=True))
    model = go.compile(graph, "cpu", mcpu=AVX512_CPU, threads=2)
    assembly = cpu_assembly(model.executable)
    assert not re.findall(r"vdiv[ps]s", assembly)
    # 16-lane sums of both passes (12 here; 2, the columns pass's, with the rows pass scalar)
    assert len(re.findall(r"vaddps\s+[^\n]*%zmm", assembly)) >= 8


@pytest.mark.parametrize("dtype, mcpu", [("int8", "cascadelake"), ("int8", "haswell"),
                                         ("bfloat16", "cooperlake")])
def test_dot_product_convs_copy_their_input_with_vector_code(dtype, mcpu):
    """The int8 and bfloat16 dot-product convs copy their input as channel planes (vector rows)
    interleaved by a register shuffle, a row of the image at a time: no element-wise gather
    (`schedules/interleave.py`)."""
    with dsl.Builder("conv", seed=0) as b:
        x = b.input("x", (1, 24, 9, 13))
        graph = b.output(dsl.relu(dsl.conv2d(x, 32, 3, padding=1)))
    feeds = {"x": np.random.default_rng(0).standard_normal((1, 24, 9, 13)).astype(np.float32)}
    low = go.quantize(graph, go.calibrate(graph, [feeds]) if dtype == "int8" else dtype).graph
    (conv,) = [f.script() for name, f in _scheduled_kernels(low, mcpu).items()
               if "conv2d" in name]
    assert "T.Shuffle" in conv and 'T.sblock("pad_pack_o")' in conv, conv
    # one block per part of the row where it is copied in parts (the padding, the input)
    starts = [m.start() for m in re.finditer(r'T\.sblock\("pad_planes(_ax\d+)?"\)', conv)]
    assert starts and all("T.vectorized" in conv[s - 400:s] for s in starts), conv


def test_short_contiguous_rows_are_vector_code_and_gathers_are_not():
    """A squeeze-excite scale on 14x14 planes (rows of 14, not whole 16-lane vectors) is
    vectorized along its rows; a reflection pad's rows, whose reads are gathers, stay scalar."""
    with dsl.Builder("rows", seed=0) as b:
        x, scale = b.input("x", (1, 24, 14, 14)), b.input("s", (1, 24, 1, 1))
        graph = b.output(dsl.mul(x, scale))
    (script,) = [f.script() for f in _scheduled_kernels(graph, mcpu=AVX512_CPU).values()]
    assert "T.vectorized(T.int64(14))" in script, script
    with dsl.Builder("reflect", seed=0) as b:
        graph = b.output(dsl.pad(b.input("x", (1, 24, 14, 13)), ((0, 0), (0, 0), (1, 1), (1, 1)),
                                 mode="reflect"))     # rows of 15
    (script,) = [f.script() for f in _scheduled_kernels(graph, mcpu=AVX512_CPU).values()]
    assert "T.vectorized" not in script, script


# dtype, kernel, stride, padding, dilation, ceil_mode, input shape
SEPARABLE_MAX_POOLS = [("uint8", 2, 2, 0, 1, False, (1, 16, 24, 24)),   # VGG's, quantized
                       ("uint8", 3, 2, 1, 1, False, (1, 8, 15, 15)),    # ResNet's stem
                       ("int8", 3, 2, 0, 1, True, (2, 3, 10, 11)),      # ceil-mode overhang
                       ("int8", 3, 1, 2, 2, False, (1, 4, 9, 9)),
                       ("int32", 2, 1, 1, 1, False, (1, 3, 7, 6)),
                       ("bfloat16", 3, 2, 1, 1, False, (1, 8, 15, 15)),
                       ("bfloat16", 3, 2, 0, 1, True, (2, 3, 10, 11)),
                       ("bfloat16", 3, 1, 1, 1, False, (1, 5, 28, 28)),   # GoogLeNet's
                       ("float32", 3, 1, 1, 1, False, (1, 5, 28, 28)),
                       ("float32", 5, 1, 2, 1, False, (2, 4, 19, 21)),
                       ("float32", 3, 2, 1, 1, True, (1, 3, 12, 13)),
                       ("float32", 2, 2, 0, 1, False, (1, 16, 24, 24)),
                       ("float32", 3, 2, 0, 1, True, (2, 3, 10, 11)),
                       # a global max pool (torch's AdaptiveMaxPool2d(1)): as a chain of Lets
                       # an 8x8 window took LLVM 25 s to build, 12x12 minutes
                       ("float32", 12, 12, 0, 1, False, (1, 16, 12, 12)),
                       ("float32", 8, 8, 0, 1, False, (2, 3, 16, 17)),
                       # one column: the rows pass has no loop of its own (wrong results)
                       ("float32", (3, 1), 1, (1, 0), 1, False, (2, 16, 9, 1)),
                       ("int8", (3, 1), (2, 1), (1, 0), 1, True, (1, 8, 10, 1))]


@pytest.mark.parametrize("dtype, kernel, stride, padding, dilation, ceil_mode, shape",
                         SEPARABLE_MAX_POOLS)
def test_separable_max_pools_are_exact(dtype, kernel, stride, padding, dilation, ceil_mode,
                                       shape):
    """The max pools of int8, bfloat16 and float32 models take the separable pool2d rule,
    bounds-checked, with the interpreter's results exactly: the integer dtype's extremes,
    NaN (propagated) and -inf included, on the rows where part of the window is padding (the
    rows pass vectorized in pieces)."""
    with dsl.Builder("pool", seed=0) as b:
        graph = b.output(dsl.max_pool2d(b.input("x", shape, dtype), kernel, stride=stride,
                                        padding=padding, dilation=dilation,
                                        ceil_mode=ceil_mode))
    model = go.compile(graph, bounds_check=True)
    assert set(model.schedules.values()) == {"pool2d"}, model.schedules
    rng = np.random.default_rng(2)
    if dtype in ("bfloat16", "float32"):
        x = rng.standard_normal(shape).astype(np.dtype(dtype))
        x.flat[::7], x.flat[3::11] = -np.inf, np.nan
    else:
        info = np.iinfo(dtype)
        x = rng.integers(info.min, info.max, shape, endpoint=True).astype(dtype)
        x.flat[::7] = info.min
    (name,) = [v.name for v in graph.outputs]
    np.testing.assert_array_equal(model.run({"x": x})[name].astype(np.float64),
                                  go.interpret(graph, {"x": x})[name].astype(np.float64))
    (func,) = _scheduled_kernels(graph).values()
    assert "T.Let(" not in func.script()   # each maximum written without Lets


def test_long_reductions_sum_vectors_of_partial_results():
    """A global average pool sums each channel's 224 values in 32 interleaved partial sums
    (two vector accumulators), then those; the NaN-propagating max of a global max pool is no
    reducer rfactor knows and stays a scalar loop."""
    kernels = _scheduled_kernels(_table_graph(["global_avg_pool_long"]), mcpu=AVX512_CPU)
    text = "\n".join(f.script() for f in kernels.values())
    assert "_rf" in text and "T.vectorized(T.int64(32))" in text, text
    kernels = _scheduled_kernels(_table_graph(["global_max_pool_long"]), mcpu=AVX512_CPU)
    assert "_rf" not in "\n".join(f.script() for f in kernels.values())


def test_large_planes_write_back_through_the_register_transpose():
    kernels = _scheduled_kernels(_table_graph(["conv3x3_large_plane"]), mcpu=AVX512_CPU)
    text = next(f.script() for f in kernels.values() if f.attrs[SCHEDULE_ATTR] == "conv2d")
    assert "T.Shuffle" in text


def test_a_bug_in_a_rule_fails_loudly(monkeypatch):
    """A rule refused by TVM's schedule checks falls to the next rule; a Python error inside a
    rule is a bug and fails the compile, naming it, instead of falling to the generic rule."""
    from graphopt.targets.tvm.schedules import dense

    def broken(sch, vec):
        raise AttributeError("broken rule")

    monkeypatch.setattr(dense, "schedule", broken)
    with pytest.raises(go.LoweringError, match="AttributeError: broken rule"):
        go.compile(_table_graph(["dense"]))


def test_weight_layouts_are_decisions_on_the_nodes():
    """The target passes record each conv's and dense layer's weight block on the node; the
    rules read the weights as lowering packed them (a 5-D conv weight, a 3-D dense weight).
    The 1x1 conv's 7x7 plane runs as one row of 49 pixels on 8 lanes (`planes_as_rows`: the
    reshapes around it), in tiles of 6."""
    graph = _table_graph(["dense", "conv1x1"])
    optimized, _ = optimize_for_target(graph, "cpu", CompileOptions(mcpu=AVX2_CPU))
    choices = {n.op_name: n.op.target_choice() for n in optimized.graph.nodes}
    assert choices == {"linear": "24-column weight blocks",
                       "conv2d": "direct, 16-channel weight blocks, rows padded to 54",
                       "reshape": "", "relu": ""}
    kernels = _scheduled_kernels(graph)
    shapes = {name: sorted(len(p.shape) for p in f.params) for name, f in kernels.items()}
    assert any(5 in s for s in shapes.values()) and any(3 in s for s in shapes.values())


def test_unpadded_convs_on_rows_of_partial_tiles_take_one_register_blocks(direct_small_planes):
    """Inception's 1x1 convs on 17x17 planes, on a 48 KiB L1 core (where such planes are not
    pointwise GEMMs): 32-channel blocks would tile the 17-pixel rows as 2 x 9, padding them to 18
    and so copying the whole input into a wider buffer first; 16-channel blocks take each row as
    one tile, reading the input as it is. A conv that pads its input anyway keeps the wider
    block on this core (on the direct kernel: not F(2x2), as planes up to 32x32 otherwise
    take; on Zen 4 it does not: the next test)."""
    with dsl.Builder("rows17", seed=0) as b:
        x = b.input("x", (1, 96, 17, 17))
        graph = b.output(dsl.relu(dsl.conv2d(x, 64, 1)), dsl.relu(dsl.conv2d(x, 64, 3, padding=1)))
    optimized, _ = optimize_for_target(graph, "cpu", CompileOptions(mcpu="sapphirerapids"))
    choices = sorted(n.op.target_choice() for n in optimized.graph.nodes)
    assert choices == ["direct, 16-channel weight blocks",
                       "direct, 32-channel weight blocks, rows padded to 18"], choices
    scripts = [f.script() for f in _scheduled_kernels(graph, "sapphirerapids").values()]
    (unpadded,) = [s for s in scripts if "pad_temp" not in s]
    assert "T.unroll(T.int64(17))" in unpadded, unpadded
    feeds = {"x": np.random.default_rng(0).standard_normal((1, 96, 17, 17)).astype(np.float32)}
    assert go.compare(graph, go.compile(graph, bounds_check=True), feeds).ok


@pytest.mark.parametrize("mcpu, whole_rows", [("znver4", True), ("sapphirerapids", False),
                                              ("znver5", False)])
def test_padded_convs_on_rows_of_partial_tiles_take_whole_row_tiles_on_split_512_cores(
        mcpu, whole_rows, direct_small_planes):
    """Inception's 7x1 and 1x7 convs on 17x17 planes pad their input anyway: on a core that runs
    512-bit instructions as two halves (Zen 4) they take 16-channel blocks and tile each
    17-pixel row whole; with two full 512-bit FMA ports (Sapphire Rapids, Zen 5) they keep
    32-channel blocks, their rows computed to 18. The host's build matches the interpreter."""
    with dsl.Builder("rows17", seed=0) as b:
        x = b.input("x", (1, 64, 17, 17))
        graph = b.output(dsl.relu(dsl.conv2d(x, 64, (7, 1), padding=(3, 0))),
                         dsl.relu(dsl.conv2d(x, 64, (1, 7), padding=(0, 3))),
                         dsl.relu(dsl.conv2d(x, 64, 3, padding=1)))
    optimized, _ = optimize_for_target(graph, "cpu", CompileOptions(mcpu=mcpu))
    choices = {n.op.target_choice() for n in optimized.graph.nodes}
    expected = "direct, 16-channel weight blocks" if whole_rows else \
        "direct, 32-channel weight blocks, rows padded to 18"
    assert choices == {expected}, choices
    if whole_rows:
        scripts = [f.script() for f in _scheduled_kernels(graph, mcpu).values()
                   if f.attrs.get(SCHEDULE_ATTR) == "conv2d"]
        assert len(scripts) == 3 and all("T.unroll(T.int64(17))" in s for s in scripts)
    feeds = {"x": np.random.default_rng(0).standard_normal((1, 64, 17, 17)).astype(np.float32)}
    assert go.compare(graph, go.compile(graph, bounds_check=True), feeds).ok


def _squeeze_convs():
    """SqueezeNet's squeeze convs on planes of partial vectors, and one of 48 channels."""
    with dsl.Builder("squeeze", seed=0) as b:
        x, y = b.input("x", (1, 128, 55, 55)), b.input("y", (1, 256, 27, 27))
        return b.output(dsl.relu(dsl.conv2d(x, 16, 1)), dsl.relu(dsl.conv2d(y, 32, 1)),
                        dsl.relu(dsl.conv2d(y, 48, 1)))


BLOCKED_COPY = re.compile(r"sblock_alloc_buffer\(\((T\.int64\(\d+\), ){4}T\.int64\(16\)\)\)")


@pytest.mark.parametrize("mcpu, in_place", [("sapphirerapids", {16: True, 32: True, 48: False}),
                                             (AVX2_CPU, {16: True, 32: True, 48: False})])
def test_1x1_convs_of_few_channels_read_their_input_in_place(mcpu, in_place):
    """On a 48 KiB L1 core (where the conv2d rule takes such planes) with 16 lanes, and with 8,
    at most 32 output channels read the NCHW input in place (pixels broadcast from its rows);
    48 channels copy it channel-blocked first."""
    found = {}
    for func in _scheduled_kernels(_squeeze_convs(), mcpu).values():
        if func.attrs[SCHEDULE_ATTR] == "conv2d":
            found[int(func.params[-1].shape[1])] = BLOCKED_COPY.search(func.script()) is None
    assert found == in_place, found


# The blocked schedule's reduction loop over input-channel blocks outside the tiles of a row.
INPUT_CHANNEL_BLOCKS = re.compile(r"for rc_0, \w+, j_0")


def _projections():
    """Bottleneck projections: MobileNetV2's 384 -> 64 ch 1x1 on 14x14, its 960 -> 160 ch on
    7x7, and SqueezeNet's classifier (512 -> 1000 ch on 13x13: 2 MB of weights)."""
    with dsl.Builder("projections", seed=0) as b:
        x, y = b.input("x", (1, 384, 14, 14)), b.input("y", (1, 960, 7, 7))
        z = b.input("z", (1, 512, 13, 13))
        return b.output(dsl.conv2d(x, 64, 1), dsl.conv2d(y, 160, 1), dsl.conv2d(z, 1000, 1))


@pytest.mark.parametrize("mcpu, blocked", [(AVX2_CPU, {64: True, 160: False, 1000: False}),
                                            ("znver4", {160: False})])
def test_8_lane_convs_block_input_channels_on_14x14_planes(mcpu, blocked):
    """With 8 lanes, whatever the L1, the conv2d rule blocks the input channels of a plane of
    100 to 400 pixels (`BLOCKED_YMM_MIN_PIXELS`), not of a 7x7 plane nor where the weights
    stream from memory; with 16 lanes and 32 KiB of L1 (Zen 4) of none (there the pointwise
    rule takes the 14x14 and 13x13 ones). Keyed by output channels."""
    found = {int(func.params[-1].shape[1]): bool(INPUT_CHANNEL_BLOCKS.search(func.script()))
             for func in _scheduled_kernels(_projections(), mcpu).values()
             if func.attrs[SCHEDULE_ATTR] == "conv2d"}
    assert found == blocked, found


def test_8_lane_input_channel_blocks_match_the_interpreter():
    """The AVX2 build of the projections above, bounds-checked, on one thread and two."""
    graph = _projections()
    rng = np.random.default_rng(0)
    feeds = {v.name: rng.standard_normal(v.shape).astype(np.float32) for v in graph.inputs}
    model = go.compile(graph, mcpu=AVX2_CPU, bounds_check=True)
    for threads in (1, 2):
        model.threads = threads
        assert go.compare(graph, model, feeds).ok


def test_channel_blocked_copy_is_vectorized_along_its_channels():
    """Where the channel-blocked copy of a 1x1 conv's input ([N, C / 16, H, W, 16]) is its
    padding stage (Inception-v3's 35x35 rows computed to 36 columns), each pixel's 16
    channels are one vector, not a loop along the row left to LLVM (scatter stores)."""
    with dsl.Builder("inception_1x1", seed=0) as b:
        x = b.input("x", (1, 256, 35, 35))
        graph = b.output(dsl.relu(dsl.conv2d(x, 64, 1)))
    (script,) = [f.script() for f in _scheduled_kernels(graph, "sapphirerapids").values()
                 if f.attrs[SCHEDULE_ATTR] == "conv2d"]
    assert BLOCKED_COPY.search(script)
    copy = script[script.index("T.grid", script.index("sblock_alloc_buffer")):]
    copy = copy[:copy.index('T.sblock("pad_temp")')]
    assert "T.vectorized(T.int64(16))" in copy, copy
    feeds = {"x": np.random.default_rng(0).standard_normal((1, 256, 35, 35)).astype(np.float32)}
    assert go.compare(graph, go.compile(graph, bounds_check=True), feeds).ok


def test_1x1_convs_reading_their_input_in_place_match_the_interpreter(monkeypatch):
    """Built for the host with the in-place reads on whatever its vectors and L1 (the pointwise
    rule kept off partial planes), bounds-checked, on one thread and two; the 55x55 conv's
    rows are padded to whole tiles."""
    from graphopt.targets.tvm.schedules import conv2d, pointwise
    monkeypatch.setattr(conv2d, "STRIDED_INPUT_LANES", (4, 8, 16))
    monkeypatch.setattr(pointwise, "PARTIAL_PLANE_LANES", ())
    graph = _squeeze_convs()
    rng = np.random.default_rng(0)
    feeds = {"x": rng.standard_normal((1, 128, 55, 55)).astype(np.float32),
             "y": rng.standard_normal((1, 256, 27, 27)).astype(np.float32)}
    model = go.compile(graph, bounds_check=True)
    assert {"conv2d"} <= set(model.schedules.values()), model.schedules
    for threads in (1, 2):
        model.threads = threads
        assert go.compare(graph, model, feeds).ok


def _strided_projections(batch: int = 1):
    """ResNet's downsampling projections: 1x1 stride-2 convs of 64 -> 128 and 256 -> 512
    channels (the second on a plane small enough for input-channel blocks on 48 KiB cores)."""
    with dsl.Builder("projections", seed=0) as b:
        x, y = b.input("x", (batch, 64, 56, 56)), b.input("y", (batch, 256, 14, 14))
        return b.output(dsl.conv2d(x, 128, 1, stride=2), dsl.conv2d(y, 512, 1, stride=2))


@pytest.mark.parametrize("mcpu, copied", [(AVX2_CPU, {128: False, 512: True}),
                                           (AVX512_CPU, {128: False, 512: False}),
                                           ("sapphirerapids", {128: False, 512: False})])
@pytest.mark.parametrize("batch", [1, 8])
def test_strided_1x1_convs_read_their_input_in_place(mcpu, copied, batch):
    """A strided 1x1 conv makes no channel-blocked copy of its input, whatever its channels:
    the copy would cover every pixel the stride skips; but with 8 lanes one onto a small plane
    (7x7) does (`STRIDED_COPY_LANES`), and the 28x28 one still reads in place. Both are conv2d
    kernels, keyed by output channels."""
    found = {int(f.params[-1].shape[1]): bool(BLOCKED_COPY.search(f.script()))
             for f in _scheduled_kernels(_strided_projections(batch), mcpu).values()
             if f.attrs[SCHEDULE_ATTR] == "conv2d"}
    assert found == copied, found


@pytest.mark.parametrize("mcpu", [None, AVX2_CPU], ids=["host", "avx2"])
def test_strided_1x1_convs_match_the_interpreter(mcpu):
    """Built for the host and for AVX2 (where the 7x7 one copies its input), bounds-checked, a
    batch of two, on one thread and two."""
    graph = _strided_projections(batch=2)
    rng = np.random.default_rng(0)
    feeds = {"x": rng.standard_normal((2, 64, 56, 56)).astype(np.float32),
             "y": rng.standard_normal((2, 256, 14, 14)).astype(np.float32)}
    model = go.compile(graph, mcpu=mcpu, bounds_check=True)
    for threads in (1, 2):
        model.threads = threads
        assert go.compare(graph, model, feeds).ok


@pytest.mark.parametrize("mcpu", [AVX2_CPU, AVX512_CPU])
def test_parallel_kernels_make_tasks_for_several_threads(mcpu):
    """A 14x14 conv with 3-5 channel blocks also splits its rows into bands, and a classifier's
    single row into column tiles: each makes at least 8 parallel tasks."""
    with dsl.Builder("few_blocks", seed=0) as b:
        x, features = b.input("x", (1, 192, 14, 14)), b.input("features", (1, 1280))
        graph = b.output(dsl.relu(dsl.conv2d(x, 40, 3, padding=1)), dsl.linear(features, 1000))
    kernels = _scheduled_kernels(graph, mcpu)
    for name in ("fused_conv2d", "fused_matmul_add"):
        extents = [int(e) for e in re.findall(r"T\.parallel\(T\.int64\((\d+)\)\)",
                                              kernels[name].script())]
        assert extents and min(extents) >= 8, (name, extents)


def test_concatenation_feeding_a_pointwise_conv_is_split_into_pieces():
    """On AVX-512 a 1x1 conv on a plane of whole vectors reads its input flattened to [N, C,
    H * W]: that reshape joins the concatenation's kernel, which is still split by channels;
    a piece per input runs in parallel over its channels (a loop that starts at
    the piece's offset: fuse would refuse it, and the whole kernel was left unscheduled)."""
    with dsl.Builder("dense_concat_pointwise", seed=0) as b:
        xs = [b.input(f"x{i}", (1, 64 if i == 0 else 32, 56, 56)) for i in range(3)]
        graph = b.output(dsl.conv2d(dsl.relu(dsl.batch_norm(dsl.concat(xs, axis=1))), 32, 1))
    kernels = _scheduled_kernels(graph, AVX512_CPU)
    (func,) = [f for name, f in kernels.items() if "concatenate" in name]
    text = func.script()
    assert func.attrs[SCHEDULE_ATTR] == "generic"
    assert "T_reshape" in text and text.count('_partition"') == 3, text
    assert text.count("T.parallel(") == 3, text
    feeds = {v.name: np.random.default_rng(i).standard_normal(v.shape).astype(np.float32)
             for i, v in enumerate(graph.inputs)}
    assert go.compare(graph, go.compile(graph), feeds).ok


@pytest.mark.parametrize("channels", [(64, 32, 32, 32, 32), (24, 40, 8), (8, 0, 16)])
def test_concatenation_is_split_into_pieces(channels):
    """DenseNet's dense-block concatenation with its batch norm and relu: one loop nest per
    input, in which lowering's simplifier resolves the choice of input (inputs of any sizes,
    in the order of the axis; an empty one adds no piece)."""
    with dsl.Builder("dense_concat", seed=0) as b:
        xs = [b.input(f"x{i}", (1, c, 7, 7)) for i, c in enumerate(channels)]
        graph = b.output(dsl.relu(dsl.batch_norm(dsl.concat(xs, axis=1))))
    (func,) = _scheduled_kernels(graph, AVX512_CPU).values()
    text = func.script()
    assert func.attrs[SCHEDULE_ATTR] == "generic"
    assert text.count('_partition"') == sum(1 for c in channels if c), text
    ends = np.cumsum([c for c in channels if c])
    pieces = re.findall(r"in (?:range|T\.parallel)\(T\.int64\((\d+)\), T\.int64\((\d+)\)\)", text)
    assert [(int(a), int(b)) for a, b in pieces] == list(zip(ends[:-1], ends[1:])), text
    feeds = {v.name: np.random.default_rng(i).standard_normal(v.shape).astype(np.float32)
             for i, v in enumerate(graph.inputs)}
    assert go.compare(graph, go.compile(graph), feeds).ok


def test_concatenation_of_one_input_twice_is_split_by_the_common_divisor():
    """x joined twice has one read region: the pieces are the sizes' common divisor (16)."""
    with dsl.Builder("dense_concat_twice", seed=0) as b:
        x, y = b.input("x", (1, 32, 7, 7)), b.input("y", (1, 16, 7, 7))
        graph = b.output(dsl.relu(dsl.batch_norm(dsl.concat([x, y, x], axis=1))))
    (func,) = _scheduled_kernels(graph, AVX512_CPU).values()
    assert func.script().count('_partition"') == 5
    feeds = {v.name: np.random.default_rng(i).standard_normal(v.shape).astype(np.float32)
             for i, v in enumerate(graph.inputs)}
    assert go.compare(graph, go.compile(graph), feeds).ok


@pytest.mark.parametrize("mcpu", [AVX2_CPU, AVX512_CPU])
@pytest.mark.parametrize("shape, axis", [((1, 16, 10, 16), 2), ((2, 16, 10, 10), 2),
                                         ((16, 8, 10, 16), 1)],
                         ids=["rows_of_16_channels", "rows_batch_2", "channels_of_16_images"])
def test_concatenation_pieces_under_loops_outside_its_axis_build(mcpu, shape, axis):
    """The loops outside a concatenation's axis hold its pieces: they stay serial, since
    vectorized (16 channels along the rows, 16 images along the channels) they held the
    pieces' vector rows and the kernel failed to build."""
    with dsl.Builder("concat_outer_loops", seed=0) as b:
        xs = [b.input(f"x{i}", shape) for i in range(2)]
        graph = b.output(dsl.concat(xs, axis=axis))
    (func,) = _scheduled_kernels(graph, mcpu).values()
    assert func.script().count('_partition"') == 2
    feeds = {v.name: np.random.default_rng(i).standard_normal(v.shape).astype(np.float32)
             for i, v in enumerate(graph.inputs)}
    model = go.compile(graph, mcpu=mcpu)
    skip_unless_this_cpu_runs(model)
    assert go.compare(graph, model, feeds).ok


STRIDED_SLICE_PRODUCERS = {
    "max_pool": lambda xs: dsl.max_pool2d(xs[0], 3, stride=1),
    "avg_pool_ceil": lambda xs: dsl.avg_pool2d(xs[0], 3, stride=1, ceil_mode=True),
    "concat": lambda xs: dsl.concat(xs, axis=1),
}


@pytest.mark.parametrize("mcpu", [AVX2_CPU, AVX512_CPU])
def test_strided_slices_of_pools_and_concatenations_build(mcpu):
    """A strided slice in the kernel of a pool or a concatenation stays a block of its own:
    pulled into the pool's column pass or the concatenation, TVM stopped the compile with an
    internal error while inverting its index map. Steps along the columns, the rows and both,
    each case on inputs of its own (a kernel of its own) in one graph."""
    with dsl.Builder("strided_slice", seed=0) as b:
        outputs = []
        for producer in sorted(STRIDED_SLICE_PRODUCERS):
            for steps in ((1, 2), (2, 1), (2, 3)):
                xs = [b.input(f"{producer}_{steps[0]}_{steps[1]}_{i}", (1, 8, 17, 31))
                      for i in range(2)]
                y = STRIDED_SLICE_PRODUCERS[producer](xs)
                outputs.append(dsl.slice(y, [1, 0], [y.shape[2] - 1, y.shape[3]],
                                         axes=[2, 3], steps=list(steps)))
        graph = b.output(*outputs)
    rng = np.random.default_rng(0)
    feeds = {v.name: rng.standard_normal(v.shape).astype(np.float32) for v in graph.inputs}
    model = go.compile(graph, mcpu=mcpu)
    skip_unless_this_cpu_runs(model)
    assert go.compare(graph, model, feeds).ok


def _largest_store(func) -> int:
    """IR nodes in the largest statement `func` stores a value with."""
    import tvm_ffi
    from tvm.tirx import BufferStore
    from graphopt.targets.tvm.schedules.common import expression_nodes
    sizes = [0]
    tvm_ffi.structural_walk(func.body, [(BufferStore, lambda store: sizes.append(
        expression_nodes(store, None)[0]))])
    return max(sizes)


@pytest.mark.parametrize("dtype, mcpu", [("float32", AVX2_CPU), ("float32", AVX512_CPU),
                                         ("bfloat16", AVX512_CPU)])
def test_inlining_stops_before_a_block_grows_too_large(dtype, mcpu):
    """Elementwise ops that read their input several times, inlined into one another, grow
    geometrically: a 2x2 max pool of a concatenation, then SiLU and hard-swish made one store
    of 112,160 nodes (AVX2), whose kernel took tens of seconds to build. The chain is cut where
    a block would pass `INLINE_MAX_NODES`: 1,742."""
    with dsl.Builder("pool_concat_chain", seed=0) as b:
        x = b.input("x", (2, 8, 29, 29))
        convs = [dsl.relu(dsl.conv2d(x, c, k, padding=k // 2)) for c, k in ((8, 1), (24, 3))]
        pooled = dsl.max_pool2d(dsl.concat([*convs, dsl.max_pool2d(x, 3, stride=1, padding=1)],
                                           axis=1), 2, stride=2)
        graph = b.output(dsl.hard_swish(dsl.silu(pooled)))
    if dtype == "bfloat16":
        graph = go.quantize(graph, "bfloat16").graph
    _check_stores_within_the_limit(graph, mcpu)


def _check_stores_within_the_limit(graph, mcpu):
    """Every scheduled kernel of `graph` (one input "x") stores expressions of at most
    `INLINE_MAX_NODES`, and the compiled model computes what the interpreter does."""
    from graphopt.targets.tvm.schedules.common import INLINE_MAX_NODES
    kernels = _scheduled_kernels(graph, mcpu)
    assert max(_largest_store(f) for f in kernels.values()) <= INLINE_MAX_NODES
    shape = graph.inputs[0].shape
    feeds = {"x": np.random.default_rng(0).standard_normal(shape).astype(np.float32)}
    model = go.compile(graph, mcpu=mcpu)
    skip_unless_this_cpu_runs(model)
    assert go.compare(graph, model, feeds).ok


def test_inlining_counts_the_indices_a_producer_is_read_at():
    """Inlined into a reflection pad, each index variable of the producer's expression becomes
    the pad's reflected index (tens of nodes): Mish then a sigmoid gate before the pad came to
    30,814 nodes when only the producer's own nodes were counted (a quantized Mish like it
    took 165 s to build). The chain is cut where a block would pass `INLINE_MAX_NODES`."""
    with dsl.Builder("mish_reflect_pad", seed=0) as b:
        y = dsl.mish(b.input("x", (1, 4, 8, 19)))
        y = dsl.pad(dsl.mul(y, dsl.sigmoid(y)), [(0, 0), (0, 0), (2, 2), (2, 2)], mode="reflect")
        graph = b.output(dsl.conv2d(y, 8, 3))
    _check_stores_within_the_limit(graph, AVX512_CPU)


def test_inlining_stops_before_selects_nest_too_deeply():
    """Clips and relus alternating (each a select on its input, a clip two) inlined into one
    block nest their selects, on which TVM's simplifiers take far longer per node: seven ops,
    11 levels, took minutes to build. The chain is cut where selects would nest deeper than
    `INLINE_MAX_SELECT_DEPTH`; NaN still passes through every op."""
    from graphopt.targets.tvm.schedules.common import INLINE_MAX_SELECT_DEPTH, select_depth
    with dsl.Builder("clip_chain", seed=0) as b:
        y = b.input("x", (1, 8, 17, 31))
        for i in range(7):
            y = dsl.clip(y, -1.0 - i, 6.0 + i) if i % 2 == 0 else dsl.relu(y)
        graph = b.output(y)
    kernels = _scheduled_kernels(graph, AVX512_CPU)
    assert max(select_depth(f.body) for f in kernels.values()) <= INLINE_MAX_SELECT_DEPTH
    x = np.random.default_rng(0).standard_normal((1, 8, 17, 31)).astype(np.float32) * 8
    x.flat[::13] = np.nan
    model = go.compile(graph, mcpu=AVX512_CPU)
    skip_unless_this_cpu_runs(model)
    (name,) = graph.output_names
    np.testing.assert_array_equal(model.run({"x": x})[name], go.interpret(graph, {"x": x})[name])


@pytest.mark.parametrize("lanes", [4, 8, 16])
@pytest.mark.parametrize("dtype", ["float32", "int32"])
def test_register_transpose_gives_the_columns(lanes, dtype):
    """`transpose.transposed`, evaluated shuffle by shuffle on numbered rows: each output vector
    is one column (16 lanes: AVX-512's unpack network; other widths: bit-swap rounds)."""
    from tvm import tirx
    from graphopt.targets.tvm.schedules.transpose import transposed
    rows = [tirx.Var(f"row{r}", f"{dtype}x{lanes}") for r in range(lanes)]
    values = {row.name: np.arange(lanes) + lanes * r for r, row in enumerate(rows)}

    def evaluate(expr):
        if isinstance(expr, tirx.Var):
            return values[expr.name]
        joined = np.concatenate([evaluate(v) for v in expr.vectors])
        return joined[[int(i) for i in expr.indices]]

    columns = [evaluate(e) for e in transposed(rows)]
    for column, found in enumerate(columns):
        np.testing.assert_array_equal(found, np.arange(lanes) * lanes + column)


@pytest.mark.parametrize("dtype", ["float32", "bfloat16", "uint8"])
def test_padded_max_pools_read_rows_as_vectors(dtype):
    """A padded max pool's rows pass is vectorized in pieces (the padding columns, then the
    input's), each a vector loop with no per-lane bounds check: as one loop with them, TVM
    wrote it element by element (GoogLeNet's 3x3 stride-1 pools in bfloat16, 9x slower)."""
    with dsl.Builder("pool", seed=0) as b:
        graph = b.output(dsl.max_pool2d(b.input("x", (1, 8, 28, 28), dtype), 3, stride=1,
                                        padding=1))
    (script,) = [f.script() for f in _scheduled_kernels(graph, mcpu=AVX512_CPU).values()]
    # three pieces of the rows pass and the columns pass, each a vector loop
    assert script.count('_partition")') == 3 and script.count("T.vectorized") == 4, script


def _vector_loop_extents(func) -> list[int]:
    import tvm_ffi
    from tvm.tirx import For, ForKind
    extents = []

    def visit(node):
        if node.kind == ForKind.VECTORIZED:
            extents.append(int(node.extent))
        return node

    tvm_ffi.structural_map(func.body, (For, visit), order="pre")
    return sorted(extents)


def test_elementwise_rows_vectorize_whole_vectors_and_the_tail_apart():
    """A row that is not a whole number of vectors (56 on AVX-512) runs as 3 vectors of 16 and
    one of 8, not as one 56-lane vector; the results are the interpreter's."""
    with dsl.Builder("rows", seed=0) as b:
        x = b.input("x", (1, 24, 56, 56))
        gate = b.input("gate", (1, 24, 1, 1))
        graph = b.output(dsl.hard_swish(dsl.mul(x, gate)))
    [kernel] = [f for f in _scheduled_kernels(graph, AVX512_CPU).values()]
    assert _vector_loop_extents(kernel) == [8, 16]
    rng = np.random.default_rng(0)
    feeds = {v.name: rng.standard_normal(v.shape).astype(np.float32) for v in graph.inputs}
    assert go.compare(graph, go.compile(graph, bounds_check=True), feeds).ok


@pytest.mark.parametrize("dtype", ["float32", "bfloat16", "float16"])
@pytest.mark.parametrize("activation", ["tanh", "sigmoid"])
def test_tanh_and_sigmoid_need_no_libm(activation, dtype):
    """tanh and sigmoid compute TOPI's float32 approximations, half precision widened to
    float32 and rounded once: no scalar call of libm's tanhf / expf per element."""
    with dsl.Builder(f"{activation}_{dtype}", seed=0) as b:
        x = b.input("x", (2, 8, 9, 40))
        graph = b.output(getattr(dsl, activation)(dsl.add(x, x)))
    if dtype != "float32":
        graph = go.quantize(graph, dtype).graph
    model = go.compile(graph, "cpu", mcpu=AVX512_CPU)
    assert not re.search(r"call\w*\s+.*\b(tanhf|expf)\b", cpu_assembly(model.executable))
