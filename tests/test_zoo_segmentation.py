"""The zoo's segmentation networks against plain-torch modules written here after their published
definitions: SegNet (Badrinarayanan et al.; nn.MaxPool2d(return_indices=True) and
nn.MaxUnpool2d) and DeepLabV3-MobileNetV3-Large (torchvision's deeplabv3_mobilenet_v3_large,
layer for layer: dilated backbone, ASPP, bilinear upsampling; torchvision itself is not
importable here). Each module loads the graph's weights by name, strictly, and must give the
float64 interpreter's output; parameter counts must agree. DeepLab's CPU compile (15-40 s) is
test_zoo's, with the slow tests; SegNet compiles here at width 8."""
from __future__ import annotations

import numpy as np
import pytest

import graphopt as go
from graphopt.errors import ShapeError
from graphopt.zoo.segnet import STAGES

torch = pytest.importorskip("torch")
nn, F = torch.nn, torch.nn.functional

from test_zoo_torchvision import (V3_LARGE, SqueezeExcitation, load_graph_weights,  # noqa: E402
                                  make_divisible, one_torch_thread)

__all__ = ["one_torch_thread"]   # the autouse fixture: torch on one thread here too


# ---- SegNet -----------------------------------------------------------------------------------------
class ConvBNReLU(nn.Sequential):
    def __init__(self, cin, cout):
        super().__init__(nn.Conv2d(cin, cout, 3, padding=1), nn.BatchNorm2d(cout), nn.ReLU())


class SegNet(nn.Module):
    """VGG-16's convolutions with batch norm; each stage's max pool keeps its indices, the
    mirrored decoder stage unpools by them to the pooled map's exact size."""

    def __init__(self, num_classes, width=64):
        super().__init__()
        channels = [width * scale for _, scale in STAGES]
        encoders, cin = [], 3
        for (count, _), c in zip(STAGES, channels):
            encoders.append(nn.Sequential(*[ConvBNReLU(cin if i == 0 else c, c)
                                            for i in range(count)]))
            cin = c
        self.encoders = nn.ModuleList(encoders)
        decoders = []
        for stage in reversed(range(len(STAGES))):
            count, c = STAGES[stage][0], channels[stage]
            layers = [ConvBNReLU(c, c) for _ in range(count - 1)]
            layers.append(ConvBNReLU(c, channels[stage - 1]) if stage else
                          nn.Conv2d(c, num_classes, 3, padding=1))
            decoders.append(nn.Sequential(*layers))
        self.decoders = nn.ModuleList(decoders)
        self.pool = nn.MaxPool2d(2, 2, return_indices=True)
        self.unpool = nn.MaxUnpool2d(2, 2)

    def forward(self, x):
        pooled = []
        for encoder in self.encoders:
            x = encoder(x)
            size = x.shape[2:]
            x, indices = self.pool(x)
            pooled.append((indices, size))
        for decoder, (indices, size) in zip(self.decoders, reversed(pooled)):
            x = decoder(self.unpool(x, indices, output_size=size))
        return x


def test_segnet_parameter_count_equals_the_torch_module():
    with torch.device("meta"):
        count = sum(p.numel() for p in SegNet(11).parameters())
    assert count == 29_449_355
    assert go.zoo.segnet().num_params() == count


@pytest.mark.parametrize("image_size", [48, 64])
def test_segnet_matches_torch_module_with_the_same_weights(image_size):
    """48: the fifth pool drops a row and a column of its 3x3 map, which the unpool restores."""
    g = go.zoo.segnet(batch=2, num_classes=5, image_size=image_size, width=8)
    x = np.random.default_rng(1).standard_normal(g.inputs[0].shape).astype(np.float32)
    expected = go.interpret(g, {"input": x}, dtype=np.float64)["output"]
    with torch.no_grad():
        found = load_graph_weights(SegNet(5, width=8), g)(torch.from_numpy(x.astype(np.float64)))
    np.testing.assert_allclose(found.numpy(), expected, rtol=0, atol=1e-9 * np.abs(expected).max())
    y32 = go.interpret(g, {"input": x})["output"]
    np.testing.assert_allclose(y32, expected, rtol=0, atol=1e-4 * np.abs(expected).max())


def test_segnet_unpools_by_its_own_pools_indices():
    g = go.zoo.segnet(width=8)
    unpools = [n for n in g.nodes if n.op_name == "max_unpool2d"]
    assert [n.name for n in unpools] == [f"unpool{s}" for s in (4, 3, 2, 1, 0)]
    for node in unpools:
        pool = node.inputs[1].producer
        assert pool.name == node.name.replace("unpool", "pool") + ".indices"
        assert node.op.window_indices   # gathered from the windows, not scattered
        assert node.outputs[0].shape == pool.inputs[0].shape


def test_segnet_compiles_for_cpu():
    g = go.zoo.segnet(num_classes=5, image_size=48, width=8)
    x = np.random.default_rng(2).standard_normal(g.inputs[0].shape).astype(np.float32)
    report = go.compare(g, go.compile(g, "cpu"), {"input": x})
    assert report.ok, str(report)


def test_segnet_needs_five_pools_worth_of_image():
    with pytest.raises(ShapeError, match="at least 32"):
        go.zoo.segnet(image_size=16)


# ---- DeepLabV3-MobileNetV3-Large (torchvision/models/segmentation/deeplabv3.py, lraspp's
# backbone: torchvision/models/mobilenetv3.py with dilated=True) ----------------------------------
class ConvNormActivation(nn.Sequential):
    """torchvision.ops.Conv2dNormActivation, padding (kernel - 1) // 2 * dilation."""

    def __init__(self, cin, cout, kernel=3, stride=1, groups=1, activation=nn.ReLU, eps=1e-5,
                 dilation=1):
        layers = [nn.Conv2d(cin, cout, kernel, stride, (kernel - 1) // 2 * dilation,
                            dilation=dilation, groups=groups, bias=False),
                  nn.BatchNorm2d(cout, eps=eps)]
        super().__init__(*layers, *([activation()] if activation else []))


class InvertedResidual(nn.Module):
    """torchvision's mobilenetv3.InvertedResidual: with dilation > 1 the depthwise convolution
    is dilated and stride 1; use_res_connect follows the configured stride."""

    def __init__(self, inp, kernel, expanded, out, use_se, activation, stride, dilation=1):
        super().__init__()
        self.use_res_connect = stride == 1 and inp == out
        act = nn.Hardswish if activation == "HS" else nn.ReLU
        layers = [ConvNormActivation(inp, expanded, 1, activation=act, eps=0.001)] \
            if expanded != inp else []
        layers.append(ConvNormActivation(expanded, expanded, kernel,
                                         1 if dilation > 1 else stride, expanded, act, 0.001,
                                         dilation))
        if use_se:
            layers.append(SqueezeExcitation(expanded, make_divisible(expanded // 4),
                                            scale_activation=nn.Hardsigmoid))
        layers.append(ConvNormActivation(expanded, out, 1, activation=None, eps=0.001))
        self.block = nn.Sequential(*layers)

    def forward(self, x):
        y = self.block(x)
        return y + x if self.use_res_connect else y


class ASPPPooling(nn.Sequential):
    def __init__(self, cin, cout):
        super().__init__(nn.AdaptiveAvgPool2d(1), nn.Conv2d(cin, cout, 1, bias=False),
                         nn.BatchNorm2d(cout), nn.ReLU())

    def forward(self, x):
        size = x.shape[-2:]
        for module in self:
            x = module(x)
        return F.interpolate(x, size=size, mode="bilinear", align_corners=False)


class ASPP(nn.Module):
    def __init__(self, cin, rates, cout=256):
        super().__init__()
        convs = [nn.Sequential(nn.Conv2d(cin, cout, 1, bias=False), nn.BatchNorm2d(cout),
                               nn.ReLU())]
        convs += [nn.Sequential(nn.Conv2d(cin, cout, 3, padding=r, dilation=r, bias=False),
                                nn.BatchNorm2d(cout), nn.ReLU()) for r in rates]
        convs.append(ASPPPooling(cin, cout))
        self.convs = nn.ModuleList(convs)
        self.project = nn.Sequential(nn.Conv2d(len(convs) * cout, cout, 1, bias=False),
                                     nn.BatchNorm2d(cout), nn.ReLU(), nn.Dropout(0.5))

    def forward(self, x):
        return self.project(torch.cat([conv(x) for conv in self.convs], dim=1))


class DeepLabV3MobileNetV3Large(nn.Module):
    """deeplabv3_mobilenet_v3_large(num_classes, aux_loss=False): features of the dilated
    MobileNetV3-Large (the last three blocks at dilation 2), DeepLabHead(960, classes)."""

    def __init__(self, num_classes):
        super().__init__()
        blocks = [InvertedResidual(*cfg, dilation=2 if i >= len(V3_LARGE) - 3 else 1)
                  for i, cfg in enumerate(V3_LARGE)]
        self.backbone = nn.Sequential(
            ConvNormActivation(3, 16, stride=2, activation=nn.Hardswish, eps=0.001), *blocks,
            ConvNormActivation(160, 960, 1, activation=nn.Hardswish, eps=0.001))
        self.classifier = nn.Sequential(ASPP(960, [12, 24, 36]),
                                        nn.Conv2d(256, 256, 3, padding=1, bias=False),
                                        nn.BatchNorm2d(256), nn.ReLU(),
                                        nn.Conv2d(256, num_classes, 1))

    def forward(self, x):
        y = self.classifier(self.backbone(x))
        return F.interpolate(y, size=x.shape[-2:], mode="bilinear", align_corners=False)


def fcn_head(cin, num_classes):
    """torchvision's FCNHead: the auxiliary classifier (on backbone block 4, 40 channels) of the
    published weights, which the zoo model leaves out (it only trains)."""
    inter = cin // 4
    return nn.Sequential(nn.Conv2d(cin, inter, 3, padding=1, bias=False), nn.BatchNorm2d(inter),
                         nn.ReLU(), nn.Dropout(0.1), nn.Conv2d(inter, num_classes, 1))


def test_deeplab_parameter_count_is_torchvisions_without_the_aux_head():
    with torch.device("meta"):
        main = sum(p.numel() for p in DeepLabV3MobileNetV3Large(21).parameters())
        aux = sum(p.numel() for p in fcn_head(40, 21).parameters())
    assert main + aux == 11_029_328   # torchvision's published num_params (aux head on)
    assert go.zoo.deeplabv3_mobilenet_v3_large().num_params() == main == 11_025_477


@pytest.mark.parametrize("image_size", [64, 72])
def test_deeplab_matches_torch_module_with_the_same_weights(image_size):
    """72: the backbone's stride-2 convolutions round (72 -> 5x5 features), the upsampling
    still returns the input's size."""
    g = go.zoo.deeplabv3_mobilenet_v3_large(batch=2, num_classes=5, image_size=image_size)
    assert g.outputs[0].shape == (2, 5, image_size, image_size)
    x = np.random.default_rng(1).standard_normal(g.inputs[0].shape).astype(np.float32)
    expected = go.interpret(g, {"input": x}, dtype=np.float64)["output"]
    with torch.no_grad():
        module = load_graph_weights(DeepLabV3MobileNetV3Large(5), g)
        found = module(torch.from_numpy(x.astype(np.float64)))
    # ONNX's (and graphopt's) hard sigmoid multiplies by float32(1/6), torch by 1/6.
    np.testing.assert_allclose(found.numpy(), expected, rtol=0, atol=1e-6 * np.abs(expected).max())
    y32 = go.interpret(g, {"input": x})["output"]
    np.testing.assert_allclose(y32, expected, rtol=0, atol=1e-4 * np.abs(expected).max())


def test_deeplab_backbone_is_dilated_where_torchvision_dilates():
    g = go.zoo.deeplabv3_mobilenet_v3_large()
    depthwise = {n.name: n.op for n in g.nodes if n.op_name == "conv2d" and n.op.groups > 1}
    for block in (13, 14, 15):
        op = depthwise[f"backbone.{block}.block.1.0"]
        assert (op.stride, op.dilation, op.padding) == ((1, 1), (2, 2), (4, 4, 4, 4))
    assert depthwise["backbone.12.block.1.0"].dilation == (1, 1)
    rates = [g.node(f"classifier.0.convs.{i}.0").op.dilation for i in (1, 2, 3)]
    assert rates == [(12, 12), (24, 24), (36, 36)]
