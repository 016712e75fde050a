"""Layer groups shared by several zoo networks."""
from __future__ import annotations

from ..frontends import dsl
from ..frontends.dsl import Tensor


def dropout_mlp_classifier(x: Tensor, num_classes: int, hidden: int = 4096) -> Tensor:
    """AlexNet's and VGG's head, named like torchvision's `classifier` Sequential:
    flatten, then (linear, ReLU, dropout 0.5) twice, then the class scores as `classifier.6`."""
    x = dsl.flatten(x, name="flatten")
    with x.builder.scope("classifier"):
        x = dsl.dropout(dsl.relu(dsl.linear(x, hidden, name="0"), name="1"), 0.5, name="2")
        x = dsl.dropout(dsl.relu(dsl.linear(x, hidden, name="3"), name="4"), 0.5, name="5")
        return dsl.linear(x, num_classes, name="6")
