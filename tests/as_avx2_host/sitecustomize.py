"""The test suite as an AVX2-only host (AMD Zen 3) runs it, on a host with AVX-512: `make
test-as-avx2`. This folder on PYTHONPATH makes every Python process the suite starts (the
CLI's and the export tests' subprocesses too; not those started with -S, which run prebuilt
libraries only) compile for `MCPU` wherever it would compile for this CPU, and report this
CPU's flags without AVX-512, VNNI and AMX, so that tests pick the AVX2 kernels, skip what an
AVX2 CPU cannot run and compare the results on this one. What it cannot show is speed, or a
kernel that executes an instruction the target lacks (LLVM emits only the target's)."""
import importlib.abc
import importlib.machinery
import sys

MCPU = "znver3"
DROPPED_FLAGS = ("avx512", "amx", "avx_vnni")


def _patch_cpu(module) -> None:
    host_target = module.host_target
    module.host_target = lambda mcpu=None: host_target(mcpu or MCPU)


def _patch_runtime(module) -> None:
    host_cpu_flags = module.host_cpu_flags

    def flags():
        found = host_cpu_flags()
        return None if found is None else frozenset(
            f for f in found if not f.startswith(DROPPED_FLAGS))

    module.host_cpu_flags = flags


PATCHES = {"graphopt.targets.tvm.cpu": _patch_cpu, "graphopt.runtime": _patch_runtime}


class _PatchAfterImport(importlib.abc.MetaPathFinder):
    """Finds the modules of PATCHES as usual and patches each once it has run."""

    def find_spec(self, name, path, target=None):
        if name not in PATCHES:
            return None
        spec = importlib.machinery.PathFinder.find_spec(name, path)
        if spec is None or spec.loader is None:
            return spec
        run = spec.loader.exec_module

        def exec_module(module):
            run(module)
            PATCHES[name](module)

        spec.loader.exec_module = exec_module
        return spec


sys.meta_path.insert(0, _PatchAfterImport())
