"""Compiled kernels read only inside their inputs.

Each model's input is placed right after a page the process may not touch, then right before
one, and run without a copy (the input is aligned, so `run` hands it to the kernels as it is).
A kernel that reads before the first or after the last element crashes here instead of in a
user's process, whose arrays can end at a page boundary as well."""
from __future__ import annotations

import ctypes
import mmap

import numpy as np
import pytest

import graphopt as go
from graphopt.frontends import dsl

PAGE = mmap.PAGESIZE


def guarded(shape, side: str, dtype: str = "float32") -> np.ndarray:
    """A zero-filled array whose first byte follows an inaccessible page (`side` "start") or
    whose last byte precedes one ("end")."""
    nbytes = int(np.prod(shape)) * np.dtype(dtype).itemsize
    body = -(-nbytes // PAGE) * PAGE
    region = mmap.mmap(-1, body + 2 * PAGE, prot=mmap.PROT_READ | mmap.PROT_WRITE)
    base = ctypes.addressof(ctypes.c_char.from_buffer(region))
    mprotect = ctypes.CDLL(None).mprotect
    mprotect.argtypes = [ctypes.c_void_p, ctypes.c_size_t, ctypes.c_int]
    for page in (base, base + PAGE + body):
        assert mprotect(page, PAGE, 0) == 0   # PROT_NONE
    offset = PAGE if side == "start" else PAGE + body - nbytes
    return np.frombuffer(region, dtype=dtype, count=nbytes // np.dtype(dtype).itemsize,
                         offset=offset).reshape(shape)


def first_layer(name: str, shape, layer):
    with dsl.Builder(name, seed=0) as b:
        return b.output(layer(b.input("x", shape)))


# (case, input shape, first layer): every input is a multiple of 64 bytes, so both placements
# stay aligned and run without a copy
CASES = [
    ("depthwise_s1", (1, 8, 30, 32), lambda x: dsl.relu6(dsl.conv2d(x, 8, 3, padding=1, groups=8))),
    ("depthwise_s2", (1, 8, 30, 32), lambda x: dsl.conv2d(x, 8, 3, stride=2, padding=1, groups=8)),
    ("depthwise_5x5_s2", (1, 16, 17, 16), lambda x: dsl.conv2d(x, 16, 5, 2, padding=2, groups=16)),
    ("narrow_stem_s1", (1, 3, 32, 32), lambda x: dsl.relu(dsl.conv2d(x, 8, 3, padding=1))),
    ("narrow_stem_s2", (1, 3, 32, 32), lambda x: dsl.conv2d(x, 16, 3, stride=2, padding=1)),
    ("narrow_out3", (1, 16, 24, 24), lambda x: dsl.conv2d(x, 3, 3, padding=1)),
    ("conv3x3", (1, 16, 20, 20), lambda x: dsl.relu(dsl.conv2d(x, 32, 3, padding=1))),
    ("conv3x3_s2", (1, 16, 20, 20), lambda x: dsl.conv2d(x, 32, 3, stride=2, padding=1)),
    ("conv7x7_s2_stem", (1, 3, 64, 64), lambda x: dsl.conv2d(x, 64, 7, stride=2, padding=3)),
    ("winograd_64", (1, 64, 28, 28), lambda x: dsl.conv2d(x, 64, 3, padding=1)),
    ("pointwise", (1, 16, 20, 20), lambda x: dsl.conv2d(x, 32, 1)),
    ("pointwise_partial_plane", (1, 16, 13, 13), lambda x: dsl.conv2d(x, 32, 1)),
    ("grouped", (1, 16, 20, 20), lambda x: dsl.conv2d(x, 16, 3, padding=1, groups=4)),
    ("max_pool", (1, 8, 30, 32), lambda x: dsl.max_pool2d(x, 3, 2, padding=1)),
    ("avg_pool", (1, 8, 30, 32), lambda x: dsl.avg_pool2d(x, 3, 2, padding=1)),
    ("conv_transpose", (1, 16, 8, 8), lambda x: dsl.conv_transpose2d(x, 8, 4, 2, padding=1)),
    ("resize_bilinear", (1, 8, 16, 16), lambda x: dsl.resize(x, scale=2, mode="bilinear")),
    ("reflect_pad", (1, 8, 16, 16), lambda x: dsl.pad(x, [(0, 0), (0, 0), (2, 2), (2, 2)],
                                                      mode="reflect")),
    ("dense", (4, 256), lambda x: dsl.linear(x, 10)),
]


@pytest.mark.parametrize("mcpu", [None, "haswell"], ids=["host", "avx2"])
@pytest.mark.parametrize("case, shape, layer", CASES, ids=[c[0] for c in CASES])
def test_kernels_read_only_inside_the_input(case, shape, layer, mcpu):
    """On this host's vector width and on AVX2's (8 lanes: other tiles, other copies)."""
    g = first_layer(case, shape, layer)
    m = go.compile(g, "cpu", threads=1, mcpu=mcpu)
    data = np.random.default_rng(0).standard_normal(shape).astype("float32")
    expected = m.run({"x": data})
    for side in ("start", "end"):
        x = guarded(shape, side)
        x[...] = data
        got = m.run({"x": x})
        for name in expected:
            np.testing.assert_array_equal(got[name], expected[name], err_msg=f"{case}, {side}")


def test_max_unpool_reads_only_inside_its_values():
    """The window-indexed unpool (indices from a pool in the graph) with its values a graph
    input of their own."""
    shape = (1, 4, 16, 16)
    with dsl.Builder("unpool", seed=0) as b:
        _, indices = dsl.max_pool2d(b.input("a", (1, 4, 32, 32)), 2, 2, return_indices=True)
        g = b.output(dsl.max_unpool2d(b.input("x", shape), indices, 2, 2))
    m = go.compile(g, "cpu", threads=1)
    rng = np.random.default_rng(0)
    feeds = {"a": rng.standard_normal((1, 4, 32, 32)).astype("float32"),
             "x": rng.standard_normal(shape).astype("float32")}
    expected = m.run(feeds)
    for side in ("start", "end"):
        x = guarded(shape, side)
        x[...] = feeds["x"]
        got = m.run({**feeds, "x": x})
        for name in expected:
            np.testing.assert_array_equal(got[name], expected[name], err_msg=side)
