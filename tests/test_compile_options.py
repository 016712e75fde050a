"""CompileOptions: one frozen object, checked when made; keywords of `go.compile` override its
fields; bad values are GraphoptErrors naming what was expected."""
from __future__ import annotations

import dataclasses

import pytest

import graphopt as go
from graphopt.errors import GraphoptError
from graphopt.frontends import dsl

pytest.importorskip("tvm")


def small_net():
    with dsl.Builder("options_net", seed=0) as b:
        return b.output(dsl.relu(dsl.conv2d(b.input("input", (1, 4, 8, 8)), 16, 3, padding=1)))


def test_options_are_frozen_and_overridable():
    options = go.CompileOptions(threads=1, passes=["fold_batch_norm"])
    assert options.passes == ("fold_batch_norm",)
    with pytest.raises(dataclasses.FrozenInstanceError):
        options.threads = 2
    model = go.compile(small_net(), "cpu", options, threads=2)
    assert model.threads == 2 and model.options.passes == ("fold_batch_norm",)
    assert "fuse_conv_epilogue" not in model.report


@pytest.mark.parametrize("overrides, message", [
    ({"mcpu": "pentium9000"}, "unknown LLVM CPU mcpu='pentium9000'.*haswell"),
    ({"no_such_option": 1}, "unknown compile option"),
    ({"passes": 3}, "expected passes as a list of pass names"),
    ({"kernels": "mkl"}, "kernels must be one of"),
    ({"threads": 0}, "threads must be a positive int"),
    ({"build_threads": 0}, "build_threads must be a positive int"),
    ({"passes": ["select_conv_algorithm"], "mcpu": None}, None),
])
def test_bad_options_are_named(overrides, message):
    if message is None:   # a target pass may be listed by name for its own target
        go.compile(small_net(), **overrides)
        return
    with pytest.raises(GraphoptError, match=message):
        go.compile(small_net(), **overrides)


def test_a_target_pass_of_another_target_is_refused():
    with pytest.raises(GraphoptError, match="'select_conv_algorithm' is a cpu target pass"):
        go.compile(small_net(), "cuda", passes=["select_conv_algorithm"])


def test_compile_links_the_code_before_it_returns():
    """The first VM (which links the compiled code: seconds for big models) is made by compile
    and counted in its time, not by the first run."""
    model = go.compile(go.zoo.lenet5(), "cpu")
    assert getattr(model._per_thread, "vm", None) is not None
    assert model.compile_seconds > 0


def test_the_host_target_has_the_cpu_features_the_host_reports():
    """The host's target uses what this CPU has and nothing it lacks, whatever CPU model LLVM
    names from CPUID: a virtual machine's AMX Xeon named "rocketlake" (no AMX, no AVX512-BF16)
    still gets its AMX and bfloat16 kernels, and a CPU whose model has features it lacks is
    never compiled for them."""
    from graphopt import runtime
    from graphopt.targets.tvm.cpu import host_target
    from graphopt.targets.tvm.export import CPU_FEATURES
    from tvm.target.codegen import target_has_features
    flags = runtime.host_cpu_flags()
    if flags is None:
        pytest.skip("no /proc/cpuinfo to read this CPU's flags from")
    target = host_target()
    wrong = {feature: flag in flags for feature, flag in CPU_FEATURES.items()
             if bool(target_has_features(feature, target)) != (flag in flags)}
    assert not wrong, f"{target}: features that disagree with /proc/cpuinfo (host has?): {wrong}"
