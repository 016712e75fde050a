"""EfficientNet-B0 (Tan & Le 2019) as torchvision builds it: MBConv blocks (1x1 expand, depthwise
KxK, squeeze-excite with SiLU and a sigmoid gate, 1x1 linear projection, a residual add where the
shape allows; stochastic depth is the identity at inference), SiLU activations, dropout 0.2
before the classifier. Module names follow torchvision (`features.2.1.block.2.fc1`,
`classifier.1`, ...); with 1000 classes: 5,288,548 parameters, torchvision's count. Batch norm
statistics are calibrated (`blocks.calibrated`)."""
from __future__ import annotations

from ..frontends import dsl
from ..frontends.dsl import Tensor
from ..ir import Graph
from .blocks import (calibrated, conv_norm_activation, make_divisible,
                     squeeze_excitation)

# B0's stages (the paper's Table 1): expansion, kernel, first stride, output channels, blocks.
B0_STAGES = ((1, 3, 1, 16, 1), (6, 3, 2, 24, 2), (6, 5, 2, 40, 2), (6, 3, 2, 80, 3),
             (6, 5, 1, 112, 3), (6, 5, 2, 192, 4), (6, 3, 1, 320, 1))


def mbconv(x: Tensor, expand_ratio: int, kernel: int, stride: int, out_channels: int) -> Tensor:
    in_channels = x.shape[1]
    expanded = make_divisible(in_channels * expand_ratio)
    y, index = x, 0
    if expanded != in_channels:
        y, index = conv_norm_activation(y, "block.0", expanded, 1, activation=dsl.silu), 1
    y = conv_norm_activation(y, f"block.{index}", expanded, kernel, stride, groups=expanded,
                             activation=dsl.silu)
    with x.builder.scope(f"block.{index + 1}"):
        y = squeeze_excitation(y, max(1, in_channels // 4), dsl.silu, dsl.sigmoid)
    y = conv_norm_activation(y, f"block.{index + 2}", out_channels, 1)
    return dsl.add(y, x, name="add") if stride == 1 and in_channels == out_channels else y


@calibrated(224)
def efficientnet_b0(batch: int = 1, seed: int = 0, num_classes: int = 1000,
                    image_size: int = 224) -> Graph:
    with dsl.Builder("efficientnet_b0", seed) as b:
        x = b.input("input", (batch, 3, image_size, image_size))
        x = conv_norm_activation(x, "features.0", 32, 3, 2, activation=dsl.silu)
        for stage, (expand_ratio, kernel, stride, channels, count) in enumerate(B0_STAGES, 1):
            for i in range(count):
                with b.scope(f"features.{stage}.{i}"):
                    x = mbconv(x, expand_ratio, kernel, stride if i == 0 else 1, channels)
        x = conv_norm_activation(x, f"features.{len(B0_STAGES) + 1}", 4 * x.shape[1], 1,
                                 activation=dsl.silu)
        x = dsl.flatten(dsl.global_avg_pool2d(x, name="avgpool"), name="flatten")
        x = dsl.dropout(x, 0.2, name="classifier.0")
        return b.output(dsl.linear(x, num_classes, name="classifier.1"))
