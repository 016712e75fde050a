"""Evaluating candidate graphs against a reference graph on fixed batches: the relative output
error and, with a metric (a score where higher is better, such as top-1 accuracy), its value.
Used by every accuracy-driven search (int8 sensitivity and budgets, compression budgets)."""
from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Callable, Mapping

import numpy as np

from .errors import InputError, OptionError
from .ir import Graph
from .targets.reference import interpret

Metric = Callable[[Mapping[str, np.ndarray]], float]


@dataclass(frozen=True)
class Evaluation:
    """A graph's outputs on the evaluation batches against the float graph's: the largest
    relative error over its outputs and, with a metric, the metric's value."""

    error: float
    metric: float | None = None


def evaluation_batches(inputs) -> list[Mapping[str, np.ndarray]]:
    """The evaluation inputs as a list of batches: one {input name: array} dict, or an iterable
    of them."""
    if isinstance(inputs, Mapping):
        return [inputs]
    try:
        batches = list(inputs)
    except TypeError:
        raise InputError(f"expected evaluation inputs as a {{input name: array}} dict or an "
                         f"iterable of them, found {type(inputs).__name__}") from None
    if not batches:
        raise InputError("expected at least one evaluation batch, found none")
    bad = [i for i, batch in enumerate(batches) if not isinstance(batch, Mapping)]
    if bad:
        raise InputError(f"evaluation batch {bad[0]}: expected a {{input name: array}} dict, "
                         f"found {type(batches[bad[0]]).__name__}")
    return batches


def run_batches(graph: Graph, batches: list[Mapping[str, np.ndarray]]) -> dict[str, np.ndarray]:
    """`graph`'s outputs on every batch in the reference interpreter, concatenated along axis 0
    (a scalar output per batch becomes a vector)."""
    runs = [interpret(graph, batch) for batch in batches]
    return {name: np.concatenate([np.atleast_1d(r[name]) for r in runs])
            for name in graph.output_names}


class Evaluator:
    """Evaluates candidate graphs against the float graph's outputs on fixed batches."""

    def __init__(self, graph: Graph, inputs, metric: Metric | None):
        if metric is not None and not callable(metric):
            raise OptionError(f"expected metric to be a callable(outputs) -> float, found "
                              f"{type(metric).__name__}")
        self.batches = evaluation_batches(inputs)
        self.metric = metric
        self.reference = run_batches(graph, self.batches)
        self.samples = len(next(iter(self.reference.values()))) if self.reference else 0
        self.baseline = self.score(self.reference)

    def score(self, outputs: Mapping[str, np.ndarray]) -> float | None:
        if self.metric is None:
            return None
        value = self.metric(outputs)
        try:
            value = float(value)
        except (TypeError, ValueError):
            raise OptionError(f"expected the metric to return a number, found "
                              f"{type(value).__name__}") from None
        if not math.isfinite(value):
            raise OptionError(f"expected the metric to return a finite number, found {value}")
        return value

    def __call__(self, graph: Graph) -> Evaluation:
        outputs = run_batches(graph, self.batches)
        error = 0.0
        for name, expected in self.reference.items():
            expected = expected.astype(np.float64)
            found = outputs[name].astype(np.float64)
            scale = float(np.abs(expected).max(initial=0.0)) or 1.0
            error = max(error, float(np.abs(found - expected).max(initial=0.0)) / scale)
        return Evaluation(error, self.score(outputs))

    def loss(self, evaluation: Evaluation) -> float:
        """What the budget bounds: the metric's drop with a metric, else the error."""
        if self.metric is None:
            return evaluation.error
        return self.baseline - evaluation.metric
