"""A CPU model's kernels scheduled in several threads (`schedules/dispatch.py`) and built in
parts, one thread each (`targets/tvm/parallel_build.py`): the functions are scheduled as in one
thread, the model runs, exports and loads as one built in one module, the threads build under
the caller's PassContext, and a rule's or a part's failure is the compile's error."""
from __future__ import annotations

import os
import subprocess
import sys
import threading

import numpy as np
import pytest

import graphopt as go
from graphopt.errors import LoweringError
from graphopt.frontends import dsl

tvm = pytest.importorskip("tvm")

from graphopt.targets.tvm import parallel_build  # noqa: E402
from graphopt.targets.tvm.cpu import llvm_modules  # noqa: E402
from test_export import run_with_only_the_runtime  # noqa: E402


def many_kernels():
    """Ten convs of different shapes and epilogues (ten kernels), then a pool and a linear."""
    with dsl.Builder("many_kernels", seed=0) as b:
        x = b.input("input", (1, 3, 20, 20))
        for i, (channels, kernel, stride) in enumerate([(8, 3, 1), (16, 3, 2), (16, 1, 1),
                                                        (24, 3, 1), (24, 1, 1), (32, 3, 2),
                                                        (32, 1, 1), (40, 3, 1), (48, 1, 1),
                                                        (8, 3, 1)]):
            x = dsl.conv2d(x, channels, kernel, stride=stride, padding=kernel // 2,
                           name=f"conv{i}")
            x = dsl.relu(x) if i % 2 else dsl.relu6(x)
        x = dsl.global_avg_pool2d(x)
        return b.output(dsl.linear(dsl.flatten(x), 10, name="fc"))


@pytest.fixture(scope="module")
def graph():
    return many_kernels()


@pytest.fixture(scope="module")
def feeds():
    return {"input": np.random.default_rng(0).standard_normal((1, 3, 20, 20)).astype("float32")}


@pytest.mark.parametrize("kernels, threads, parts", [
    (1, 8, 1), (2, 2, 1), (3, 2, 1), (4, 2, 2), (5, 2, 2), (5, 16, 2), (7, 2, 2),
    (138, 2, 2), (138, 16, 16), (20, 16, 10), (138, 1, 1), (0, 2, 1)])
def test_part_count(kernels, threads, parts):
    assert parallel_build.part_count(kernels, threads) == parts


def test_parts_share_the_costly_kernels():
    """Six Winograd kernels (each several times any other kernel's build) among twelve others,
    named so that taking them in turn would put all six in one part: three to a part, the
    parts' costs within one kernel of each other, and the same split every time."""
    from graphopt.targets.tvm.schedules import SCHEDULE_ATTR
    rules = ["winograd", "conv2d"] * 6 + ["conv2d"] * 3 + ["dense", "pool2d", "generic"]
    kernels = [(tvm.ir.GlobalVar(f"kernel{i:02d}"),
                tvm.tirx.PrimFunc([], tvm.tirx.Evaluate(0)).with_attr(SCHEDULE_ATTR, rule))
               for i, rule in enumerate(rules)]
    parts = parallel_build.balanced_parts(kernels, 2)
    assert [sum(f.attrs[SCHEDULE_ATTR] == "winograd" for _, f in part) for part in parts] == \
        [3, 3]
    costs = [sum(parallel_build.build_cost(f) for _, f in part) for part in parts]
    assert abs(costs[0] - costs[1]) <= max(parallel_build.BUILD_COST.values())
    again = parallel_build.balanced_parts(list(reversed(kernels)), 2)
    assert [[gv.name_hint for gv, _ in part] for part in again] == \
        [[gv.name_hint for gv, _ in part] for part in parts]


def test_parts_run_export_and_load_as_one_module(graph, feeds, tmp_path):
    one = go.compile(graph, "cpu", build_threads=1)
    three = go.compile(graph, "cpu", build_threads=3)
    assert len(llvm_modules(one.executable)) == 1
    parts = llvm_modules(three.executable)
    assert len(parts) == 3 and set(three.schedules) == set(one.schedules)
    holders = {kernel: [i for i, part in enumerate(parts)
                        if part.implements_function(kernel, query_imports=False)]
               for kernel in three.schedules}
    assert all(len(found) == 1 for found in holders.values()), holders
    assert {found[0] for found in holders.values()} == {0, 1, 2}
    assert go.compare(graph, three, feeds).ok
    expected = one.run(feeds)
    for name, found in three.run(feeds).items():
        np.testing.assert_array_equal(found, expected[name])
    path = three.export(str(tmp_path / "parts.so"))
    for name, found in go.load(path).run(feeds).items():
        np.testing.assert_array_equal(found, expected[name])
    for name, found in run_with_only_the_runtime(path, feeds, tmp_path).items():
        np.testing.assert_array_equal(found, expected[name])


def test_every_part_is_built_under_the_callers_pass_context(graph, monkeypatch):
    seen = []
    build = tvm.tirx.build

    def recording_build(mod, *args, **kwargs):
        seen.append(dict(tvm.transform.PassContext.current().config))
        return build(mod, *args, **kwargs)

    monkeypatch.setattr(tvm.tirx, "build", recording_build)
    go.compile(graph, "cpu", build_threads=2, bounds_check=True)
    assert len(seen) == 2
    assert all(config.get("tirx.instrument_bound_checkers") for config in seen), seen


def test_a_part_that_fails_fails_the_compile(graph, monkeypatch):
    build = tvm.tirx.build

    def failing_second_part(mod, *args, **kwargs):
        if threading.current_thread().name == "graphopt-build-1":
            raise RuntimeError("part failed")
        return build(mod, *args, **kwargs)

    monkeypatch.setattr(tvm.tirx, "build", failing_second_part)
    with pytest.raises(LoweringError, match="part failed"):
        go.compile(graph, "cpu", build_threads=2)


def low_precision(graph, precision: str):
    """`graph` in bfloat16 or int8 (calibrated on random inputs)."""
    if precision == "bfloat16":
        return go.quantize(graph, "bfloat16").graph
    rng = np.random.default_rng(1)
    batches = [{"input": rng.standard_normal((1, 3, 20, 20)).astype("float32")}
               for _ in range(4)]
    return go.quantize(graph, go.calibrate(graph, batches)).graph


def functions_before_scheduling(graph):
    """The fused Relax module of `graph` as the CPU pipeline hands it to the schedule rules,
    and the host's vector shape."""
    from graphopt.targets.tvm.compile import optimize_for_target
    from graphopt.targets.tvm.cpu import pre_schedule_passes
    from graphopt.targets.tvm.lower import to_relax
    from graphopt.targets.tvm.schedules.common import VectorShape
    optimized, target = optimize_for_target(graph, "cpu")
    with target:
        mod = tvm.transform.Sequential(pre_schedule_passes(target))(to_relax(optimized.graph))
    return mod, VectorShape.of(target)


@pytest.mark.parametrize("precision", ["float32", "bfloat16", "int8"])
def test_functions_scheduled_in_threads_as_in_one(graph, precision):
    from graphopt.targets.tvm.schedules import dispatch
    mod, vec = functions_before_scheduling(
        graph if precision == "float32" else low_precision(graph, precision))
    one = dispatch.schedule_module(tvm.IRModule(dict(mod.functions)), vec, threads=1)
    three = dispatch.schedule_module(tvm.IRModule(dict(mod.functions)), vec, threads=3)
    kernels = [gv for gv, f in one.functions.items() if isinstance(f, tvm.tirx.PrimFunc)]
    assert len(kernels) >= 10
    for gv in kernels:
        assert three[gv.name_hint].attrs["tirx.is_scheduled"], gv.name_hint
        tvm.ir.assert_structural_equal(three[gv.name_hint], one[gv], map_free_vars=True)


def test_a_rule_that_fails_in_a_thread_fails_the_compile(graph, monkeypatch):
    """A Python error inside a rule is a bug: raised by `compile` whichever thread met it."""
    from graphopt.targets.tvm.schedules import dispatch
    schedule_func = dispatch.schedule_func

    calls, counting = [], threading.Lock()

    def failing_on_one(func, vec, *name):
        with counting:
            calls.append(func)
            if len(calls) == 5:
                raise RuntimeError("rule failed")
        return schedule_func(func, vec, *name)

    monkeypatch.setattr(dispatch, "schedule_func", failing_on_one)
    with pytest.raises(LoweringError, match="rule failed"):
        go.compile(graph, "cpu", build_threads=3)


@pytest.mark.parametrize("precision", ["float32", "int8"])
def test_a_processs_first_compile_may_be_built_in_parts(precision):
    """What TVM registers once per process (graphopt's TIR pipeline, `isnan` as vectorizable,
    the int8 and bfloat16 rules' tensor intrinsics) is registered once, whichever threads
    schedule and build the first model: registering it in each thread raced, and a second
    registration fails the compile."""
    graph = "many_kernels()" if precision == "float32" else \
        f"low_precision(many_kernels(), {precision!r})"
    script = ("import sys; sys.path.insert(0, 'tests'); import graphopt as go; "
              "from test_parallel_build import many_kernels, low_precision; "
              f"print(go.compile({graph}, 'cpu', build_threads=4).kernel_count())")
    done = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True,
                          timeout=300, cwd=os.path.dirname(os.path.dirname(__file__)))
    assert done.returncode == 0, done.stderr


def test_the_command_line_passes_build_threads(monkeypatch, tmp_path, capsys):
    from graphopt import cli
    seen = []
    compile_ = go.compile

    def recording_compile(graph, *args, **kwargs):
        seen.append(kwargs.get("build_threads"))
        return compile_(graph, *args, **kwargs)

    monkeypatch.setattr(go, "compile", recording_compile)
    monkeypatch.chdir(tmp_path)
    assert cli.main(["-q", "compare", "lenet5", "--build-threads", "2"]) == cli.EXIT_OK
    assert cli.main(["-q", "compare", "lenet5"]) == cli.EXIT_OK
    assert seen == [2, None]
    assert cli.main(["-q", "compare", "lenet5", "--build-threads", "0"]) == cli.EXIT_USAGE
    assert "--build-threads" in capsys.readouterr().err


def test_parts_with_weights_as_parameters(graph, feeds, tmp_path):
    """compile(weights="params") in parts: the code of every part in the library, the weights
    bound at load time."""
    model = go.compile(graph, "cpu", weights="params", build_threads=2)
    assert len(llvm_modules(model.executable)) == 2
    expected = model.run(feeds)
    loaded = go.load(model.export(str(tmp_path / "code_only.so")))
    loaded.bind_weights(dict(model.weights))
    for name, found in loaded.run(feeds).items():
        np.testing.assert_array_equal(found, expected[name])
