"""The model zoo: every network builds and verifies, has the reference parameter count and output
shape, runs in the interpreter at a sane scale (float32 agreeing with float64), compiles for the
CPU and matches the float64 interpreter. The big networks' interpreter and compile checks are
marked slow."""
from __future__ import annotations

import functools

import numpy as np
import pytest

import graphopt as go
from conftest import skip_unless_this_cpu_runs
from graphopt.errors import GraphoptError
from graphopt.frontends import dsl
from graphopt.zoo.fcn import bilinear_upsampling

# name: (parameters with the default options, output shape at batch 1). Reference counts:
# torchvision (vgg11/16, googlenet and inception_v3 without aux heads, resnet18/50, the mobile
# and compact models: their weights' "num_params"), Caffe's bvlc_alexnet, PyTorch's DCGAN example;
# lenet5, deep_convnet, fcn, dqn and yolov3_tiny are summed by hand from their layer lists.
EXPECTED = {
    "lenet5": (61_706, (1, 10)),
    "alexnet": (60_965_224, (1, 1000)),
    "vgg11": (132_863_336, (1, 1000)),
    "vgg16": (138_357_544, (1, 1000)),
    "googlenet": (6_624_904, (1, 1000)),
    "resnet18": (11_689_512, (1, 1000)),
    "resnet50": (25_557_032, (1, 1000)),
    "deep_convnet": (123_552, (1, 10)),
    "fcn": (109_418, (1, 21, 64, 64)),
    "dcgan_generator": (3_576_704, (1, 3, 64, 64)),
    "mobilenet_v2": (3_504_872, (1, 1000)),
    "mobilenet_v3_small": (2_542_856, (1, 1000)),
    "mobilenet_v3_large": (5_483_032, (1, 1000)),
    "efficientnet_b0": (5_288_548, (1, 1000)),
    "shufflenet_v2_x1_0": (2_278_604, (1, 1000)),
    "squeezenet1_1": (1_235_496, (1, 1000)),
    "regnet_x_400mf": (5_495_976, (1, 1000)),
    "densenet121": (7_978_856, (1, 1000)),
    "inception_v3": (23_834_568, (1, 1000)),
    "dqn": (1_693_362, (1, 18)),
    # 8,852,366 weights and the box decoding's 1,704 cell offsets, strides and anchors
    "yolov3_tiny": (8_854_070, (1, 2535, 85)),
    "style_transfer": (1_679_235, (1, 3, 256, 256)),   # PyTorch examples' TransformerNet
    # the plain-torch Show and Tell of test_zoo_nic.py: its parameters() summed
    "nic_captioning": (1_202_056, (1, 8, 1000)),
    # the plain-torch SegNet of test_zoo_segmentation.py (11 CamVid classes): its parameters()
    "segnet": (29_449_355, (1, 11, 64, 64)),
    # torchvision's 11,029,328 without the auxiliary head (3,851), as test_zoo_segmentation.py
    # counts it
    "deeplabv3_mobilenet_v3_large": (11_025_477, (1, 21, 64, 64)),
}
SMALL = ("lenet5", "deep_convnet", "fcn", "dcgan_generator", "dqn", "nic_captioning")


def others_slow(fast: tuple[str, ...]) -> list:
    """All zoo names: those in `fast` as they are, the rest marked slow."""
    return [*fast, *(pytest.param(n, marks=pytest.mark.slow) for n in EXPECTED if n not in fast)]


@functools.cache
def built(name: str) -> go.Graph:
    """Each default model is built once per test process (vgg16 alone draws 138M weights)."""
    return go.zoo.MODELS[name]()


def random_input(graph: go.Graph, seed: int = 0) -> dict[str, np.ndarray]:
    shape = graph.inputs[0].shape
    return {"input": np.random.default_rng(seed).standard_normal(shape).astype(np.float32)}


def test_models_table_lists_every_builder():
    assert set(go.zoo.MODELS) == set(EXPECTED)
    assert all(getattr(go.zoo, name) is builder for name, builder in go.zoo.MODELS.items())


@pytest.mark.parametrize("name", EXPECTED)
def test_builds_verified_with_reference_param_count_and_shape(name):
    g = built(name)
    go.verify(g)
    params, output_shape = EXPECTED[name]
    assert g.input_names == ["input"] and g.output_names == ["output"]
    assert g.num_params() == params
    assert g.outputs[0].shape == output_shape


@pytest.mark.parametrize("name", SMALL + ("resnet18",))
def test_batch_option_sets_the_leading_dimension(name):
    g = go.zoo.MODELS[name](batch=3)
    assert g.inputs[0].shape[0] == 3 and g.outputs[0].shape[0] == 3


@pytest.mark.parametrize("name", others_slow(SMALL + ("resnet18",)))
def test_interpreter_float32_agrees_with_float64_at_a_sane_scale(name):
    g = built(name)
    feeds = random_input(g)
    y32 = go.interpret(g, feeds)["output"]
    y64 = go.interpret(g, feeds, dtype=np.float64)["output"]
    assert y32.dtype == np.float32 and y64.dtype == np.float64
    assert np.isfinite(y32).all()
    # Output std within 1e-2..1e3 so that fp16 and int8 experiments later are meaningful.
    assert 1e-2 < y64.std() < 1e3
    assert np.abs(y32 - y64).max() <= 1e-4 * np.abs(y64).max()


@pytest.mark.parametrize("bounds_check", [False, True], ids=["", "bounds_checked"])
@pytest.mark.parametrize("name", others_slow(SMALL))
def test_cpu_compile_matches_float64_interpreter(name, bounds_check):
    """Each model compiled as users get it, and once more with TVM's bounds checks in every
    kernel (an out-of-bounds kernel fails here instead of crashing a user)."""
    g = built(name)
    model = go.compile(g, "cpu", bounds_check=bounds_check)
    report = go.compare(g, model, random_input(g, seed=1))
    assert report.ok, str(report)


@pytest.mark.filterwarnings("error::graphopt.ScheduleFallbackWarning")
@pytest.mark.parametrize("mcpu, reduce_range", [("znver3", True), (None, False),
                                                 ("alderlake", False)],
                         ids=["avx2_7bit", "host_8bit", "avx_vnni_8bit"])
@pytest.mark.parametrize("name", [n for n in others_slow(SMALL) if n != "dcgan_generator"])
def test_int8_compile_matches_the_interpreter(name, mcpu, reduce_range):
    """Each model quantized to int8 (calibrated on two random inputs) compiles, every kernel
    on the rule meant for it, and matches the interpreter running the same quantized graph:
    7-bit weights on the AVX2 build (`vpmaddubsw`), 8-bit on the host's (VNNI, AMX or
    `vpmaddwd`) and on AVX-VNNI's (`vpdpbusd` on ymm, where the host runs it). A tie may round
    either way and the step travels, hence `compare`'s int8 tolerance; a wrong scale, zero
    point or layout is far beyond it. (DCGAN's generator is
    left out: its transposed convs have no integer form, and `quantize` says so.)"""
    g = built(name)
    rng = np.random.default_rng(2)
    feeds = [{v.name: rng.standard_normal(v.shape).astype(np.float32) for v in g.inputs}
             for _ in range(3)]
    int8 = go.quantize(g, go.calibrate(g, feeds[:2]), reduce_range=reduce_range).graph
    assert any(n.op_name == "qlinear_conv2d" for n in int8.nodes)
    model = go.compile(int8, "cpu", mcpu=mcpu)
    skip_unless_this_cpu_runs(model)
    report = go.compare(int8, model, feeds[2])
    assert report.ok, str(report)


def test_same_seed_same_weights_other_seed_other_weights():
    a, b, c = go.zoo.resnet18(seed=3), go.zoo.resnet18(seed=3), go.zoo.resnet18(seed=4)
    assert list(a.constants) == list(b.constants) == list(c.constants)
    assert [n.name for n in a.nodes] == [n.name for n in b.nodes]
    assert all(np.array_equal(a.constants[k].data, b.constants[k].data) for k in a.constants)
    assert not np.array_equal(a.constants["fc.weight"].data, c.constants["fc.weight"].data)
    feeds = random_input(a)
    np.testing.assert_array_equal(go.interpret(a, feeds)["output"],
                                  go.interpret(b, feeds)["output"])


@pytest.mark.parametrize("name, nodes, weights", [
    ("resnet18", ["conv1", "layer1.0.conv1", "layer2.0.downsample.0", "avgpool", "fc"],
     ["layer1.0.bn1.running_var", "layer4.1.conv2.weight", "fc.bias"]),
    ("resnet50", ["layer1.0.conv3", "layer4.2.bn3"], ["layer3.5.conv2.weight"]),
    ("vgg16", ["features.0", "features.30", "classifier.6"], ["features.28.bias"]),
    ("googlenet", ["conv1.conv", "inception3a.branch4.0", "inception5b.branch3.1.bn"],
     ["inception4e.branch2.1.conv.weight", "fc.weight"]),
    ("alexnet", ["features.2", "features.14", "classifier.6"], ["features.4.weight"]),
    ("dcgan_generator", ["main.0", "main.13"], ["main.1.running_mean", "main.12.weight"]),
    ("mobilenet_v2", ["features.0.0", "features.1.conv.1", "features.2.conv.3", "features.18.2",
                      "classifier.1"],
     ["features.1.conv.2.running_var", "features.17.conv.2.weight"]),
    ("mobilenet_v3_small", ["features.1.block.1.fc1", "features.4.block.2.scale_activation",
                            "features.12.2", "classifier.3"],
     ["features.1.block.1.fc2.bias", "features.11.block.3.1.weight"]),
    ("mobilenet_v3_large", ["features.1.add", "features.16.0"], ["features.15.block.2.fc1.weight"]),
    ("efficientnet_b0", ["features.1.0.block.1.fc1", "features.2.1.add", "features.8.2"],
     ["features.7.0.block.3.1.running_mean", "features.8.0.weight"]),
    ("shufflenet_v2_x1_0", ["stage2.0.branch1.0", "stage4.3.branch2.7", "conv5.0", "fc"],
     ["stage3.7.branch2.6.running_var"]),
    ("squeezenet1_1", ["features.12.expand3x3", "features.8", "classifier.1"],
     ["features.3.squeeze.bias"]),
    ("regnet_x_400mf", ["trunk_output.block1.block1-0.proj.0",
                        "trunk_output.block4.block4-11.f.b.0"], ["stem.1.weight", "fc.bias"]),
    ("densenet121", ["features.denseblock4.denselayer16.conv2", "features.transition3.pool",
                     "features.norm5", "classifier"],
     ["features.denseblock1.denselayer1.norm1.running_mean"]),
    ("inception_v3", ["Conv2d_4a_3x3.conv", "Mixed_6e.branch7x7dbl_5.bn",
                      "Mixed_7c.branch_pool.conv", "fc"],
     ["Mixed_5b.branch_pool.bn.running_var", "Mixed_7b.branch3x3_2a.conv.weight"]),
    ("dqn", ["network.0", "network.6", "network.9"], ["network.7.weight"]),
    ("deeplabv3_mobilenet_v3_large", ["backbone.13.block.1.0", "classifier.0.convs.4.1",
                                      "classifier.0.project.0", "classifier.4"],
     ["backbone.15.block.2.fc1.weight", "classifier.0.convs.3.1.running_var"]),
    ("yolov3_tiny", ["module_list.11.maxpool_11", "module_list.19.upsample_19",
                     "module_list.20.route_20", "module_list.22.conv_22"],
     ["module_list.0.batch_norm_0.running_mean", "module_list.15.conv_15.bias"]),
])
def test_names_follow_torchvision(name, nodes, weights):
    g = built(name)
    assert [g.node(n).name for n in nodes] == nodes
    assert [w for w in weights if w not in g.constants] == []


def test_get_builds_by_name_with_options():
    g = go.zoo.get("lenet5", num_classes=7, batch=2)
    assert g.outputs[0].shape == (2, 7)


def test_get_unknown_model_lists_the_known_ones():
    with pytest.raises(GraphoptError) as info:
        go.zoo.get("resnet19")
    assert "resnet19" in str(info.value) and all(n in str(info.value) for n in EXPECTED)


@pytest.mark.parametrize("build, message", [
    (lambda: go.zoo.fcn(image_size=60), "multiple of 8"),
    (lambda: go.zoo.vgg11(image_size=100), "multiple of 32"),
    (lambda: go.zoo.lenet5(activation="gelu"), "activation"),
])
def test_bad_options_raise_graphopt_errors(build, message):
    with pytest.raises(GraphoptError, match=message):
        build()


@pytest.mark.parametrize("factor", [2, 4, 8])
def test_fcn_upsampling_starts_as_bilinear_interpolation(factor):
    # Away from the border (zero padding there, edge clamping in resize) the transposed
    # convolution computes exactly the half-pixel bilinear resize.
    with dsl.Builder("upsample") as b:
        x = b.input("input", (1, 3, 6, 5))
        g = b.output(bilinear_upsampling(x, factor, "up"),
                     dsl.resize(x, scale=factor, mode="bilinear"), names=["learned", "resized"])
    out = go.interpret(g, random_input(g), dtype=np.float64)
    border = factor // 2
    inner = (..., slice(border, -border), slice(border, -border))
    assert out["learned"].shape == (1, 3, 6 * factor, 5 * factor)
    np.testing.assert_allclose(out["learned"][inner], out["resized"][inner], atol=1e-12)


@pytest.mark.parametrize("image_size", [32, 48])
def test_fcn_output_is_at_input_resolution(image_size):
    g = go.zoo.fcn(image_size=image_size, num_classes=5)
    assert g.outputs[0].shape == (1, 5, image_size, image_size)


@pytest.mark.slow
def test_alexnet_without_the_two_gpu_split_has_its_known_count():
    assert go.zoo.alexnet(grouped=False).num_params() == 62_378_344


def test_googlenet_paper_5x5_branch():
    g = go.zoo.googlenet(paper_5x5=True, num_classes=10)
    assert g.node("inception3a.branch3.1.conv").inputs[1].shape == (32, 16, 5, 5)
    assert g.outputs[0].shape == (1, 10)


def test_resnet_residual_gamma_scales_the_last_batch_norm_of_each_block():
    default, plain = go.zoo.resnet18(image_size=64), go.zoo.resnet18(image_size=64,
                                                                     residual_gamma=1.0)
    gamma = default.constants["layer1.0.bn2.weight"].data
    assert 0.1 <= gamma.min() and gamma.max() <= 0.3
    assert plain.constants["layer1.0.bn2.weight"].data.min() >= 0.5
    feeds = random_input(default)
    assert go.interpret(default, feeds)["output"].std() < go.interpret(plain, feeds)["output"].std()
