"""Inception-v3 (Szegedy et al. 2015) as torchvision builds it for inference: `BasicConv2d`
everywhere (convolution without bias, batch norm with eps 1e-3, ReLU), factorised 1x7/7x1 and
1x3/3x1 convolutions, 3x3 average pools that count the padding (torch's default), no auxiliary
head (it only runs in training) and no input transform (torchvision's default without
pretrained weights). Module names follow torchvision (`Conv2d_1a_3x3.conv`,
`Mixed_6b.branch7x7dbl_4.bn`, `fc`); with 1000 classes: 23,834,568 parameters, torchvision's
27,161,264 less the 3,326,696 of `AuxLogits`. The default input is 299x299; 75x75 is the
smallest it takes. Batch norm statistics are calibrated (`blocks.calibrated`)."""
from __future__ import annotations

from ..frontends import dsl
from ..frontends.dsl import Tensor
from ..ir import Graph
from .blocks import calibrated

BN_EPSILON = 1e-3


def basic_conv(x: Tensor, name: str, out_channels: int, kernel, stride: int = 1,
               padding=0) -> Tensor:
    with x.builder.scope(name):
        x = dsl.conv2d(x, out_channels, kernel, stride=stride, padding=padding, bias=False,
                       name="conv")
        return dsl.relu(dsl.batch_norm(x, epsilon=BN_EPSILON, name="bn"), name="relu")


def _chain(x: Tensor, prefix: str, layers) -> Tensor:
    """basic_conv for each (suffix, out_channels, kernel, stride, padding) in turn."""
    for suffix, *conv in layers:
        x = basic_conv(x, f"{prefix}{suffix}", *conv)
    return x


def _pool_branch(x: Tensor, out_channels: int) -> Tensor:
    pooled = dsl.avg_pool2d(x, 3, stride=1, padding=1, count_include_pad=True, name="pool")
    return basic_conv(pooled, "branch_pool", out_channels, 1)


def inception_a(x: Tensor, pool_features: int) -> Tensor:
    return dsl.concat([
        basic_conv(x, "branch1x1", 64, 1),
        _chain(x, "branch5x5_", [("1", 48, 1), ("2", 64, 5, 1, 2)]),
        _chain(x, "branch3x3dbl_", [("1", 64, 1), ("2", 96, 3, 1, 1), ("3", 96, 3, 1, 1)]),
        _pool_branch(x, pool_features)], axis=1, name="concat")


def inception_b(x: Tensor) -> Tensor:
    return dsl.concat([
        basic_conv(x, "branch3x3", 384, 3, 2),
        _chain(x, "branch3x3dbl_", [("1", 64, 1), ("2", 96, 3, 1, 1), ("3", 96, 3, 2)]),
        dsl.max_pool2d(x, 3, stride=2, name="pool")], axis=1, name="concat")


def inception_c(x: Tensor, c7: int) -> Tensor:
    row, column = ((1, 7), 1, (0, 3)), ((7, 1), 1, (3, 0))
    return dsl.concat([
        basic_conv(x, "branch1x1", 192, 1),
        _chain(x, "branch7x7_", [("1", c7, 1), ("2", c7, *row), ("3", 192, *column)]),
        _chain(x, "branch7x7dbl_", [("1", c7, 1), ("2", c7, *column), ("3", c7, *row),
                                    ("4", c7, *column), ("5", 192, *row)]),
        _pool_branch(x, 192)], axis=1, name="concat")


def inception_d(x: Tensor) -> Tensor:
    return dsl.concat([
        _chain(x, "branch3x3_", [("1", 192, 1), ("2", 320, 3, 2)]),
        _chain(x, "branch7x7x3_", [("1", 192, 1), ("2", 192, (1, 7), 1, (0, 3)),
                                   ("3", 192, (7, 1), 1, (3, 0)), ("4", 192, 3, 2)]),
        dsl.max_pool2d(x, 3, stride=2, name="pool")], axis=1, name="concat")


def inception_e(x: Tensor) -> Tensor:
    def split_3x3(y: Tensor, prefix: str) -> Tensor:
        return dsl.concat([basic_conv(y, f"{prefix}a", 384, (1, 3), 1, (0, 1)),
                           basic_conv(y, f"{prefix}b", 384, (3, 1), 1, (1, 0))],
                          axis=1, name=f"{prefix}.concat")

    return dsl.concat([
        basic_conv(x, "branch1x1", 320, 1),
        split_3x3(basic_conv(x, "branch3x3_1", 384, 1), "branch3x3_2"),
        split_3x3(_chain(x, "branch3x3dbl_", [("1", 448, 1), ("2", 384, 3, 1, 1)]),
                  "branch3x3dbl_3"),
        _pool_branch(x, 192)], axis=1, name="concat")


# Mixed blocks in order: name, builder, its extra argument (pool features or 7x7 channels).
MIXED = (("Mixed_5b", inception_a, 32), ("Mixed_5c", inception_a, 64),
         ("Mixed_5d", inception_a, 64), ("Mixed_6a", inception_b, None),
         ("Mixed_6b", inception_c, 128), ("Mixed_6c", inception_c, 160),
         ("Mixed_6d", inception_c, 160), ("Mixed_6e", inception_c, 192),
         ("Mixed_7a", inception_d, None), ("Mixed_7b", inception_e, None),
         ("Mixed_7c", inception_e, None))


@calibrated(299)
def inception_v3(batch: int = 1, seed: int = 0, num_classes: int = 1000,
                 image_size: int = 299) -> Graph:
    with dsl.Builder("inception_v3", seed) as b:
        x = b.input("input", (batch, 3, image_size, image_size))
        x = basic_conv(x, "Conv2d_1a_3x3", 32, 3, 2)
        x = basic_conv(x, "Conv2d_2a_3x3", 32, 3)
        x = basic_conv(x, "Conv2d_2b_3x3", 64, 3, 1, 1)
        x = dsl.max_pool2d(x, 3, stride=2, name="maxpool1")
        x = basic_conv(x, "Conv2d_3b_1x1", 80, 1)
        x = basic_conv(x, "Conv2d_4a_3x3", 192, 3)
        x = dsl.max_pool2d(x, 3, stride=2, name="maxpool2")
        for name, block, argument in MIXED:
            with b.scope(name):
                x = block(x) if argument is None else block(x, argument)
        x = dsl.flatten(dsl.global_avg_pool2d(x, name="avgpool"), name="flatten")
        x = dsl.dropout(x, 0.5, name="dropout")
        return b.output(dsl.linear(x, num_classes, name="fc"))
