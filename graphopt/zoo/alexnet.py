"""The original AlexNet (Krizhevsky, Sutskever & Hinton 2012), as in the paper and Caffe's
bvlc_alexnet: 96-256-384-384-256 convolutions, local response normalization after the first two,
overlapping 3x3/2 max pools, and 4096-4096 fully connected layers with dropout.

- Input 227x227 (the size at which the paper's 11x11/4 first layer gives 55x55 without padding).
  Other sizes work; the classifier then takes 256 x 6 x 6 only at 227 (224 gives 5x5).
- `grouped=True` keeps the paper's two-GPU split (groups=2 in conv2, conv4 and conv5):
  60,965,224 parameters with 1000 classes; `grouped=False`: 62,378,344.
- LRN: the paper divides by (k + alpha * sum of squares)^beta with k=2, n=5, alpha=1e-4,
  beta=0.75. Our `lrn` op follows ONNX/PyTorch, which scale alpha by 1/size, so it gets
  alpha = 5 * 1e-4 to compute the paper's formula.

torchvision's `alexnet` is a different, later variant (64-192-384-256-256, no LRN)."""
from __future__ import annotations

from ..frontends import dsl
from ..ir import Graph
from .blocks import dropout_mlp_classifier

LRN_SIZE, LRN_ALPHA, LRN_BETA, LRN_K = 5, 1e-4, 0.75, 2.0


def _lrn(x, name):
    return dsl.lrn(x, size=LRN_SIZE, alpha=LRN_ALPHA * LRN_SIZE, beta=LRN_BETA, bias=LRN_K,
                   name=name)


def alexnet(batch: int = 1, seed: int = 0, num_classes: int = 1000, image_size: int = 227,
            grouped: bool = True) -> Graph:
    groups = 2 if grouped else 1
    with dsl.Builder("alexnet", seed) as b:
        x = b.input("input", (batch, 3, image_size, image_size))
        with b.scope("features"):
            x = dsl.relu(dsl.conv2d(x, 96, 11, stride=4, name="0"), name="1")
            x = dsl.max_pool2d(_lrn(x, "2"), 3, stride=2, name="3")
            x = dsl.relu(dsl.conv2d(x, 256, 5, padding=2, groups=groups, name="4"), name="5")
            x = dsl.max_pool2d(_lrn(x, "6"), 3, stride=2, name="7")
            x = dsl.relu(dsl.conv2d(x, 384, 3, padding=1, name="8"), name="9")
            x = dsl.relu(dsl.conv2d(x, 384, 3, padding=1, groups=groups, name="10"), name="11")
            x = dsl.relu(dsl.conv2d(x, 256, 3, padding=1, groups=groups, name="12"), name="13")
            x = dsl.max_pool2d(x, 3, stride=2, name="14")
        return b.output(dropout_mlp_classifier(x, num_classes))
