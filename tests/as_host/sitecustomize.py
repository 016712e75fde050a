"""The test suite as another x86 CPU runs it, on this one: `make test-as-avx2` (an AVX2-only
AMD Zen 3) and `make test-as-avx512` (a Skylake server: AVX-512 without VNNI or bfloat16).

With this folder on PYTHONPATH and GRAPHOPT_TEST_AS naming one of CPUS, every Python process the
suite starts (the CLI's and the export tests' subprocesses too; not those started with -S,
which only run prebuilt libraries) compiles for that LLVM CPU wherever it would compile for
this one, and reads this CPU's flags without those that CPU lacks, so that tests pick its
kernels, skip what it cannot run and compare the results on this CPU, which must have every
instruction set of the other that graphopt chooses kernels by (features LLVM gives the other
CPU and this one lacks, such as AMD's SSE4a on an Intel host, are turned off). What it cannot
show is speed. Without GRAPHOPT_TEST_AS it does nothing."""
import importlib.abc
import importlib.machinery
import os
import sys

# LLVM CPU -> prefixes of the /proc/cpuinfo flags it lacks (of those graphopt or its tests read)
CPUS = {
    "znver3": ("avx512", "amx", "avx_vnni"),
    "skylake-avx512": ("avx512_vnni", "avx512_bf16", "avx512vbmi", "avx512_vbmi2", "avx512ifma",
                       "avx512_bitalg", "avx512_vpopcntdq", "avx512_fp16", "amx", "avx_vnni"),
}


def _patch_cpu(module, mcpu: str) -> None:
    host_target = module.host_target

    def target(requested=None):
        if requested is not None:
            return host_target(requested)
        return _without_missing_features(host_target(mcpu), module.host_feature_difference)

    module.host_target = target


def _without_missing_features(target, host_feature_difference):
    """`target` (the other CPU's) with the `-f` entries of `host_feature_difference` in its
    `mattr`: each feature LLVM gives that CPU and this one lacks, such as AMD's SSE4a on an
    Intel host, whose `insertq` LLVM emits for Zen 3 (the int8 kernels died of SIGILL on an
    Intel Xeon). None of them is an instruction set graphopt chooses kernels by; the `+f`
    entries, this CPU's features the other lacks, stay out."""
    from tvm.target import Target
    config = dict(target.export())
    missing = [f for f in host_feature_difference(config) if f.startswith("-")]
    if not missing:
        return target
    config["mattr"] = [*config.get("mattr", []), *missing]
    return Target(config)


def _patch_runtime(module, mcpu: str) -> None:
    host_cpu_flags = module.host_cpu_flags
    lacking = CPUS[mcpu]

    def flags():
        found = host_cpu_flags()
        return None if found is None else frozenset(f for f in found
                                                    if not f.startswith(lacking))

    module.host_cpu_flags = flags


PATCHES = {"graphopt.targets.tvm.cpu": _patch_cpu, "graphopt.runtime": _patch_runtime}


class _PatchAfterImport(importlib.abc.MetaPathFinder):
    """Finds the modules of PATCHES as usual and patches each once it has run."""

    def __init__(self, mcpu: str):
        self.mcpu = mcpu

    def find_spec(self, name, path, target=None):
        if name not in PATCHES:
            return None
        spec = importlib.machinery.PathFinder.find_spec(name, path)
        if spec is None or spec.loader is None:
            return spec
        run = spec.loader.exec_module

        def exec_module(module):
            run(module)
            PATCHES[name](module, self.mcpu)

        spec.loader.exec_module = exec_module
        return spec


_AS = os.environ.get("GRAPHOPT_TEST_AS")
if _AS:
    if _AS not in CPUS:
        raise SystemExit(f"GRAPHOPT_TEST_AS={_AS!r}: expected one of {', '.join(CPUS)}")
    sys.meta_path.insert(0, _PatchAfterImport(_AS))
