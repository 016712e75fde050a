"""Target passes: ordinary graphopt passes (`Graph -> PassResult`) that record on each node how
the target will compute it (a convolution's algorithm and weight layout, separable pooling).
`compile` runs them after the default pipeline; lowering then builds what they recorded, so no
target code re-discovers structure in Relax. `graphopt show --target cpu` shows the decisions.
"""
from __future__ import annotations

from collections import Counter
from typing import Callable

from ....errors import PassError
from ....ir import Graph, Node
from ....passes.manager import Pass, PassResult
from .select_conv_algorithm import select_conv_algorithm
from .separate_max_pools import separate_max_pools

# name -> factory(context) building the pass for one compile; `context` is a `TargetContext`.
TARGET_PASSES: dict[str, dict[str, Callable]] = {
    "cpu": {"select_conv_algorithm": select_conv_algorithm,
            "separate_max_pools": separate_max_pools},
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
            raise PassError(f"pass '{name}' is a {kind} target pass; compiling for {device_kind}")
    return None


def annotate(graph: Graph, decide: Callable[[Node], object | None]) -> PassResult:
    """Swap each node's op for `decide(node)` where that returns a different op (same inputs
    and output types: a recorded decision, not a rewrite); names and provenance stay."""
    changed: Counter[str] = Counter()
    result = graph.copy()
    for node in result.nodes:
        new = decide(node)
        if new is not None and new != node.op:
            node.op = new
            changed[_label(new)] += 1
    if not changed:
        return PassResult(graph, False, {})
    return PassResult(result, True, {"rewrites": dict(changed)})


def _label(op) -> str:
    conv = getattr(op, "conv", op)
    algorithm = getattr(conv, "algorithm", None)
    if algorithm is not None:
        return f"{op.name} -> {algorithm}"
    return f"{op.name} -> separable" if getattr(op, "separable", False) else op.name


__all__ = ["TARGET_PASSES", "annotate", "resolve_target_pass", "target_passes"]
