"""Byte-mutation fuzzing of the ONNX importer: valid models (one exported from the DSL with most
op families, a torch-style shape-arithmetic chain, a small conv net) have bytes flipped, set,
inserted, deleted, duplicated or cut off, with a fixed seed, and each mutant is loaded by path in
a child process with a 2 GiB address-space limit and a timeout. Every mutant must load or raise a
GraphoptError: any other exception (MemoryError included), a signal or a timeout fails. About a
third of the mutants load; the rest fail in the parser, onnx.checker, the structure checks, the
conversion or the shape rules (600 mutants take a few seconds; the slow run takes 10000)."""
from __future__ import annotations

import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper, numpy_helper

import graphopt as go
from graphopt import dsl
from hostile_onnx import OPSET, load_in_child, model_bytes, mutants


def dsl_model() -> bytes:
    """conv, batch_norm, relu6, max/avg pool, concat, pad, resize, deconv, global pool, linear,
    softmax: small channel counts so that most bytes are structure, not weights."""
    with dsl.Builder("families", seed=0) as b:
        x = b.input("input", (1, 2, 8, 8))
        y = dsl.relu6(dsl.batch_norm(dsl.conv2d(x, 3, 3, padding=1)))
        y = dsl.concat([dsl.max_pool2d(y, 2), dsl.avg_pool2d(y, 2)], axis=1)
        y = dsl.resize(dsl.pad(y, (1, 1, 1, 1)), scale=2)
        y = dsl.leaky_relu(dsl.conv_transpose2d(y, 2, 2, stride=2), 0.1)
        y = dsl.flatten(dsl.global_avg_pool2d(y))
        graph = b.output(dsl.softmax(dsl.linear(y, 3)))
    return go.save_onnx(graph).SerializeToString()


def shape_chain_model() -> bytes:
    """torch.onnx.export's Shape -> Gather -> Unsqueeze -> Concat -> Reshape, with Constant,
    ConstantOfShape, Range, Tile and Expand folded at import."""
    scalar = lambda name, v: numpy_helper.from_array(np.array(v, np.int64), name)
    nodes = [
        helper.make_node("Shape", ["x"], ["shape"], name="shape"),
        helper.make_node("Constant", [], ["zero"], name="zero", value=scalar("z", 0)),
        helper.make_node("Gather", ["shape", "zero"], ["batch"], name="gather", axis=0),
        helper.make_node("Unsqueeze", ["batch", "axes"], ["batch1"], name="unsqueeze"),
        helper.make_node("Concat", ["batch1", "minus_one"], ["target"], name="concat", axis=0),
        helper.make_node("Reshape", ["x", "target"], ["flat"], name="reshape"),
        helper.make_node("ConstantOfShape", ["width"], ["ones"], name="ones",
                         value=numpy_helper.from_array(np.array([1.0], np.float32))),
        helper.make_node("Range", ["start", "limit", "delta"], ["steps"], name="range"),
        helper.make_node("Tile", ["steps", "reps"], ["tiled"], name="tile"),
        helper.make_node("Expand", ["ones", "width"], ["wide"], name="expand"),
        helper.make_node("Add", ["flat", "wide"], ["sum"], name="add"),
        helper.make_node("Relu", ["sum"], ["y"], name="relu"),
    ]
    inits = [numpy_helper.from_array(np.array([0], np.int64), "axes"),
             numpy_helper.from_array(np.array([-1], np.int64), "minus_one"),
             numpy_helper.from_array(np.array([48], np.int64), "width"),
             scalar("start", 0), scalar("limit", 6), scalar("delta", 2),
             numpy_helper.from_array(np.array([2], np.int64), "reps")]
    x = helper.make_tensor_value_info("x", TensorProto.FLOAT, [2, 3, 4, 4])
    outputs = [helper.make_tensor_value_info("y", TensorProto.FLOAT, [2, 48]),
               helper.make_tensor_value_info("tiled", TensorProto.INT64, [6])]
    return model_bytes(nodes, [x], outputs, inits, name="shape_chain")


def conv_net_model() -> bytes:
    rng = np.random.default_rng(0)
    inits = [numpy_helper.from_array(rng.standard_normal((4, 3, 3, 3)).astype(np.float32), "w"),
             numpy_helper.from_array(rng.standard_normal(4).astype(np.float32), "b"),
             numpy_helper.from_array(rng.standard_normal((5, 16)).astype(np.float32), "fc")]
    nodes = [helper.make_node("Conv", ["x", "w", "b"], ["c"], name="conv", pads=[1, 1, 1, 1],
                              strides=[2, 2]),
             helper.make_node("Relu", ["c"], ["r"], name="relu"),
             helper.make_node("MaxPool", ["r"], ["p"], name="pool", kernel_shape=[2, 2],
                              strides=[2, 2]),
             helper.make_node("Flatten", ["p"], ["f"], name="flatten"),
             helper.make_node("Gemm", ["f", "fc"], ["y"], name="fc", transB=1)]
    x = helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 3, 8, 8])
    y = helper.make_tensor_value_info("y", TensorProto.FLOAT, [1, 5])
    return model_bytes(nodes, [x], [y], inits, name="conv_net")


SEEDS = [dsl_model(), shape_chain_model(), conv_net_model()]


def check_mutants(count: int, seed: int, batch: int) -> None:
    """Load `count` mutants, `batch` per child; fail naming every mutant that misbehaved."""
    models = mutants(SEEDS, count, seed)
    failures, loaded = [], 0
    for start in range(0, count, batch):
        chunk = models[start:start + batch]
        result = load_in_child(chunk, timeout=60 + 2 * len(chunk))
        for i, (kind, message) in enumerate(result.outcomes):
            if kind == "ok":
                loaded += 1
            elif kind.startswith("not a GraphoptError"):
                failures.append(f"mutant {start + i} (seed {seed}): {kind}: {message}")
        if not result.clean:
            index = start + len(result.outcomes)
            how = "timed out" if result.timed_out else f"exit status {result.returncode}"
            failures.append(f"mutant {index} (seed {seed}) {how}: {result.stderr[-500:]}")
            remaining = models[index + 1:start + len(chunk)]
            if remaining:   # the rest of the batch still gets checked, in a fresh child
                rest = load_in_child(remaining, timeout=60 + 2 * len(remaining))
                failures += [f"mutant {index + 1 + j} (seed {seed}): {k}: {m}"
                             for j, (k, m) in enumerate(rest.outcomes)
                             if k.startswith("not a GraphoptError")]
    assert not failures, "\n".join(failures)
    assert loaded < count   # the mutations did damage something


def test_seeds_load():
    for data in SEEDS:
        graph = go.load_onnx(data)
        assert graph.nodes


def test_mutated_onnx_files_load_or_raise_graphopt_errors():
    check_mutants(count=600, seed=1, batch=200)


@pytest.mark.slow
def test_mutated_onnx_files_load_or_raise_graphopt_errors_long():
    check_mutants(count=10000, seed=2, batch=500)

