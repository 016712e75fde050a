"""Recurrent layers with ONNX's semantics: `lstm` (ONNX LSTM) and `gru` (ONNX GRU), forward,
reverse or bidirectional, with initial states, static sequence lengths, the gate activations,
clipping, both layouts, and (LSTM) peepholes and coupled input/forget gates.

Each cell's arithmetic is written once, against a small backend (`NumpyMath` for the reference
kernel, `RelaxMath` for the TVM lowering), so the interpreter and the compiled code compute the
same steps in the same order. The lowering unrolls the time steps: the sequence length is static
in graphopt's IR, and the steps are a chain of small dependent matrix products (the recurrence
H_t = cell(H_t-1)), so unrolled Relax ops (one matmul over all steps for the input projection,
then per step a matmul, the gate activations and elementwise updates) keep every kernel on
TVM's ordinary schedules and fusions, with no loop construct to lower."""
from __future__ import annotations

from dataclasses import dataclass
from typing import Callable, ClassVar

import numpy as np

from ..ir import HALF_DTYPES, TensorType
from .base import (Op, accumulator, expect, expect_float, expect_rank, expect_same_dtype, flag,
                   integer, real, register, relax, relax_constant, relax_type)
from .linear import weight_block_attribute

DIRECTIONS = ("forward", "reverse", "bidirectional")


@dataclass(frozen=True)
class Activation:
    """One of ONNX's recurrent activations: how many of (alpha, beta) it reads, their ONNX
    defaults (None: the model must give it), and its formula on a math backend."""

    parameters: int
    defaults: tuple[float | None, float | None]
    formula: Callable


# ONNX's recurrent activation functions (the names as ONNX spells them; matched ignoring case).
ACTIVATIONS = {
    "Sigmoid": Activation(0, (None, None), lambda m, x, a, b: m.sigmoid(x)),
    "Tanh": Activation(0, (None, None), lambda m, x, a, b: m.tanh(x)),
    "Relu": Activation(0, (None, None), lambda m, x, a, b: m.relu(x)),
    "Affine": Activation(2, (None, None), lambda m, x, a, b: m.add(m.scale(x, a), m.full(b, x))),
    "LeakyRelu": Activation(1, (0.01, None), lambda m, x, a, b: m.where(
        m.at_least(x, 0.0), x, m.scale(x, a))),
    "ThresholdedRelu": Activation(1, (1.0, None), lambda m, x, a, b: m.where(
        m.greater(x, a), x, m.full(0.0, x))),
    "ScaledTanh": Activation(2, (None, None), lambda m, x, a, b: m.scale(m.tanh(m.scale(x, b)),
                                                                         a)),
    "HardSigmoid": Activation(2, (0.2, 0.5), lambda m, x, a, b: m.hard_sigmoid(x, a, b)),
    "Elu": Activation(1, (1.0, None), lambda m, x, a, b: m.where(
        m.at_least(x, 0.0), x, m.scale(m.sub(m.exp(m.minimum(x, 0.0)), m.full(1.0, x)), a))),
    "Softsign": Activation(0, (None, None), lambda m, x, a, b: m.div(
        x, m.add(m.full(1.0, x), m.abs(x)))),
    # log(1 + e^x) = max(x, 0) + log(1 + e^-|x|): no overflow for large x
    "Softplus": Activation(0, (None, None), lambda m, x, a, b: m.add(
        m.relu(x), m.log(m.add(m.full(1.0, x), m.exp(m.neg(m.abs(x))))))),
}


def activation_name(name) -> str:
    """ONNX's spelling of an activation name given in any case; an unknown one is refused."""
    canonical = {k.lower(): k for k in ACTIVATIONS}
    expect(isinstance(name, str) and name.lower() in canonical,
           f"expected an activation among {', '.join(ACTIVATIONS)}, found {name!r}")
    return canonical[name.lower()]


def resolve_activations(names, alphas=(), betas=()) -> tuple[tuple[str, float, float], ...]:
    """(name, alpha, beta) per activation from ONNX's attribute lists, where `alphas` and
    `betas` hold values only for the activations that read them, in order; a missing value takes
    the ONNX default of that activation (e.g. LeakyRelu's 0.01), and one without a default is
    refused."""
    alphas, betas = list(alphas), list(betas)
    resolved = []
    for raw in names:
        name = activation_name(raw)
        entry = ACTIVATIONS[name]
        values = []
        for k, (what, given) in enumerate((("alpha", alphas), ("beta", betas))):
            if k < entry.parameters:
                value = given.pop(0) if given else entry.defaults[k]
                expect(value is not None, f"expected activation_{what} for {name}, which has "
                       f"no default")
                values.append(real(value, f"{name}'s {what}"))
            else:
                values.append(0.0)
        resolved.append((name, *values))
    return tuple(resolved)


def activate(m, x, function: tuple[str, float, float]):
    """`function` (name, alpha, beta) applied to `x` on backend `m`."""
    name, alpha, beta = function
    return ACTIVATIONS[name].formula(m, x, alpha, beta)


def onnx_activation_lists(activations) -> tuple[list[str], list[float], list[float]]:
    """The inverse of `resolve_activations`: ONNX's names and its alpha and beta lists (values
    only for the activations that read them)."""
    names, alphas, betas = [], [], []
    for name, alpha, beta in activations:
        names.append(name)
        parameters = ACTIVATIONS[name].parameters
        if parameters >= 1:
            alphas.append(alpha)
        if parameters >= 2:
            betas.append(beta)
    return names, alphas, betas


# ---- the two math backends ---------------------------------------------------------------------
class NumpyMath:
    """The reference kernel's arithmetic, in the accumulation dtype (float32 or float64)."""

    def __init__(self, dtype):
        self.dtype = dtype

    def constant(self, array): return np.asarray(array, self.dtype)
    def full(self, value, like): return self.dtype(value)
    def matmul(self, a, b): return a @ b
    def add(self, a, b): return a + b
    def sub(self, a, b): return a - b
    def mul(self, a, b): return a * b
    def div(self, a, b): return a / b
    def neg(self, x): return -x
    def scale(self, x, factor): return x * self.dtype(factor)
    def abs(self, x): return np.abs(x)
    def exp(self, x): return np.exp(x)
    def log(self, x): return np.log(x)
    def minimum(self, x, bound): return np.minimum(x, self.dtype(bound))
    def relu(self, x): return np.maximum(x, self.dtype(0))
    def at_least(self, x, bound): return x >= self.dtype(bound)
    def greater(self, x, bound): return x > self.dtype(bound)
    def where(self, condition, a, b): return np.where(condition, a, b).astype(self.dtype)
    def clip(self, x, bound): return np.clip(x, self.dtype(-bound), self.dtype(bound))
    def columns(self, x, start, stop): return x[..., start:stop]
    def step(self, x, t): return x[t]
    def stack(self, xs, axis): return np.stack(xs, axis)
    def transpose(self, x, perm): return np.transpose(x, perm)
    def transposed_weight(self, w, d): return w[d].T
    def row(self, b, d, start, stop): return b[d, start:stop]

    def sigmoid(self, x):
        from .activation import Sigmoid
        return Sigmoid().reference(x)

    def tanh(self, x):
        return np.tanh(x)

    def hard_sigmoid(self, x, alpha, beta):
        return np.clip(x * self.dtype(alpha) + self.dtype(beta), 0, 1).astype(self.dtype)


class RelaxMath:
    """The same arithmetic as Relax ops, each bound as it is made (`bb.emit`)."""

    def __init__(self, bb, dtype: str, block: int = 0):
        self.bb, self.dtype, self.block = bb, dtype, block
        self.rx = relax()
        self.R = self.rx.op

    def emit(self, expr): return self.bb.emit(expr)
    def scalar(self, value): return self.rx.const(value, self.dtype)
    def constant(self, array): return relax_constant(np.asarray(array))
    def full(self, value, like): return self.scalar(value)
    def add(self, a, b): return self.emit(self.R.add(a, b))
    def sub(self, a, b): return self.emit(self.R.subtract(a, b))
    def mul(self, a, b): return self.emit(self.R.multiply(a, b))
    def div(self, a, b): return self.emit(self.R.divide(a, b))

    def matmul(self, a, b):
        """a @ b; by a constant matrix with a weight block, on the dense rule's packed kernel
        (the input projection's [T, batch, I] viewed as [T * batch, I])."""
        import tvm
        if not (self.block and isinstance(b, tvm.ir.Constant) and len(b.value.shape) == 2):
            return self.emit(self.R.matmul(a, b))
        from .linear import lower_blocked_matmul
        shape = [int(d) for d in relax_type(a).shape]
        flat = a if len(shape) == 2 else self.emit(self.R.reshape(a, (-1, shape[-1])))
        y = self.emit(lower_blocked_matmul(self.bb, flat, b.value.numpy(), self.block))
        return y if len(shape) == 2 else self.emit(
            self.R.reshape(y, (*shape[:-1], int(b.value.shape[1]))))
    def neg(self, x): return self.emit(self.R.negative(x))
    def scale(self, x, factor): return self.emit(self.R.multiply(x, self.scalar(factor)))
    def abs(self, x): return self.emit(self.R.abs(x))
    def exp(self, x): return self.emit(self.R.exp(x))
    def log(self, x): return self.emit(self.R.log(x))
    def minimum(self, x, bound): return self.emit(self.R.minimum(x, self.scalar(bound)))
    def relu(self, x): return self.emit(self.R.maximum(x, self.scalar(0.0)))
    def at_least(self, x, bound): return self.emit(self.R.greater_equal(x, self.scalar(bound)))
    def greater(self, x, bound): return self.emit(self.R.greater(x, self.scalar(bound)))
    def where(self, condition, a, b): return self.emit(self.R.where(condition, a, b))
    def sigmoid(self, x): return self.emit(self.R.sigmoid(x))
    def tanh(self, x): return self.emit(self.R.tanh(x))
    def stack(self, xs, axis): return self.emit(self.R.stack(xs, axis))
    def transpose(self, x, perm): return self.emit(self.R.permute_dims(x, perm))

    def clamp(self, x, low, high):
        return self.emit(self.R.minimum(self.emit(self.R.maximum(x, self.scalar(low))),
                                        self.scalar(high)))

    def clip(self, x, bound):
        return self.clamp(x, -bound, bound)

    def hard_sigmoid(self, x, alpha, beta):
        return self.clamp(self.add(self.scale(x, alpha), self.scalar(beta)), 0.0, 1.0)

    def columns(self, x, start, stop):
        import tvm
        if isinstance(x, tvm.ir.Constant):   # stays a constant (the packed product needs one)
            return self.constant(np.ascontiguousarray(x.value.numpy()[..., start:stop]))
        axis = len(relax_type(x).shape) - 1
        return self.emit(self.R.strided_slice(x, [axis], [start], [stop]))

    def step(self, x, t):
        return self.emit(self.R.squeeze(self.R.strided_slice(x, [0], [t], [t + 1]), [0]))

    def transposed_weight(self, w, d):
        """w[d].T: a constant weight is transposed here, once, rather than by a kernel at every
        run (as `linear` does)."""
        import tvm
        if isinstance(w, tvm.ir.Constant):
            return relax_constant(w.value.numpy()[d].T, self.dtype)
        return self.transpose(self.step(w, d), [1, 0])

    def row(self, b, d, start, stop):
        return self.columns(self.step(b, d), start, stop)


# ---- the ops --------------------------------------------------------------------------------------
@dataclass(frozen=True)
class Recurrent(Op):
    """What LSTM and GRU share: inputs X, W [D, G*H, I], R [D, G*H, H], then optional B
    [D, 2*G*H] and initial states [D, batch, H] (a missing input before a present one is given
    as zeros); the directions, layout (0: X [T, batch, I] and Y [T, D, batch, H]; 1: X
    [batch, T, I], Y [batch, T, D, H], states [batch, D, H]), static sequence lengths (each
    batch entry's steps past its length give zeros in Y and keep its state), gate clipping."""

    gates: ClassVar[int]
    states: ClassVar[int]                       # H (GRU), or H and C (LSTM)
    default_activations: ClassVar[tuple[str, ...]]

    direction: str = "forward"
    activations: tuple[tuple[str, float, float], ...] = ()
    clip: float | None = None
    layout: int = 0
    sequence_lens: tuple[int, ...] | None = None
    weight_block: int = 0      # a target decision: columns per block of the packed constant
                               # W^T and R^T the products stream (`select_dense_layout`); 0:
                               # the weights as written, TVM's generic product

    def __post_init__(self):
        expect(self.direction in DIRECTIONS, f"expected direction among {', '.join(DIRECTIONS)}, "
               f"found {self.direction!r}")
        expect(isinstance(self.activations, (tuple, list)), f"expected activations as (name, "
               f"alpha, beta) triples, found {self.activations!r}")
        triples = []
        for entry in self.activations:
            expect(isinstance(entry, (tuple, list)) and len(entry) == 3, f"expected activations "
                   f"as (name, alpha, beta) triples, found {entry!r}")
            triples.append((activation_name(entry[0]), real(entry[1], "activation alpha"),
                            real(entry[2], "activation beta")))
        count = len(self.default_activations) * self.num_directions
        expect(not triples or len(triples) == count, f"expected {count} activations (one per "
               f"function and direction), found {len(triples)}")
        object.__setattr__(self, "activations", tuple(triples))
        if self.clip is not None:
            object.__setattr__(self, "clip", real(self.clip, "clip"))
            expect(self.clip > 0, f"expected a positive clip, found {self.clip}")
        object.__setattr__(self, "layout", integer(self.layout, "layout"))
        expect(self.layout in (0, 1), f"expected layout 0 or 1, found {self.layout}")
        if self.sequence_lens is not None:
            lens = tuple(integer(n, "sequence_lens") for n in self.sequence_lens)
            object.__setattr__(self, "sequence_lens", lens)
        weight_block_attribute(self)

    def target_choice(self) -> str:
        return f"{self.weight_block}-column weight blocks" if self.weight_block else ""

    @property
    def num_directions(self) -> int:
        return 2 if self.direction == "bidirectional" else 1

    def functions(self, d: int) -> list[tuple[str, float, float]]:
        """The activations of direction `d` (ONNX lists the forward ones, then the reverse)."""
        per = len(self.default_activations)
        if not self.activations:
            return [(name, 0.0, 0.0) for name in self.default_activations]
        return list(self.activations[per * d: per * (d + 1)])

    # ---- shape rule -------------------------------------------------------------------------------
    def infer(self, x, w, r, b=None, *states):
        expect_float(x), expect_rank(x, 3, "X")
        expect_same_dtype(x, w, r, *([b] if b is not None else []), *states)
        steps, batch = (x.shape[0], x.shape[1]) if self.layout == 0 else (x.shape[1], x.shape[0])
        d, g = self.num_directions, self.gates
        expect_rank(r, 3, "R")
        hidden = r.shape[2]
        expect(hidden > 0 and r.shape == (d, g * hidden, hidden), f"expected R of shape "
               f"({d}, {g} * hidden, hidden) for direction {self.direction}, found {r}")
        expect(w.shape == (d, g * hidden, x.shape[2]), f"expected W of shape "
               f"{(d, g * hidden, x.shape[2])} (X {x}, hidden size {hidden}), found {w}")
        if b is not None:
            expect(b.shape == (d, 2 * g * hidden), f"expected B of shape "
                   f"{(d, 2 * g * hidden)}, found {b}")
        state = (d, batch, hidden) if self.layout == 0 else (batch, d, hidden)
        for s, what in zip(states, self.state_names()):
            expect(s.shape == state, f"expected {what} of shape {state}, found {s}")
        if self.sequence_lens is not None:
            expect(len(self.sequence_lens) == batch and all(
                0 < n <= steps for n in self.sequence_lens), f"expected sequence_lens of "
                f"{batch} lengths in [1, {steps}], found {list(self.sequence_lens)}")
        y = (steps, d, batch, hidden) if self.layout == 0 else (batch, steps, d, hidden)
        return (x.with_shape(y),) + (x.with_shape(state),) * self.states

    def state_names(self) -> tuple[str, ...]:
        return ("initial_h", "initial_c", "P")[: self.arity[1] - 4]

    def macs(self, inputs, outputs) -> int:
        x, w, r = inputs[:3]
        steps, batch = (x.shape[0], x.shape[1]) if self.layout == 0 else (x.shape[1], x.shape[0])
        return steps * batch * self.num_directions * w.shape[1] * (w.shape[2] + r.shape[2])

    # ---- the computation, once for both backends ---------------------------------------------------
    def compute(self, m, x, w, r, b, initial, extra, types):
        """Y, then the final states, on backend `m`; `x` and `initial` in layout 0 already.
        `types` gives (steps, batch, hidden)."""
        steps, batch, hidden = types
        g = self.gates
        masks = None
        if self.sequence_lens is not None and any(n < steps for n in self.sequence_lens):
            lens = np.array(self.sequence_lens)[:, None]
            masks = [m.constant(np.broadcast_to(lens > t, (batch, hidden))) for t in range(steps)]
        outputs, finals = [], []
        for d in range(self.num_directions):
            reverse = self.direction == "reverse" or d == 1
            # the input projection of every step in one product: X @ W^T + biases
            projected = m.matmul(x, m.transposed_weight(w, d))
            bias = self.input_bias(m, b, d, g * hidden) if b is not None else None
            if bias is not None:
                projected = m.add(projected, bias)
            r_t = m.transposed_weight(r, d)
            state = [m.step(s, d) for s in initial]
            ys = [None] * steps
            for t in (range(steps - 1, -1, -1) if reverse else range(steps)):
                new = self.cell(m, m.step(projected, t), state, r_t, b, d, hidden, extra,
                                self.functions(d))
                if masks is not None:
                    ys[t] = m.where(masks[t], new[0], m.full(0.0, new[0]))
                    new = [m.where(masks[t], n, s) for n, s in zip(new, state)]
                else:
                    ys[t] = new[0]
                state = new
            outputs.append(m.stack(ys, 0))
            finals.append(state)
        y = m.stack(outputs, 1)
        return [y] + [m.stack([f[k] for f in finals], 0) for k in range(self.states)]

    def input_bias(self, m, b, d, size):
        """The bias added to the input projection (Wb + Rb, or part of Rb: see GRU)."""
        return m.add(m.row(b, d, 0, size), m.row(b, d, size, 2 * size))

    def gate(self, m, value, function):
        """A gate's activation of its input, clipped first when `clip` is set."""
        if self.clip is not None:
            value = m.clip(value, self.clip)
        return activate(m, value, function)

    # ---- the parts an op defines ---------------------------------------------------------------------
    def split_inputs(self, inputs):
        x, w, r, b, *rest = list(inputs) + [None] * (self.arity[1] - len(inputs))
        return x, w, r, b, rest[: self.states], rest[self.states:]

    def reference(self, *arrays):
        x, w, r, b, initial, extra = self.split_inputs(arrays)
        dtype = x.dtype
        acc = accumulator(dtype)
        m = NumpyMath(acc)
        x, w, r = (a.astype(acc) for a in (x, w, r))
        if self.layout == 1:
            x = np.transpose(x, (1, 0, 2))
        steps, batch, hidden = x.shape[0], x.shape[1], r.shape[2]
        shape = (self.num_directions, batch, hidden)
        initial = [np.zeros(shape, acc) if s is None else
                   (np.transpose(s, (1, 0, 2)) if self.layout == 1 else s).astype(acc)
                   for s in initial]
        b = None if b is None else b.astype(acc)
        extra = [None if e is None else e.astype(acc) for e in extra]
        results = self.compute(m, x, w, r, b, initial, extra, (steps, batch, hidden))
        results = self.to_layout(m, results)
        return tuple(np.ascontiguousarray(v).astype(dtype) for v in results)

    def to_layout(self, m, results):
        if self.layout == 0:
            return results
        return [m.transpose(results[0], [2, 0, 1, 3])] + \
            [m.transpose(s, [1, 0, 2]) for s in results[1:]]

    def lower_tvm(self, bb, *args):
        import tvm
        rx = relax()
        R = rx.op
        x, w, r, b, initial, extra = self.split_inputs(args)
        dtype = relax_type(x).dtype
        wide = "float32" if dtype in HALF_DTYPES else dtype

        def widen(v):
            """Half precision computes in float32: constants (the weights) widened here, once,
            so that the packed product kernels take them; computed values by a cast."""
            if v is None or wide == dtype:
                return v
            if isinstance(v, tvm.ir.Constant):
                return relax_constant(v.value.numpy(), wide)
            return bb.emit(R.astype(v, wide))

        x, w, r, b = (widen(v) for v in (x, w, r, b))
        initial, extra = [widen(s) for s in initial], [widen(e) for e in extra]
        m = RelaxMath(bb, wide, self.weight_block)
        if self.layout == 1:
            x = m.transpose(x, [1, 0, 2])
            initial = [None if s is None else m.transpose(s, [1, 0, 2]) for s in initial]
        steps, batch, _ = relax_type(x).shape
        hidden = relax_type(r).shape[2]
        shape = (self.num_directions, batch, hidden)
        initial = [m.constant(np.zeros(shape, wide)) if s is None else s for s in initial]
        results = self.to_layout(m, self.compute(m, x, w, r, b, initial, extra,
                                                 (steps, batch, hidden)))
        if wide != dtype:
            results = [bb.emit(R.astype(v, dtype)) for v in results]
        return rx.Tuple(results)


@register
@dataclass(frozen=True)
class Lstm(Recurrent):
    """ONNX LSTM. Inputs: X, W, R[, B, initial_h, initial_c, P]; outputs Y, Y_h, Y_c. Gates
    in ONNX's order i, o, f, c; activations f, g, h (default Sigmoid, Tanh, Tanh);
    `input_forget` couples the forget gate to the input gate (f = 1 - i); P [D, 3*H] are the
    peephole weights of i, o, f."""

    name = "lstm"
    arity = (3, 7)
    buffer_inputs = (4, 5)      # the initial states are inputs of a run, not parameters
    gates = 4
    states = 2
    default_activations = ("Sigmoid", "Tanh", "Tanh")
    input_forget: bool = False

    def __post_init__(self):
        super().__post_init__()
        object.__setattr__(self, "input_forget", flag(self.input_forget, "input_forget"))

    def infer(self, x, w, r, b=None, h=None, c=None, p=None):
        out = super().infer(x, w, r, b, *[s for s in (h, c) if s is not None])
        if p is not None:
            hidden = r.shape[2]
            expect_same_dtype(x, p)
            expect(p.shape == (self.num_directions, 3 * hidden), f"expected P of shape "
                   f"{(self.num_directions, 3 * hidden)}, found {p}")
        return out

    def cell(self, m, projected, state, r_t, b, d, hidden, extra, functions):
        h, c = state
        f_act, g_act, h_act = functions
        gates = m.add(projected, m.matmul(h, r_t))
        i, o, f, candidate = (m.columns(gates, k * hidden, (k + 1) * hidden) for k in range(4))
        peephole = extra[0] if extra else None
        if peephole is not None:
            p_i, p_o, p_f = (m.row(peephole, d, k * hidden, (k + 1) * hidden) for k in range(3))
            i, f = m.add(i, m.mul(p_i, c)), m.add(f, m.mul(p_f, c))
        i = self.gate(m, i, f_act)
        f = m.sub(m.full(1.0, i), i) if self.input_forget else self.gate(m, f, f_act)
        c_new = m.add(m.mul(f, c), m.mul(i, self.gate(m, candidate, g_act)))
        if peephole is not None:
            o = m.add(o, m.mul(p_o, c_new))
        o = self.gate(m, o, f_act)
        # the clip bounds the gates' inputs, not the cell state that h reads (as ONNX Runtime)
        return [m.mul(o, activate(m, c_new, h_act)), c_new]


@register
@dataclass(frozen=True)
class Gru(Recurrent):
    """ONNX GRU. Inputs: X, W, R[, B, initial_h]; outputs Y, Y_h. Gates in ONNX's order z, r, h;
    activations f, g (default Sigmoid, Tanh). `linear_before_reset` applies the reset gate after
    the recurrent product (r * (H @ Rh^T + Rbh), torch's and cuDNN's form) instead of before it
    ((r * H) @ Rh^T + Rbh, ONNX's default)."""

    name = "gru"
    arity = (3, 5)
    buffer_inputs = (4,)
    gates = 3
    states = 1
    default_activations = ("Sigmoid", "Tanh")
    linear_before_reset: bool = False

    def __post_init__(self):
        super().__post_init__()
        object.__setattr__(self, "linear_before_reset",
                           flag(self.linear_before_reset, "linear_before_reset"))

    def infer(self, x, w, r, b=None, h=None):
        return super().infer(x, w, r, b, *([h] if h is not None else []))

    def input_bias(self, m, b, d, size):
        """Wb + Rb, but with linear_before_reset Rbh is added inside the reset (in `cell`):
        Wb + [Rbz, Rbr, 0] then."""
        if not self.linear_before_reset:
            return super().input_bias(m, b, d, size)
        hidden = size // 3
        keep = np.concatenate([np.ones(2 * hidden), np.zeros(hidden)]).astype(np.dtype(m.dtype))
        return m.add(m.row(b, d, 0, size), m.mul(m.row(b, d, size, 2 * size), m.constant(keep)))

    def cell(self, m, projected, state, r_t, b, d, hidden, extra, functions):
        (h,) = state
        f_act, g_act = functions
        x_z, x_r, x_h = (m.columns(projected, k * hidden, (k + 1) * hidden) for k in range(3))
        if self.linear_before_reset:
            recurrent = m.matmul(h, r_t)
            h_z, h_r, h_h = (m.columns(recurrent, k * hidden, (k + 1) * hidden)
                             for k in range(3))
            if b is not None:
                h_h = m.add(h_h, m.row(b, d, 5 * hidden, 6 * hidden))
        else:
            recurrent = m.matmul(h, m.columns(r_t, 0, 2 * hidden))
            h_z, h_r = (m.columns(recurrent, k * hidden, (k + 1) * hidden) for k in range(2))
        z = self.gate(m, m.add(x_z, h_z), f_act)
        reset = self.gate(m, m.add(x_r, h_r), f_act)
        if self.linear_before_reset:
            candidate = m.add(x_h, m.mul(reset, h_h))
        else:
            candidate = m.add(x_h, m.matmul(m.mul(reset, h), m.columns(r_t, 2 * hidden,
                                                                        3 * hidden)))
        candidate = self.gate(m, candidate, g_act)
        return [m.add(m.mul(m.sub(m.full(1.0, z), z), candidate), m.mul(z, h))]
