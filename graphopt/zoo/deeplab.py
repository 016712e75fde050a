"""DeepLabV3 (Chen et al. 2017) on a MobileNetV3-Large backbone, as torchvision's
`deeplabv3_mobilenet_v3_large` builds it (without the auxiliary head, which only trains):

- backbone: MobileNetV3-Large's features (`mobilenet.V3_LARGE`, its blocks reused), the last
  three blocks dilated instead of strided (dilation 2, so the features stay at 1/16 of the image);
  the output of the last 1x1 convolution (960 channels) feeds the head;
- ASPP: a 1x1 convolution, three 3x3 convolutions dilated 12, 24 and 36, and image pooling (global
  average, 1x1 convolution, upsampled back), each with batch norm and ReLU, concatenated and
  projected to 256 channels (dropout 0.5, an identity at inference);
- a 3x3 convolution, batch norm, ReLU and the 1x1 class scores, then bilinear upsampling
  (align_corners=False) to the input's size: [N, classes, H, W].

Module names follow torchvision (`backbone.13.block.1.0`, `classifier.0.convs.4.1`,
`classifier.0.project.0`, `classifier.4`); with 21 classes the model has 11,025,477 parameters,
torchvision's 11,029,328 less the 3,851 of the auxiliary FCN head."""
from __future__ import annotations

from ..frontends import dsl
from ..frontends.dsl import Tensor
from ..ir import Graph
from .blocks import calibrated, conv_norm_activation
from .mobilenet import V3_EPSILON, V3_LARGE, inverted_residual_v3

ASPP_RATES = (12, 24, 36)
ASPP_CHANNELS = 256
DILATED_BLOCKS = 3   # the last three blocks of V3_LARGE (torchvision's C4 stage)


def aspp(x: Tensor) -> Tensor:
    """torchvision's ASPP(in_channels, [12, 24, 36]) under the current scope."""
    b = x.builder
    size = tuple(x.shape[2:])
    branches = [conv_norm_activation(x, "convs.0", ASPP_CHANNELS, 1, activation=dsl.relu)]
    for i, rate in enumerate(ASPP_RATES, start=1):
        branches.append(conv_norm_activation(x, f"convs.{i}", ASPP_CHANNELS, 3,
                                             activation=dsl.relu, dilation=rate))
    with b.scope(f"convs.{len(ASPP_RATES) + 1}"):
        pooled = dsl.global_avg_pool2d(x, name="0")
        pooled = dsl.conv2d(pooled, ASPP_CHANNELS, 1, bias=False, name="1")
        pooled = dsl.relu(dsl.batch_norm(pooled, name="2"), name="3")
        branches.append(dsl.resize(pooled, size=size, mode="bilinear", name="upsample"))
    y = dsl.concat(branches, axis=1, name="concat")
    with b.scope("project"):
        y = dsl.conv2d(y, ASPP_CHANNELS, 1, bias=False, name="0")
        y = dsl.relu(dsl.batch_norm(y, name="1"), name="2")
        return dsl.dropout(y, 0.5, name="3")


@calibrated(224)
def deeplabv3_mobilenet_v3_large(batch: int = 1, seed: int = 0, num_classes: int = 21,
                                 image_size: int = 64) -> Graph:
    with dsl.Builder("deeplabv3_mobilenet_v3_large", seed) as b:
        x = b.input("input", (batch, 3, image_size, image_size))
        with b.scope("backbone"):
            x = conv_norm_activation(x, "0", 16, 3, 2, activation=dsl.hard_swish,
                                     epsilon=V3_EPSILON)
            for index, block in enumerate(V3_LARGE, start=1):
                with b.scope(str(index)):
                    dilated = index > len(V3_LARGE) - DILATED_BLOCKS
                    x = inverted_residual_v3(x, *block, dilation=2 if dilated else 1)
            x = conv_norm_activation(x, str(len(V3_LARGE) + 1), 6 * x.shape[1], 1,
                                     activation=dsl.hard_swish, epsilon=V3_EPSILON)
        with b.scope("classifier"):
            with b.scope("0"):
                x = aspp(x)
            x = dsl.conv2d(x, ASPP_CHANNELS, 3, padding=1, bias=False, name="1")
            x = dsl.relu(dsl.batch_norm(x, name="2"), name="3")
            x = dsl.conv2d(x, num_classes, 1, name="4")
        return b.output(dsl.resize(x, size=(image_size, image_size), mode="bilinear",
                                   name="upsample"))
