"""factorize: convolutions and linear layers replaced by two thinner factors (1x1 bottlenecks).

Per layer, the rank comes from an energy threshold on a spectrum or from a rank ratio; the
factors from the weight's SVD or, with `data`, from what the layer computes on it:

- form "expand" (KxK Cin -> r, then 1x1 r -> Cout): the weight as W [Cout, Cin*K*K]. Plain:
  P = the top r left singular vectors of W. With data (Zhang et al. 2015, "Accelerating Very
  Deep Convolutional Networks", the linear case): P = the top r eigenvectors of the covariance
  of the layer's linear responses y = W x, and y ~ P P^T y + (I - P P^T) mean(y). The first
  factor is P^T W, the second P with bias b + (I - P P^T) mean(y).
- form "reduce" (1x1 Cin -> r, then KxK r -> Cout, GoogLeNet-style; linear and 1x1 layers
  take form "expand" only): the weight as W [Cout*K*K, Cin]. With C = E[x x^T] the input
  channels' uncentered second moment (plus a tiny ridge) and S its Cholesky factor (S = I
  without data), W S = U Sigma V^T; the first factor is V_r^T S^-1, the second
  W S V_r = U_r Sigma_r: the rank-r weight that best reconstructs the responses. Uncentered,
  so that the mean input is one more direction, exact even where the kernel reads padding.

The rank keeps a fraction of the energy: the smallest r whose dropped eigenvalues (squared
singular values of W, of W S with data, or with data in form "expand" eigenvalues of the
responses' covariance) sum to at most (1 - energy) times the total. The total is their sum,
except in form "reduce" with data: the variance of the responses (as in form "expand"), since
after a relu the mean input alone holds most of the uncentered energy (a total over the
uncentered spectrum gave VGG-11's layers rank 1 at energy 0.9). Each layer takes the form that
costs fewer MACs at its rank, and is rewritten only when that is fewer than the layer's own.
Spectra and singular vectors come from eigendecompositions of Gram matrices."""
from __future__ import annotations

import math
import numbers
from dataclasses import dataclass
from typing import Callable, Iterable, Mapping

import numpy as np

from .. import ops
from ..analysis import node_macs, node_params
from ..errors import OptionError
from ..ir import Graph, Node, TensorType
from ..passes.insert_bottleneck import (FORMS, Bottleneck, factor_ops, insert_bottleneck,
                                        layer_parts)
from ..passes.manager import PassManager
from ..evaluation import Evaluator, Metric, evaluation_batches
from ..signature import probe_inputs
from ..targets.reference import interpret
from .budget import search_levels
from .result import CompressionResult, LayerChange

LAYER_OPS = ("conv2d", "fused_conv2d", "linear")
DEFAULT_ENERGY = 0.9
# Two kernels in place of one cost an extra pass over the intermediate activation: a layer
# saving less than this fraction of its MACs measured slower compiled (VGG-11 at energy 0.9 from
# its random weights: 0.91x the MACs, 1.39x the latency).
MIN_SAVING = 0.2
BUDGET_ENERGIES = (0.99, 0.95, 0.9, 0.8, 0.7, 0.6, 0.5)   # weakest to strongest compression
# Added to the input's second moment, relative to its mean diagonal, so that its Cholesky factor
# exists when channels are linearly dependent (a dead relu channel, a constant input).
RIDGE = 1e-6


def factorize(graph: Graph, energy: float | Mapping[str, float] | None = None, *,
              rank_ratio: float | Mapping[str, float] | None = None, data=None,
              layers: Iterable[str] | None = None, check: bool = False,
              min_saving: float = MIN_SAVING, budget: float | None = None, eval_inputs=None,
              metric: Metric | None = None) -> CompressionResult:
    """`graph` (left unchanged) with its convolutions and linear layers factored into two
    thinner ones each (see the module's docstring); returns a CompressionResult whose `.layers`
    has one LayerChange per layer considered (rank, params, MACs, the relative error of the
    layer's output on its own inputs), whose `.graph` is the rewritten graph.

    `energy` (default 0.9): each layer keeps the smallest rank whose spectrum keeps that
    fraction of its energy. `rank_ratio`: rank = max(1, round(ratio * full rank)). Either may
    be a {layer name: value} mapping; layers it does not name are left alone. `data`: a
    {input name: array} dict or a list of them: factors from the layers' responses on it, and
    the errors measured on it (else on a random probe). `layers`: the node names to consider
    (default: every conv2d and fused_conv2d with groups 1, and every linear). `check=True`
    also compares the factored graph with the original end to end (the report's note).

    `min_saving`: a layer is factored only when that saves at least this fraction of its MACs
    (else it is kept, with the reason).

    `budget`: per layer the lowest energy of BUDGET_ENERGIES (down to `energy` when given)
    that keeps the metric's drop (with `metric`) or the relative output error on `eval_inputs`
    (default: `data`) within it, layers scanned alone then together (`budget.search_levels`);
    the report's note has the scan.

    To try many ranks on one graph (a budget search), make a `Factorizer(graph, data)` once
    and call its `factorize`: it keeps each layer's moments and eigendecompositions."""
    if isinstance(min_saving, bool) or not isinstance(min_saving, numbers.Real) or \
            not 0 <= min_saving < 1:
        raise OptionError(f"expected min_saving in [0, 1), found {min_saving!r}")
    factorizer = Factorizer(graph, data, min_saving)
    if budget is None:
        return factorizer.factorize(energy, rank_ratio=rank_ratio, layers=layers, check=check)
    if isinstance(budget, bool) or not isinstance(budget, numbers.Real) or budget < 0:
        raise OptionError(f"expected a non-negative budget, found {budget!r}")
    if rank_ratio is not None or isinstance(energy, Mapping):
        raise OptionError("budget= chooses each layer's energy: give at most one energy (the "
                          "lowest to try), no rank_ratio")
    if data is None and eval_inputs is None:
        raise OptionError("budget= needs eval_inputs= or data= (the batches the budget is "
                          "measured on)")
    lowest = _fraction("energy", energy) if energy is not None else min(BUDGET_ENERGIES)
    evaluate = Evaluator(graph, eval_inputs if eval_inputs is not None else data, metric)
    names = [n.name for n in _layers(graph, layers, RankRule.of(None, None))
             if _unfactorable(n) is None]
    levels = {name: [e for e in BUDGET_ENERGIES if e >= lowest - 1e-12] for name in names}

    def loss(choice: Mapping[str, float]) -> float:
        factored = factorizer.factorize(dict(choice), errors=False).graph
        return evaluate.loss(evaluate(factored))

    chosen, scan = search_levels(levels, loss, budget)
    result = factorizer.factorize(chosen or {}, check=check)
    result.note += "\n" + scan.summary(budget, "energy", evaluate.metric is not None)
    return result


class Factorizer:
    """What `factorize` computes once per graph and data, kept for every call: the layers'
    moments over the data (one pass, at the first data-driven plan) and each layer's spectra
    (eigendecompositions, at its first plan). `graph` must not change while it is in use."""

    def __init__(self, graph: Graph, data=None, min_saving: float = MIN_SAVING):
        self.graph, self.min_saving = graph, min_saving
        self.data_driven = data is not None
        self.batches = evaluation_batches(data) if data is not None else [probe_inputs(graph)]
        self._moments: dict[str, Moments] | None = None
        self._spectra: dict[str, tuple[Spectrum, ...]] = {}

    def factorize(self, energy: float | Mapping[str, float] | None = None, *,
                  rank_ratio: float | Mapping[str, float] | None = None,
                  layers: Iterable[str] | None = None, check: bool = False,
                  errors: bool = True) -> CompressionResult:
        """`factorize(graph, energy, rank_ratio=..., data=..., layers=..., check=...)` with
        the graph and data of this Factorizer (`errors=False`: the per-layer errors are not
        measured, for searches that only need the graph)."""
        graph, batches = self.graph, self.batches
        rule = RankRule.of(energy, rank_ratio)
        nodes = _layers(graph, layers, rule)
        plans = [self._plan(node, rule) for node in nodes]
        measured = [p for p in plans if p.factors is not None] if errors else []
        errors = _layer_errors(graph, measured, batches)
        bottlenecks = {p.node.name: p.factors for p in plans if p.factors is not None}
        result = PassManager([insert_bottleneck(bottlenecks)]).run(graph)
        where = f"the data ({len(batches)} batch{'es' if len(batches) > 1 else ''})" \
            if self.data_driven else "a random probe input"
        source = ", factors from the responses on the data" if self.data_driven else ""
        note = (f"rank from {rule.describe()}{source}; error: max |factored - original| / "
                f"max |original| of each layer's output, on {where}")
        few = [n.name for n in nodes if self.data_driven and _unfactorable(n) is None
               and self.moments(n).responses <= n.inputs[1].shape[0]]
        if few:
            note += (f"\n{', '.join(few)}: no more responses in the data than output channels; "
                     f"their ranks fit those samples, not the layer")
        if check:
            note += f"\noutput error end to end: {_output_error(graph, result.graph, batches):.3g}"
        changes = tuple(p.change(errors.get(p.node.name)) for p in plans)
        return CompressionResult(result.graph, graph, result.records, kind="factorize",
                                 layers=changes, note=note)

    def moments(self, node: Node) -> Moments | None:
        """`node`'s moments over the data (None without data)."""
        if not self.data_driven:
            return None
        if self._moments is None:
            layers = [n for n in self.graph.nodes
                      if n.op_name in LAYER_OPS and _unfactorable(n) is None]
            self._moments = layer_moments(self.graph, layers, self.batches)
        return self._moments[node.name]

    def spectra(self, node: Node) -> tuple[Spectrum, ...]:
        """`node`'s spectra, one per form it may take."""
        if node.name not in self._spectra:
            self._spectra[node.name] = _spectra(node, self.moments(node))
        return self._spectra[node.name]

    def _plan(self, node: Node, rule: RankRule) -> LayerPlan:
        reason = _unfactorable(node)
        if reason:
            return _kept(node, reason)
        _, weight, bias, _ = layer_parts(node)
        choices = []
        for spectrum in self.spectra(node):
            rank = rule.rank(node.name, spectrum)
            shapes = _factor_shapes(weight.shape, spectrum.form, rank)
            choices.append((_factored_macs(node, spectrum.form, shapes), spectrum, rank))
        macs, spectrum, rank = min(choices, key=lambda c: c[0])    # a tie: "expand"
        before_macs, before_params = node_macs(node), node_params(node)
        if macs >= before_macs:
            return _kept(node, f"rank {rank}/{spectrum.full} saves nothing")
        if macs > (1 - self.min_saving) * before_macs:
            return _kept(node, f"rank {rank}/{spectrum.full} saves only "
                         f"{1 - macs / before_macs:.0%} of its MACs")
        factors = spectrum.factors(rank)
        bias_size = weight.shape[0] if (factors.bias is not None or bias is not None) else 0
        params = factors.first.size + factors.second.size + bias_size
        return LayerPlan(node, factors, f"rank {rank}/{spectrum.full}, "
                         f"{_form_name(node, spectrum.form)}", (before_params, params),
                         (before_macs, macs))


# ---- options ------------------------------------------------------------------------------------
@dataclass(frozen=True)
class RankRule:
    """How each layer's rank is chosen: `kind` "energy" or "rank_ratio", `value` one fraction
    for every layer or a {layer name: fraction} mapping."""

    kind: str
    value: float | Mapping[str, float]

    @classmethod
    def of(cls, energy, rank_ratio) -> "RankRule":
        if energy is not None and rank_ratio is not None:
            raise OptionError(f"expected energy or rank_ratio, not both (found energy={energy!r}, "
                              f"rank_ratio={rank_ratio!r})")
        kind, value = ("rank_ratio", rank_ratio) if rank_ratio is not None else \
            ("energy", DEFAULT_ENERGY if energy is None else energy)
        if isinstance(value, Mapping):
            bad = [k for k in value if not isinstance(k, str)]
            if bad:
                raise OptionError(f"expected {kind} as {{layer name: fraction}}, found the key "
                                  f"{bad[0]!r}")
            return cls(kind, {k: _fraction(kind, v, k) for k, v in value.items()})
        return cls(kind, _fraction(kind, value))

    def named(self) -> frozenset[str] | None:
        """The layers a mapping names (None: every layer)."""
        return frozenset(self.value) if isinstance(self.value, Mapping) else None

    def fraction(self, layer: str) -> float:
        return self.value[layer] if isinstance(self.value, Mapping) else self.value

    def rank(self, layer: str, spectrum: "Spectrum") -> int:
        """The rank of `layer` out of `spectrum.full` (see the module's docstring)."""
        full = spectrum.full
        fraction = self.fraction(layer)
        if self.kind == "rank_ratio":
            return min(full, max(1, round(fraction * full)))
        energies = spectrum.energies
        if float(energies.sum()) <= 0:     # a zero weight or no response: any rank reproduces it
            return 1
        dropped = energies.sum() - np.cumsum(energies)      # after keeping 1, 2, ... values
        # less a rounding error of the sums, relative to the largest of them
        allowed = (1 - fraction) * spectrum.total + 1e-12 * max(spectrum.total, energies.sum())
        return min(full, int(np.argmax(dropped <= allowed)) + 1)

    def describe(self) -> str:
        if isinstance(self.value, Mapping):
            return f"{self.kind.replace('_', ' ')} per layer"
        return f"{self.kind.replace('_', ' ')} {self.value:g}"


def _fraction(kind: str, value, layer: str | None = None) -> float:
    where = f" for layer '{layer}'" if layer is not None else ""
    if isinstance(value, (bool, np.bool_)) or not isinstance(value, numbers.Real) or \
            not 0 < float(value) <= 1:
        raise OptionError(f"expected {kind}{where} in (0, 1], found {value!r}")
    return float(value)


def _layers(graph: Graph, layers, rule: RankRule) -> list[Node]:
    """The nodes to consider, in topological order; names that are not conv2d, fused_conv2d or
    linear nodes of `graph` raise OptionError."""
    candidates = {n.name: n for n in graph.nodes if n.op_name in LAYER_OPS}
    if isinstance(layers, str):
        layers = [layers]
    asked = None if layers is None else list(layers)
    named = rule.named()
    unknown = [name for name in (asked or []) + sorted(named or ()) if name not in candidates]
    if unknown:
        known = ", ".join(list(candidates)[:12]) + (", ..." if len(candidates) > 12 else "")
        ops_of = {n.name: n.op_name for n in graph.nodes}
        found = ", ".join(f"'{name}'" + (f" ({ops_of[name]})" if name in ops_of else "")
                          for name in dict.fromkeys(unknown))
        raise OptionError(f"factorize: expected names of {'/'.join(LAYER_OPS)} nodes of graph "
                          f"'{graph.name}', found {found}; its layers: {known or 'none'}")
    if asked is None:
        chosen = {name for name, n in candidates.items()
                  if n.op_name == "linear" or _conv(n).groups == 1}
    else:
        chosen = set(asked)
    if named is not None:
        chosen &= named
    return [n for n in graph.topological_order() if n.name in chosen]


def _conv(node: Node) -> ops.Conv2d:
    return node.op.conv if node.op_name == "fused_conv2d" else node.op


def _pointwise(node: Node) -> bool:
    """A linear or 1x1 layer: factored in form "expand" only (form "reduce" would make the
    same two layers, the first at the input's resolution)."""
    return math.prod(node.inputs[1].shape[2:]) == 1


# ---- statistics of the data ---------------------------------------------------------------------
@dataclass
class Moments:
    """Running sums over the data of one layer's input channels x and linear responses
    y = W x (first and second moments), in float64."""

    inputs: int = 0
    x: np.ndarray | float = 0.0
    xx: np.ndarray | float = 0.0
    responses: int = 0
    y: np.ndarray | float = 0.0
    yy: np.ndarray | float = 0.0

    def add(self, x: np.ndarray | None, y: np.ndarray) -> None:
        """`x` (None: not needed), `y`: [rows, channels]."""
        if x is not None:
            self.inputs += len(x)
            self.x = self.x + x.sum(axis=0)
            self.xx = self.xx + x.T @ x
        self.responses += len(y)
        self.y = self.y + y.sum(axis=0)
        self.yy = self.yy + y.T @ y

    @property
    def input_mean(self) -> np.ndarray:
        return self.x / max(self.inputs, 1)

    @property
    def input_second_moment(self) -> np.ndarray:
        return self.xx / max(self.inputs, 1)

    @property
    def input_covariance(self) -> np.ndarray:
        return _covariance(self.xx, self.input_mean, self.inputs)

    @property
    def response_mean(self) -> np.ndarray:
        return self.y / max(self.responses, 1)

    @property
    def response_covariance(self) -> np.ndarray:
        return _covariance(self.yy, self.response_mean, self.responses)


def _covariance(second: np.ndarray, mean: np.ndarray, count: int) -> np.ndarray:
    return second / max(count, 1) - np.outer(mean, mean)


def _rows(array: np.ndarray, channel_axis: int) -> np.ndarray:
    """[..., C, ...] -> [rows, C]."""
    return np.moveaxis(array, channel_axis, -1).reshape(-1, array.shape[channel_axis])


def layer_moments(graph: Graph, nodes: list[Node], batches) -> dict[str, Moments]:
    """Each layer's Moments over `batches` (a list of {input name: array}), its inputs taken
    from the original graph. Input moments only for layers with a form "reduce" (a kernel
    larger than 1x1): a linear layer's would be [in, in], 25088^2 for VGG's first."""
    moments = {n.name: Moments() for n in nodes}
    for batch in evaluation_batches(batches):
        values = interpret(graph, batch, dtype=np.float64, keep=True)
        for node in nodes:
            x, weight, _, _ = layer_parts(node)
            if not weight.is_constant:
                continue
            w = weight.data.astype(np.float64)
            if node.op_name == "linear":
                rows = values[x.name].reshape(-1, w.shape[1])
                moments[node.name].add(None, rows @ w.T)
            else:
                conv = _conv(node)
                if conv.groups != 1:
                    continue
                y = ops.Conv2d(conv.stride, conv.padding, conv.dilation).reference(
                    values[x.name], w)
                inputs = None if _pointwise(node) else _rows(values[x.name], 1)
                moments[node.name].add(inputs, _rows(y, 1))
    return moments


# ---- the plan of one layer ----------------------------------------------------------------------
@dataclass
class LayerPlan:
    """What factorize decided for one layer: its factors (None: kept, for `reason`)."""

    node: Node
    factors: Bottleneck | None
    description: str
    params: tuple[int, int]
    macs: tuple[int, int]

    def change(self, error: float | None) -> LayerChange:
        return LayerChange(self.node.name, self.node.op_name, self.description, self.params,
                           self.macs, error)


def _kept(node: Node, reason: str) -> LayerPlan:
    params, macs = node_params(node), node_macs(node)
    return LayerPlan(node, None, f"kept: {reason}", (params, params), (macs, macs))


@dataclass
class Spectrum:
    """One form's factorization of a layer at any rank (`factors(rank)`, rank <= `full`):
    `energies` (descending), what each rank keeps; `total`, what an energy fraction is of."""

    form: str
    energies: np.ndarray
    full: int
    factors: Callable[[int], Bottleneck]
    total: float | None = None

    def __post_init__(self):
        if self.total is None:
            self.total = float(self.energies.sum())


def _unfactorable(node: Node) -> str | None:
    """Why `node` cannot be factored, or None."""
    _, weight, bias, _ = layer_parts(node)
    if node.op_name != "linear" and _conv(node).groups != 1:
        return f"grouped conv (groups {_conv(node).groups})"
    computed = [v for v in (weight, bias) if v is not None and not v.is_constant]
    if computed:
        return f"computed {'weight' if computed[0] is weight else 'bias'} %{computed[0].name}"
    return None


def factor_layer(node: Node, form: str, rank: int | None = None,
                 moments: Moments | None = None) -> Bottleneck:
    """The factors of a conv2d, fused_conv2d or linear `node` (groups 1, constant weight and
    bias) in `form` at `rank` (None: the form's full rank, which reproduces the layer), from
    its weight or, with `moments` (from `layer_moments`), from its responses on data."""
    if form not in FORMS:
        raise OptionError(f"expected form one of {', '.join(FORMS)}, found {form!r}")
    reason = _unfactorable(node)
    if reason:
        raise OptionError(f"cannot factor it: {reason}", node=node.name,
                          op=node.op_name)
    spectra = [s for s in _spectra(node, moments) if s.form == form]
    if not spectra:
        raise OptionError(f"a linear or 1x1 layer is factored in form 'expand' only, found "
                          f"form {form!r}", node=node.name, op=node.op_name)
    (spectrum,) = spectra
    rank = spectrum.full if rank is None else rank
    if not 1 <= rank <= spectrum.full:
        raise OptionError(f"expected a rank in [1, {spectrum.full}], found {rank}",
                          node=node.name, op=node.op_name)
    return spectrum.factors(rank)


def _spectra(node: Node, moments: Moments | None) -> tuple[Spectrum, ...]:
    _, weight, bias, _ = layer_parts(node)
    w = weight.data.astype(np.float64)
    b = None if bias is None else bias.data.astype(np.float64)
    if _pointwise(node):
        return (_expand(w, b, moments),)
    return _expand(w, b, moments), _reduce(w, moments)


def _form_name(node: Node, form: str) -> str:
    if node.op_name == "linear":
        return "linear -> linear"
    kernel = "x".join(map(str, node.inputs[1].shape[2:]))
    if kernel == "1x1":
        return "1x1 -> 1x1"
    return f"1x1 reduce -> {kernel}" if form == "reduce" else f"{kernel} -> 1x1 expand"


def _factor_shapes(shape: tuple[int, ...], form: str, rank: int) -> tuple[tuple, tuple]:
    """The shapes of the two factors' weights of a layer whose weight has `shape`."""
    cout, cin, *kernel = shape
    if not kernel:
        return (rank, cin), (cout, rank)
    ones = [1] * len(kernel)
    if form == "reduce":
        return (rank, cin, *ones), (cout, rank, *kernel)
    return (rank, cin, *kernel), (cout, rank, *ones)


def _factored_macs(node: Node, form: str, shapes: tuple[tuple, tuple]) -> int:
    """MACs of the two factors, counted by their ops as count_macs counts them."""
    x, weight, bias, residual = layer_parts(node)
    first, second = factor_ops(node.op, form, bias is not None)
    dtype = weight.dtype
    w1, w2 = (TensorType(s, dtype) for s in shapes)
    hidden = first.output_types(x.type, w1)
    extra = [v.type for v in (bias, residual) if v is not None]
    out = second.output_types(hidden[0], w2, *extra)
    return int(first.macs([x.type, w1], hidden) + second.macs([hidden[0], w2, *extra], out))


def _descending_eigh(matrix: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Eigenvalues (clipped at 0) and eigenvectors of a symmetric PSD matrix, largest first.
    Of a Gram matrix, they give a weight's squared singular values and singular vectors far
    faster than an SVD of a wide weight (VGG's [4096, 25088]); the factors use the vectors
    only, orthonormal, so a full-rank factorization stays exact."""
    values, vectors = np.linalg.eigh((matrix + matrix.T) / 2)
    return np.clip(values[::-1], 0, None), vectors[:, ::-1]


def _expand(w: np.ndarray, b: np.ndarray | None, moments: Moments | None) -> Spectrum:
    """Form "expand": first P^T W (the layer's kernel, r outputs), second P (1x1); P the top
    eigenvectors of W W^T, or with data of the responses' covariance."""
    cout = w.shape[0]
    matrix = w.reshape(cout, -1)
    mean = None
    if moments is None or moments.responses == 0:
        energies, basis = _descending_eigh(matrix @ matrix.T)
    else:
        energies, basis = _descending_eigh(moments.response_covariance)
        mean = moments.response_mean

    def factors(rank: int) -> Bottleneck:
        p = basis[:, :rank]
        first = (p.T @ matrix).reshape(rank, *w.shape[1:])
        second = p.reshape(cout, rank, *([1] * (w.ndim - 2)))
        bias = None
        if mean is not None:
            # y ~ P P^T y + (I - P P^T) mean(y): what the rank drops, at its mean, into the bias
            bias = (0.0 if b is None else b) + mean - p @ (p.T @ mean)
        return Bottleneck("expand", first, second, bias)

    return Spectrum("expand", energies, min(matrix.shape), factors)


def _reduce(w: np.ndarray, moments: Moments | None) -> Spectrum:
    """Form "reduce": first V_r^T S^-1 (1x1, r outputs), second W S V_r (the layer's kernel);
    V the top eigenvectors of (W S)^T W S, S the Cholesky factor of the input's second moment
    (S = I without data)."""
    cout, cin = w.shape[:2]
    kernel = w.shape[2:]
    matrix = np.moveaxis(w, 1, -1).reshape(-1, cin)           # [Cout*KH*KW, Cin]
    whitening, total = None, None
    if moments is not None and moments.inputs > 0:
        second = moments.input_second_moment
        scale = np.trace(second) / cin
        if scale > 0:
            whitening = np.linalg.cholesky(second + RIDGE * scale * np.eye(cin))
            # the responses' variance: E |W (x - mean x)|^2 over every output channel and tap
            total = float(np.einsum("ij,jk,ik->", matrix, moments.input_covariance, matrix))
    weighted = matrix if whitening is None else matrix @ whitening
    energies, vectors = _descending_eigh(weighted.T @ weighted)

    def factors(rank: int) -> Bottleneck:
        v = vectors[:, :rank]                                  # [Cin, r]
        first = v.T if whitening is None else np.linalg.solve(whitening.T, v).T
        second = (weighted @ v).reshape(cout, *kernel, rank)
        return Bottleneck("reduce", first.reshape(rank, cin, *([1] * len(kernel))),
                          np.moveaxis(second, -1, 1))

    return Spectrum("reduce", energies, min(matrix.shape), factors, total)


# ---- measuring ----------------------------------------------------------------------------------
def _layer_errors(graph: Graph, plans: list[LayerPlan], batches) -> dict[str, float]:
    """max |factored - original| / max |original| of each planned layer's output, the factors
    (rounded to the layer's dtype) run on the layer's inputs in the original graph."""
    if not plans:
        return {}
    worst = {p.node.name: [0.0, 0.0] for p in plans}      # [max |diff|, max |original|]
    for batch in batches:
        values = interpret(graph, batch, dtype=np.float64, keep=True)
        for plan in plans:
            node, factors = plan.node, plan.factors
            x, weight, bias, residual = layer_parts(node)
            first_op, second_op = factor_ops(node.op, factors.form,
                                             factors.bias is not None or bias is not None)
            as_stored = lambda a: a.astype(weight.dtype).astype(np.float64)
            hidden = first_op.reference(values[x.name], as_stored(factors.first))
            bias_data = factors.bias if factors.bias is not None else \
                None if bias is None else values[bias.name]
            args = [hidden, as_stored(factors.second)] + \
                [a for a in (None if bias_data is None else as_stored(bias_data),
                             None if residual is None else values[residual.name])
                 if a is not None]
            found = second_op.reference(*args)
            expected = values[node.output.name]
            worst[node.name][0] = max(worst[node.name][0], float(np.abs(found - expected).max()))
            worst[node.name][1] = max(worst[node.name][1], float(np.abs(expected).max()))
    return {name: diff / scale if scale > 0 else diff for name, (diff, scale) in worst.items()}


def _output_error(original: Graph, factored: Graph, batches) -> float:
    """The largest max |factored - original| / max |original| over the graph's outputs."""
    return Evaluator(original, batches, None)(factored).error
