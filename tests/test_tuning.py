"""Tuning database plumbing: per-target database directories, `compile` applying matching records
only when asked (a hand-made record here, so the default run needs no MetaSchedule search), and a
real but tiny tuning run, slow-marked. Every test uses its own folder, never the user's cache."""
from __future__ import annotations

import sys

import numpy as np
import pytest

import graphopt as go
from graphopt.errors import GraphoptError
from graphopt.frontends import dsl

tvm = pytest.importorskip("tvm")

from graphopt.targets.tvm import tuning  # noqa: E402
from graphopt.targets.tvm.cpu import host_target  # noqa: E402
from graphopt.targets.tvm.schedules import SCHEDULE_ATTR  # noqa: E402
from graphopt.targets.tvm.schedules.dispatch import TUNED  # noqa: E402


def _small_graph():
    with dsl.Builder("tune_small", seed=1) as b:
        x = b.input("input", (1, 8, 10, 10))
        y = dsl.relu(dsl.conv2d(x, 16, 3, padding=1))
        return b.output(dsl.linear(dsl.flatten(dsl.max_pool2d(y, 2)), 10))


@pytest.fixture
def cache(tmp_path):
    return tmp_path


def test_database_directory_is_per_target(cache):
    haswell = tvm.target.Target({"kind": "llvm", "mcpu": "haswell", "num-cores": 2})
    skylake = tvm.target.Target({"kind": "llvm", "mcpu": "skylake-avx512", "num-cores": 2})
    four_cores = tvm.target.Target({"kind": "llvm", "mcpu": "haswell", "num-cores": 4})
    dirs = {tuning.database_dir(t, cache) for t in (haswell, skylake, four_cores)}
    assert len(dirs) == 3 and all(d.parent == cache for d in dirs)
    assert tuning.database_dir(haswell, cache_dir="/elsewhere").parent.as_posix() == "/elsewhere"


def test_no_records_means_rule_schedules(cache):
    assert not tuning.has_records(cache)
    assert tuning.load_database(host_target(), cache) is None
    with pytest.raises(GraphoptError, match="trials"):
        tuning.tune(_small_graph(), trials=0)


def _commit_handmade_record(directory, target):
    """A tuning record for the graph's matmul kernel: a valid (if plain) schedule trace."""
    from tvm import s_tir
    from tvm.s_tir import meta_schedule as ms
    mod, _ = tuning.fused_module(_small_graph())
    name, func = next((gv.name_hint, f) for gv, f in mod.functions.items() if "matmul" in gv.name_hint)
    workload_mod = tvm.IRModule({"main": func.with_attr("global_symbol", "main")})
    sch = s_tir.Schedule(workload_mod)
    block = sch.get_sblock("matmul")
    i, j, k = sch.get_loops(block)
    sch.parallel(sch.fuse(i, j))
    directory.mkdir(parents=True)
    db = ms.database.JSONDatabase(work_dir=str(directory))
    workload = db.commit_workload(workload_mod)
    db.commit_tuning_record(ms.database.TuningRecord(
        sch.trace, workload, [1e-6], target, ms.arg_info.ArgInfo.from_prim_func(func)))
    return name


def test_compile_applies_matching_records_when_asked(cache):
    target = host_target()
    name = _commit_handmade_record(tuning.database_dir(target, cache), target)
    assert tuning.has_records(cache)
    graph = _small_graph()
    plain, tuned = go.compile(graph), go.compile(graph, tuning=cache)
    assert plain.schedules[name] == "dense"
    assert tuned.schedules[name] == TUNED
    assert {r for k, r in tuned.schedules.items() if "conv2d" in k} == {"conv2d"}
    feeds = {"input": np.random.default_rng(0).standard_normal((1, 8, 10, 10)).astype(np.float32)}
    assert go.compare(graph, tuned, feeds).ok
    from graphopt import cli
    kernels = len(tuned.schedules)
    assert cli.tuning_summary(tuned) == \
        f"tuning records from {cache}: 1 of {kernels} kernels use them"
    assert cli.tuning_summary(plain) .endswith("none matches a kernel of this model (each kernel "
                                              "keeps graphopt's schedule)")


def test_a_compile_with_tuning_records_says_how_many_kernels_use_them(cache, capsys):
    from graphopt import cli
    target = host_target()
    _commit_handmade_record(tuning.database_dir(target, cache), target)
    assert cli.main(["compare", "lenet5", "--tuning", str(cache)]) == cli.EXIT_OK
    assert f"tuning records from {cache}: none matches a kernel of this model" in \
        capsys.readouterr().err     # lenet5's kernels are not the recorded one


@pytest.mark.parametrize("module", ["cloudpickle", "xgboost"])
def test_tune_without_its_extra_says_what_to_install_before_any_work(module, monkeypatch,
                                                                     capsys):
    import importlib.util
    import time
    import types
    from graphopt import cli
    # the other package of the extra importable, so the message names this one
    for other in {"cloudpickle", "xgboost"} - {module}:
        if importlib.util.find_spec(other) is None:
            monkeypatch.setitem(sys.modules, other, types.ModuleType(other))
    monkeypatch.setitem(sys.modules, module, None)      # import fails: not installed
    start = time.perf_counter()
    code = cli.main(["tune", "lenet5", "--trials", "1"])
    error = capsys.readouterr().err.strip()
    assert code == cli.EXIT_USAGE and time.perf_counter() - start < 5
    assert f"needs the Python package '{module}': pip install graphopt[tune]" in error
    assert "\n" not in error and "tuning 'lenet5'" not in error
    with pytest.raises(go.GraphoptError, match=r"pip install graphopt\[tune\]"):
        tuning.tune(_small_graph(), trials=1)


@pytest.mark.slow
def test_tiny_tuning_run_keeps_only_winners(cache, capfd):
    pytest.importorskip("cloudpickle", reason="MetaSchedule's process pool needs graphopt's "
                        "'tune' extra (cloudpickle)")
    heard = []
    report = tuning.tune(_small_graph(), trials=8, cost_model="random", cache_dir=cache,
                         progress=lambda measured, total: heard.append((measured, total)))
    assert heard and heard[-1][1] == 8 and [m for m, _ in heard] == sorted(m for m, _ in heard)
    printed = capfd.readouterr()
    assert "[INFO]" not in printed.out + printed.err    # MetaSchedule's log stays off the console
    assert sorted(k.name.split("_")[1] for k in report.kernels) == ["conv2d", "matmul"]
    assert all(k.scheduled_ms > 0 for k in report.kernels)
    assert tuning.has_records(cache) == any(k.kept for k in report.kernels)
    graph = _small_graph()
    feeds = {"input": np.random.default_rng(0).standard_normal((1, 8, 10, 10)).astype(np.float32)}
    assert go.compare(graph, tuning.compile_tuned(graph, cache), feeds).ok
