"""RegNetX-400MF (Radosavovic et al. 2020) as torchvision builds it: a 3x3 stride-2 stem, then
four stages of residual bottleneck blocks (1x1, grouped 3x3 of 16 channels per group, 1x1; a
1x1 projection shortcut where the shape changes; ReLU after the add). Module names follow
torchvision (`stem.0`, `trunk_output.block2.block2-0.f.b.0`, `...proj.1`, `fc`); with 1000
classes: 5,495,976 parameters, torchvision's count. Batch norm statistics are calibrated
(`blocks.calibrated`)."""
from __future__ import annotations

from ..frontends import dsl
from ..frontends.dsl import Tensor
from ..ir import Graph
from .blocks import calibrated, conv_norm_activation

# torchvision's BlockParams.from_init_params(depth=22, w_0=24, w_a=24.48, w_m=2.54,
# group_width=16), worked out: (stage width, blocks) after the widths are made divisible by the
# group width (24 -> 32, 152 -> 160, 392 -> 400).
X_400MF_STAGES = ((32, 1), (64, 2), (160, 7), (400, 12))
X_400MF_GROUP_WIDTH = 16
STEM_WIDTH = 32


def res_bottleneck_block(x: Tensor, width_out: int, stride: int, group_width: int) -> Tensor:
    shortcut = x
    if x.shape[1] != width_out or stride != 1:
        shortcut = conv_norm_activation(x, "proj", width_out, 1, stride)
    with x.builder.scope("f"):
        y = conv_norm_activation(x, "a", width_out, 1, activation=dsl.relu)
        y = conv_norm_activation(y, "b", width_out, 3, stride, groups=width_out // group_width,
                                 activation=dsl.relu)
        y = conv_norm_activation(y, "c", width_out, 1)
    return dsl.relu(dsl.add(shortcut, y, name="add"), name="activation")


@calibrated(224)
def regnet_x_400mf(batch: int = 1, seed: int = 0, num_classes: int = 1000,
                   image_size: int = 224) -> Graph:
    with dsl.Builder("regnet_x_400mf", seed) as b:
        x = b.input("input", (batch, 3, image_size, image_size))
        x = conv_norm_activation(x, "stem", STEM_WIDTH, 3, 2, activation=dsl.relu)
        for stage, (width, depth) in enumerate(X_400MF_STAGES, 1):
            for i in range(depth):
                with b.scope(f"trunk_output.block{stage}.block{stage}-{i}"):
                    x = res_bottleneck_block(x, width, 2 if i == 0 else 1, X_400MF_GROUP_WIDTH)
        x = dsl.flatten(dsl.global_avg_pool2d(x, name="avgpool"), name="flatten")
        return b.output(dsl.linear(x, num_classes, name="fc"))
