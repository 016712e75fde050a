"""Target passes: ordinary graphopt passes (`Graph -> PassResult`) that record on each node how
the target will compute it (a convolution's algorithm and weight layout, the kernels convs share,
a dense layer's weight layout, separable pooling, concatenations computed in place), and the
rewrites those choices need (`pad_for_winograd`, `images_as_pixels`, `planes_as_rows`).
`compile` runs them after the default pipeline; lowering then builds what they recorded, so no
target code re-discovers structure in Relax. `graphopt show --target cpu` shows the decisions.
"""
from __future__ import annotations

from typing import Callable

from ....errors import OptionError
from ....passes.manager import Pass
from .annotate import annotate
from .images_as_pixels import images_as_pixels
from .pad_for_winograd import pad_for_winograd
from .place_concatenations import place_concatenations
from .planes_as_rows import planes_as_rows
from .select_conv_algorithm import select_conv_algorithm
from .select_dense_layout import select_dense_layout
from .separate_pools import separate_pools
from .share_residual_kernels import share_residual_kernels

# name -> factory(context) building the pass for one compile; `context` is a `TargetContext`.
TARGET_PASSES: dict[str, dict[str, Callable]] = {
    "cpu": {"images_as_pixels": images_as_pixels,
            "planes_as_rows": planes_as_rows,
            "pad_for_winograd": pad_for_winograd,
            "select_conv_algorithm": select_conv_algorithm,
            "share_residual_kernels": share_residual_kernels,
            "select_dense_layout": select_dense_layout,
            "separate_pools": separate_pools,
            "place_concatenations": place_concatenations},
    "cuda": {},
}


def target_passes(device_kind: str, context) -> list[Pass]:
    """Every pass of the target, in order, built for `context`."""
    return [factory(context) for factory in TARGET_PASSES[device_kind].values()]


def resolve_target_pass(name: str, device_kind: str, context) -> Pass | None:
    """The target pass called `name` for this compile, or None when `name` is no target pass
    (then it is an ordinary graphopt pass); a pass of another target is refused."""
    if name in TARGET_PASSES[device_kind]:
        return TARGET_PASSES[device_kind][name](context)
    for kind, passes in TARGET_PASSES.items():
        if name in passes:
            raise OptionError(f"pass '{name}' is a {kind} target pass; compiling for "
                              f"{device_kind}")
    return None


__all__ = ["TARGET_PASSES", "annotate", "resolve_target_pass", "target_passes"]
