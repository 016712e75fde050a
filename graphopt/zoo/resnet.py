"""ResNet-18 and ResNet-50 (He et al. 2015) as torchvision builds them: same module names
(`conv1`, `layer1.0.conv1`, `layer2.0.downsample.0`, `fc`, ...) and, with 1000 classes,
the same parameter counts (11,689,512 and 25,557,032). Bottleneck blocks stride on the 3x3
convolution (torchvision's "ResNet v1.5").

Scale control: with random weights and statistics each residual add roughly doubles the
variance of the trunk; with plain gammas the logits' std on a standard normal image is ~1e2
(resnet18) and ~2e4 (resnet50), too close to fp16's range. In the spirit of torchvision's
`zero_init_residual` (which uses zero), the last batch norm of every block draws its gamma
`residual_gamma` times smaller (default 0.2): the logits' std is then ~6 and ~8."""
from __future__ import annotations

from ..frontends import dsl
from ..frontends.dsl import Tensor
from ..ir import Graph

RESIDUAL_GAMMA = 0.2


def _conv_bn(x: Tensor, out_channels: int, kernel: int, stride: int, conv: str, bn: str,
             gamma_scale: float = 1.0) -> Tensor:
    x = dsl.conv2d(x, out_channels, kernel, stride=stride, padding=kernel // 2, bias=False,
                   name=conv)
    scale = None
    if gamma_scale != 1.0:   # the DSL's own gamma draw, uniform(0.5, 1.5), scaled down
        scale = x.builder.uniform(1.5 * gamma_scale, 0.5 * gamma_scale)((out_channels,))
    return dsl.batch_norm(x, scale=scale, name=bn)


def _shortcut(x: Tensor, out_channels: int, stride: int) -> Tensor:
    if stride == 1 and x.shape[1] == out_channels:
        return x
    return _conv_bn(x, out_channels, 1, stride, "downsample.0", "downsample.1")


def basic_block(x: Tensor, planes: int, stride: int, residual_gamma: float) -> Tensor:
    identity = _shortcut(x, planes, stride)
    y = dsl.relu(_conv_bn(x, planes, 3, stride, "conv1", "bn1"), name="relu1")
    y = _conv_bn(y, planes, 3, 1, "conv2", "bn2", residual_gamma)
    return dsl.relu(dsl.add(y, identity, name="add"), name="relu2")


def bottleneck(x: Tensor, planes: int, stride: int, residual_gamma: float) -> Tensor:
    identity = _shortcut(x, planes * 4, stride)
    y = dsl.relu(_conv_bn(x, planes, 1, 1, "conv1", "bn1"), name="relu1")
    y = dsl.relu(_conv_bn(y, planes, 3, stride, "conv2", "bn2"), name="relu2")
    y = _conv_bn(y, planes * 4, 1, 1, "conv3", "bn3", residual_gamma)
    return dsl.relu(dsl.add(y, identity, name="add"), name="relu3")


def _resnet(name: str, block, blocks_per_stage: tuple[int, ...], batch: int, seed: int,
            num_classes: int, image_size: int, residual_gamma: float) -> Graph:
    with dsl.Builder(name, seed) as b:
        x = b.input("input", (batch, 3, image_size, image_size))
        x = dsl.relu(_conv_bn(x, 64, 7, 2, "conv1", "bn1"), name="relu")
        x = dsl.max_pool2d(x, 3, stride=2, padding=1, name="maxpool")
        for stage, count in enumerate(blocks_per_stage):
            planes = 64 * 2 ** stage
            for i in range(count):
                with b.scope(f"layer{stage + 1}.{i}"):
                    stride = 2 if stage > 0 and i == 0 else 1
                    x = block(x, planes, stride, residual_gamma)
        x = dsl.flatten(dsl.global_avg_pool2d(x, name="avgpool"), name="flatten")
        return b.output(dsl.linear(x, num_classes, name="fc"))


def resnet18(batch: int = 1, seed: int = 0, num_classes: int = 1000, image_size: int = 224,
             residual_gamma: float = RESIDUAL_GAMMA) -> Graph:
    return _resnet("resnet18", basic_block, (2, 2, 2, 2), batch, seed, num_classes, image_size,
                   residual_gamma)


def resnet50(batch: int = 1, seed: int = 0, num_classes: int = 1000, image_size: int = 224,
             residual_gamma: float = RESIDUAL_GAMMA) -> Graph:
    return _resnet("resnet50", bottleneck, (3, 4, 6, 3), batch, seed, num_classes, image_size,
                   residual_gamma)
