"""Which layers int8 hurts, and the fewest to keep in float32 for an accuracy budget.

    table = go.sensitivity(g, calib, eval_batches)              # output error per layer
    table = go.sensitivity(g, calib, eval_batches, metric=top1)  # or a score's drop
    print(table)                                                # most sensitive first
    q = go.quantize(g, calib, budget=0.005, eval_inputs=eval_batches, metric=top1)
    print(q.report)                                             # ... and which layers stayed

`sensitivity` quantizes one layer at a time (every other layer kept in float32) and measures the
graph's outputs on the evaluation batches against the float graph's, in the reference
interpreter: the error is max |quantized - float| / max |float| over every output, the `metric`
(a score where higher is better, such as top-1 accuracy; pass a loss negated) is computed on the
outputs of all batches concatenated along axis 0. The budget search of
`quantize(..., budget=)` keeps layers in float32 in that order, most sensitive first, and stops
at the first set that meets the budget: the fewest layers in float32 for that ordering, as
Intel Neural Compressor's and ONNX Runtime's accuracy-driven tuning do.
"""
from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Callable, Iterable

import numpy as np

from ..errors import OptionError
from ..ir import Graph
from ..passes.manager import OptimizeResult
from ..table import format_table
from ..evaluation import Evaluation, Evaluator, Metric, evaluation_batches, run_batches  # noqa: F401
from .convert import check_calibration, check_keep, convert

INTEGER_LAYERS = ("qlinear_conv2d", "qlinear_matmul")


@dataclass(frozen=True)
class LayerSensitivity:
    """The graph with only `layer` in integers. `layer` is the node of the optimized graph (a
    fused node), `stands_for` the original nodes it computes."""

    layer: str
    op: str
    stands_for: tuple[str, ...]
    evaluation: Evaluation
    baseline: float | None = None

    @property
    def error(self) -> float:
        return self.evaluation.error

    @property
    def drop(self) -> float | None:
        """How much the metric falls from the float graph's (None without a metric)."""
        if self.evaluation.metric is None or self.baseline is None:
            return None
        return self.baseline - self.evaluation.metric


@dataclass(frozen=True)
class Sensitivity:
    """Per quantizable layer, what quantizing it alone does, most sensitive first (by metric
    drop with a metric, else by error); with the float graph's metric (`baseline`) and the
    evaluation of the graph with every layer quantized (`quantized`)."""

    graph: str
    samples: int
    baseline: float | None
    quantized: Evaluation
    layers: tuple[LayerSensitivity, ...] = field(repr=False)

    def names(self) -> list[str]:
        """The layers, most sensitive first."""
        return [row.layer for row in self.layers]

    def table(self) -> str:
        metric = self.baseline is not None
        title = (f"int8 sensitivity of '{self.graph}' on {self.samples} samples: "
                 f"every layer in integers: error {self.quantized.error:.3g}")
        if metric:
            title += (f", metric {self.quantized.metric:.6g} (float32: {self.baseline:.6g}, "
                      f"drop {self.baseline - self.quantized.metric:.3g})")
        if not self.layers:
            return title + "\nno layer computes in integers"
        head = ["layer (alone in int8)", "op", "stands for", "error"] + \
            (["metric", "drop"] if metric else [])
        rows = []
        for row in self.layers:
            cells = [row.layer, row.op, ", ".join(row.stands_for), f"{row.error:.3g}"]
            if metric:
                cells += [f"{row.evaluation.metric:.6g}", f"{row.drop:.3g}"]
            rows.append(cells)
        return title + "\n" + format_table(rows, head, right=range(3, len(head)), rule=True)

    def __str__(self) -> str:
        return self.table()


@dataclass
class BudgetResult(OptimizeResult):
    """`quantize(..., budget=)`'s result: the OptimizeResult of the graph it chose, the layers it
    kept in float32 to meet the budget (most sensitive first), that graph's evaluation and the
    sensitivity table the choice followed (None when every layer fit the budget at once)."""

    budget: float = 0.0
    kept: tuple[str, ...] = ()
    evaluation: Evaluation | None = None
    sensitivity: Sensitivity | None = None
    baseline: float | None = None

    @property
    def report(self) -> str:
        measure = "metric drop" if self.baseline is not None else "error"
        found = self.evaluation.error if self.baseline is None else \
            self.baseline - self.evaluation.metric
        stands_for = {row.layer: row.stands_for for row in self.sensitivity.layers} \
            if self.sensitivity else {}
        kept = ", ".join(f"{name} [{', '.join(stands_for.get(name, ()))}]"
                         for name in self.kept) or "none"
        met = "met" if found <= self.budget else "NOT met (no layer left to keep)"
        return (super().report + f"\nbudget: {measure} <= {self.budget:g}: {met} with "
                f"{measure} {found:.3g}; kept in float32 for it: {kept}")


def integer_layers(result: OptimizeResult) -> list[tuple[str, str, tuple[str, ...]]]:
    """(node name, op, provenance) of every layer the quantized graph computes in integers."""
    return [(n.name, n.op_name, tuple(n.provenance)) for n in result.graph.topological_order()
            if n.op_name in INTEGER_LAYERS]


def keep_all_but(layers, index: int, keep: tuple[str, ...]) -> tuple[str, ...]:
    """The keep list leaving only layer `index` to be quantized: every other layer's original
    nodes (names of the original graph, so that the keep list matches after fusion)."""
    names = dict.fromkeys(keep)
    for i, (_, _, stands_for) in enumerate(layers):
        if i != index:
            names.update(dict.fromkeys(stands_for))
    return tuple(names)


def sensitivity(graph: Graph, calib, inputs, metric: Metric | None = None, *,
                per_channel: bool = True, keep: str | Iterable[str] = (),
                progress: Callable[[int, str], object] | None = None,
                reduce_range: bool = False) -> Sensitivity:
    """Quantize each layer of `graph` alone (int8 with `calib`, as `quantize` would) and
    measure the outputs on `inputs` (a {input name: array} dict or a list of them) against the
    float graph's: the error and, with `metric(outputs) -> float` (higher is better), its drop.
    Layers named in `keep` are left out. `progress(index, layer)` is called after each layer.
    Returns a `Sensitivity`, most sensitive layer first."""
    if progress is not None and not callable(progress):
        raise OptionError(f"expected progress to be a callable(index, layer), found "
                          f"{type(progress).__name__}")
    check_calibration(graph, calib)
    return layer_sensitivity(graph, calib, Evaluator(graph, inputs, metric),
                             check_keep(graph, keep), per_channel, progress, reduce_range)


def layer_sensitivity(graph: Graph, calib, evaluate: Evaluator, keep: tuple[str, ...],
                      per_channel: bool, progress=None, reduce_range: bool = False
                      ) -> Sensitivity:
    """`sensitivity` with its evaluator made (the float graph's outputs computed once)."""
    full = convert(graph, calib, "int8", keep, per_channel, reduce_range=reduce_range)
    layers = integer_layers(full)
    rows = []
    for index, (name, op, stands_for) in enumerate(layers):
        alone = convert(graph, calib, "int8", keep_all_but(layers, index, keep), per_channel,
                        reduce_range=reduce_range)
        rows.append(LayerSensitivity(name, op, stands_for, evaluate(alone.graph),
                                     evaluate.baseline))
        if progress is not None:
            progress(index, name)
    rows.sort(key=lambda row: (-evaluate.loss(row.evaluation), -row.error))
    return Sensitivity(graph.name, evaluate.samples, evaluate.baseline, evaluate(full.graph),
                       tuple(rows))


def quantize_within_budget(graph: Graph, calib, budget: float, eval_inputs,
                           metric: Metric | None, keep: tuple[str, ...], per_channel: bool,
                           **options) -> BudgetResult:
    """int8 `graph` with the fewest layers kept in float32, most sensitive first, for which the
    metric's drop (with `metric`) or the output error stays within `budget`."""
    if isinstance(budget, bool) or not isinstance(budget, (int, float, np.floating)) or \
            not math.isfinite(budget) or budget < 0:
        raise OptionError(f"expected budget to be a finite number >= 0 (the largest "
                          f"{'metric drop' if metric else 'relative output error'} allowed), "
                          f"found {budget!r}")
    evaluate = Evaluator(graph, eval_inputs, metric)

    def result(chosen: OptimizeResult, kept, evaluation, table) -> BudgetResult:
        return BudgetResult(chosen.graph, chosen.original, chosen.records, float(budget),
                            tuple(kept), evaluation, table, evaluate.baseline)

    full = convert(graph, calib, "int8", keep, per_channel, **options)
    evaluation = evaluate(full.graph)
    if evaluate.loss(evaluation) <= budget:
        return result(full, (), evaluation, None)
    table = layer_sensitivity(graph, calib, evaluate, keep, per_channel,
                              reduce_range=options.get("reduce_range", False))
    by_name = {row.layer: row for row in table.layers}
    kept: list[str] = []
    chosen, chosen_evaluation = full, evaluation
    for name in table.names():
        kept.append(name)
        names = keep + tuple(n for layer in kept for n in by_name[layer].stands_for)
        chosen = convert(graph, calib, "int8", names, per_channel, **options)
        chosen_evaluation = evaluate(chosen.graph)
        if evaluate.loss(chosen_evaluation) <= budget:
            break
    return result(chosen, kept, chosen_evaluation, table)
