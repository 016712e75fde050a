"""The table_lookup kernel: vpermi2b over 64-byte vectors on CPUs with AVX512-VBMI (built for
one on any x86 host, run where this host has it), for tables of bytes and, byte plane by byte
plane, of 2- and 4-byte entries, the elements after the last whole vector one by one; the
generic gather elsewhere; both equal to the interpreter, bit for bit, for every uint8 code."""
from __future__ import annotations

import re

import numpy as np
import pytest

import graphopt as go
from graphopt import ops, runtime
from graphopt.targets.tvm.cpu import cpu_assembly
from graphopt.targets.tvm.schedules import lookup

VBMI_CPU = "icelake-server"      # AVX-512 with VBMI
NO_VBMI_CPU = "cascadelake"      # AVX-512 without


def lookup_graph(shape, table_dtype="uint8"):
    graph = go.Graph("lookup")
    x = graph.add_input("x", go.TensorType(shape, "uint8"))
    rng = np.random.default_rng(0)
    table = rng.permutation(256).astype(table_dtype) if table_dtype == "uint8" else \
        rng.standard_normal(256).astype(table_dtype)
    t = graph.add_constant("table", table)
    graph.set_outputs([graph.add_node(ops.TableLookup(), [x, t], name="lookup").output])
    return graph


def every_code(shape, seed=0) -> dict[str, np.ndarray]:
    """Every uint8 code, repeated over `shape` in a random order."""
    size = int(np.prod(shape))
    codes = np.resize(np.arange(256, dtype=np.uint8), size)
    return {"x": np.random.default_rng(seed).permutation(codes).reshape(shape)}


def host_has_vbmi() -> bool:
    return "avx512vbmi" in (runtime.host_cpu_flags() or ())


@pytest.mark.parametrize("table_dtype", ["uint8", "float16", "float32"])
@pytest.mark.parametrize("shape", [(1, 4, 8, 8), (1, 96, 112, 112), (1, 6, 28, 28), (1, 84)],
                         ids=["one-block-of-vectors", "parallel-over-vectors",
                              "vectors-and-a-tail", "one-vector-and-a-tail"])
def test_vbmi_cpus_look_bytes_up_with_vpermi2b(shape, table_dtype):
    graph = lookup_graph(shape, table_dtype)
    model = go.compile(graph, "cpu", mcpu=VBMI_CPU, bounds_check=True)
    assert list(model.schedules.values()) == [lookup.NAME]
    assembly = cpu_assembly(model.executable)
    assert re.search(r"vperm[it]2b", assembly)
    # wider entries' byte planes come from whole-vector loads and shuffles (a strided load of
    # the table became 64 byte inserts per vector, 3x slower than the gather)
    assert "vpinsrb" not in assembly
    if not host_has_vbmi():
        pytest.skip(f"this CPU has no avx512vbmi: the {VBMI_CPU} build is compile-checked only")
    for threads in (1, 2):
        model.threads = threads
        feeds, out = every_code(shape, seed=threads), graph.output_names[0]
        np.testing.assert_array_equal(model.run(feeds)[out], go.interpret(graph, feeds)[out])


@pytest.mark.parametrize("shape, table_dtype, mcpu", [
    ((1, 4, 8, 8), "uint8", NO_VBMI_CPU),       # no VBMI
    ((3, 4, 5), "uint8", VBMI_CPU),              # 60 bytes: not one whole vector
    ((1, 4, 8, 8), "float32", NO_VBMI_CPU),      # entries of four bytes, no VBMI
    ((1, 4, 8, 8), "float64", VBMI_CPU),         # entries of eight bytes
], ids=["no-vbmi", "under-one-vector", "float-table-no-vbmi", "double-table"])
def test_other_lookups_are_gathers(shape, table_dtype, mcpu):
    graph = lookup_graph(shape, table_dtype)
    model = go.compile(graph, "cpu", mcpu=mcpu, bounds_check=True)
    assert list(model.schedules.values()) == ["generic"]
    host = go.compile(graph, "cpu", bounds_check=True)
    feeds, out = every_code(shape), graph.output_names[0]
    np.testing.assert_array_equal(host.run(feeds)[out], go.interpret(graph, feeds)[out])
