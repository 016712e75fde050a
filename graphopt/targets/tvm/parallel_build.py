"""Building a CPU model's kernels on several cores: `tvm.compile` with its TIR kernels split into
parts, each lowered, compiled by LLVM and given machine code in a thread of its own.

TVM builds every kernel of a model into one LLVM module and generates its machine code in one
thread when the first VM looks a function up, so that part of a compile ran on one core: 36 s
of DenseNet-121's (138 kernels), 23 s lowering and LLVM's optimizations and 12 s machine code.
Built as two modules in two threads (TVM's FFI releases the GIL, and each module has its own
LLVM context) it took 18 s on two cores. The parts are imported into the first, so the VM finds
every kernel through it (as it finds any imported module's functions), and an export writes
each part as an object file of the one library, also in threads (`export_library`).
`benchmarks/compile_time.py`, two Zen 4 cores, one module / parts, s, two runs: compile
DenseNet-121 31.4-31.5 / 20.2-24.4, Inception-v3 11.9-12.2 / 7.7-8.5, ResNet-18 7.4-8.0 /
4.3-4.9; export 13.4-14.4 / 7.2-8.5, 6.4-6.5 / 5.0-5.1, 3.1-3.3 / 2.6-2.9.

TVM's `relax.build` has no hook for this: `build_executable` repeats its steps (Relax to VM
bytecode, then linking the kernels) with the kernels built here; the helpers it calls are
`tvm.relax.vm_build`'s own."""
from __future__ import annotations

import os

from ...worker_threads import in_threads

# A graph of fewer kernels is built as one module, as TVM builds it ...
SPLIT_FROM_KERNELS = 4
# ... and a part holds this many kernels at least.
MIN_KERNELS_PER_PART = 2

# A kernel's usual build time by its schedule rule, relative to the others' (one Intel Xeon
# thread, each kernel of ResNet-18, GoogLeNet, DenseNet-121 and MobileNetV2 built alone, mean
# seconds: winograd 0.73, generic 0.21, dense 0.16, the other rules 0.08-0.14). The parts are
# balanced by it: split in turn by name, ResNet-18's six Winograd kernels left 4.3 s in one
# part and 2.8 s in the other.
BUILD_COST = {"winograd": 7.0, "generic": 2.0, "dense": 1.5}


def part_count(kernels: int, threads: int) -> int:
    """How many modules to build `kernels` kernels in with `threads` threads: one per thread,
    from `SPLIT_FROM_KERNELS` kernels up, with at least `MIN_KERNELS_PER_PART` in each. On idle
    cores even two kernels build faster in two parts (an Intel Xeon, two cores, compile
    seconds, one module / two parts, the medians of 7-15 alternated compiles: 2 kernels 0.28 /
    0.20, 5 kernels 0.50 / 0.36, DQN (6) 0.46-0.51 / 0.32-0.34, LeNet-5 (7) 0.44-0.54 /
    0.34-0.38); with both cores busy (the test suite's two workers) graphs of two and three
    kernels in two parts cost more than they saved (the op table's compiled tests: 68-77 s one
    module, 78-91 s two parts)."""
    if kernels < SPLIT_FROM_KERNELS:
        return 1
    return max(1, min(threads, kernels // MIN_KERNELS_PER_PART))


def build_executable(mod, target, tir_pipeline, threads: int):
    """`tvm.compile(mod, target, relax_pipeline=None, tir_pipeline=tir_pipeline)` with the TIR
    kernels built in `part_count(...)` parts, one thread each, under the caller's PassContext."""
    import tvm
    from tvm import relax
    from tvm.relax import vm_build
    attrs = dict(mod.attrs) if mod.attrs else {}
    ext_libs = list(attrs.get("external_mods", []))
    params = dict(attrs.get("const_name_to_constant", {}))
    builder = relax.ExecBuilder()
    tir_mod = vm_build._filter_tir(vm_build._vmcodegen(builder, mod, "bytecode"))
    kernels = sorted(tir_mod.functions.items(), key=lambda item: item[0].name_hint) \
        if tir_mod is not None else []
    parts = part_count(len(kernels), threads)
    if parts == 1:
        return vm_build._vmlink(builder, target, tir_mod, tir_pipeline, ext_libs, params)
    modules = [vm_build._auto_attach_system_lib_prefix(
        tvm.IRModule(dict(part), attrs=tir_mod.attrs), target, None)
        for part in balanced_parts(kernels, parts)]
    libs = _build_in_threads(modules, target, tir_pipeline)
    lib = libs[0]
    for part in libs[1:]:
        lib.import_module(part)
    device_libs = [m for m in ext_libs if vm_build._is_device_module(m)]
    for device_lib in device_libs:
        lib.import_module(device_lib)
    host_libs = [m for m in ext_libs if not vm_build._is_device_module(m)]
    return vm_build.VMExecutable(vm_build._ffi_api.VMLink(builder, target, lib, host_libs, params))


def build_cost(func) -> float:
    """A kernel's relative build time (`BUILD_COST`, by the rule that scheduled it)."""
    from .schedules import SCHEDULE_ATTR
    rule = func.attrs.get(SCHEDULE_ATTR) if func.attrs else None
    return BUILD_COST.get(str(rule), 1.0)


def balanced_parts(kernels: list, parts: int) -> list[list]:
    """(GlobalVar, PrimFunc) pairs in `parts` lists of about equal `build_cost`: the costliest
    first, each to the lightest part so far (ties by name and part, so a model always splits
    the same way)."""
    loads, members = [0.0] * parts, [[] for _ in range(parts)]
    costed = sorted(((build_cost(func), gvar, func) for gvar, func in kernels),
                    key=lambda k: (-k[0], k[1].name_hint))
    for cost, gvar, func in costed:
        lightest = min(range(parts), key=lambda i: (loads[i], i))
        members[lightest].append((gvar, func))
        loads[lightest] += cost
    return members


def _build_in_threads(modules, target, tir_pipeline) -> list:
    """Each module built by `tvm.tirx.build` and its machine code generated (by looking one of
    its functions up), each in a thread of its own under the caller's PassContext (TVM keeps it
    per thread)."""
    import tvm
    context = tvm.transform.PassContext.current()

    def build(module):
        with context:
            lib = tvm.tirx.build(module, target=target, pipeline=tir_pipeline)
        gvar, func = next(iter(module.functions.items()))
        lib.get_function(str(func.attrs.get("global_symbol", gvar.name_hint)))
        return lib

    return in_threads([lambda m=m: build(m) for m in modules], "graphopt-build")


def export_library(executable, path: str, addons: list[str], workspace_dir: str,
                   **options) -> None:
    """`executable.export_library(path, addons=..., workspace_dir=..., **options)`, with the
    object file of each LLVM module (each part `build_executable` made) written in a thread of
    its own: writing one runs LLVM's code generation again, 14 s of DenseNet-121's export in one
    module. These are the steps TVM 0.27's `Module.export_library` takes for host LLVM modules
    (objects, then its other imports packed into one more object, then one shared library); a
    build in one module, or with any other module kind, is exported by TVM itself."""
    from tvm.runtime import _ffi_api
    from tvm.support import cc
    root = executable.mod
    modules = root._collect_dso_modules()
    if len(modules) < 2 or any(module.kind != "llvm" for module in modules):
        executable.export_library(path, addons=addons, workspace_dir=workspace_dir, **options)
        return
    objects = [os.path.join(workspace_dir, f"lib{i}.o") for i in range(len(modules))]
    in_threads([lambda m=m, o=o: m.write_to_file(o) for m, o in zip(modules, objects)],
               "graphopt-export")
    first = modules[0]
    system_lib = first.get_function("__tvm_is_system_module")()
    llvm_target = first.get_function("_get_target_string")()
    prefix = first.get_function("__tvm_get_system_lib_prefix")() or ""
    files = list(addons) + objects
    if root.imports:
        packed = os.path.join(workspace_dir, f"{prefix}devc.o")
        _ffi_api.ModulePackImportsToLLVM(root, system_lib, llvm_target, prefix) \
            .write_to_file(packed)
        files.append(packed)
    cc.create_shared(path, files, **options)
