"""`bisect`: find the first pass of a list, and the first rewrite within it, after which the
graph no longer computes what the original computes. Rewrites are replayed with
`pattern.rewrite_limit`, which every pass consults before each rewrite. Passes run in the
manager's `Sandbox`, as `optimize` runs them."""
from __future__ import annotations

from dataclasses import dataclass
from typing import Mapping, Sequence

import numpy as np

from ..compare import CompareReport, compare
from ..ir import Graph
from ..signature import probe_inputs
from .manager import Pass, Sandbox, resolve
from .pattern import rewrite_limit


@dataclass
class BisectResult:
    pass_name: str
    pass_index: int                         # position in the list, from 0
    rewrite_index: int | None               # the breaking rewrite, from 1 (None: not isolated)
    rule: str | None
    node: str | None                        # the node the breaking rewrite was rooted at
    report: CompareReport                   # original vs the graph after that rewrite

    def __str__(self) -> str:
        where = f"pass #{self.pass_index} '{self.pass_name}'"
        if self.rewrite_index is not None:
            where += (f", rewrite #{self.rewrite_index} (rule '{self.rule}' at node "
                      f"'{self.node}')")
        worst = max(self.report.outputs, key=lambda o: o.max_rel)
        return (f"first breaking change: {where}: output '{worst.name}' max rel error "
                f"{worst.max_rel:.3g} (tolerance {worst.tolerance:.0e})")


def bisect(graph: Graph, passes: str | Pass | Sequence[str | Pass],
           inputs: Mapping[str, np.ndarray] | None = None, *,
           tolerance: float | None = None) -> BisectResult | None:
    """Run `passes` in order, comparing each result with `graph` on `inputs` (default: a seeded
    probe); for the first pass that breaks equivalence, binary-search the number of rewrites it
    may make for the first that breaks it. None if every pass keeps the graph equivalent."""
    inputs = dict(inputs) if inputs is not None else probe_inputs(graph)

    def broken(candidate: Graph) -> CompareReport | None:
        report = compare(graph, candidate, inputs, tolerance=tolerance)
        return None if report.ok else report

    sandbox = Sandbox(graph)
    try:
        return _first_break(sandbox, resolve(passes), broken)
    finally:
        sandbox.restore()


def _first_break(sandbox: Sandbox, passes: list[tuple[str, Pass]], broken) -> BisectResult | None:
    current = sandbox.graph
    for index, (name, fn) in enumerate(passes):
        with rewrite_limit(None) as log:
            after = sandbox.run(name, fn, current)[0].graph
        report = broken(after)
        if report is None:
            current = after
            continue
        low, high = 1, len(log.entries)     # the answer k lies in [low, high]
        if high == 0:     # broke without a recorded rewrite: the pass cannot be replayed
            return BisectResult(name, index, None, None, None, report)
        while low < high:
            middle = (low + high) // 2
            with rewrite_limit(middle):
                partial = sandbox.run(name, fn, current)[0].graph
            if broken(partial) is not None:
                high = middle
            else:
                low = middle + 1
        with rewrite_limit(low):
            report = broken(sandbox.run(name, fn, current)[0].graph) or report
        rule, node = log.entries[low - 1]
        return BisectResult(name, index, low, rule, node, report)
    return None
