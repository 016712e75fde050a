"""Import memory is bounded: small hostile files that ask for gigabytes (folds that repeat or
expand, many folds each under the per-node limit, external data that declares less than its file
holds, initializers whose dims promise more than their data) are refused with a clean
ModelFormatError, or loaded reading only what they declare, and the child that loads them keeps
a small peak RSS. `max_constant_bytes` bounds the total."""
from __future__ import annotations

import re

import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper, numpy_helper

import graphopt as go
from graphopt.errors import GraphoptError, ModelFormatError
from graphopt.frontends.onnx_load import ConstantBudget, tensor_array
from hostile_onnx import (concat_of_one_name, expanding_fold, lying_initializer, load_in_child,
                          many_constant_of_shape, small_external_weight)

MiB = 1 << 20
BASELINE = 300 * MiB   # Python, numpy, onnx, networkx and graphopt with a small model


def only_outcome(result):
    assert result.clean, result.stderr[-2000:]
    assert len(result.outcomes) == 1
    return result.outcomes[0]


@pytest.mark.parametrize("make, pattern", [
    (concat_of_one_name, r"node 'repeat' \(Concat\): folding this Concat would create "
                         r"167772160 elements"),
    (lambda: expanding_fold("Tile"), r"node 'bomb' \(Tile\): folding this Tile would create"),
    (lambda: expanding_fold("Expand"), r"node 'bomb' \(Expand\): folding this Expand"),
    (lambda: expanding_fold("Range"), r"node 'bomb' \(Range\): folding this Range"),
    (lying_initializer, r"raw_data"),
], ids=["concat_repeating_one_name", "tile", "expand", "range", "dims_beyond_raw_data"])
def test_folding_bombs_are_refused_before_allocating(make, pattern):
    data = make()
    assert len(data) < 500
    result = load_in_child([data])
    kind, message = only_outcome(result)
    assert kind == "ModelFormatError" and re.search(pattern, message), message
    assert result.peak_rss < BASELINE, result.peak_rss


def test_folds_under_the_per_node_limit_stop_at_the_total():
    """20 ConstantOfShape nodes of 128 MB each (2.7 GB before the total limit) in 2 KB."""
    data = many_constant_of_shape()
    result = load_in_child([data], max_constant_bytes=64 * MiB)
    kind, message = only_outcome(result)
    assert kind == "ModelFormatError" and "max_constant_bytes=67,108,864" in message, message
    assert "node 'make0' (ConstantOfShape): the folded result" in message
    assert result.peak_rss < BASELINE + 64 * MiB, result.peak_rss


def test_the_default_total_limit_is_one_gib():
    result = load_in_child([many_constant_of_shape()])
    kind, message = only_outcome(result)
    assert kind == "ModelFormatError" and "max_constant_bytes=1,073,741,824" in message
    assert result.peak_rss < BASELINE + (1 << 30) + 256 * MiB, result.peak_rss


def test_a_larger_limit_lets_a_trusted_model_load():
    data = many_constant_of_shape(count=3, elements=1 << 20)   # 3 x 8 MiB of folded constants
    kind, message = only_outcome(load_in_child([data], max_constant_bytes=16 * MiB))
    assert kind == "ModelFormatError" and "max_constant_bytes" in message
    assert only_outcome(load_in_child([data], max_constant_bytes=64 * MiB))[0] == "ok"


def test_external_data_without_a_length_reads_only_what_the_tensor_declares():
    """A float32[1, 4] weight over a 1 GiB (sparse) file: 16 bytes are read."""
    result = load_in_child([small_external_weight()], files={"weights.bin": 1 << 30})
    assert only_outcome(result) == ("ok", "")
    assert result.peak_rss < BASELINE, result.peak_rss


@pytest.mark.parametrize("length, file_size, pattern", [
    (1 << 30, 1 << 30, r"external data length 1073741824 does not match the tensor's "
                       r"FLOAT\[1, 4\] \(16 bytes\)"),
    (None, 8, r"external data range \[0, 16\) lies outside 'weights.bin' \(8 bytes\)"),
])
def test_external_data_that_disagrees_with_its_tensor_is_refused(length, file_size, pattern):
    result = load_in_child([small_external_weight(length)], files={"weights.bin": file_size})
    kind, message = only_outcome(result)
    assert kind == "ModelFormatError" and re.search(pattern, message), message
    assert result.peak_rss < BASELINE, result.peak_rss


def test_external_data_beyond_the_limit_is_refused_before_it_is_read():
    model = onnx.ModelProto.FromString(small_external_weight())
    model.graph.initializer[0].dims[:] = [1 << 16, 1 << 16]   # 16 GiB declared
    model.graph.input[0].type.tensor_type.shape.dim[1].dim_value = 1 << 16
    result = load_in_child([model.SerializeToString()], files={"weights.bin": 16 << 30})
    kind, message = only_outcome(result)
    assert kind == "ModelFormatError" and "the external data of 1 tensor(s) needs " \
        "17,179,869,184 bytes" in message, message
    assert result.peak_rss < BASELINE, result.peak_rss


def test_a_memory_error_is_not_disguised_as_a_model_error():
    """Under a tight address-space limit the fold runs out of memory inside the 1 GiB budget:
    the harness sees the MemoryError itself (load_onnx does not wrap it)."""
    result = load_in_child([many_constant_of_shape(count=4)], memory=600 * MiB)
    assert result.outcomes and result.outcomes[0][0] == "not a GraphoptError: MemoryError", \
        (result.outcomes, result.stderr[-1000:])


# ---- in process: the checks themselves -------------------------------------------------------
@pytest.mark.parametrize("tensor, pattern", [
    (onnx.TensorProto(name="t", data_type=TensorProto.FLOAT, dims=[1 << 20, 1 << 20],
                      raw_data=b"\0" * 4),
     r"declares FLOAT\[1048576, 1048576\] \(4,398,046,511,104 bytes\) but its raw_data holds 4"),
    (onnx.TensorProto(name="t", data_type=TensorProto.INT64, dims=[1 << 30], int64_data=[1, 2]),
     r"declares INT64\[1073741824\] \(1,073,741,824 elements\) but its int64_data holds 2"),
    (onnx.TensorProto(name="t", data_type=TensorProto.FLOAT, dims=[3, -1]), r"negative dims"),
    (onnx.TensorProto(name="t", data_type=999, dims=[2]), r"unknown data type 999"),
], ids=["raw_data_short", "typed_data_short", "negative_dims", "unknown_type"])
def test_tensor_data_is_checked_against_its_dims_before_conversion(tensor, pattern):
    with pytest.raises(ModelFormatError, match=pattern):
        tensor_array(tensor, "initializer 't'", ConstantBudget(1 << 30))


def test_the_budget_counts_every_constant():
    budget = ConstantBudget(100)
    tensor = numpy_helper.from_array(np.zeros(20, np.float32), "t")   # 80 bytes
    assert tensor_array(tensor, "initializer 't'", budget).shape == (20,)
    with pytest.raises(ModelFormatError, match=r"initializer 't' needs 80 bytes, beyond the "
                                               r"limit .*\(80 of max_constant_bytes=100"):
        tensor_array(tensor, "initializer 't'", budget)


def test_initializers_count_against_the_limit():
    graph = go.zoo.lenet5()
    model = go.save_onnx(graph)
    weights = sum(c.data.nbytes for c in graph.constants.values())
    with pytest.raises(ModelFormatError, match="max_constant_bytes=1,000"):
        go.load_onnx(model, max_constant_bytes=1000)
    assert go.load_onnx(model, max_constant_bytes=weights + 4096).nodes


@pytest.mark.parametrize("limit", [-1, 1.5, "1GB", None, True])
def test_a_bad_limit_is_refused(limit):
    with pytest.raises(GraphoptError, match="expected max_constant_bytes as a non-negative int"):
        go.load_onnx(helper.make_model(helper.make_graph([], "g", [], [])),
                     max_constant_bytes=limit)
