"""Shared test helpers (plain functions: `from conftest import ...`) and fixtures.

    g = one_node_graph(ops.Conv2d(stride=2), [x], [w, b], name="conv")   # x input, w b constants
    y = go.interpret(g, input_feeds("conv", [x]))["conv.out"]
    assert_close(y, expected, rtol=2e-5, what="conv")
"""
from __future__ import annotations

from typing import Sequence

import numpy as np
import pytest

from graphopt import ops
from graphopt.ir import Graph, TensorType, Value


def random_array(rng: np.random.Generator, shape: Sequence[int], dtype: str = "float32",
                 low: int = -9, high: int = 10) -> np.ndarray:
    """Standard-normal floats, or integers drawn from [low, high) (from 0 for unsigned)."""
    if np.dtype(dtype).kind == "f":
        return rng.standard_normal(tuple(shape)).astype(dtype)
    low = max(low, 0) if np.dtype(dtype).kind == "u" else low
    return rng.integers(low, high, size=tuple(shape)).astype(dtype)


def add_op_case(graph: Graph, prefix: str, op: ops.Op, inputs: Sequence[np.ndarray],
                constants: Sequence[np.ndarray] = ()) -> Value:
    """Add one application of `op` to `graph`: `inputs` become graph inputs named
    '<prefix>.in<i>', `constants` become constants after them, the node is named `prefix` and its
    output '<prefix>.out'. Returns that output value."""
    args = [graph.add_input(f"{prefix}.in{i}", TensorType.of(a)) for i, a in enumerate(inputs)]
    args += [graph.add_constant(f"{prefix}.const{i}", c) for i, c in enumerate(constants)]
    return graph.add_node(op, args, name=prefix, output_names=[f"{prefix}.out"]).output


def input_feeds(prefix: str, inputs: Sequence[np.ndarray]) -> dict[str, np.ndarray]:
    """The feed dict matching the graph inputs `add_op_case(graph, prefix, ...)` created."""
    return {f"{prefix}.in{i}": a for i, a in enumerate(inputs)}


def one_node_graph(op: ops.Op, inputs: Sequence[np.ndarray], constants: Sequence[np.ndarray] = (),
                   name: str = "node") -> Graph:
    """A graph holding one node of `op` whose output is the graph output."""
    graph = Graph(f"one_{op.name}")
    graph.set_outputs([add_op_case(graph, name, op, inputs, constants)])
    return graph


def assert_close(found: np.ndarray, expected: np.ndarray, *, rtol: float, what: str = "") -> None:
    """Elementwise |found - expected| <= rtol * (|expected| + max |expected|): a relative bound
    that does not blow up where the reference crosses zero. Exact for integer dtypes."""
    found, expected = np.asarray(found), np.asarray(expected)
    if found.shape != expected.shape or found.dtype != expected.dtype:
        raise AssertionError(f"{what}: found {found.dtype}{list(found.shape)}, expected "
                             f"{expected.dtype}{list(expected.shape)}")
    if expected.dtype.kind != "f":
        mismatch = np.flatnonzero(found != expected)
        if mismatch.size:
            raise AssertionError(f"{what}: {mismatch.size} of {found.size} elements differ, "
                                 f"first at flat indices {mismatch[:5]}")
        return
    exp = expected.astype(np.float64)
    err = np.abs(found.astype(np.float64) - exp)
    bound = rtol * (np.abs(exp) + np.abs(exp).max(initial=0.0))
    if not (err <= bound).all():
        worst = int(np.argmax(err - bound))
        raise AssertionError(f"{what}: max error {err.max():.3g} (at flat {worst}: found "
                             f"{found.ravel()[worst]}, expected {expected.ravel()[worst]}) "
                             f"exceeds rtol {rtol:g}")


def skip_unless_this_cpu_runs(model) -> None:
    """Skip the rest of a test where `model` (a CPU CompiledModel, often built for another
    `mcpu`) uses instructions this CPU lacks: such a build is compile-checked only."""
    from graphopt import runtime
    from graphopt.targets.tvm.export import cpu_features
    missing = sorted(set(cpu_features(model.tvm_target)) - (runtime.host_cpu_flags() or set()))
    if missing:
        pytest.skip(f"this CPU has no {', '.join(missing)}: the "
                    f"{model.tvm_target.attrs.get('mcpu', 'host')} build is compile-checked only")


@pytest.fixture
def direct_small_planes(monkeypatch):
    """3x3 convs on planes up to 32x32 on the direct kernel, for tests about its code: not
    Winograd F(2x2) (`SMALL_PLANE`) nor, on 32 KiB-L1 AVX-512 cores, F(4x4) from 25x25."""
    from graphopt.targets.tvm.schedules import winograd
    monkeypatch.setattr(winograd, "SMALL_PLANE", 0)
    monkeypatch.setattr(winograd, "F4_MIN_PLANE", 33 * 33)


@pytest.fixture
def interruptible():
    """SIGINT raising KeyboardInterrupt for the test (Python's default handler), and so at its
    default in the processes the test starts, whatever this process inherited: a suite started
    in the background (`nohup make test &`, or `&` in a script) inherits SIGINT ignored, and
    so would the CLI under test and every child it starts."""
    import signal
    previous = signal.signal(signal.SIGINT, signal.default_int_handler)
    yield
    signal.signal(signal.SIGINT, previous)


@pytest.fixture
def rng() -> np.random.Generator:
    """A fresh, seeded generator per test: reproducible data, independent of test order."""
    return np.random.default_rng(1234)

