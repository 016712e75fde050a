"""Compare a candidate (an optimized Graph, a compiled or a loaded model) with a reference graph,
output by output, with tolerances derived from the dtypes involved, and optionally layer by layer.

Per layer, values are lined up through `Node.provenance`: a candidate node's output equals the
output of the LAST original node it stands for (conv -> batch_norm -> relu fused into one node
lines up with the original relu). Original nodes folded away or fused into the middle of a chain
have no counterpart and are not compared."""
from __future__ import annotations

import os
from dataclasses import dataclass, field
from typing import Mapping

import numpy as np

from .errors import GraphoptError, ModelFormatError
from .ir import DTYPES, FLOAT_DTYPES, Graph, Node, Value
from .ops.quant import output_quantization
from .table import format_table
from .targets.reference import interpret

# Error allowed relative to the reference's largest magnitude, by the candidate's dtype: a few
# hundred ulps for fp32 (deep nets accumulate rounding), fp16's 10 bits, exact for integers.
# bfloat16 keeps 7 bits, 3 fewer than fp16: a rounding costs up to 2**-8 = 3.9e-3 relative, 8x
# fp16's. The zoo's nets (LeNet-5 to ResNet-50, probe inputs, two seeds) measure 4e-4 to 1.4e-3
# in fp16 and 3.8e-3 to 9.2e-3 in bf16 against float64; 5e-2 leaves bf16 the ~5x margin fp16's
# 1e-2 leaves it (under 1e-2, the deep convnet passes by a hair). Compiled for AVX512-BF16, with
# the 3x3 convs on Winograd F(2x2) in bfloat16, ResNet-50, GoogLeNet and Inception-v3 measure
# 3.9e-3 to 5.6e-3 and VGG-16 1.1e-2 to 1.2e-2.
FLOAT_TOLERANCE = {"float64": 1e-9, "float32": 1e-4, "float16": 1e-2, "bfloat16": 5e-2}
TOLERANCE = {dtype: FLOAT_TOLERANCE[dtype] if dtype in FLOAT_DTYPES else 0.0
             for dtype in DTYPES}
# A float output of a graph quantizing to 8 bits (quantize_linear): each quantized layer rounds
# its output to 1/255 of its calibrated range and the steps add up through the layers. Measured
# max |error| / max |output| on 200 held-out inputs (32 calibration samples of the same
# distribution): mean 2% to 4%, 99th percentile 8% to 11%, worst 12% (a residual conv net) and
# 18% (LeNet-5: five layers, each feeding a tanh). 2e-1 is above them all and an order of
# magnitude below the error of a wrong scale, zero point or weight layout.
QUANTIZED_TOLERANCE = 2e-1
# Ops that round real values to integers. An integer output of a graph with them may differ by one
# step between runs that compute the same thing: the reference interpreter divides by the scale
# in float64, compiled code in float32 with fused multiply-adds, and a value close to a tie
# rounds either way.
QUANTIZING_OPS = ("quantize_linear", "qlinear_conv2d", "qlinear_matmul")


def tolerance_for(dtype: str, *graphs: Graph | None) -> float:
    """The tolerance of an output of `dtype` computed by `graphs`: its dtype's own, or for a
    float output, that of the least precise float dtype the graphs compute in (a float32
    output of a graph converted to float16 carries float16's error), or QUANTIZED_TOLERANCE
    where a graph quantizes values to integers (quantize_linear)."""
    tol = TOLERANCE.get(dtype, 1e-4)
    if dtype not in FLOAT_DTYPES:
        return tol
    present = [graph for graph in graphs if graph is not None]
    if any(n.op_name == "quantize_linear" for graph in present for n in graph.nodes):
        return max(tol, QUANTIZED_TOLERANCE)
    computed = {v.dtype for graph in present for v in graph.values()}
    return max([tol, *(FLOAT_TOLERANCE[d] for d in computed if d in FLOAT_TOLERANCE)])


def steps_for(dtype: str, *graphs: Graph | None) -> int:
    """The integer steps an output of `dtype` may differ by: one for an integer output of graphs
    that quantize (QUANTIZING_OPS), else none."""
    if dtype in FLOAT_DTYPES:
        return 0
    return int(any(n.op_name in QUANTIZING_OPS for graph in graphs if graph is not None
                   for n in graph.nodes))


@dataclass
class OutputComparison:
    name: str
    dtype: str
    max_abs: float
    max_rel: float        # max |candidate - reference| / max |reference|
    cosine: float
    tolerance: float
    ok: bool
    steps: int = field(default=0, kw_only=True)    # integer steps allowed besides `tolerance`

    def to_dict(self) -> dict:
        """The stable JSON form (docs/json.md)."""
        return {"name": self.name, "dtype": self.dtype, "max_abs": self.max_abs,
                "max_rel": self.max_rel, "cosine": self.cosine, "tolerance": self.tolerance,
                "steps": self.steps, "ok": self.ok}

    def row(self) -> tuple[str, ...]:
        allowed = f"{self.steps} step" if self.steps else f"{self.tolerance:.0e}"
        return (self.name, self.dtype, f"{self.max_abs:.3g}", f"{self.max_rel:.3g}",
                f"{self.cosine:.7f}", allowed, "ok" if self.ok else "MISMATCH")


@dataclass
class LayerComparison(OutputComparison):
    """One original layer (`name`) against the candidate node that computes its output."""

    node: str                      # the candidate node
    op: str                        # the candidate node's op
    provenance: tuple[str, ...]    # every original node the candidate node stands for

    def to_dict(self) -> dict:
        return {**super().to_dict(), "node": self.node, "op": self.op,
                "provenance": list(self.provenance)}

    def row(self) -> tuple[str, ...]:
        return (self.name, f"{self.node} ({self.op})", *super().row()[2:])


@dataclass
class CompareReport:
    outputs: list[OutputComparison] = field(default_factory=list)
    reference_dtype: str = "float64"
    layers: list[LayerComparison] | None = None     # per_layer=True: in reference order
    reference: str = "interpreter"                  # or "onnxruntime" (compare(..., ort_model=))

    @property
    def ok(self) -> bool:
        return all(o.ok for o in self.outputs)

    @property
    def first_divergent(self) -> str | None:
        """The first original layer (in the reference's topological order) whose error exceeds
        the tolerance, or None. Needs `compare(..., per_layer=True)`."""
        if self.layers is None:
            raise GraphoptError("no per-layer comparison: call compare(..., per_layer=True)")
        return next((layer.name for layer in self.layers if not layer.ok), None)

    def layer(self, name: str) -> LayerComparison:
        for layer in self.layers or ():
            if layer.name == name:
                return layer
        raise KeyError(name)

    def to_dict(self) -> dict:
        """The stable JSON form (docs/json.md): ok, the reference dtype, one entry per output,
        and with per_layer the layers and the first divergent one."""
        found = {"ok": self.ok, "reference": self.reference,
                 "reference_dtype": self.reference_dtype,
                 "outputs": [o.to_dict() for o in self.outputs]}
        if self.layers is not None:
            found["layers"] = [layer.to_dict() for layer in self.layers]
            found["first_divergent"] = self.first_divergent
        return found

    def layer_table(self) -> str:
        """Every lined-up layer: original name, candidate node, errors."""
        head = ("layer", "candidate node", "max abs", "max rel", "cosine", "tol", "")
        return format_table([layer.row() for layer in self.layers or ()], head)

    def __getitem__(self, name: str) -> OutputComparison:
        for o in self.outputs:
            if o.name == name:
                return o
        raise KeyError(name)

    def __str__(self) -> str:
        head = ("output", "dtype", "max abs", "max rel", "cosine", "tol", "")
        against = f"the {self.reference_dtype} reference" if self.reference == "interpreter" \
            else f"{self.reference} ({self.reference_dtype})"
        lines = [f"compare against {against}: "
                 + ("all outputs ok" if self.ok else "MISMATCH"),
                 format_table([o.row() for o in self.outputs], head)]
        if self.layers is not None:
            first = self.first_divergent
            lines.append(f"per layer: {len(self.layers)} original layers lined up; first "
                         "divergent: " + ("none" if first is None else
                                          f"{first} (max rel {self.layer(first).max_rel:.3g})"))
        return "\n".join(lines)


def compare_arrays(name: str, reference: np.ndarray, candidate: np.ndarray,
                   tolerance: float | None = None, steps: int = 0) -> OutputComparison:
    """Compare two arrays: within `tolerance` of the reference's largest magnitude (default:
    the candidate dtype's), or within `steps` in absolute terms (integer outputs)."""
    if reference.shape != candidate.shape:
        raise GraphoptError(f"output '{name}': reference shape {reference.shape} differs from "
                            f"candidate shape {candidate.shape}")
    dtype = str(candidate.dtype)
    tol = TOLERANCE.get(dtype, 1e-4) if tolerance is None else tolerance
    ref = reference.astype(np.float64).ravel()
    cand = candidate.astype(np.float64).ravel()
    special = ~(np.isfinite(ref) & np.isfinite(cand))
    if special.any():   # NaNs and infinities must match exactly; the rest within tolerance
        if not np.array_equal(ref[special], cand[special], equal_nan=True):
            return OutputComparison(name, dtype, float("inf"), float("inf"), float("nan"), tol,
                                    False, steps=steps)
        ref, cand = ref[~special], cand[~special]
    diff = np.abs(cand - ref)
    max_abs = float(diff.max(initial=0.0))
    scale = float(np.abs(ref).max(initial=0.0))
    max_rel = max_abs / scale if scale > 0 else (0.0 if max_abs == 0 else float("inf"))
    denom = float(np.linalg.norm(ref) * np.linalg.norm(cand))
    cosine = float(ref @ cand / denom) if denom > 0 else (1.0 if max_abs == 0 else 0.0)
    ok = bool(max_abs <= max(tol * scale, steps))
    return OutputComparison(name, dtype, max_abs, max_rel, cosine, tol, ok, steps=steps)


def onnxruntime_outputs(model, inputs: Mapping[str, np.ndarray]) -> dict[str, np.ndarray]:
    """The outputs of ONNX Runtime (CPU) running `model` (an .onnx path, bytes or ModelProto)
    on `inputs`, by output name. Signed 8-bit operands of integer products run as unsigned
    ones (`onnx_unsigned`): ONNX Runtime's uint8 x int8 products saturate on CPUs without
    VNNI, and a reference must not."""
    import onnx
    import onnxruntime
    from google.protobuf.message import DecodeError
    from .frontends.onnx_unsigned import has_integer_products, unsigned_integer_operands
    path = None if isinstance(model, bytes) or hasattr(model, "SerializeToString") else \
        os.fspath(model)
    try:   # a file's external data is read only where its integer products are rewritten
        proto = (onnx.ModelProto.FromString(model) if isinstance(model, bytes) else
                 model if path is None else onnx.load(path, load_external_data=False))
        if path is not None and has_integer_products(proto):
            onnx.load_external_data_for_model(proto, os.path.dirname(path))
    except (OSError, DecodeError) as e:
        raise ModelFormatError(f"ONNX Runtime's reference model: cannot read "
                               f"{'the bytes given' if isinstance(model, bytes) else model}: "
                               f"{e}") from e
    unsigned = unsigned_integer_operands(proto)
    if unsigned is not proto or path is None and not isinstance(model, bytes):
        model = unsigned.SerializeToString()
    elif path is not None:
        model = path   # ONNX Runtime reads the file (and its external data) itself
    try:
        session = onnxruntime.InferenceSession(model, providers=["CPUExecutionProvider"])
        names = [o.name for o in session.get_outputs()]
        feeds = {i.name: inputs[i.name] for i in session.get_inputs() if i.name in inputs}
        return dict(zip(names, session.run(names, feeds)))
    except Exception as e:  # ORT's errors (Fail, InvalidArgument, ...) share no base but this
        if type(e).__module__.startswith("onnxruntime"):
            raise GraphoptError(f"ONNX Runtime could not run the reference model: "
                                f"{str(e).strip().splitlines()[0] if str(e).strip() else e!r}") \
                from e
        raise


def run_candidate(candidate, inputs: Mapping[str, np.ndarray]) -> dict[str, np.ndarray]:
    if isinstance(candidate, Graph):
        return interpret(candidate, inputs)
    if hasattr(candidate, "run"):
        return candidate.run(inputs)
    raise GraphoptError(f"cannot compare with a {type(candidate).__name__}: expected a Graph or a "
                        "compiled/loaded model")


def compare(reference: Graph, candidate, inputs: Mapping[str, np.ndarray], *,
            tolerance: float | None = None, reference_dtype=np.float64, per_layer: bool = False,
            target: str | None = None, compiler=None, ort_model=None) -> CompareReport:
    """Run the reference graph in the interpreter (float64 by default) and the candidate, and
    compare every output of the reference with the candidate's output of the same name.

    `target` ("cpu"): a Graph candidate is compiled for it first, by `compiler(graph, target)`
    (`go.compare` passes TVM's; this module compiles nothing itself, so that passes may compare
    graphs without depending on the targets that run them). `per_layer=True` also compares
    every original layer that the candidate (a Graph) lines up with through provenance. A compiled
    module exposes only its outputs, so with a `target` the candidate is compiled with every
    lined-up value added as an extra output: each probed value is then written to memory, which
    can split TVM fusion groups *between* graphopt nodes, while the code inside a node (a fused
    conv with its epilogue) is unchanged.

    `ort_model` (the ONNX model `reference` was imported from: a path, bytes or ModelProto):
    ONNX Runtime runs it as the reference instead of the interpreter (an independent one; it
    computes in the model's dtypes, and gives no per-layer values).

    Without a `tolerance`, each comparison allows its dtype's (`tolerance_for`): a float output
    of graphs that compute in float16 or bfloat16 carries their error."""
    if ort_model is not None and per_layer:
        raise GraphoptError("per-layer compare needs the interpreter as the reference: ONNX "
                            "Runtime gives only the model's outputs")
    computing = (reference, candidate if isinstance(candidate, Graph) else
                 getattr(candidate, "graph", None))

    def tol(array: np.ndarray) -> float:
        return tolerance if tolerance is not None else \
            tolerance_for(str(array.dtype), *computing)

    def steps(array: np.ndarray) -> int:
        return 0 if tolerance is not None else steps_for(str(array.dtype), *computing)

    if ort_model is not None:
        expected = onnxruntime_outputs(ort_model, inputs)
    else:
        expected = interpret(reference, inputs, dtype=reference_dtype, keep=per_layer)
    pairs = None
    if per_layer:
        if not isinstance(candidate, Graph):
            raise GraphoptError(f"per-layer compare needs the candidate as a Graph (with target= "
                                f"to compile it), found a {type(candidate).__name__}")
        pairs = line_up(reference, candidate)
        probes = [value for _, value in pairs]
        if target is not None:
            candidate = _compiled(compiler, with_extra_outputs(candidate, probes), target)
            found = candidate.run(inputs)
        else:
            found = interpret(candidate, inputs, keep=True)
    else:
        if target is not None and isinstance(candidate, Graph):
            candidate = _compiled(compiler, candidate, target)
        found = run_candidate(candidate, inputs)
    missing = [n for n in reference.output_names if n not in found]
    if missing:
        raise GraphoptError(f"candidate lacks outputs {missing}; it has {list(found)[:20]}")
    if ort_model is not None:
        lacking = [n for n in reference.output_names if n not in expected]
        if lacking:
            raise GraphoptError(f"the model ONNX Runtime ran lacks outputs {lacking} (it has "
                                f"{list(expected)[:20]}): expected the ONNX model the "
                                f"reference graph was imported from")
        dtypes = sorted({str(expected[n].dtype) for n in reference.output_names})
        report = CompareReport(reference_dtype=",".join(dtypes), reference="onnxruntime")
    else:
        report = CompareReport(reference_dtype=np.dtype(reference_dtype).name)
    for name in reference.output_names:
        candidate_array = np.asarray(found[name])
        report.outputs.append(compare_arrays(name, expected[name], candidate_array,
                                             tol(candidate_array), steps(candidate_array)))
    if pairs is not None:
        report.layers = []
        for ref_node, value in pairs:
            candidate_array = np.asarray(found[value.name]).reshape(ref_node.outputs[0].shape)
            if value.type.is_float != ref_node.outputs[0].type.is_float:
                # a float layer computed in integers: its real values
                dequantize, scale, zero_point = output_quantization(value)
                candidate_array = dequantize.reference(candidate_array, scale, zero_point)
            c = compare_arrays(layer_anchor(ref_node), expected[ref_node.outputs[0].name],
                               candidate_array, tol(candidate_array), steps(candidate_array))
            report.layers.append(LayerComparison(**vars(c), node=value.producer.name,
                                                 op=value.producer.op_name,
                                                 provenance=value.producer.provenance))
    return report


def layer_anchor(node) -> str:
    """The original node whose output `node`'s output equals: the last of its provenance."""
    return node.provenance[-1]


def line_up(reference: Graph, candidate: Graph) -> list[tuple[Node, Value]]:
    """(reference node, candidate value) pairs computing the same original layer, in the
    reference's topological order. Only single-output nodes of matching type are paired."""
    by_anchor: dict[str, list[Value]] = {}
    for node in candidate.topological_order():
        if len(node.outputs) == 1:
            by_anchor.setdefault(layer_anchor(node), []).append(node.outputs[0])

    def comparable(value: Value, original: Value) -> bool:
        return same_elements(value.type.shape, original.type.shape) and \
            (value.type.is_float == original.type.is_float or
             output_quantization(value) is not None)  # not an int32 accumulator

    pairs = []
    for node in reference.topological_order():
        if len(node.outputs) != 1:
            continue
        # the last candidate value standing for the layer: a linear layer computed as a 1x1
        # convolution is lined up at the reshape back to its shape
        values = [v for v in by_anchor.get(layer_anchor(node), ())
                  if comparable(v, node.outputs[0])]
        if values:
            pairs.append((node, values[-1]))
    return pairs


def same_elements(shape: tuple[int, ...], other: tuple[int, ...]) -> bool:
    """Whether two shapes hold the same elements in the same order: equal but for axes of size
    1 (a linear layer's [N, C] output computed as a 1x1 convolution's [N, C, 1, 1])."""
    return [d for d in shape if d != 1] == [d for d in other if d != 1]


def with_extra_outputs(graph: Graph, values) -> Graph:
    """A copy of `graph` that also returns `values` (by their names), after its own outputs."""
    probed = graph.copy()
    present = {v.name for v in probed.outputs}
    extra = [probed.value(v.name) for v in values if v.name not in present]
    probed.set_outputs([*probed.outputs, *extra])
    return probed


def _compiled(compiler, graph: Graph, target: str):
    if compiler is None:
        raise GraphoptError(f"compare with target={target!r} needs a compiler(graph, target): "
                            "go.compare passes TVM's")
    return compiler(graph, target)
