"""ShuffleNetV2 x1.0 (Ma et al. 2018) as torchvision builds it: stride-1 units split the channels
in halves, transform one (1x1, depthwise 3x3, 1x1) and concatenate; stride-2 units transform the
whole input in two branches; every unit ends with a channel shuffle of two groups (reshape,
transpose, reshape). Module names follow torchvision (`stage2.0.branch1.2`, `conv5.0`, `fc`);
with 1000 classes: 2,278,604 parameters, torchvision's count. Batch norm statistics are
calibrated (`blocks.calibrated`)."""
from __future__ import annotations

from ..frontends import dsl
from ..frontends.dsl import Tensor
from ..ir import Graph
from .blocks import calibrated

STAGE_REPEATS = (4, 8, 4)
X1_0_CHANNELS = (24, 116, 232, 464, 1024)


def channel_shuffle(x: Tensor, groups: int) -> Tensor:
    """torchvision's channel_shuffle: to [N, g, C/g, H, W], swap axes 1 and 2, back to
    [N, C, H, W]."""
    n, c, h, w = x.shape
    x = dsl.reshape(x, (n, groups, c // groups, h, w), name="shuffle.reshape")
    x = dsl.transpose(x, (0, 2, 1, 3, 4), name="shuffle.transpose")
    return dsl.reshape(x, (n, c, h, w), name="shuffle")


def _conv_bn(x: Tensor, name: str, index: int, out_channels: int, kernel: int = 1,
             stride: int = 1, depthwise: bool = False) -> Tensor:
    """Convolution without bias '<name>.<index>' and its batch norm '<name>.<index + 1>'."""
    x = dsl.conv2d(x, out_channels, kernel, stride=stride, padding=kernel // 2,
                   groups=x.shape[1] if depthwise else 1, bias=False, name=f"{name}.{index}")
    return dsl.batch_norm(x, name=f"{name}.{index + 1}")


def inverted_residual(x: Tensor, out_channels: int, stride: int) -> Tensor:
    branch_channels = out_channels // 2
    if stride == 1:
        kept, x = dsl.split(x, [x.shape[1] // 2] * 2, name="chunk")
    else:
        kept = _conv_bn(x, "branch1", 0, x.shape[1], 3, stride, depthwise=True)
        kept = dsl.relu(_conv_bn(kept, "branch1", 2, branch_channels), name="branch1.4")
    y = dsl.relu(_conv_bn(x, "branch2", 0, branch_channels), name="branch2.2")
    y = _conv_bn(y, "branch2", 3, branch_channels, 3, stride, depthwise=True)
    y = dsl.relu(_conv_bn(y, "branch2", 5, branch_channels), name="branch2.7")
    return channel_shuffle(dsl.concat([kept, y], axis=1, name="concat"), 2)


@calibrated(224)
def shufflenet_v2_x1_0(batch: int = 1, seed: int = 0, num_classes: int = 1000,
                       image_size: int = 224) -> Graph:
    with dsl.Builder("shufflenet_v2_x1_0", seed) as b:
        x = b.input("input", (batch, 3, image_size, image_size))
        x = dsl.relu(_conv_bn(x, "conv1", 0, X1_0_CHANNELS[0], 3, 2), name="conv1.2")
        x = dsl.max_pool2d(x, 3, stride=2, padding=1, name="maxpool")
        for stage, (repeats, channels) in enumerate(zip(STAGE_REPEATS, X1_0_CHANNELS[1:]), 2):
            for i in range(repeats):
                with b.scope(f"stage{stage}.{i}"):
                    x = inverted_residual(x, channels, 2 if i == 0 else 1)
        x = dsl.relu(_conv_bn(x, "conv5", 0, X1_0_CHANNELS[-1]), name="conv5.2")
        x = dsl.flatten(dsl.global_avg_pool2d(x, name="mean"), name="flatten")
        return b.output(dsl.linear(x, num_classes, name="fc"))
