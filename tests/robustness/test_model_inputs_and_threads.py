"""Compiled and loaded models take any numpy layout (unaligned, read-only, non-contiguous,
broadcast) and are safe to call from many threads at once, with the interpreter's results."""
from __future__ import annotations

import threading

import numpy as np
import pytest

import graphopt as go
from graphopt.frontends import dsl

pytest.importorskip("tvm")

SHAPE = (1, 3, 12, 12)


def two_branch_net():
    """concat(relu(conv), sigmoid(conv)): the exported model that crashed on unaligned inputs."""
    with dsl.Builder("two_branch", seed=0) as b:
        x = b.input("input", SHAPE)
        a = dsl.conv2d(x, 8, 3, padding=1)
        return b.output(dsl.concat([dsl.relu(a), dsl.sigmoid(a)], axis=1))


@pytest.fixture(scope="module")
def models(tmp_path_factory):
    graph = two_branch_net()
    compiled = go.compile(graph, "cpu")
    path = compiled.export(str(tmp_path_factory.mktemp("inputs") / "two_branch.so"))
    return graph, compiled, go.load(path)


def layouts(x: np.ndarray) -> dict[str, np.ndarray]:
    """The same values as `x` in layouts numpy hands out every day."""
    read_only = x.copy()
    read_only.flags.writeable = False
    spread = np.zeros(tuple(2 * d for d in x.shape), x.dtype)
    spread[::2, ::2, ::2, ::2] = x
    raw = np.zeros(x.nbytes + 8, np.uint8)
    unaligned = raw[4:4 + x.nbytes].view(x.dtype).reshape(x.shape)
    unaligned[...] = x
    broadcast = np.broadcast_to(x[:, :, :1, :1], x.shape)
    return {"read_only": read_only, "fortran": np.asfortranarray(x),
            "strided": spread[::2, ::2, ::2, ::2], "unaligned": unaligned,
            "reversed": x[..., ::-1].copy()[..., ::-1], "broadcast": broadcast}


@pytest.mark.parametrize("layout", sorted(layouts(np.zeros(SHAPE, np.float32))))
def test_every_layout_gives_the_interpreters_result(models, layout):
    graph, compiled, loaded = models
    x = np.random.default_rng(1).standard_normal(SHAPE).astype(np.float32)
    feed = layouts(x)[layout]
    expected = go.interpret(graph, {"input": np.ascontiguousarray(feed)})["output"]
    for model in (compiled, loaded):
        np.testing.assert_allclose(model.run({"input": feed})["output"], expected,
                                   rtol=1e-5, atol=1e-5, err_msg=f"{type(model).__name__}")
    assert not feed.flags.writeable or layout != "read_only"   # the caller's array is untouched


def test_zero_size_input_is_an_input_error(models):
    from graphopt.errors import InputError
    _, compiled, loaded = models
    for model in (compiled, loaded):
        with pytest.raises(InputError, match=r"expected float32\[1,3,12,12\], found float32\[0,3"):
            model.run({"input": np.zeros((0,) + SHAPE[1:], np.float32)})


def zero_size_nets():
    with dsl.Builder("empty_batch", seed=0) as b:
        x = b.input("input", (0, 3, 8, 8))
        pool = b.output(dsl.max_pool2d(dsl.relu(x), 2))
    with dsl.Builder("empty_part", seed=0) as b:
        x, y = b.input("a", (2, 0, 4)), b.input("b", (2, 3, 4))
        concat = b.output(dsl.sigmoid(dsl.concat([x, y], axis=1)))
    with dsl.Builder("empty_inner", seed=0) as b:
        x, y = b.input("a", (2, 0)), b.input("b", (0, 3))
        matmul = b.output(dsl.matmul(x, y))
    return {"max_pool": pool, "concat": concat, "matmul": matmul}


@pytest.mark.parametrize("name", sorted(zero_size_nets()))
def test_zero_size_tensors_run_everywhere(name, tmp_path):
    graph = zero_size_nets()[name]
    rng = np.random.default_rng(3)
    feeds = {v.name: rng.standard_normal(v.type.shape).astype(np.float32) for v in graph.inputs}
    expected = go.interpret(graph, feeds)
    compiled = go.compile(graph, "cpu")
    loaded = go.load(compiled.export(str(tmp_path / f"{name}.so")))
    for model in (compiled, loaded):
        for key, found in model.run(feeds).items():
            np.testing.assert_allclose(found, expected[key], rtol=1e-6, err_msg=key)


@pytest.mark.parametrize("kind", ["compiled", "loaded"])
def test_many_threads_share_one_model(models, kind):
    """Four threads call one model at once: every result is the single-threaded one (a Relax VM
    is not reentrant; each calling thread gets its own)."""
    graph, compiled, loaded = models
    model = compiled if kind == "compiled" else loaded
    rng = np.random.default_rng(2)
    feeds = [rng.standard_normal(SHAPE).astype(np.float32) for _ in range(4)]
    expected = [model.run({"input": f})["output"] for f in feeds]
    failures: list[str] = []
    start = threading.Barrier(4)

    def work(i: int) -> None:
        start.wait()
        for _ in range(40):
            try:
                found = model.run({"input": feeds[i]})["output"]
            except Exception as e:  # any error is a failure the test reports
                failures.append(repr(e))
                return
            if not np.array_equal(found, expected[i]):
                failures.append(f"thread {i}: wrong result")
                return

    threads = [threading.Thread(target=work, args=(i,)) for i in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert not failures, failures[:3]
