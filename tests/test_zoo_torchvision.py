"""The zoo models written after torchvision's definitions, against plain-torch modules written
here layer for layer after the same definitions (torchvision itself is not importable here).
Each module loads the graph's weights by torchvision's state_dict names, strictly (every
parameter and buffer, nothing left over), and must give the float64 interpreter's output; its
own parameter count at 1000 classes and the graph's must both be torchvision's published one."""
from __future__ import annotations

import math
from collections import OrderedDict
from functools import partial

import numpy as np
import pytest

import graphopt as go
from graphopt.zoo.densenet import densenet

torch = pytest.importorskip("torch")
nn, F = torch.nn, torch.nn.functional


@pytest.fixture(autouse=True)
def one_torch_thread():
    """torch's small float64 convolutions on one thread: its thread pool, next to the other
    pools of a test process on a busy host, made them ~40x slower."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


def make_divisible(value: float, divisor: int = 8) -> int:
    """torchvision.models._utils._make_divisible."""
    new_value = max(divisor, int(value + divisor / 2) // divisor * divisor)
    return new_value + divisor if new_value < 0.9 * value else new_value


class ConvNormActivation(nn.Sequential):
    """torchvision.ops.Conv2dNormActivation (bias-free convolution, batch norm, activation)."""

    def __init__(self, cin, cout, kernel=3, stride=1, groups=1, activation=nn.ReLU, eps=1e-5):
        layers = [nn.Conv2d(cin, cout, kernel, stride, (kernel - 1) // 2, groups=groups,
                            bias=False), nn.BatchNorm2d(cout, eps=eps)]
        super().__init__(*layers, *([activation()] if activation else []))


class SqueezeExcitation(nn.Module):
    """torchvision.ops.SqueezeExcitation."""

    def __init__(self, channels, squeeze, activation=nn.ReLU, scale_activation=nn.Sigmoid):
        super().__init__()
        self.avgpool = nn.AdaptiveAvgPool2d(1)
        self.fc1, self.fc2 = nn.Conv2d(channels, squeeze, 1), nn.Conv2d(squeeze, channels, 1)
        self.activation, self.scale_activation = activation(), scale_activation()

    def forward(self, x):
        scale = self.fc2(self.activation(self.fc1(self.avgpool(x))))
        return self.scale_activation(scale) * x


class Residual(nn.Module):
    """`block(x)`, plus x where the block keeps the shape (torchvision's use_res_connect)."""

    def forward(self, x):
        y = self.block(x)
        return y + x if self.use_res_connect else y


# ---- MobileNetV2 (torchvision/models/mobilenetv2.py) ---------------------------------------------
class InvertedResidualV2(nn.Module):
    def __init__(self, inp, oup, stride, expand_ratio):
        super().__init__()
        hidden = int(round(inp * expand_ratio))
        self.use_res_connect = stride == 1 and inp == oup
        layers = [ConvNormActivation(inp, hidden, 1, activation=nn.ReLU6)] if expand_ratio != 1 \
            else []
        layers += [ConvNormActivation(hidden, hidden, 3, stride, hidden, nn.ReLU6),
                   nn.Conv2d(hidden, oup, 1, bias=False), nn.BatchNorm2d(oup)]
        self.conv = nn.Sequential(*layers)

    def forward(self, x):
        return x + self.conv(x) if self.use_res_connect else self.conv(x)


class MobileNetV2(nn.Module):
    def __init__(self, num_classes):
        super().__init__()
        features = [ConvNormActivation(3, 32, stride=2, activation=nn.ReLU6)]
        inp = 32
        for t, c, n, s in [[1, 16, 1, 1], [6, 24, 2, 2], [6, 32, 3, 2], [6, 64, 4, 2],
                           [6, 96, 3, 1], [6, 160, 3, 2], [6, 320, 1, 1]]:
            for i in range(n):
                features.append(InvertedResidualV2(inp, c, s if i == 0 else 1, t))
                inp = c
        features.append(ConvNormActivation(inp, 1280, 1, activation=nn.ReLU6))
        self.features = nn.Sequential(*features)
        self.classifier = nn.Sequential(nn.Dropout(0.2), nn.Linear(1280, num_classes))

    def forward(self, x):
        x = F.adaptive_avg_pool2d(self.features(x), (1, 1))
        return self.classifier(torch.flatten(x, 1))


# ---- MobileNetV3 (torchvision/models/mobilenetv3.py) ---------------------------------------------
class InvertedResidualV3(Residual):
    def __init__(self, inp, kernel, expanded, out, use_se, activation, stride):
        super().__init__()
        self.use_res_connect = stride == 1 and inp == out
        act = nn.Hardswish if activation == "HS" else nn.ReLU
        layers = [ConvNormActivation(inp, expanded, 1, activation=act, eps=0.001)] \
            if expanded != inp else []
        layers.append(ConvNormActivation(expanded, expanded, kernel, stride, expanded, act, 0.001))
        if use_se:
            layers.append(SqueezeExcitation(expanded, make_divisible(expanded // 4),
                                            scale_activation=nn.Hardsigmoid))
        layers.append(ConvNormActivation(expanded, out, 1, activation=None, eps=0.001))
        self.block = nn.Sequential(*layers)


V3_LARGE = [(16, 3, 16, 16, False, "RE", 1), (16, 3, 64, 24, False, "RE", 2),
            (24, 3, 72, 24, False, "RE", 1), (24, 5, 72, 40, True, "RE", 2),
            (40, 5, 120, 40, True, "RE", 1), (40, 5, 120, 40, True, "RE", 1),
            (40, 3, 240, 80, False, "HS", 2), (80, 3, 200, 80, False, "HS", 1),
            (80, 3, 184, 80, False, "HS", 1), (80, 3, 184, 80, False, "HS", 1),
            (80, 3, 480, 112, True, "HS", 1), (112, 3, 672, 112, True, "HS", 1),
            (112, 5, 672, 160, True, "HS", 2), (160, 5, 960, 160, True, "HS", 1),
            (160, 5, 960, 160, True, "HS", 1)]
V3_SMALL = [(16, 3, 16, 16, True, "RE", 2), (16, 3, 72, 24, False, "RE", 2),
            (24, 3, 88, 24, False, "RE", 1), (24, 5, 96, 40, True, "HS", 2),
            (40, 5, 240, 40, True, "HS", 1), (40, 5, 240, 40, True, "HS", 1),
            (40, 5, 120, 48, True, "HS", 1), (48, 5, 144, 48, True, "HS", 1),
            (48, 5, 288, 96, True, "HS", 2), (96, 5, 576, 96, True, "HS", 1),
            (96, 5, 576, 96, True, "HS", 1)]


class MobileNetV3(nn.Module):
    def __init__(self, setting, last_channel, num_classes):
        super().__init__()
        features = [ConvNormActivation(3, setting[0][0], stride=2, activation=nn.Hardswish,
                                       eps=0.001)]
        features += [InvertedResidualV3(*config) for config in setting]
        last_in = setting[-1][3]
        features.append(ConvNormActivation(last_in, 6 * last_in, 1, activation=nn.Hardswish,
                                           eps=0.001))
        self.features = nn.Sequential(*features)
        self.avgpool = nn.AdaptiveAvgPool2d(1)
        self.classifier = nn.Sequential(nn.Linear(6 * last_in, last_channel), nn.Hardswish(),
                                        nn.Dropout(0.2), nn.Linear(last_channel, num_classes))

    def forward(self, x):
        return self.classifier(torch.flatten(self.avgpool(self.features(x)), 1))


# ---- EfficientNet-B0 (torchvision/models/efficientnet.py) ----------------------------------------
class MBConv(Residual):
    def __init__(self, expand_ratio, kernel, stride, inp, out):
        super().__init__()
        self.use_res_connect = stride == 1 and inp == out
        expanded = make_divisible(inp * expand_ratio)
        layers = [ConvNormActivation(inp, expanded, 1, activation=nn.SiLU)] \
            if expanded != inp else []
        layers += [ConvNormActivation(expanded, expanded, kernel, stride, expanded, nn.SiLU),
                   SqueezeExcitation(expanded, max(1, inp // 4), activation=nn.SiLU),
                   ConvNormActivation(expanded, out, 1, activation=None)]
        self.block = nn.Sequential(*layers)


class EfficientNetB0(nn.Module):
    def __init__(self, num_classes):
        super().__init__()
        setting = [(1, 3, 1, 32, 16, 1), (6, 3, 2, 16, 24, 2), (6, 5, 2, 24, 40, 2),
                   (6, 3, 2, 40, 80, 3), (6, 5, 1, 80, 112, 3), (6, 5, 2, 112, 192, 4),
                   (6, 3, 1, 192, 320, 1)]
        features = [ConvNormActivation(3, 32, stride=2, activation=nn.SiLU)]
        for expand_ratio, kernel, stride, inp, out, layers in setting:
            features.append(nn.Sequential(*(
                MBConv(expand_ratio, kernel, stride if i == 0 else 1, inp if i == 0 else out, out)
                for i in range(layers))))
        features.append(ConvNormActivation(320, 1280, 1, activation=nn.SiLU))
        self.features = nn.Sequential(*features)
        self.avgpool = nn.AdaptiveAvgPool2d(1)
        self.classifier = nn.Sequential(nn.Dropout(0.2), nn.Linear(1280, num_classes))

    def forward(self, x):
        return self.classifier(torch.flatten(self.avgpool(self.features(x)), 1))


# ---- ShuffleNetV2 x1.0 (torchvision/models/shufflenetv2.py) --------------------------------------
def channel_shuffle(x, groups):
    n, c, h, w = x.size()
    x = x.view(n, groups, c // groups, h, w)
    return torch.transpose(x, 1, 2).contiguous().view(n, -1, h, w)


class ShuffleUnit(nn.Module):
    def __init__(self, inp, oup, stride):
        super().__init__()
        self.stride = stride
        branch = oup // 2

        def depthwise(channels):
            return nn.Conv2d(channels, channels, 3, stride, 1, bias=False, groups=channels)
        if stride > 1:
            self.branch1 = nn.Sequential(depthwise(inp), nn.BatchNorm2d(inp),
                                         nn.Conv2d(inp, branch, 1, bias=False),
                                         nn.BatchNorm2d(branch), nn.ReLU())
        self.branch2 = nn.Sequential(
            nn.Conv2d(inp if stride > 1 else branch, branch, 1, bias=False),
            nn.BatchNorm2d(branch), nn.ReLU(), depthwise(branch), nn.BatchNorm2d(branch),
            nn.Conv2d(branch, branch, 1, bias=False), nn.BatchNorm2d(branch), nn.ReLU())

    def forward(self, x):
        if self.stride == 1:
            x1, x2 = x.chunk(2, dim=1)
            out = torch.cat((x1, self.branch2(x2)), dim=1)
        else:
            out = torch.cat((self.branch1(x), self.branch2(x)), dim=1)
        return channel_shuffle(out, 2)


class ShuffleNetV2(nn.Module):
    def __init__(self, num_classes, repeats=(4, 8, 4), channels=(24, 116, 232, 464, 1024)):
        super().__init__()
        self.conv1 = nn.Sequential(nn.Conv2d(3, channels[0], 3, 2, 1, bias=False),
                                   nn.BatchNorm2d(channels[0]), nn.ReLU())
        self.maxpool = nn.MaxPool2d(3, 2, 1)
        inp = channels[0]
        for name, count, out in zip(("stage2", "stage3", "stage4"), repeats, channels[1:]):
            units = [ShuffleUnit(inp, out, 2)] + [ShuffleUnit(out, out, 1)
                                                  for _ in range(count - 1)]
            setattr(self, name, nn.Sequential(*units))
            inp = out
        self.conv5 = nn.Sequential(nn.Conv2d(inp, channels[-1], 1, bias=False),
                                   nn.BatchNorm2d(channels[-1]), nn.ReLU())
        self.fc = nn.Linear(channels[-1], num_classes)

    def forward(self, x):
        x = self.maxpool(self.conv1(x))
        x = self.conv5(self.stage4(self.stage3(self.stage2(x))))
        return self.fc(x.mean([2, 3]))


# ---- SqueezeNet 1.1 (torchvision/models/squeezenet.py) -------------------------------------------
class Fire(nn.Module):
    def __init__(self, inplanes, squeeze, expand1x1, expand3x3):
        super().__init__()
        self.squeeze = nn.Conv2d(inplanes, squeeze, 1)
        self.expand1x1 = nn.Conv2d(squeeze, expand1x1, 1)
        self.expand3x3 = nn.Conv2d(squeeze, expand3x3, 3, padding=1)

    def forward(self, x):
        x = F.relu(self.squeeze(x))
        return torch.cat([F.relu(self.expand1x1(x)), F.relu(self.expand3x3(x))], 1)


class SqueezeNet11(nn.Module):
    def __init__(self, num_classes):
        super().__init__()
        pool = partial(nn.MaxPool2d, 3, 2, ceil_mode=True)
        self.features = nn.Sequential(
            nn.Conv2d(3, 64, 3, 2), nn.ReLU(), pool(), Fire(64, 16, 64, 64),
            Fire(128, 16, 64, 64), pool(), Fire(128, 32, 128, 128), Fire(256, 32, 128, 128),
            pool(), Fire(256, 48, 192, 192), Fire(384, 48, 192, 192), Fire(384, 64, 256, 256),
            Fire(512, 64, 256, 256))
        self.classifier = nn.Sequential(nn.Dropout(0.5), nn.Conv2d(512, num_classes, 1),
                                        nn.ReLU(), nn.AdaptiveAvgPool2d(1))

    def forward(self, x):
        return torch.flatten(self.classifier(self.features(x)), 1)


# ---- RegNetX-400MF (torchvision/models/regnet.py) ------------------------------------------------
def regnet_stages(depth, w_0, w_a, w_m, group_width):
    """BlockParams.from_init_params: (width, depth, group width) per stage (on the CPU even
    where modules are built on the meta device)."""
    widths_cont = torch.arange(depth, device="cpu") * w_a + w_0
    capacity = torch.round(torch.log(widths_cont / w_0) / math.log(w_m))
    block_widths = (torch.round(w_0 * torch.pow(w_m, capacity) / 8) * 8).int().tolist()
    splits = [w != wp for w, wp in zip(block_widths + [0], [0] + block_widths)]
    stage_widths = [w for w, t in zip(block_widths, splits[:-1]) if t]
    stage_depths = torch.diff(torch.tensor([d for d, t in enumerate(splits) if t],
                                           device="cpu")).tolist()
    group_width = [min(group_width, w) for w in stage_widths]
    stage_widths = [make_divisible(w, g) for w, g in zip(stage_widths, group_width)]
    return list(zip(stage_widths, stage_depths, group_width))


class ResBottleneckBlock(nn.Module):
    def __init__(self, width_in, width_out, stride, group_width):
        super().__init__()
        self.proj = None
        if width_in != width_out or stride != 1:
            self.proj = ConvNormActivation(width_in, width_out, 1, stride, activation=None)
        self.f = nn.Sequential()
        self.f.add_module("a", ConvNormActivation(width_in, width_out, 1))
        self.f.add_module("b", ConvNormActivation(width_out, width_out, 3, stride,
                                                  width_out // group_width))
        self.f.add_module("c", ConvNormActivation(width_out, width_out, 1, activation=None))
        self.activation = nn.ReLU()

    def forward(self, x):
        return self.activation((x if self.proj is None else self.proj(x)) + self.f(x))


class RegNetX400MF(nn.Module):
    def __init__(self, num_classes):
        super().__init__()
        self.stem = ConvNormActivation(3, 32, 3, 2)
        self.trunk_output = nn.Sequential()
        width = 32
        for i, (width_out, depth, group_width) in enumerate(regnet_stages(22, 24, 24.48, 2.54,
                                                                          16), 1):
            stage = nn.Sequential()
            for j in range(depth):
                stage.add_module(f"block{i}-{j}", ResBottleneckBlock(
                    width if j == 0 else width_out, width_out, 2 if j == 0 else 1, group_width))
            self.trunk_output.add_module(f"block{i}", stage)
            width = width_out
        self.avgpool = nn.AdaptiveAvgPool2d((1, 1))
        self.fc = nn.Linear(width, num_classes)

    def forward(self, x):
        return self.fc(self.avgpool(self.trunk_output(self.stem(x))).flatten(1))


# ---- DenseNet-121 (torchvision/models/densenet.py) -----------------------------------------------
class DenseLayer(nn.Module):
    def __init__(self, inp, growth_rate=32, bn_size=4):
        super().__init__()
        self.norm1, self.relu1 = nn.BatchNorm2d(inp), nn.ReLU()
        self.conv1 = nn.Conv2d(inp, bn_size * growth_rate, 1, bias=False)
        self.norm2, self.relu2 = nn.BatchNorm2d(bn_size * growth_rate), nn.ReLU()
        self.conv2 = nn.Conv2d(bn_size * growth_rate, growth_rate, 3, padding=1, bias=False)

    def forward(self, features):
        x = self.conv1(self.relu1(self.norm1(torch.cat(features, 1))))
        return self.conv2(self.relu2(self.norm2(x)))


class DenseBlock(nn.ModuleDict):
    def forward(self, x):
        features = [x]
        for layer in self.values():
            features.append(layer(features))
        return torch.cat(features, 1)


class DenseNet121(nn.Module):
    def __init__(self, num_classes, block_config=(6, 12, 24, 16), growth_rate=32):
        super().__init__()
        self.features = nn.Sequential()
        self.features.add_module("conv0", nn.Conv2d(3, 64, 7, 2, 3, bias=False))
        self.features.add_module("norm0", nn.BatchNorm2d(64))
        self.features.add_module("relu0", nn.ReLU())
        self.features.add_module("pool0", nn.MaxPool2d(3, 2, 1))
        channels = 64
        for i, layers in enumerate(block_config, 1):
            self.features.add_module(f"denseblock{i}", DenseBlock({
                f"denselayer{j + 1}": DenseLayer(channels + j * growth_rate)
                for j in range(layers)}))
            channels += layers * growth_rate
            if i < len(block_config):
                self.features.add_module(f"transition{i}", nn.Sequential(OrderedDict([
                    ("norm", nn.BatchNorm2d(channels)), ("relu", nn.ReLU()),
                    ("conv", nn.Conv2d(channels, channels // 2, 1, bias=False)),
                    ("pool", nn.AvgPool2d(2, 2))])))
                channels //= 2
        self.features.add_module("norm5", nn.BatchNorm2d(channels))
        self.classifier = nn.Linear(channels, num_classes)

    def forward(self, x):
        x = F.adaptive_avg_pool2d(F.relu(self.features(x)), (1, 1))
        return self.classifier(torch.flatten(x, 1))


# ---- Inception-v3 (torchvision/models/inception.py, no AuxLogits) --------------------------------
class BasicConv2d(nn.Module):
    def __init__(self, cin, cout, **kwargs):
        super().__init__()
        self.conv = nn.Conv2d(cin, cout, bias=False, **kwargs)
        self.bn = nn.BatchNorm2d(cout, eps=0.001)

    def forward(self, x):
        return F.relu(self.bn(self.conv(x)))


class InceptionBlock(nn.Module):
    """Branches given as {name: (in, out, conv kwargs)} chains; `forward` lists them in order."""

    def add(self, **convs):
        for name, (cin, cout, kwargs) in convs.items():
            setattr(self, name, BasicConv2d(cin, cout, **kwargs))

    def chain(self, x, *names):
        for name in names:
            x = getattr(self, name)(x)
        return x


def avg_pool(x):
    return F.avg_pool2d(x, kernel_size=3, stride=1, padding=1)


class InceptionA(InceptionBlock):
    def __init__(self, cin, pool_features):
        super().__init__()
        self.add(branch1x1=(cin, 64, dict(kernel_size=1)),
                 branch5x5_1=(cin, 48, dict(kernel_size=1)),
                 branch5x5_2=(48, 64, dict(kernel_size=5, padding=2)),
                 branch3x3dbl_1=(cin, 64, dict(kernel_size=1)),
                 branch3x3dbl_2=(64, 96, dict(kernel_size=3, padding=1)),
                 branch3x3dbl_3=(96, 96, dict(kernel_size=3, padding=1)),
                 branch_pool=(cin, pool_features, dict(kernel_size=1)))

    def forward(self, x):
        return torch.cat([self.branch1x1(x), self.chain(x, "branch5x5_1", "branch5x5_2"),
                          self.chain(x, "branch3x3dbl_1", "branch3x3dbl_2", "branch3x3dbl_3"),
                          self.branch_pool(avg_pool(x))], 1)


class InceptionB(InceptionBlock):
    def __init__(self, cin):
        super().__init__()
        self.add(branch3x3=(cin, 384, dict(kernel_size=3, stride=2)),
                 branch3x3dbl_1=(cin, 64, dict(kernel_size=1)),
                 branch3x3dbl_2=(64, 96, dict(kernel_size=3, padding=1)),
                 branch3x3dbl_3=(96, 96, dict(kernel_size=3, stride=2)))

    def forward(self, x):
        return torch.cat([self.branch3x3(x),
                          self.chain(x, "branch3x3dbl_1", "branch3x3dbl_2", "branch3x3dbl_3"),
                          F.max_pool2d(x, kernel_size=3, stride=2)], 1)


class InceptionC(InceptionBlock):
    def __init__(self, cin, c7):
        super().__init__()
        row, col = dict(kernel_size=(1, 7), padding=(0, 3)), dict(kernel_size=(7, 1),
                                                                  padding=(3, 0))
        self.add(branch1x1=(cin, 192, dict(kernel_size=1)),
                 branch7x7_1=(cin, c7, dict(kernel_size=1)), branch7x7_2=(c7, c7, row),
                 branch7x7_3=(c7, 192, col), branch7x7dbl_1=(cin, c7, dict(kernel_size=1)),
                 branch7x7dbl_2=(c7, c7, col), branch7x7dbl_3=(c7, c7, row),
                 branch7x7dbl_4=(c7, c7, col), branch7x7dbl_5=(c7, 192, row),
                 branch_pool=(cin, 192, dict(kernel_size=1)))

    def forward(self, x):
        return torch.cat([
            self.branch1x1(x), self.chain(x, "branch7x7_1", "branch7x7_2", "branch7x7_3"),
            self.chain(x, *(f"branch7x7dbl_{i}" for i in range(1, 6))),
            self.branch_pool(avg_pool(x))], 1)


class InceptionD(InceptionBlock):
    def __init__(self, cin):
        super().__init__()
        self.add(branch3x3_1=(cin, 192, dict(kernel_size=1)),
                 branch3x3_2=(192, 320, dict(kernel_size=3, stride=2)),
                 branch7x7x3_1=(cin, 192, dict(kernel_size=1)),
                 branch7x7x3_2=(192, 192, dict(kernel_size=(1, 7), padding=(0, 3))),
                 branch7x7x3_3=(192, 192, dict(kernel_size=(7, 1), padding=(3, 0))),
                 branch7x7x3_4=(192, 192, dict(kernel_size=3, stride=2)))

    def forward(self, x):
        return torch.cat([self.chain(x, "branch3x3_1", "branch3x3_2"),
                          self.chain(x, *(f"branch7x7x3_{i}" for i in range(1, 5))),
                          F.max_pool2d(x, kernel_size=3, stride=2)], 1)


class InceptionE(InceptionBlock):
    def __init__(self, cin):
        super().__init__()
        row, col = dict(kernel_size=(1, 3), padding=(0, 1)), dict(kernel_size=(3, 1),
                                                                  padding=(1, 0))
        self.add(branch1x1=(cin, 320, dict(kernel_size=1)),
                 branch3x3_1=(cin, 384, dict(kernel_size=1)), branch3x3_2a=(384, 384, row),
                 branch3x3_2b=(384, 384, col), branch3x3dbl_1=(cin, 448, dict(kernel_size=1)),
                 branch3x3dbl_2=(448, 384, dict(kernel_size=3, padding=1)),
                 branch3x3dbl_3a=(384, 384, row), branch3x3dbl_3b=(384, 384, col),
                 branch_pool=(cin, 192, dict(kernel_size=1)))

    def forward(self, x):
        b3 = self.branch3x3_1(x)
        b3dbl = self.chain(x, "branch3x3dbl_1", "branch3x3dbl_2")
        return torch.cat([self.branch1x1(x),
                          torch.cat([self.branch3x3_2a(b3), self.branch3x3_2b(b3)], 1),
                          torch.cat([self.branch3x3dbl_3a(b3dbl), self.branch3x3dbl_3b(b3dbl)], 1),
                          self.branch_pool(avg_pool(x))], 1)


class InceptionV3(nn.Module):
    def __init__(self, num_classes):
        super().__init__()
        self.Conv2d_1a_3x3 = BasicConv2d(3, 32, kernel_size=3, stride=2)
        self.Conv2d_2a_3x3 = BasicConv2d(32, 32, kernel_size=3)
        self.Conv2d_2b_3x3 = BasicConv2d(32, 64, kernel_size=3, padding=1)
        self.maxpool1 = nn.MaxPool2d(3, 2)
        self.Conv2d_3b_1x1 = BasicConv2d(64, 80, kernel_size=1)
        self.Conv2d_4a_3x3 = BasicConv2d(80, 192, kernel_size=3)
        self.maxpool2 = nn.MaxPool2d(3, 2)
        self.Mixed_5b, self.Mixed_5c = InceptionA(192, 32), InceptionA(256, 64)
        self.Mixed_5d, self.Mixed_6a = InceptionA(288, 64), InceptionB(288)
        self.Mixed_6b, self.Mixed_6c = InceptionC(768, 128), InceptionC(768, 160)
        self.Mixed_6d, self.Mixed_6e = InceptionC(768, 160), InceptionC(768, 192)
        self.Mixed_7a, self.Mixed_7b, self.Mixed_7c = InceptionD(768), InceptionE(1280), \
            InceptionE(2048)
        self.avgpool, self.dropout = nn.AdaptiveAvgPool2d((1, 1)), nn.Dropout(0.5)
        self.fc = nn.Linear(2048, num_classes)

    def forward(self, x):
        for module in list(self.children())[:-3]:
            x = module(x)
        return self.fc(torch.flatten(self.dropout(self.avgpool(x)), 1))


# name: (torch module for `num_classes`, torchvision's parameter count at 1000 classes, the small
# image size of the comparison, relative tolerance). Hard-swish models: ONNX's HardSwish (and
# graphopt's) multiplies by float32(1/6), torch by 1/6, ~3e-8 apart.
CASES = {
    "mobilenet_v2": (MobileNetV2, 3_504_872, 32, 1e-9),
    "mobilenet_v3_small": (partial(MobileNetV3, V3_SMALL, 1024), 2_542_856, 32, 1e-6),
    "mobilenet_v3_large": (partial(MobileNetV3, V3_LARGE, 1280), 5_483_032, 32, 1e-6),
    "efficientnet_b0": (EfficientNetB0, 5_288_548, 32, 1e-9),
    "shufflenet_v2_x1_0": (ShuffleNetV2, 2_278_604, 32, 1e-9),
    "squeezenet1_1": (SqueezeNet11, 1_235_496, 64, 1e-9),
    "regnet_x_400mf": (RegNetX400MF, 5_495_976, 32, 1e-9),
    "densenet121": (DenseNet121, 7_978_856, 32, 1e-9),
    # Without AuxLogits, which only runs in training: torchvision's 27,161,264 less 3,326,696.
    "inception_v3": (InceptionV3, 23_834_568, 75, 1e-9),
}


@pytest.mark.parametrize("name", CASES)
def test_parameter_counts_are_torchvisions(name):
    module, count, image_size, _ = CASES[name]
    with torch.device("meta"):
        assert sum(p.numel() for p in module(1000).parameters()) == count
    assert go.zoo.MODELS[name](image_size=image_size).num_params() == count


def load_graph_weights(module, graph: go.Graph):
    """The graph's constants as the module's float64 state: every parameter and buffer but
    batch norm's num_batches_tracked, and nothing else."""
    state = {k: torch.from_numpy(v.data.astype(np.float64)) for k, v in graph.constants.items()}
    missing, unexpected = module.double().load_state_dict(state, strict=False)
    assert unexpected == []
    assert [k for k in missing if not k.endswith("num_batches_tracked")] == []
    return module.eval()


@pytest.mark.parametrize("name", CASES)
def test_matches_torch_module_with_the_same_weights(name):
    module, _, image_size, rtol = CASES[name]
    g = go.zoo.MODELS[name](batch=2, num_classes=10, image_size=image_size)
    x = np.random.default_rng(1).standard_normal(g.inputs[0].shape).astype(np.float32)
    expected = go.interpret(g, {"input": x}, dtype=np.float64)["output"]
    with torch.no_grad():
        found = load_graph_weights(module(10), g)(torch.from_numpy(x.astype(np.float64)))
    np.testing.assert_allclose(found.numpy(), expected, rtol=0,
                               atol=rtol * np.abs(expected).max())
    y32 = go.interpret(g, {"input": x})["output"]
    np.testing.assert_allclose(y32, expected, rtol=0, atol=1e-4 * np.abs(expected).max())


def batch_norm_rms(graph: go.Graph, seed: int = 3) -> dict[str, float]:
    """The rms of every batch norm's output on a standard-normal input (not the calibration
    probe), and the logits' std under the key 'output'."""
    x = np.random.default_rng(seed).standard_normal(graph.inputs[0].shape).astype(np.float32)
    values = go.interpret(graph, {"input": x}, keep=True)
    assert np.isfinite(values["output"]).all()
    rms = {n.name: float(np.sqrt(np.mean(values[n.output.name].astype(np.float64) ** 2)))
           for n in graph.nodes if n.op_name == "batch_norm"}
    return {**rms, "output": float(values["output"].std())}


@pytest.mark.parametrize("name", [pytest.param(n, marks=pytest.mark.slow)
                                  if n != "mobilenet_v3_small" else n for n in CASES])
def test_calibrated_batch_norms_keep_every_layer_at_unit_scale(name):
    """At the size the statistics were calibrated at, every batch norm's output has an rms near
    1 however deep it is (with the DSL's draws alone MobileNetV3-Large's logits reach ~1e3)."""
    rms = batch_norm_rms(go.zoo.MODELS[name]())
    assert {k: v for k, v in rms.items() if k != "output" and not 0.5 < v < 2} == {}
    assert 0.1 < rms["output"] < 10


@pytest.mark.parametrize("name", CASES)
def test_small_images_run_the_full_size_weights_at_a_sane_scale(name):
    """The statistics come from the full-size model: the same at any batch and image size; on a
    small image, where zero padding and 1x1 maps dominate, the scale stays within bounds."""
    _, _, image_size, _ = CASES[name]
    small = go.zoo.MODELS[name](batch=3, num_classes=10, image_size=image_size)
    full = go.zoo.MODELS[name](num_classes=10)
    assert all(np.array_equal(c.data, full.constants[k].data) for k, c in small.constants.items())
    rms = batch_norm_rms(small)
    assert {k: v for k, v in rms.items() if not 0.05 < v < 2} == {}


# One small model per structure the older zoo lacks, compiled for the CPU against the float64
# interpreter: squeeze-excite with hard-swish and hard-sigmoid, channel split and shuffle, dense
# concatenation (two dense blocks of four layers; densenet121 at 32x32 takes ~50 s to compile
# and load: its full-size compile is among test_zoo's slow tests, as every model's is).
COMPILED = {
    "mobilenet_v3_small": lambda: go.zoo.mobilenet_v3_small(num_classes=10, image_size=32),
    "shufflenet_v2_x1_0": lambda: go.zoo.shufflenet_v2_x1_0(num_classes=10, image_size=32),
    "dense_blocks": lambda: densenet(num_classes=10, image_size=32, block_config=(4, 4),
                                     name="dense_blocks"),
}


@pytest.mark.parametrize("name", COMPILED)
def test_new_structures_compile_for_cpu(name):
    g = COMPILED[name]()
    x = np.random.default_rng(2).standard_normal(g.inputs[0].shape).astype(np.float32)
    report = go.compare(g, go.compile(g, "cpu"), {"input": x})
    assert report.ok, str(report)
