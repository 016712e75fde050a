"""Small elementwise results that a larger kernel broadcasts stay kernels of their own
(`targets/tvm/small_producers.py`): a squeeze-excite block's [1, C, 1, 1] sigmoid is computed
once per channel, not once per element of the [1, C, H, W] multiply that reads it; same-shape
chains still fuse. Checked on the scheduled kernels (pinned CPU) and against the interpreter,
in float32 and int8 (where the gate is a table of floats)."""
from __future__ import annotations

import numpy as np
import pytest

import graphopt as go
from graphopt.frontends import dsl

tvm = pytest.importorskip("tvm")

from test_schedules import AVX2_CPU, _scheduled_kernels  # noqa: E402


def _squeeze_excite(channels=32, side=14):
    """x * sigmoid(fc2(relu(fc1(mean(x))))) (1x1 convs), then a SiLU on the same map."""
    with dsl.Builder("squeeze_excite", seed=3) as b:
        x = b.input("input", (1, channels, side, side))
        s = dsl.global_avg_pool2d(x)
        s = dsl.conv2d(dsl.relu(dsl.conv2d(s, channels // 4, 1)), channels, 1)
        scaled = dsl.mul(x, dsl.sigmoid(s, name="gate"), name="scaled")
        return b.output(scaled, dsl.silu(x, name="silu"), names=["scaled_out", "silu_out"])


def _gated(channels=32, side=14):
    """x * sigmoid(g) for a [1, C, 1, 1] input g, and x * sigmoid(x)."""
    with dsl.Builder("gated", seed=3) as b:
        x = b.input("input", (1, channels, side, side))
        g = b.input("gate", (1, channels, 1, 1))
        return b.output(dsl.mul(x, dsl.sigmoid(g)), dsl.silu(x), names=["scaled", "swished"])


def _feeds(graph, seed=0):
    rng = np.random.default_rng(seed)
    return {v.name: rng.standard_normal(v.shape).astype(np.float32) for v in graph.inputs}


LOG2E = "1.4426950"   # in every float32 exp TOPI's fast_exp computes


def _exp_kernels_reading(kernels, param: str) -> list[str]:
    """The kernels with a parameter named `param` that compute an exponential."""
    return sorted(name for name, f in kernels.items()
                  if param in [p.name for p in f.params] and LOG2E in f.script())


def test_small_gate_is_computed_once_per_channel():
    """The [1, C, 1, 1] sigmoid is a kernel of its own (reading the gate, computing exp), and
    the multiply reads its result: the only kernel computing exp over the map is the SiLU's,
    whose sigmoid reads a map of its own shape and stays fused."""
    kernels = _scheduled_kernels(_gated(), AVX2_CPU)
    gate_kernels = _exp_kernels_reading(kernels, "gate")
    assert len(gate_kernels) == 1 and len(kernels[gate_kernels[0]].params) == 2, sorted(kernels)
    assert len(_exp_kernels_reading(kernels, "input")) == 1, sorted(kernels)


def test_switched_off_the_gate_fuses_into_the_multiply(monkeypatch):
    """The check above can fail: without the pass, FuseOps puts the gate's sigmoid into the
    [1, C, H, W] multiply, which computes it once per element."""
    from graphopt.targets.tvm import small_producers
    monkeypatch.setattr(small_producers, "SMALL_ELEMENTS", 0)
    kernels = _scheduled_kernels(_gated(), AVX2_CPU)
    assert len(_exp_kernels_reading(kernels, "input")) == 2, sorted(kernels)


@pytest.mark.parametrize("build", [_gated, _squeeze_excite])
def test_gate_apart_matches_the_interpreter(build):
    graph = build()
    report = go.compare(graph, go.compile(graph, bounds_check=True), _feeds(graph))
    assert report.ok, str(report)


def test_int8_gate_matches_the_interpreter():
    """In int8 the gate's dequantize and sigmoid become a table of 256 floats
    (tabulate_quantized_activations), which the multiply reads per element."""
    graph = _squeeze_excite()
    feeds = _feeds(graph)
    quantized = go.quantize(graph, go.calibrate(graph, [feeds, _feeds(graph, 1)])).graph
    model = go.compile(quantized)
    gates = [n for n in model.graph.nodes if n.op_name == "table_lookup"
             and n.output.shape == (1, 32, 1, 1) and n.output.dtype == "float32"]
    assert len(gates) == 1, [n.op_name for n in model.graph.nodes]
    report = go.compare(quantized, model, feeds)
    assert report.ok, str(report)
