"""quantize_int8: post-training static quantization. Each float32 convolution (`conv2d`, and
`fused_conv2d` ending with relu or clip, with or without a residual) and each `linear` and
`matmul` by a constant matrix whose input and output have calibrated ranges computes in
integers, as ONNX Runtime's static QDQ quantization does:

- its input is quantized (`quantize_linear`) with the scale and zero point of the input's
  calibrated range: uint8 asymmetric by default, int8 symmetric with activation_dtype="int8";
- its weights are quantized once, here: int8 symmetric, per output channel by default
  (`weight_params`), in 7 bits with reduce_range=True (ORT's option: x86 CPUs without VNNI then
  multiply them exactly with `vpmaddubsw`); a bias becomes int32 in steps of x_scale * w_scale
  (ORT's rule);
- the layer becomes `qlinear_conv2d` (a linear layer: a 1x1 qlinear_conv2d between reshapes,
  since qlinear_matmul has no bias) or `qlinear_matmul`, requantizing to its output's
  calibrated scale and zero point;
- its result is dequantized (`dequantize_linear`) only where a float32 node or a graph output
  reads it. A quantized layer reading another's output reads its integers: the parameters of
  a value come from its own calibrated range, so the producer's output and the consumer's
  input agree and no dequantize -> quantize pair stands between them.
- a relu or clip that is the only reader of a layer's output (a linear layer's, or a conv's
  the fusion pass left unfused) becomes the layer's requantize epilogue, and the layer's
  output is quantized over the activation's calibrated range, as ORT's quantizer drops such
  activations: no dequantize -> relu -> quantize, and none of the range spent on negatives;
- flatten, reshape and max pools reading integers compute on them, keeping their input's scale
  and zero point: exact, since dequantizing is increasing (max pools pad with the integer
  dtype's minimum as float ones pad with -inf).
- a concat of integer values (GoogLeNet's and Inception's branches, SqueezeNet's fire
  modules) concatenates integers, in its own calibrated scale and zero point. An input that is
  a quantized layer's (or such a concat's) output only the concat reads takes those: the layer
  requantizes straight to them, as TensorRT makes a concat's inputs share its scale; any other
  input is requantized to them (dequantize -> quantize, one elementwise kernel). The float form
  (dequantize each input, concat, quantize) rounds the shared inputs twice, to the layer's
  scale and then to the concat's; this rounds once, to the concat's, and rounds the others as
  it did.

Stay float32, with the reason in the pass's misses: nodes the `keep` list names (node names,
names of original nodes they stand for after fusion, or op names), layers with a value that has
no calibrated range, computed (non-constant) weights, activations without an integer epilogue
(tanh, leaky relu...), and every other op (no integer form).

A walk over the graph rather than a table of rules, as `convert_float_precision` is: whether a
value needs a dequantize depends on all its users."""
from __future__ import annotations

import collections
from typing import Iterable, Mapping

import numpy as np

from .. import ops
from ..errors import OptionError, PassError
from ..ir import Graph, Node, Value, is_float_dtype
from .manager import Pass, PassResult
from .pattern import merged_provenance, named_in

RULE = "quantize to int8"
LAYERS = ("conv2d", "fused_conv2d", "linear", "matmul")
ACTIVATION_DTYPES = ("uint8", "int8")
# Whether concats of integer values concatenate integers (`integer_concat`; False: each input
# dequantized, the concat in float32 and quantized again, e.g. to time the difference).
INTEGER_CONCATS = True


def quantize_int8(calib, per_channel: bool = True, keep: Iterable[str] = (),
                  activation_dtype: str = "uint8", source: Graph | None = None,
                  reduce_range: bool = False) -> Pass:
    """The pass quantizing the layers of a graph with the activation ranges of `calib` (a
    `Calibration`, or a mapping of value names to (lo, hi)). Values are looked up by name; a
    value whose name the calibration lacks is looked up through its producer's provenance in
    `source`, the graph the calibration was made on (after fusion the fused node's output
    stands for the output of the last original node it replaces)."""
    if activation_dtype not in ACTIVATION_DTYPES:
        raise OptionError(f"expected activation_dtype one of {ACTIVATION_DTYPES}, found "
                          f"{activation_dtype!r}")
    for name, flag in (("per_channel", per_channel), ("reduce_range", reduce_range)):
        if not isinstance(flag, (bool, np.bool_)):
            raise OptionError(f"expected {name} to be a bool, found {flag!r}")
    weights = {"per_channel": bool(per_channel), "reduce_range": bool(reduce_range)}
    ranges = {name: tuple(calib.range(name)) for name in calib} \
        if hasattr(calib, "range") else {k: tuple(v) for k, v in dict(calib).items()}
    outputs = {}
    if source is not None:
        outputs = {n.name: n.outputs[0].name for n in source.nodes if len(n.outputs) == 1}
    kept = frozenset((keep,) if isinstance(keep, str) else keep)

    def quantize(graph: Graph) -> PassResult:
        return _quantize(graph, _Ranges(ranges, outputs), kept, weights, activation_dtype)

    quantize.__name__ = quantize.__qualname__ = "quantize_int8"
    return quantize


class _Ranges:
    """Calibrated (lo, hi) of a value: by its name, else through its producer's provenance."""

    def __init__(self, ranges: Mapping[str, tuple], outputs: Mapping[str, str]):
        self.ranges, self.outputs = ranges, outputs

    def name(self, v: Value) -> str | None:
        if v.name in self.ranges:
            return v.name
        if v.producer is not None and v.producer.provenance and len(v.producer.outputs) == 1:
            original = self.outputs.get(v.producer.provenance[-1])
            if original in self.ranges:
                return original
        return None

    def get(self, v: Value) -> tuple[float, float] | None:
        name = self.name(v)
        return None if name is None else self.ranges[name]


def stays_float32(node: Node, ranges: _Ranges, keep: frozenset[str]) -> str | None:
    """Why a float32 node is not quantized, or None."""
    op = node.op
    if named_in(node, keep):
        return "kept in float32 (keep list)"
    if node.op_name not in LAYERS:
        return f"{node.op_name} has no integer form"
    values = [*node.inputs, *node.outputs]
    if any(v.dtype != "float32" for v in values):
        return f"{node.op_name} on {[v.dtype for v in values]}, not float32"
    weights = node.inputs[1:] if node.op_name != "fused_conv2d" else \
        node.inputs[1:2 + op.has_bias]
    computed = [v.name for v in weights if not v.is_constant]
    if computed:
        return f"weights {computed} are computed, not constants"
    if node.op_name == "fused_conv2d" and op.activation is not None and \
            op.activation.name not in ops.epilogue.QUANTIZED_EPILOGUE:
        return f"activation {op.activation} has no integer epilogue"
    if node.op_name in ("linear", "matmul") and (len(node.inputs[0].shape) < 2
                                                  or len(node.inputs[1].shape) != 2):
        return f"{node.op_name} of {node.inputs[0].type} by {node.inputs[1].type}: expected a " \
               f"matrix (or batch of matrices) times a constant matrix"
    checked = [node.inputs[0], node.output]
    if node.op_name == "fused_conv2d" and op.has_residual:
        checked.append(node.inputs[-1])
    missing = [v.name for v in checked if ranges.get(v) is None]
    if missing:
        return f"no calibrated range for {', '.join('%' + n for n in missing)}"
    return None


def absorbable_activation(node: Node, users: Mapping[int, list[Node]], public: set[int],
                          ranges: _Ranges, keep: frozenset[str]) -> Node | None:
    """The relu or clip node a quantized layer may apply in its requantize epilogue: the only
    reader of the layer's output (which is no graph output), itself float32, not kept and
    calibrated; or None."""
    op = node.op
    if node.op_name not in ("conv2d", "linear") and \
            not (node.op_name == "fused_conv2d" and op.activation is None):
        return None
    readers = users.get(id(node.output), [])
    if len(readers) != 1 or id(node.output) in public:
        return None
    act = readers[0]
    if act.op_name not in ops.epilogue.QUANTIZED_EPILOGUE or len(act.outputs) != 1 or \
            act.output.dtype != "float32" or named_in(act, keep) or ranges.get(act.output) is None:
        return None
    return act


def integer_concat(node: Node, users: Mapping[int, list[Node]], public: set[int],
                   integers: set[int], sharing: set[int], ranges: _Ranges,
                   keep: frozenset[str]) -> list[Value] | None:
    """Whether a float32 concat computes on integers: None where not (it is kept, has no
    calibrated range, or an input will not exist as integers); else the inputs that take its
    scale and zero point (`sharing`: a quantized layer's or integer concat's output) where it
    alone reads them and they are no graph output."""
    if not INTEGER_CONCATS or node.op_name != "concat" or named_in(node, keep) or \
            node.output.dtype != "float32" or ranges.get(node.output) is None or \
            not all(id(v) in integers for v in node.inputs):
        return None
    return [v for v in dict.fromkeys(node.inputs) if id(v) in sharing and id(v) not in public
            and all(reader is node for reader in users.get(id(v), []))]


def _computes_float(node: Node) -> bool:
    return any(is_float_dtype(v.dtype) for v in node.outputs) and \
        not node.op_name.startswith(("quantize", "dequantize"))


def _quantize(graph: Graph, ranges: _Ranges, keep: frozenset[str], weights: Mapping[str, bool],
              dtype: str) -> PassResult:
    order = graph.topological_order()
    users: dict[int, list[Node]] = collections.defaultdict(list)
    for node in order:
        for v in node.inputs:
            users[id(v)].append(node)
    public = {id(v) for v in graph.outputs}
    staying, chosen, passing, absorbed = {}, set(), set(), set()
    epilogues: dict[int, Node] = {}    # id(layer) -> the activation it applies
    integers: set[int] = set()     # ids of the values that will exist as integers
    sharing: set[int] = set()      # ids of the outputs that can take a concat's scale
    shared: dict[int, Value] = {}  # id(value) -> the concat output whose scale it takes
    for node in order:
        if not _computes_float(node) or id(node) in absorbed:
            continue
        reason = stays_float32(node, ranges, keep)
        if reason is None:
            chosen.add(id(node))
            act = absorbable_activation(node, users, public, ranges, keep)
            if act is not None:
                epilogues[id(node)] = act
                absorbed.add(id(act))
            integers.add(id((act or node).output))
            sharing.add(id((act or node).output))
        elif (inputs := integer_concat(node, users, public, integers, sharing, ranges,
                                       keep)) is not None:
            passing.add(id(node))
            integers.add(id(node.output))
            sharing.add(id(node.output))
            shared.update((id(v), node.output) for v in inputs)
        elif node.op_name in ops.quant.KEEPS_QUANTIZATION and len(node.inputs) == 1 and \
                id(node.inputs[0]) in integers and \
                not named_in(node, keep) and node.output.dtype == "float32":
            passing.add(id(node))
            integers.add(id(node.output))
        else:
            staying[node.name] = reason
    misses = {RULE: sorted(staying.items())} if staying else {}
    if not chosen:
        return PassResult(graph, False, {"misses": misses})
    rebuilt = _Rebuild(graph, ranges, weights, dtype, shared)
    for node in order:
        if id(node) in absorbed:
            continue
        if id(node) in chosen:
            rebuilt.add_quantized(node, epilogues.get(id(node)))
        elif id(node) in passing:
            rebuilt.add_on_integers(node)
        else:
            rebuilt.add_float(node)
    rebuilt.finish()
    stats = {"nodes quantized": len(chosen), "activations in epilogues": len(absorbed),
             "nodes on integers": len(passing),
             "nodes kept float32": len(staying),
             "quantize": rebuilt.quantizes, "dequantize": rebuilt.dequantizes,
             "quantized": rebuilt.quantized, "misses": misses}
    return PassResult(rebuilt.graph, True, stats)


class _Rebuild:
    """The quantized graph, built node by node. A value of the original graph exists in the new
    one as float32 (`real`), as integers with its scale and zero point (`integer`), or both; the
    other form is made (quantize_linear / dequantize_linear) the first time it is asked for."""

    def __init__(self, original: Graph, ranges: _Ranges, weights: Mapping[str, bool], dtype: str,
                 shared: Mapping[int, Value]):
        """`weights`: weight_params's per_channel and reduce_range; `shared`: the values
        quantized with another's scale and zero point (a concat's inputs: its output)."""
        from ..quantization.params import (activation_params, bias_safe_weight_scales,
                                           quant_range, weight_params)
        self.activation_params, self.weight_params = activation_params, weight_params
        self.bias_safe_weight_scales = bias_safe_weight_scales
        self.original, self.ranges = original, ranges
        self.weight_options, self.dtype = dict(weights), dtype
        self.weight_range = quant_range("int8", True, weights["reduce_range"])
        self.graph = Graph(original.name)
        self.public = {id(v) for v in original.outputs}
        self.reals: dict[int, Value] = {}
        self.integers: dict[int, tuple[Value, Value, Value]] = {}
        self.quantizes = self.dequantizes = 0
        self.quantized: list[tuple[str, str]] = []
        self.shared, self.constants = shared, {}
        self.requantizations: dict[tuple[int, int], Value] = {}
        for v in original.inputs:
            self.reals[id(v)] = self.graph.add_input(v.name, v.type)

    # ---- the two forms of a value ---------------------------------------------------------------
    def params(self, v: Value) -> tuple[Value, Value]:
        """The scale and zero point `v` is quantized with: its own range's, or, for a value in
        `shared`, the constants of the value it shares them with (one pair for all; a concat's
        through the concat reading it)."""
        while id(v) in self.shared:
            v = self.shared[id(v)]
        if id(v) in self.constants:
            return self.constants[id(v)]
        scale, zero_point = self.activation_params(*self.ranges.get(v), dtype=self.dtype,
                                                   symmetric=self.dtype == "int8")
        params = (self.graph.add_constant(f"{v.name}.scale", np.float32(scale)),
                  self.graph.add_constant(f"{v.name}.zero_point",
                                          np.array(zero_point, self.dtype)))
        self.constants[id(v)] = params
        return params

    def real(self, v: Value) -> Value:
        if id(v) in self.reals:
            return self.reals[id(v)]
        if v.is_constant:
            self.reals[id(v)] = self.graph.add_constant(v.name, v.data)
            return self.reals[id(v)]
        q, scale, zero_point = self.integers[id(v)]
        node = self.graph.add_node(ops.DequantizeLinear(), [q, scale, zero_point],
                                   name=f"{v.name}.dequantize", output_names=[v.name])
        self.dequantizes += 1
        self.reals[id(v)] = node.output
        return node.output

    def integer(self, v: Value) -> tuple[Value, Value, Value]:
        if id(v) not in self.integers:
            scale, zero_point = self.params(v)
            node = self.graph.add_node(ops.QuantizeLinear(), [self.real(v), scale, zero_point],
                                       name=f"{v.name}.quantize",
                                       output_names=[f"{v.name}.{self.dtype}"])
            self.quantizes += 1
            self.integers[id(v)] = (node.output, scale, zero_point)
        return self.integers[id(v)]

    # ---- nodes ----------------------------------------------------------------------------------
    def add_float(self, node: Node) -> None:
        new = self.graph.add_node(node.op, [self.real(v) for v in node.inputs], name=node.name,
                                  output_names=[v.name for v in node.outputs],
                                  provenance=node.provenance)
        for v, out in zip(node.outputs, new.outputs):
            self.reals[id(v)] = out

    def add_on_integers(self, node: Node) -> None:
        """`node` on integers: one input's, keeping its scale and zero point, or a concat's
        (`integer_concat`), in the concat's, each input not quantized with them requantized."""
        if node.op_name == "concat":
            scale, zero_point = self.params(node.output)
            inputs = [self.requantized(v, scale, zero_point) for v in node.inputs]
        else:
            q, scale, zero_point = self.integers[id(node.inputs[0])]
            inputs = [q]
        new = self.graph.add_node(node.op, inputs, name=node.name, provenance=node.provenance,
                                  output_names=[f"{node.output.name}.{self.dtype}"])
        self.integers[id(node.output)] = (new.output, scale, zero_point)
        self.quantized.append((node.name, f"{node.op_name} on {self.dtype}"))

    def requantized(self, v: Value, scale: Value, zero_point: Value) -> Value:
        """`v`'s integers in `scale` and `zero_point`: as they are where quantized with those
        values, else its dequantized form quantized again."""
        q, own_scale, own_zero_point = self.integers[id(v)]
        if np.array_equal(own_scale.data, scale.data) and \
                np.array_equal(own_zero_point.data, zero_point.data):
            return q
        key = (id(v), id(scale))
        if key not in self.requantizations:
            node = self.graph.add_node(ops.QuantizeLinear(), [self.real(v), scale, zero_point],
                                       name=f"{v.name}.requantize",
                                       output_names=[f"{v.name}.requantized"])
            self.quantizes += 1
            self.requantizations[key] = node.output
        return self.requantizations[key]

    def weights(self, w: np.ndarray, name: str, bias: np.ndarray | None = None,
                input_scale: Value | None = None) -> tuple[Value, Value, Value]:
        """int8 weights (output channels on axis 0), their scales and zero points; with `bias`,
        scales raised where the bias would not fit int32 in steps of input x weight scale."""
        scale, zero_point = self.weight_params(w, axis=0, **self.weight_options)
        if bias is not None:
            scale = self.bias_safe_weight_scales(scale, input_scale.data, bias)
        shape = (-1,) + (1,) * (w.ndim - 1)
        steps = np.round(w / np.asarray(scale, np.float32).reshape(shape if scale.ndim else ()))
        q = np.clip(steps, *self.weight_range).astype(np.int8)
        return (self.graph.add_constant(f"{name}.int8", q),
                self.graph.add_constant(f"{name}.scale", np.asarray(scale, np.float32)),
                self.graph.add_constant(f"{name}.zero_point", np.asarray(zero_point, np.int8)))

    def bias(self, b: np.ndarray, x_scale: Value, w_scale: Value, name: str) -> Value:
        """The bias in int32 steps of input x weight scale (clipped in float64: float32 rounds
        2**31 - 1 up to 2**31, which then wrapped to -2**31)."""
        step = x_scale.data.astype(np.float32) * w_scale.data.astype(np.float32)
        q = np.clip(np.round(b.astype(np.float32) / step).astype(np.float64), -2**31, 2**31 - 1)
        return self.graph.add_constant(f"{name}.int32",
                                       np.broadcast_to(q, b.shape).astype(np.int32))

    def add_quantized(self, node: Node, epilogue: Node | None = None) -> None:
        """The integer form of layer `node`; with `epilogue`, the relu or clip reading its
        output applied in its requantize step, the layer then standing for both."""
        op, v = node.op, (epilogue or node).output
        provenance = merged_provenance(node, epilogue) if epilogue else node.provenance
        x, x_scale, x_zp = self.integer(node.inputs[0])
        y_scale, y_zp = self.params(v)
        if node.op_name == "matmul":
            w = node.inputs[1]
            # qlinear_matmul's b is [in, out], quantized per column: the transposed weight's rows.
            w_q, w_scale, w_zp = self.weights(np.ascontiguousarray(w.data.T), w.name)
            w_q = self.graph.add_constant(f"{w.name}.int8.t", np.ascontiguousarray(w_q.data.T))
            new = self.graph.add_node(ops.QLinearMatmul(), [x, x_scale, x_zp, w_q, w_scale,
                                      w_zp, y_scale, y_zp], name=node.name,
                                      output_names=[f"{v.name}.{self.dtype}"],
                                      provenance=node.provenance)
            return self.finish_layer(node, v, new.output, y_scale, y_zp)
        if node.op_name == "linear":
            conv, activation, residual = ops.Conv2d(), None, None
            w, b = node.inputs[1], (node.inputs[2] if len(node.inputs) > 2 else None)
            rows = int(np.prod(x.type.shape[:-1]))
            x = self.graph.add_node(ops.Reshape((rows, x.type.shape[-1], 1, 1)), [x],
                                    name=f"{node.name}.to_conv").output
            weight = w.data.reshape(*w.data.shape, 1, 1)
        else:
            fused = node.op_name == "fused_conv2d"
            conv = op.conv.plain if fused else op.plain
            activation = op.activation if fused else None
            has_bias = op.has_bias if fused else len(node.inputs) > 2
            w, b = node.inputs[1], (node.inputs[2] if has_bias else None)
            residual = node.inputs[-1] if fused and op.has_residual else None
            weight = w.data
        if epilogue is not None:
            activation = epilogue.op
        w_q, w_scale, w_zp = self.weights(weight, w.name, None if b is None else b.data, x_scale)
        inputs = [x, x_scale, x_zp, w_q, w_scale, w_zp, y_scale, y_zp]
        if b is not None:
            inputs.append(self.bias(b.data, x_scale, w_scale, b.name))
        if residual is not None:
            inputs.extend(self.integer(residual))
        qop = ops.QLinearConv2d(conv=conv, activation=activation, has_bias=b is not None,
                                has_residual=residual is not None)
        out_name = f"{v.name}.{self.dtype}"
        new = self.graph.add_node(qop, inputs, name=node.name, provenance=provenance,
                                  output_names=[out_name if node.op_name != "linear"
                                                else f"{v.name}.conv"])
        y = new.output
        if node.op_name == "linear":
            y = self.graph.add_node(ops.Reshape(v.type.shape), [y], name=f"{node.name}.from_conv",
                                    output_names=[out_name], provenance=provenance).output
        self.finish_layer(node, v, y, y_scale, y_zp, epilogue)

    def finish_layer(self, node: Node, v: Value, y: Value, y_scale: Value, y_zp: Value,
                     epilogue: Node | None = None) -> None:
        """Record `y` (with its scale and zero point) as the integer form of `v`, the value
        the layer `node` (and its `epilogue`) computes."""
        self.integers[id(v)] = (y, y_scale, y_zp)
        layer = node.op_name + (f" + {epilogue.op_name}" if epilogue else "")
        self.quantized.append((node.name, f"{layer} -> {y.producer.op_name}"
                               if y.producer.op_name != "reshape" else
                               f"{layer} -> qlinear_conv2d (1x1)"))

    def finish(self) -> None:
        self.graph.set_outputs([self.real(v) for v in self.original.outputs])
        if self.graph.output_names != self.original.output_names:   # a name taken
            raise PassError(f"graph outputs {self.original.output_names} would be renamed "
                            f"{self.graph.output_names}")
