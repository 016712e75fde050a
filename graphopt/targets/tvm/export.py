"""`export_model`: a CompiledModel -> one shared library that `graphopt.runtime.load` runs with
only the TVM runtime. What running needs besides TVM's own content travels inside the library
as data symbols, linked in from a small assembly file:
- `graphopt_metadata`: JSON (format, graph, target, device, input/output names/shapes/dtypes);
- `graphopt_cuda_fatbin` (CUDA): nvcc's fatbin for the target's arch, in a `.nv_fatbin`
  section so that CUDA's own tools (`cuobjdump`) see it as the library's GPU code.
A model compiled with kernels="onednn" is linked against the oneDNN kernel library (found by
rpath beside the model, then where it was built), so loading the model registers its kernels.
"""
from __future__ import annotations

import json
import os
import tempfile

from ...errors import GraphoptError
from ... import runtime


def metadata_of(model, extra: dict | None = None) -> dict:
    import tvm
    return {"format": runtime.FORMAT, "version": 1, "graph": model.graph_name,
            "target": model.target, "device": model.device_kind, "tvm": tvm.__version__,
            **model.signature.to_dict(), **(extra or {})}


def data_symbol_assembly(name: str, path: str, section: str) -> str:
    """GNU assembly defining `name` (the bytes of file `path`) and `name`_size (uint64)."""
    return (f'\t.section {section},"a"\n\t.balign 8\n\t.globl {name}\n\t.type {name}, @object\n'
            f'{name}:\n\t.incbin "{path}"\n{name}_end:\n\t.size {name}, {name}_end - {name}\n'
            f'\t.section .rodata.{name}_size,"a"\n\t.balign 8\n\t.globl {name}_size\n'
            f'\t.type {name}_size, @object\n{name}_size:\n\t.quad {name}_end - {name}\n'
            f'\t.size {name}_size, 8\n')


def export_model(model, path: str) -> str:
    """Write `model` (a CompiledModel) to the shared library `path`; returns the path."""
    path = os.path.abspath(os.fspath(path))
    if not path.endswith(".so"):
        raise GraphoptError(f"export path must end in .so, found {os.path.basename(path)!r}")
    os.makedirs(os.path.dirname(path), exist_ok=True)
    with tempfile.TemporaryDirectory(prefix="graphopt-export-") as work:
        extra, blobs = {}, {}
        if model.device_kind == "cuda":
            from .cuda import compile_cuda_source, cuda_source, source_digest
            arch = str(model.tvm_target.attrs["arch"])
            source = cuda_source(model.executable)
            blobs[runtime.FATBIN_SYMBOL] = (compile_cuda_source(source, arch), ".nv_fatbin")
            extra = {"cuda_arch": arch, "cuda_source_sha256": source_digest(source)}
        if model.weights is not None:   # compiled with weights="params": bound at load time
            extra["weights"] = [{"name": n, "shape": list(a.shape), "dtype": str(a.dtype),
                                 "sha256": runtime.content_key(a)} for n, a in model.weights]
        link_options = []
        if model.offloaded:
            from .onednn import LIBRARY, export_link_options
            link_options = export_link_options()
            extra["external_kernels"] = {"library": LIBRARY, "convolutions": len(model.offloaded)}
        metadata = json.dumps(metadata_of(model, extra), indent=1).encode()
        blobs[runtime.METADATA_SYMBOL] = (metadata, f".rodata.{runtime.METADATA_SYMBOL}")
        assembly = []
        for name, (data, section) in blobs.items():
            blob_path = os.path.join(work, f"{name}.bin")
            with open(blob_path, "wb") as f:
                f.write(data)
            assembly.append(data_symbol_assembly(name, blob_path, section))
        addon = os.path.join(work, "graphopt_data.S")
        with open(addon, "w") as f:
            f.write("".join(assembly) + '\t.section .note.GNU-stack,"",@progbits\n')
        model.executable.export_library(path, addons=[addon], workspace_dir=work,
                                        **({"options": link_options} if link_options else {}))
    return path
