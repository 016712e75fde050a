"""Threads: a compiled or loaded CPU model runs on every core the process may use unless told
otherwise, never pins its caller to one core, and `threads=` is checked."""
from __future__ import annotations

import os
import subprocess
import sys
import textwrap

import numpy as np
import pytest

import graphopt as go
from graphopt.errors import GraphoptError, InputError
from graphopt.frontends import dsl

pytest.importorskip("tvm")


def small_net():
    with dsl.Builder("threads_net", seed=0) as b:
        x = b.input("input", (1, 8, 16, 16))
        return b.output(dsl.relu(dsl.conv2d(x, 16, 3, padding=1)))


def test_default_is_the_process_affinity_and_threads_override():
    graph = small_net()
    assert go.compile(graph).threads == len(os.sched_getaffinity(0))
    assert go.compile(graph, threads=1).threads == 1
    with pytest.raises(GraphoptError, match="threads must be a positive int"):
        go.compile(graph, threads=0)


def test_running_does_not_pin_the_caller(tmp_path):
    """TVM's own thread-pool start pins the calling thread to one core when it starts with one
    worker; graphopt configures the pool itself, so the caller keeps its affinity. Checked in a
    fresh process (the pool is set up once per thread)."""
    graph = small_net()
    path = go.compile(graph).export(str(tmp_path / "net.so"))
    script = textwrap.dedent(f"""
        import os, numpy as np
        import graphopt as go
        before = os.sched_getaffinity(0)
        model = go.load({path!r})
        model.run({{"input": np.ones((1, 8, 16, 16), np.float32)}})
        assert os.sched_getaffinity(0) == before, (before, os.sched_getaffinity(0))
        assert model.threads == len(before)
        one = go.load({path!r}, threads=1)
        one.run({{"input": np.ones((1, 8, 16, 16), np.float32)}})
        print("ok")
    """)
    done = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True,
                          timeout=120)
    assert done.returncode == 0 and done.stdout.strip() == "ok", done.stdout + done.stderr


def test_one_and_all_threads_agree():
    graph = small_net()
    feeds = {"input": np.random.default_rng(0).standard_normal((1, 8, 16, 16)).astype(np.float32)}
    one = go.compile(graph, threads=1).run(feeds)["output"]
    every = go.compile(graph).run(feeds)["output"]
    np.testing.assert_allclose(one, every, rtol=1e-6, atol=1e-6)


def test_loaded_model_rejects_a_bad_thread_count(tmp_path):
    path = go.compile(small_net()).export(str(tmp_path / "net.so"))
    with pytest.raises(InputError, match="threads must be a positive int"):
        go.load(path, threads=-2)
