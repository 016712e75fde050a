"""`export_model`: a CompiledModel -> one shared library that `graphopt.runtime.load` runs with
only the TVM runtime. What running needs besides TVM's own content travels inside the file:
- metadata (format, graph, target, device, input/output names/shapes/dtypes) and the sha256 of
  the whole file, in a trailer after the ELF image (`runtime.export_trailer`), so that a
  library is checked and described without being loaded;
- `graphopt_cuda_fatbin` (CUDA): nvcc's fatbin for the target's arch, a data symbol linked in
  from a small assembly file into a `.nv_fatbin` section so that CUDA's own tools
  (`cuobjdump`) see it as the library's GPU code; the metadata records where it lies.
A model compiled with kernels="onednn" is linked against the oneDNN kernel library (found by
rpath beside the model, then where it was built), so loading the model registers its kernels.
The library is built in a temporary file beside `path` and renamed onto it once complete: a
failed or interrupted export leaves any previous file at `path` as it was.
"""
from __future__ import annotations

import hashlib
import mmap
import os
import resource
import tempfile

from ...errors import GraphoptError, WriteError
from ...files import atomic_output, temporary_directory
from ... import runtime
from .parallel_build import export_library


# LLVM target features -> the /proc/cpuinfo flags a CPU running such code must show: what
# `runtime.load` checks before running a library (an instruction the CPU lacks is SIGILL).
CPU_FEATURES = {"avx2": "avx2", "fma": "fma", "avx512f": "avx512f", "avx512bw": "avx512bw",
                "avx512dq": "avx512dq", "avx512vl": "avx512vl",
                "avx512vnni": "avx512_vnni", "avxvnni": "avx_vnni", "avx512bf16": "avx512_bf16",
                "avx512fp16": "avx512_fp16", "avx512vbmi": "avx512vbmi",
                "avx512vbmi2": "avx512_vbmi2", "gfni": "gfni",
                "amx-tile": "amx_tile", "amx-int8": "amx_int8", "amx-bf16": "amx_bf16",
                # AMD's own: LLVM emits SSE4A's insertq / extrq for Zen targets ("znver3"), and
                # XOP, FMA4 and TBM for the Bulldozer family; Intel's CPUs have none of them
                "sse4a": "sse4a", "xop": "xop", "fma4": "fma4", "tbm": "tbm"}


def cpu_features(tvm_target) -> list[str]:
    """The CPU flags (cpuinfo names) that code compiled for `tvm_target` may use."""
    from tvm.target.codegen import target_has_features
    return sorted(flag for feature, flag in CPU_FEATURES.items()
                  if target_has_features(feature, tvm_target))


def metadata_of(model, extra: dict | None = None) -> dict:
    import tvm
    required = {"cpu_features": cpu_features(model.tvm_target)} \
        if model.device_kind == "cpu" and model.tvm_target is not None else {}
    return {"format": runtime.FORMAT, "version": 2, "graph": model.graph_name,
            "target": model.target, "device": model.device_kind, "tvm": tvm.__version__,
            **required, **model.signature.to_dict(), **(extra or {})}


def data_symbol_assembly(name: str, path: str, section: str) -> str:
    """GNU assembly defining `name` (the bytes of file `path`) and `name`_size (uint64)."""
    return (f'\t.section {section},"a"\n\t.balign 8\n\t.globl {name}\n\t.type {name}, @object\n'
            f'{name}:\n\t.incbin "{path}"\n{name}_end:\n\t.size {name}, {name}_end - {name}\n'
            f'\t.section .rodata.{name}_size,"a"\n\t.balign 8\n\t.globl {name}_size\n'
            f'\t.type {name}_size, @object\n{name}_size:\n\t.quad {name}_end - {name}\n'
            f'\t.size {name}_size, 8\n')


# What a library holds besides its weights (code, TVM's tables), with room to spare: the space
# checked for before LLVM writes anything (see `check_room`).
CODE_ALLOWANCE = 16 << 20


def estimated_size(model) -> int:
    graph = model.graph
    weights = sum(v.data.nbytes for v in graph.constants.values()) if graph is not None else 0
    return weights + CODE_ALLOWANCE


def check_room(folders: list[str], needed: int, path: str) -> None:
    """Refuse before building when the disk or `ulimit -f` cannot take the library. LLVM ends
    the process (`LLVM ERROR: IO failure on output stream`) when its object file cannot be
    written, which no Python handler can catch; checking first turns the likely case into a
    WriteError with nothing left behind."""
    limit = resource.getrlimit(resource.RLIMIT_FSIZE)[0]
    if limit != resource.RLIM_INFINITY and limit < needed:
        raise WriteError(f"cannot write {path}: the file size limit (`ulimit -f`, {limit:,} "
                         f"bytes) is below the ~{needed:,} bytes an export needs")
    for folder in folders:
        stats = os.statvfs(folder)
        free = stats.f_bavail * stats.f_frsize
        if free < needed:
            raise WriteError(f"cannot write {path}: {folder} has {free:,} bytes free, an export "
                             f"needs ~{needed:,}")


def export_model(model, path: str) -> str:
    """Write `model` (a CompiledModel) to the shared library `path`; returns the path."""
    path = os.path.abspath(os.fspath(path))
    if not path.endswith(".so"):
        raise GraphoptError(f"export path must end in .so, found {os.path.basename(path)!r}")
    if os.path.isdir(path):
        raise GraphoptError(f"cannot export to {path}: it is a folder")
    os.makedirs(os.path.dirname(path), exist_ok=True)
    check_room([tempfile.gettempdir(), os.path.dirname(path)], estimated_size(model), path)
    with temporary_directory("graphopt-export-") as work, atomic_output(path) as partial:
        extra, blobs = {}, {}
        if model.device_kind == "cuda":
            from .cuda import compile_cuda_source, cuda_source, source_digest
            arch = str(model.tvm_target.attrs["arch"])
            extra = {"cuda_arch": arch}
            if model.kernels:   # a model of no kernels (identities, reshapes) has no GPU code
                source = cuda_source(model.executable)
                blobs[runtime.FATBIN_SYMBOL] = (compile_cuda_source(source, arch),
                                                ".nv_fatbin")
                extra["cuda_source_sha256"] = source_digest(source)
        if model.weights is not None:   # compiled with weights="params": bound at load time
            extra["weights"] = [{"name": n, "shape": list(a.shape), "dtype": str(a.dtype),
                                 "sha256": runtime.content_key(a)} for n, a in model.weights]
        link_options = []
        if model.offloaded:
            from .onednn import LIBRARY, export_link_options
            link_options = export_link_options()
            extra["external_kernels"] = {"library": LIBRARY, "convolutions": len(model.offloaded)}
        addons = []
        if blobs:
            assembly = []
            for name, (data, section) in blobs.items():
                blob_path = os.path.join(work, f"{name}.bin")
                with open(blob_path, "wb") as f:
                    f.write(data)
                assembly.append(data_symbol_assembly(name, blob_path, section))
            addons = [os.path.join(work, "graphopt_data.S")]
            with open(addons[0], "w") as f:
                f.write("".join(assembly) + '\t.section .note.GNU-stack,"",@progbits\n')
        library = os.path.join(work, "model.so")
        with runtime.without_scope_log():
            export_library(model.executable, library, addons, work,
                           **({"options": link_options} if link_options else {}))
        with open(library, "rb") as f, mmap.mmap(f.fileno(), 0, access=mmap.ACCESS_READ) as image:
            if runtime.FATBIN_SYMBOL in blobs:   # where the linker put the GPU binary
                fatbin = blobs[runtime.FATBIN_SYMBOL][0]
                extra["cuda_fatbin"] = {"offset": image.find(fatbin), "size": len(fatbin)}
                if extra["cuda_fatbin"]["offset"] < 0:
                    raise GraphoptError(
                        f"exporting {path}: the linked library lacks its GPU binary")
            trailer = runtime.export_trailer(None, metadata_of(model, extra), hashlib.sha256(image))
            with open(partial, "wb") as out:
                out.write(image)
                out.write(trailer)
    return path
