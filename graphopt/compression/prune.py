"""`prune` (`go.prune`): structured channel pruning that really shrinks the graph, or
unstructured magnitude pruning reported as sparsity.

    p = go.prune(g, ratio=0.4)                              # 40 % of each layer's channels
    p = go.prune(g, ratio={"conv3": 0.5}, criterion="l2")   # chosen layers, own ratios
    p = go.prune(g, ratio=0.4, criterion="activation", data=batches)
    p = go.prune(g, budget=0.01, data=batches, metric=top1) # the most per layer within budget
    u = go.prune(g, ratio=0.8, structured=False)            # zeros, no speed claim

Channels are ranked within each family (the units a layer, or a set of layers tied by residual
adds, computes: see `channels.py`) and the lowest `ratio` of them removed, at least one kept.
Criteria: "l1" / "l2" (norm of each channel's filters, each layer's norms divided by their
mean so tied layers weigh alike), "bn_gamma" (|scale| of the batch norm after each layer,
network slimming's), "activation" (with `data`: mean |activation| of the channel times the
norm of the weights that read it, what removing it takes from the next layers' inputs)."""
from __future__ import annotations

from typing import Mapping, Sequence

import numpy as np

from ..analysis import node_macs, node_params
from ..errors import OptionError
from ..evaluation import Evaluator, Metric, evaluation_batches
from ..ir import Graph
from ..passes.manager import PassManager, PassResult
from ..passes.prune_channels import prune_channels
from ..signature import probe_inputs
from ..targets.reference import interpret
from .budget import search_levels
from .channels import SOURCE_OPS, ChannelGroups, Unit, channel_groups
from .result import CompressionResult, LayerChange

CRITERIA = ("l1", "l2", "bn_gamma", "activation")
BUDGET_RATIOS = (0.1, 0.2, 0.3, 0.4, 0.5, 0.6, 0.7, 0.8, 0.9)


def prune(graph: Graph, ratio: float | Mapping[str, float] | None = None, *,
          criterion: str = "l1", data=None, structured: bool = True,
          layers: Sequence[str] | None = None, multiple_of: int = 1,
          budget: float | None = None, eval_inputs=None,
          metric: Metric | None = None) -> CompressionResult:
    """`graph` (left unchanged) with the lowest-ranked `ratio` of each layer's output channels
    removed (a float for every prunable layer, or {layer name: ratio}); returns a
    CompressionResult whose report has one row per channel family. `data`: batches ({input
    name: array} dicts, graph-shaped) for the "activation" criterion and the per-layer errors
    (default: a seeded probe). `layers`: only the families computed by these layers.
    `structured=False`: zero the `ratio` smallest weights of each conv and linear layer instead
    (same shapes; reported as sparsity). `multiple_of`: each family keeps a multiple of this
    many channels, the one nearest to what `ratio` leaves (vector widths and tensor cores
    prefer multiples of 8 or 16). `budget`: the largest ratio per family (scanned in
    steps of 0.1, up to `ratio` when given) keeping the metric's drop (with `metric`) or the
    relative output error on `eval_inputs` (default: `data`) within it."""
    _check_options(criterion, ratio, budget, data, eval_inputs)
    if isinstance(multiple_of, bool) or not isinstance(multiple_of, int) or multiple_of < 1:
        raise OptionError(f"expected multiple_of a positive int, found {multiple_of!r}")
    quantized = [n for n in graph.nodes if n.op_name.startswith("qlinear_")]
    if quantized:
        raise OptionError(f"prune the float graph, then quantize it: '{quantized[0].name}' is "
                          f"already {quantized[0].op_name}")
    if not structured:
        if budget is not None:
            raise OptionError("budget= applies to structured pruning")
        return prune_weights(graph, 0.5 if ratio is None else ratio, layers)
    groups = channel_groups(graph)
    families = _families(groups, layers)
    batches = evaluation_batches(data) if data is not None else [probe_inputs(graph)]
    scores = unit_scores(groups, families, criterion, batches)
    scores = Ranking(scores, multiple_of)
    if budget is not None:
        evaluate = Evaluator(graph, eval_inputs if eval_inputs is not None else data, metric)
        top = max(ratio.values()) if isinstance(ratio, Mapping) else ratio or 0.9
        levels = {name: [r for r in BUDGET_RATIOS if r <= top + 1e-9] for name in families}

        def loss(choice: Mapping[str, float]) -> float:
            pruned = _apply(graph, groups, _removed(families, scores, choice)).graph
            return evaluate.loss(evaluate(pruned))

        chosen, scan = search_levels(levels, loss, budget)
        result = _result(graph, groups, families, scores, chosen, batches)
        result.note = scan.summary(budget, "ratio", evaluate.metric is not None)
        return result
    ratios = _ratios(ratio if ratio is not None else 0.5, families, groups)
    return _result(graph, groups, families, scores, ratios, batches)


def _check_options(criterion, ratio, budget, data, eval_inputs) -> None:
    if criterion not in CRITERIA:
        raise OptionError(f"expected criterion one of {', '.join(CRITERIA)}, found {criterion!r}")
    if criterion == "activation" and data is None:
        raise OptionError("criterion 'activation' needs data= (batches to measure activations on)")
    values = ratio.values() if isinstance(ratio, Mapping) else [] if ratio is None else [ratio]
    for value in values:
        if isinstance(value, bool) or not isinstance(value, (int, float)) or \
                not 0.0 <= value < 1.0:
            raise OptionError(f"expected a pruning ratio in [0, 1), found {value!r}")
    if budget is not None:
        if isinstance(budget, bool) or not isinstance(budget, (int, float)) or budget < 0:
            raise OptionError(f"expected a non-negative budget, found {budget!r}")
        if data is None and eval_inputs is None:
            raise OptionError("budget= needs eval_inputs= or data= (the batches the budget is "
                              "measured on)")


def family_name(layers: tuple[str, ...]) -> str:
    """How reports and ratio mappings name a family: its first layer (and how many more)."""
    return layers[0] if len(layers) == 1 else f"{layers[0]} (+{len(layers) - 1} tied)"


def _families(groups: ChannelGroups, layers) -> dict[str, list[Unit]]:
    """The prunable families by display name, in graph order, restricted to `layers`."""
    order = {n.name: i for i, n in enumerate(groups.graph.topological_order())}
    found = groups.families()
    if layers is not None:
        known = {n.name for n in groups.graph.nodes if n.op_name in SOURCE_OPS}
        unknown = [name for name in layers if name not in known]
        if unknown:
            raise OptionError(f"no conv or linear layer named {unknown}; layers: "
                              f"{', '.join(sorted(known, key=order.get))}")
        found = {key: units for key, units in found.items() if set(key) & set(layers)}
    ordered = sorted(found, key=lambda key: min(order[name] for name in key))
    return {family_name(sorted(key, key=order.get)): found[key] for key in ordered}


def _ratios(ratio, families: dict[str, list[Unit]], groups: ChannelGroups) -> dict[str, float]:
    """{family name: ratio}; a mapping names families by any of their layers."""
    if not isinstance(ratio, Mapping):
        return {name: float(ratio) for name in families}
    by_layer = {layer: name for name, units in families.items()
                for layer in units[0].source_layers}
    chosen: dict[str, float] = {}
    for layer, value in ratio.items():
        if layer not in by_layer:
            pinned = groups.pin_reasons(layer)
            why = f": its channels are pinned ({'; '.join(pinned)})" if pinned else ""
            raise OptionError(f"no prunable layer named '{layer}'{why}; prunable: "
                              f"{', '.join(by_layer)}")
        name = by_layer[layer]
        if name in chosen and chosen[name] != value:
            raise OptionError(f"layers tied by residual adds are pruned together: "
                              f"'{layer}' is in family '{name}', already given {chosen[name]}")
        chosen[name] = float(value)
    return chosen


# ---- ranking ------------------------------------------------------------------------------------
def _filter_norms(graph: Graph, layer: str, order: int) -> np.ndarray:
    node = graph.node(layer)
    w = node.inputs[1].data.astype(np.float64)
    if node.op_name == "conv_transpose2d":
        w = np.moveaxis(w, 1, 0)
    norms = np.linalg.norm(w.reshape(w.shape[0], -1), ord=order, axis=1)
    return norms / (norms.mean() or 1.0)


def _gamma(graph: Graph, layer: str) -> np.ndarray:
    users = graph.node(layer).output.users
    if len(users) != 1 or users[0].op_name != "batch_norm" or not users[0].inputs[1].is_constant:
        raise OptionError(f"criterion 'bn_gamma' needs a batch_norm right after each pruned "
                          f"layer; '{layer}' has none (use 'l1', or prune before folding)")
    gamma = np.abs(users[0].inputs[1].data.astype(np.float64))
    return gamma / (gamma.mean() or 1.0)


def unit_scores(groups: ChannelGroups, families: dict[str, list[Unit]], criterion: str,
                batches) -> dict:
    """Importance of every unit of `families` (higher: more important), by unit root."""
    graph = groups.graph
    if criterion == "activation":
        return _activation_scores(groups, families, batches)
    per_layer = {}
    scores = {}
    for units in families.values():
        for unit in units:
            total = 0.0
            for layer, c in unit.sources:
                if layer not in per_layer:
                    per_layer[layer] = _gamma(graph, layer) if criterion == "bn_gamma" else \
                        _filter_norms(graph, layer, 1 if criterion == "l1" else 2)
                total += per_layer[layer][c]
            scores[unit.root] = total
    return scores


def _activation_scores(groups: ChannelGroups, families, batches) -> dict:
    """Mean |activation| of each channel read by a conv or linear layer, times the norm of the
    weights reading it, each reader's products divided by their mean; summed per unit."""
    graph = groups.graph
    readers = [n for n in graph.nodes if n.op_name in SOURCE_OPS and n.inputs[0].name in
               groups.channels and getattr(getattr(n.op, "conv", n.op), "groups", 1) == 1]
    wanted = {n.inputs[0].name for n in readers}
    sums = {name: 0.0 for name in wanted}
    for batch in batches:
        values = interpret(graph, batch, keep=True)
        for name in wanted:
            a = np.abs(values[name].astype(np.float64))   # [N, C, ...] -> mean per channel
            sums[name] = sums[name] + a.reshape(a.shape[0], a.shape[1], -1).mean(axis=(0, 2))
    slot_score: dict = {}
    for node in readers:
        x = node.inputs[0]
        block = groups.block[x.name]
        mean_abs = (sums[x.name] / len(batches)).reshape(-1, block).mean(axis=1)
        w = node.inputs[1].data.astype(np.float64)
        w = w if node.op_name != "conv_transpose2d" else np.moveaxis(w, 1, 0)
        w = np.moveaxis(w, 1, 0).reshape(groups.channels[x.name], -1)   # rows: input channels
        contribution = mean_abs * np.linalg.norm(w, axis=1)
        contribution /= contribution.mean() or 1.0
        for c, value in enumerate(contribution):
            slot_score[(x.name, c)] = slot_score.get((x.name, c), 0.0) + value
    return {unit.root: sum(slot_score.get(slot, 0.0) for slot in unit.slots)
            for units in families.values() for unit in units}


class Ranking(dict):
    """Unit scores by root, and the multiple of units each family keeps."""

    def __init__(self, scores: Mapping, multiple_of: int = 1):
        super().__init__(scores)
        self.multiple_of = multiple_of

    def kept(self, count: int, ratio: float) -> int:
        """How many of a family's `count` units stay at `ratio`: the rest rounded down, at
        least one, then the nearest multiple (at least one multiple, at most all)."""
        keep = max(count - int(ratio * count + 1e-9), 1)
        step = self.multiple_of
        if step > 1 and count > step and ratio > 0:
            keep = min(max(step, int(keep / step + 0.5) * step), count)
        return keep


def _removed(families: dict[str, list[Unit]], scores: Ranking, ratios: Mapping[str, float]) -> set:
    """Roots of the units to remove: per family the lowest-scored ones beyond what
    `scores.kept` keeps."""
    removed = set()
    for name, ratio in ratios.items():
        units = sorted(families[name], key=lambda u: (scores[u.root], u.root))
        removed.update(u.root for u in units[:len(units) - scores.kept(len(units), ratio)])
    return removed


def _apply(graph: Graph, groups: ChannelGroups, removed: set):
    return PassManager([prune_channels(groups, removed)]).run(graph)


# ---- the result ---------------------------------------------------------------------------------
def _result(graph: Graph, groups: ChannelGroups, families, scores, ratios: Mapping[str, float],
            batches) -> CompressionResult:
    removed = _removed(families, scores, ratios)
    done = _apply(graph, groups, removed)
    evaluate = Evaluator(graph, batches[:1], None)
    rows = []
    for name, units in families.items():
        ratio = ratios.get(name, 0.0)
        alone = _removed({name: units}, scores, {name: ratio})
        kept = len(units) - len(alone)
        layers = units[0].source_layers
        op = graph.node(layers[0]).op_name
        if not alone:
            rows.append(LayerChange(name, op, f"kept: {len(units)} channels", *_cost(graph,
                        graph, layers), None))
            continue
        pruned = _apply(graph, groups, alone).graph
        rows.append(LayerChange(name, op, f"channels {len(units)} -> {kept}",
                                *_cost(graph, pruned, _touched(graph, pruned)),
                                evaluate(pruned).error))
    return CompressionResult(done.graph, graph, done.records, kind="prune", layers=tuple(rows),
                             note=f"output error of the pruned graph: "
                                  f"{evaluate(done.graph).error:.3g}")


def _touched(before: Graph, after: Graph) -> list[str]:
    """Nodes whose inputs changed shape."""
    return [n.name for n in before.nodes
            if [v.shape for v in n.inputs] != [v.shape for v in after.node(n.name).inputs] or
            [v.shape for v in n.outputs] != [v.shape for v in after.node(n.name).outputs]]


def _cost(before: Graph, after: Graph, names) -> tuple[tuple[int, int], tuple[int, int]]:
    names = list(names)
    params = (sum(node_params(before.node(n)) for n in names),
              sum(node_params(after.node(n)) for n in names))
    macs = (sum(node_macs(before.node(n)) for n in names),
            sum(node_macs(after.node(n)) for n in names))
    return params, macs


# ---- unstructured -------------------------------------------------------------------------------
def prune_weights(graph: Graph, ratio, layers=None) -> CompressionResult:
    """Zero the `ratio` smallest-magnitude weights of each conv and linear layer (or of
    `layers`; `ratio` may map layer names to ratios). The shapes stay: graphopt has no sparse
    kernel, so the compiled model computes the zeros and is no faster; the report says so."""
    candidates = [n for n in graph.topological_order()
                  if n.op_name in SOURCE_OPS and n.inputs[1].is_constant]
    names = [n.name for n in candidates]
    if isinstance(ratio, Mapping):
        wanted = dict(ratio)
    else:
        wanted = {name: float(ratio) for name in (layers if layers is not None else names)}
    unknown = [name for name in wanted if name not in names]
    if unknown:
        raise OptionError(f"no conv or linear layer named {unknown}; layers: {', '.join(names)}")
    rows: list[LayerChange] = []

    def zero_smallest(g: Graph) -> PassResult:
        new = g.copy()
        for name, ratio_ in wanted.items():
            node = new.node(name)
            w = node.inputs[1]
            flat = np.abs(w.data).reshape(-1)
            count = int(ratio_ * flat.size + 1e-9)
            if count == 0:
                continue
            order = np.argsort(flat, kind="stable")[:count]
            data = w.data.copy().reshape(-1)
            data[order] = 0
            c = new.add_constant(w.name, data.reshape(w.shape))
            node.inputs = [c if v is w else v for v in node.inputs]
            w.users.remove(node)
            c.users.append(node)
            new.remove_unused_constants()
            if not new.has_name(w.name):
                new.rename_value(c, w.name)
            sparsity = float(np.mean(data == 0))
            params = node_params(node)
            rows.append(LayerChange(name, node.op_name, f"sparsity {sparsity:.0%}",
                                    (params, params), (node_macs(node),) * 2))
        return PassResult(new, bool(rows), {"layers": len(rows)})

    done = PassManager([zero_smallest]).run(graph)
    return CompressionResult(done.graph, graph, done.records, kind="prune (unstructured)",
                             layers=tuple(rows),
                             note="unstructured: shapes, params and MACs are unchanged (the "
                                  "zeros are computed); no speed-up without a sparse kernel")
