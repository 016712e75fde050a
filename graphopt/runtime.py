"""Load and run models exported by `CompiledModel.export` with nothing but the TVM runtime:
numpy, apache-tvm-ffi and libtvm_runtime.so (+ libtvm_runtime_cuda.so for CUDA models).

    model = load("resnet18_cpu.so")
    outputs = model.run({"input": x})        # {output name: numpy array}, as the interpreter's

This file imports nothing from graphopt except its error classes, and falls back to plain
exceptions of the same names when copied on its own next to the runtime libraries (the GPU
bundle does that). An exported library carries, written by `export.py`:
- a trailer after its ELF image (see `read_export`): JSON metadata with the target, device and
  the input/output names, shapes, dtypes (for a library compiled with weights as parameters,
  also each weight's name, shape, dtype and sha256, which `LoadedModel.bind_weights` checks),
  and the sha256 of the whole file, checked before the library is loaded;
- `graphopt_cuda_fatbin` (CUDA only, a data symbol in the `.nv_fatbin` section, located by the
  metadata): the kernels compiled by nvcc for the requested arch. TVM
  stores CUDA *source* in the library and compiles it at load time through the global callback
  `tvm_callback_cuda_compile`; while loading we register that callback to serve the embedded
  binary instead, so no CUDA compiler and no `tvm` compiler package are needed.
"""
from __future__ import annotations

import ctypes
import functools
import hashlib
import importlib.util
import json
import os
import platform
import re
import sys
import tempfile
import threading
import time
from contextlib import contextmanager
from typing import Iterator, Mapping

import numpy as np

try:
    from .errors import InputError, ModelFormatError
except ImportError:  # copied alone into a runtime bundle, outside the graphopt package
    class ModelFormatError(Exception):
        """A file that is not a loadable graphopt export, or a runtime that cannot load it."""

    class InputError(Exception):
        """Inputs that do not match the model's signature."""

FATBIN_SYMBOL = "graphopt_cuda_fatbin"
FORMAT = "graphopt-export"
# Where libtvm_runtime*.so may be found besides the defaults (see `find_runtime_library`).
RUNTIME_DIR_ENV = "GRAPHOPT_TVM_RUNTIME_DIR"
CUDA_COMPILE_CALLBACK = "tvm_callback_cuda_compile"
CUDA_RUNTIME = "libcudart.so.13"   # what the wheel's libtvm_runtime_cuda.so links against

_DLPACK_DEVICE_TYPE = {"cpu": 1, "cuda": 2}
_MISSING = object()
_POOLED_ALLOCATOR = 2   # relax VM allocator kind, as tvm.relax.VirtualMachine passes it
# The function of a CPU build that makes its intermediate tensors (`targets/tvm/workspace.py`):
# called once per VM, its tensors passed to `main` after the model's own arguments on every run.
WORKSPACE_FUNCTION = "graphopt_workspace"


def enter_vm(per_thread: threading.local, vm, vm_module):
    """The VM's `main`, kept in the calling thread's `per_thread` (a model's thread-local
    namespace) as `main`, beside `workspace`: the tensors every call of it takes after the
    model's own arguments, made once for this VM by WORKSPACE_FUNCTION (none for a build
    without it). `vm_module`: the VM's runtime module (the VM itself where it is one)."""
    per_thread.workspace = tuple(vm_module[WORKSPACE_FUNCTION]()) \
        if vm_module.implements_function(WORKSPACE_FUNCTION) else ()
    main = per_thread.main = vm["main"]
    return main


def content_key(array: np.ndarray) -> str:
    """sha256 of an array's dtype, shape and bytes: how exports name the weights they expect."""
    array = np.ascontiguousarray(array)
    return hashlib.sha256(f"{array.dtype}{array.shape}".encode() + array.tobytes()).hexdigest()


# ---- finding and loading the runtime libraries ------------------------------------------------

def find_runtime_library(name: str, near: str | None = None) -> str:
    """Path of `name` (e.g. libtvm_runtime.so): $GRAPHOPT_TVM_RUNTIME_DIR, the exported model's
    folder, this file's folder, then the installed `tvm` package's lib/ (found without
    importing it, so the compiler library is never loaded). When `tvm` is already imported its
    own lib/ comes first: its runtime is loaded, and a second copy must not be."""
    folders = [os.environ.get(RUNTIME_DIR_ENV), near, os.path.dirname(os.path.abspath(__file__))]
    tvm = sys.modules.get("tvm")
    spec = tvm.__spec__ if tvm is not None else importlib.util.find_spec("tvm")
    if spec is not None and spec.submodule_search_locations:
        tvm_libs = [os.path.join(p, "lib") for p in spec.submodule_search_locations]
        folders = tvm_libs + folders if tvm is not None else folders + tvm_libs
    for folder in filter(None, folders):
        candidate = os.path.join(folder, name)
        if os.path.isfile(candidate):
            return candidate
    raise ModelFormatError(f"cannot find {name}: looked in {[f for f in folders if f]}; set "
                           f"{RUNTIME_DIR_ENV} to the folder that holds it")


_loaded_runtime_libraries: dict[str, ctypes.CDLL] = {}


def load_runtime(device_kind: str = "cpu", near: str | None = None) -> None:
    """Load libtvm_runtime.so (the VM and its loaders), plus the CUDA runtime for "cuda"; they
    must be global so that the exported library's loader finds their registrations."""
    import tvm_ffi  # noqa: F401  (loads libtvm_ffi.so, which the runtime libraries need)
    names = ["libtvm_runtime.so"]
    if device_kind == "cuda":
        # A bundle may carry the CUDA runtime (libcudart.so.13) beside ours; else the system's.
        try:
            names.append(find_runtime_library(CUDA_RUNTIME, near))
        except ModelFormatError:
            pass
        names.append("libtvm_runtime_cuda.so")
    for name in names:
        if name not in _loaded_runtime_libraries:
            path = name if os.path.isabs(name) else find_runtime_library(name, near)
            try:
                _loaded_runtime_libraries[name] = ctypes.CDLL(path, mode=ctypes.RTLD_GLOBAL)
            except OSError as e:
                needs = (" (CUDA models need a GPU machine: the NVIDIA driver's libcuda.so.1 and "
                         "libcudart.so.13)" if "cuda" in name else "")
                raise ModelFormatError(f"cannot load {path}: {e}{needs}") from e


# ---- reading what an exported library carries, without loading it ----------------------------
#
# Loading a shared library runs its code (constructors, TVM's registrations), so nothing is read
# by loading it. `export.py` appends a trailer after the ELF image, which the dynamic loader
# ignores:
#     <metadata JSON> <uint64 LE: JSON length> <sha256 of everything before it> <TRAILER_MAGIC>
# The digest covers the whole file, so a truncated or altered library is refused before dlopen.
# Only load libraries you trust: a library built to pass this check still runs its own code.

TRAILER_MAGIC = b"graphopt-export\x02"
_DIGEST_BYTES = 32
_TAIL_BYTES = 8 + _DIGEST_BYTES + len(TRAILER_MAGIC)
MAX_METADATA_BYTES = 64 << 20


def export_trailer(image: bytes | None, metadata: dict, digest=None) -> bytes:
    """The bytes to append to a library image: its metadata and the digest of image + metadata.
    Pass the image itself, or `digest`, a hashlib.sha256 object already fed with the image."""
    raw = json.dumps(metadata, indent=1).encode()
    digest = digest if digest is not None else hashlib.sha256(image)
    body = raw + len(raw).to_bytes(8, "little")
    digest.update(body)
    return body + digest.digest() + TRAILER_MAGIC


def _file_digest(f, size: int):
    digest = hashlib.sha256()
    f.seek(0)
    left = size
    while left:
        chunk = f.read(min(left, 1 << 22))
        if not chunk:
            break
        digest.update(chunk)
        left -= len(chunk)
    return digest


def read_export(path: str) -> tuple[dict, bytes | None]:
    """The metadata and (for CUDA) the GPU binary of an exported library, read from its trailer
    after checking the file's digest; the library itself is not loaded."""
    path = os.fspath(path)
    if not os.path.isfile(path):
        raise ModelFormatError(f"no such file: {path}")
    not_export = (f"{path} is not a graphopt export, or was written by an older graphopt "
                  "(export it again with CompiledModel.export)")
    with open(path, "rb") as f:
        size = os.fstat(f.fileno()).st_size
        if size < _TAIL_BYTES:
            raise ModelFormatError(f"{not_export}: only {size} bytes")
        f.seek(size - _TAIL_BYTES)
        tail = f.read(_TAIL_BYTES)
        if tail[-len(TRAILER_MAGIC):] != TRAILER_MAGIC:
            raise ModelFormatError(f"{not_export}: no graphopt trailer at its end")
        length = int.from_bytes(tail[:8], "little")
        if length > min(MAX_METADATA_BYTES, size - _TAIL_BYTES):
            raise ModelFormatError(f"{path} is damaged: its trailer claims {length:,} bytes of "
                                   f"metadata in a {size:,}-byte file")
        digest = _file_digest(f, size - _DIGEST_BYTES - len(TRAILER_MAGIC))
        if digest.digest() != tail[8:8 + _DIGEST_BYTES]:
            raise ModelFormatError(f"{path} is damaged (truncated or altered since export): its "
                                   "sha256 differs from the one recorded at export; export it again")
        f.seek(size - _TAIL_BYTES - length)
        try:
            metadata = json.loads(f.read(length).decode())
        except (UnicodeDecodeError, ValueError) as e:
            raise ModelFormatError(f"{path}: unreadable metadata: {e}") from e
        if not isinstance(metadata, dict) or metadata.get("format") != FORMAT:
            found = metadata.get("format") if isinstance(metadata, dict) else type(metadata)
            raise ModelFormatError(f"{path}: expected metadata format {FORMAT!r}, found {found!r}")
        fatbin = None
        if "cuda_fatbin" in metadata:   # where the GPU binary lies inside the library file
            offset, length = metadata["cuda_fatbin"]["offset"], metadata["cuda_fatbin"]["size"]
            f.seek(offset)
            fatbin = f.read(length)
    return metadata, fatbin


@contextmanager
def serving_cuda_binary(fatbin: bytes, source_sha256: str, path: str) -> Iterator[None]:
    """While loading, answer TVM's CUDA compile callback with the prebuilt binary, checking that
    the source TVM asks about is the one the binary was built from."""
    def serve(source: str) -> bytes:
        found = hashlib.sha256(source.encode()).hexdigest()
        if found != source_sha256:
            raise ModelFormatError(f"{path}: the CUDA source in the library (sha256 {found[:12]}) "
                                   f"is not the one its binary was built from ({source_sha256[:12]})")
        return fatbin

    with cuda_compile_callback(serve):
        yield


@contextmanager
def cuda_compile_callback(compile_source) -> Iterator[None]:
    """Register `compile_source(cuda_source) -> binary` as TVM's CUDA compile callback for the
    duration, restoring whatever was registered before."""
    import tvm_ffi
    previous = tvm_ffi.get_global_func(CUDA_COMPILE_CALLBACK, allow_missing=True)
    tvm_ffi.register_global_func(CUDA_COMPILE_CALLBACK, compile_source, override=True)
    try:
        yield
    finally:
        if previous is not None:
            tvm_ffi.register_global_func(CUDA_COMPILE_CALLBACK, previous, override=True)
        else:
            tvm_ffi.remove_global_func(CUDA_COMPILE_CALLBACK)


# ---- inputs the kernels can read ------------------------------------------------------------------

# TVM's kernels assume buffers aligned as its own allocator aligns them (kAllocAlignment) and read
# them with aligned vector loads: a numpy array at another offset would crash them. numpy's DLPack
# export refuses read-only arrays, so those are copied too (the kernels never write an input).
ALIGNMENT = 64


def aligned(array: np.ndarray) -> np.ndarray:
    """`array` itself when C-contiguous, writeable and ALIGNMENT-aligned, else a copy that is."""
    if (array.flags.c_contiguous and array.flags.writeable
            and array.ctypes.data % ALIGNMENT == 0):
        return array
    raw = np.empty(array.nbytes + ALIGNMENT, np.uint8)
    start = -raw.ctypes.data % ALIGNMENT
    copy = raw[start:start + array.nbytes].view(array.dtype).reshape(array.shape)
    copy[...] = array
    return copy


# ---- threads ------------------------------------------------------------------------------------

def allowed_cpus() -> list[int]:
    """The CPUs this process may run on (its affinity mask, not the machine's cores)."""
    if hasattr(os, "sched_getaffinity"):
        return sorted(os.sched_getaffinity(0))
    return list(range(os.cpu_count() or 1))   # not on Linux


@functools.lru_cache(maxsize=None)
def host_cpu_flags() -> frozenset[str] | None:
    """The flags of this CPU as Linux lists them, or None where /proc/cpuinfo is not there."""
    try:
        with open("/proc/cpuinfo", encoding="ascii", errors="replace") as f:
            for line in f:
                if line.startswith("flags"):
                    return frozenset(line.split(":", 1)[1].split())
    except OSError:
        return None
    return None


def check_cpu_features(required, path: str) -> None:
    """ModelFormatError when the library was built for instructions this CPU lacks (running it
    would kill the process with SIGILL); nothing when the CPU's flags cannot be read."""
    if not isinstance(required, list) or not all(isinstance(f, str) for f in required):
        raise ModelFormatError(f"{path}: expected 'cpu_features' as a list of CPU flags, found "
                               f"{required!r}")
    flags = host_cpu_flags()
    missing = sorted(set(required) - flags) if flags is not None else []
    if missing:
        raise ModelFormatError(f"{path}: built for a CPU with {', '.join(missing)}, which this "
                               f"CPU lacks (running it would end the process with SIGILL); "
                               f"compile it on this machine or for its CPU (mcpu=...)")


@functools.lru_cache(maxsize=None)   # once per process
def enable_amx() -> bool:
    """Ask Linux, once per process, to let it use AMX tile data (arch_prctl
    ARCH_REQ_XCOMP_PERM for XFEATURE_XTILEDATA): without the permission an AMX instruction kills
    the process with SIGILL, even on a CPU that has AMX. Returns whether it was granted; a CPU or
    kernel without AMX says no, and no AMX kernel is built for such a CPU."""
    if not (sys.platform.startswith("linux") and platform.machine() == "x86_64"):
        return False
    SYS_ARCH_PRCTL, ARCH_REQ_XCOMP_PERM, XFEATURE_XTILEDATA = 158, 0x1023, 18
    try:
        libc = ctypes.CDLL(None, use_errno=True)
        return libc.syscall(SYS_ARCH_PRCTL, ARCH_REQ_XCOMP_PERM, XFEATURE_XTILEDATA) == 0
    except (OSError, AttributeError):
        return False


def available_cores() -> int:
    return len(allowed_cpus()) or 1


_thread_config = threading.local()


def configure_threads(count: int) -> None:
    """Run the calling thread's TVM kernels on `count` threads sharing the CPUs this process may
    use. TVM keeps one thread pool per calling thread; left alone it starts with half the
    hardware threads (one on a two-core machine) and pins the caller to a single core. Called
    before every run: it also lets the process use AMX tiles (`enable_amx`)."""
    enable_amx()
    if getattr(_thread_config, "count", None) == count:
        return
    import tvm_ffi
    cpus = [str(c) for c in allowed_cpus()]
    # -3: kSpecifyThreadShareAllCore (src/runtime/threading_backend.cc): workers may run on any
    # of `cpus`, and the caller is not pinned.
    tvm_ffi.get_global_func("runtime.config_threadpool")(-3, count, cpus)
    _thread_config.count = count


# ---- tensors on a device, through the runtime's own functions (no `tvm` package) --------------

CPU_DLPACK = 1   # DLPack's kDLCPU


def copy_to_device(array: np.ndarray, device):
    """A new tensor on `device` (a tvm_ffi.Device) holding a copy of `array`."""
    import tvm_ffi
    alloc = tvm_ffi.get_global_func("runtime.TVMTensorAllocWithScope")
    tensor = alloc(tvm_ffi.Shape(array.shape), tvm_ffi.dtype(str(array.dtype)), device, None)
    if array.size == 0:   # nothing to copy (numpy exports empty arrays with zero strides)
        return tensor
    source = np.ascontiguousarray(array)
    if not source.flags.writeable:    # numpy's DLPack export refuses read-only arrays
        source = source.copy()
    if str(array.dtype) == "bfloat16":   # numpy's DLPack has no bfloat16: its bits, as uint16
        source = source.view(np.uint16)
    tvm_ffi.get_global_func("runtime.TVMTensorCopyFromTo")(tvm_ffi.from_dlpack(source), tensor)
    return tensor


def run_inputs(arrays, device, per_thread: threading.local) -> list:
    """A run's inputs on `device`, one tensor per array (`run_input`), the aligned copies made
    in buffers the calling thread keeps in `per_thread` (a model's thread-local namespace)."""
    staging = per_thread.__dict__.get("staging")
    if staging is None:
        staging = per_thread.staging = {}
    return [run_input(array, device, staging, slot) for slot, array in enumerate(arrays)]


# Inputs up to this many bytes are copied into the staging buffer without trying to pass the
# array itself: the copy of a small input costs less than the DLPack export that would find
# whether it is aligned (LeNet-5's 4 KiB image, one Intel Xeon core: 0.3 us against 0.45).
COPIED_INPUT_BYTES = 16 * 1024


def run_input(array: np.ndarray, device, staging: dict, slot: int):
    """A run's input on `device`: on the CPU the array itself where it is larger than
    COPIED_INPUT_BYTES, C-contiguous, writeable and aligned as the kernels assume (no copy),
    else an aligned copy, made in `staging[slot]` (a buffer the caller keeps per thread and
    input, reused by every call: no allocation, and no DLPack export of it); elsewhere (and for
    bfloat16, which numpy's DLPack lacks) a copy. The alignment is read from the DLPack tensor
    (numpy's `ctypes.data` cost more than LeNet-5's first kernel). A small input whose buffer
    is already there (made by an earlier call, so on the CPU) is copied into it before any
    other check: those cost twice the copy of LeNet-5's 4 KiB image (one Intel Xeon core, us:
    2.75 a call through them, 0.82 straight away)."""
    staged = staging.get(slot)     # (buffer, its tensor)
    reusable = staged is not None and staged[0].shape == array.shape and \
        staged[0].dtype == array.dtype
    if reusable and array.nbytes <= COPIED_INPUT_BYTES:
        staged[0][...] = array
        return staged[1]
    if device.dlpack_device_type() != CPU_DLPACK or not array.size or array.dtype.kind == "V":
        return copy_to_device(array, device)
    # numpy's DLPack export refuses read-only arrays; the kernels read compact rows
    flags = array.flags
    if array.nbytes > COPIED_INPUT_BYTES and flags.writeable and flags.c_contiguous:
        import tvm_ffi   # here, not above: the import statement alone cost 0.15 us a call
        passed = tvm_ffi.from_dlpack(array)
        if passed.data_ptr() % ALIGNMENT == 0:
            return passed
    if not reusable:
        import tvm_ffi
        buffer = aligned(np.empty(array.shape, array.dtype))
        staged = staging[slot] = buffer, tvm_ffi.from_dlpack(buffer)
    staged[0][...] = array
    return staged[1]


def staged_call(specs, buffers, main, args, names: tuple):
    """A model's run on one thread where every input is copied into its staging buffer (small
    inputs on the CPU, `run_input`), as a function of the inputs and the thread count to run
    on, with `main`'s whole argument tuple (`args` after the inputs) made once: a call checks
    each input against its spec, copies it into its buffer and calls `main`. It returns None
    for anything but a dict of numpy arrays of the model's shapes and dtypes (the caller then
    takes the general path, which says what is wrong). Around bfloat16 LeNet-5's 8.6 us in
    `main`, the general path cost 3.4 us a run, this one 1.7 through `run` (one Zen 4 core; a
    closure over locals: the same reading an object's attributes cost 0.5 more). It reads the
    calling thread's thread setting: one per thread."""
    checks = tuple((name, shape, np_dtype, buffer)
                   for (name, shape, _, np_dtype), buffer in zip(specs, buffers))
    args, count, config = tuple(args), len(checks), _thread_config.__dict__

    def call(inputs, threads: int):
        if type(inputs) is not dict or len(inputs) != count:
            return None
        for name, shape, dtype, buffer in checks:
            array = inputs.get(name)
            if type(array) is not np.ndarray or array.shape != shape or array.dtype != dtype:
                return None
            buffer[...] = array
        if config.get("count") != threads:
            configure_threads(threads)
        result = main(*args)
        if len(names) == 1:
            return {names[0]: run_output(result, True)}
        return {name: run_output(t, True) for name, t in zip(names, result)}

    return call


def remember_staged_call(per_thread: threading.local, specs, arrays, main, args,
                         names: tuple) -> None:
    """Keep a `staged_call` in `per_thread` (as `staged_call`) after a CPU run whose `arrays`
    all went through their staging buffers (`run_inputs`), `args` the tensors `main` took
    after the inputs (weights, workspace)."""
    staging = per_thread.__dict__.get("staging") or {}
    if all(a.nbytes <= COPIED_INPUT_BYTES for a in arrays) and \
            all(spec[3] is not None for spec in specs) and \
            all(slot in staging for slot in range(len(arrays))):
        staged = [staging[slot] for slot in range(len(arrays))]
        per_thread.staged_call = staged_call(specs, [b for b, _ in staged], main,
                                             [t for _, t in staged] + list(args), names)


def run_output(tensor, on_cpu: bool | None = None) -> np.ndarray:
    """A run's output as a new numpy array: on the CPU a copy of numpy's DLPack view of it, else
    (another device, or a dtype numpy's DLPack lacks: bfloat16) a copy through the runtime.
    numpy is asked first because reading the tensor's dtype cost more (0.6-1.1 us) than the
    copy of a small output. `on_cpu`: whether the tensor is on the CPU, where the caller knows
    (None: asked of the tensor, two runtime calls)."""
    if on_cpu is None:
        on_cpu = tensor.device.dlpack_device_type() == CPU_DLPACK
    if on_cpu:
        try:
            return np.from_dlpack(tensor).copy()
        except RuntimeError:    # numpy: "Unsupported dtype in DLTensor"
            pass
    return copy_to_host(tensor)


def copy_to_host(tensor) -> np.ndarray:
    """A numpy copy of a tensor on any device."""
    import tvm_ffi
    alloc = tvm_ffi.get_global_func("runtime.TVMTensorAllocWithScope")
    bits = str(tensor.dtype) == "bfloat16"   # numpy's DLPack has no bfloat16: copied as uint16
    host = alloc(tensor.shape, tvm_ffi.dtype("uint16") if bits else tensor.dtype,
                 tvm_ffi.device("cpu", 0), None)
    tvm_ffi.get_global_func("runtime.TVMTensorCopyFromTo")(tensor, host)
    array = np.from_dlpack(host).copy()
    if bits:
        import ml_dtypes   # numpy's bfloat16
        array = array.view(ml_dtypes.bfloat16)
    return array


# ---- the loaded model -------------------------------------------------------------------------

def checked_inputs(inputs: Mapping[str, np.ndarray], specs) -> list[np.ndarray]:
    """`inputs` (input name -> array) as C-contiguous arrays in the order of `specs`, ((name,
    shape, dtype name, numpy's dtype or None where numpy lacks it), ...); InputError names what
    is wrong. Runs before every call of a model (compiled or loaded), so the common case, a dict
    of numpy arrays, takes one pass with no generator or ABC check (1.5 -> 0.5 us for one
    input), and shapes and dtype objects are compared (a dtype's name costs 2.5 us)."""
    if type(inputs) is not dict and not isinstance(inputs, Mapping):
        raise InputError(f"expected a dict of input name -> array, found {type(inputs).__name__}")
    arrays = []
    for name, shape, dtype, np_dtype in specs:
        array = inputs.get(name, _MISSING)
        if array is _MISSING:
            break
        if not isinstance(array, np.ndarray):
            array = np.asarray(array)
        if array.shape != shape or (array.dtype != np_dtype if np_dtype is not None
                                    else str(array.dtype) != dtype):
            raise InputError(f"input '{name}': expected {dtype}[{','.join(map(str, shape))}], "
                             f"found {array.dtype}[{','.join(map(str, array.shape))}]")
        arrays.append(array if array.flags.c_contiguous else np.ascontiguousarray(array))
    if len(arrays) != len(specs) or len(inputs) != len(arrays):
        names = [spec[0] for spec in specs]
        missing = [n for n in names if n not in inputs]
        unknown = [n for n in inputs if n not in names]
        raise InputError(f"expected inputs {names}, found {list(inputs)}"
                         + (f"; missing {missing}" if missing else "")
                         + (f"; unknown {unknown}" if unknown else ""))
    return arrays


class LoadedModel:
    """An exported model loaded into the TVM runtime: `run(inputs) -> {output name: array}`."""

    def __init__(self, path: str, metadata: dict, new_vm, device_id: int = 0,
                 threads: int | None = None):
        import tvm_ffi
        self.path, self.metadata = path, metadata
        # A Relax VM keeps its registers and frames in the object: two threads in one VM corrupt
        # each other. Each calling thread gets its own VM over the same loaded library (CPU
        # constants are shared; a CUDA VM copies them to the device once per thread).
        self._new_vm, self._per_thread = new_vm, threading.local()
        if threads is not None and (not isinstance(threads, int) or threads < 1):
            raise InputError(f"threads must be a positive int or None, found {threads!r}")
        self.threads = threads or available_cores()
        self.device_kind = metadata["device"]
        self.device = tvm_ffi.device(self.device_kind, device_id)
        # What every run checks, read from the metadata once, with numpy's dtype objects where
        # numpy has the dtype (a dtype's name costs 2.5 us: rebuilt and named on every call, the
        # check of a one-input model cost as much as ORT's whole `run` of a small graph)
        self._input_specs = tuple((name, shape, dtype, numpy_dtype(dtype))
                                  for name, shape, dtype in self.inputs)
        self._output_names = tuple(self.output_names)
        self._main_function()    # the loading thread's VM, created now so load errors show here
        self._weight_args: list | None = [] if not self.weights else None
        self._sync = tvm_ffi.get_global_func("runtime.Device_StreamSync")

    target = property(lambda self: self.metadata["target"])
    graph_name = property(lambda self: self.metadata["graph"])
    inputs = property(lambda self: [(d["name"], tuple(d["shape"]), d["dtype"])
                                    for d in self.metadata["inputs"]])
    outputs = property(lambda self: [(d["name"], tuple(d["shape"]), d["dtype"])
                                     for d in self.metadata["outputs"]])
    input_names = property(lambda self: [n for n, _, _ in self.inputs])
    # Weights the library takes as parameters (exported after compile(..., weights="params")).
    weights = property(lambda self: [(d["name"], tuple(d["shape"]), d["dtype"])
                                     for d in self.metadata.get("weights", [])])
    output_names = property(lambda self: [n for n, _, _ in self.outputs])

    def _main_function(self):
        """The calling thread's VM entry point (created on the thread's first call)."""
        main = getattr(self._per_thread, "main", None)
        if main is None:
            vm = self._per_thread.vm = self._new_vm()
            main = enter_vm(self._per_thread, vm, vm)
        return main

    def check(self, inputs: Mapping[str, np.ndarray]) -> list[np.ndarray]:
        """The inputs as contiguous arrays in declaration order; InputError says what is wrong."""
        return checked_inputs(inputs, self._input_specs)

    def _to_device(self, arrays: list[np.ndarray]) -> list:
        return run_inputs(arrays, self.device, self._per_thread)

    def bind_weights(self, weights: Mapping[str, np.ndarray], check_content: bool = True) -> None:
        """Give a library exported with weights as parameters its weights (by name), copied to
        the device once. `check_content` compares each with the digest recorded at export."""
        missing = [name for name, _, _ in self.weights if name not in weights]
        if missing:
            raise InputError(f"missing weights {missing[:5]}{' ...' if len(missing) > 5 else ''}")
        arrays = []
        for entry in self.metadata.get("weights", []):
            array = np.asarray(weights[entry["name"]])
            if array.shape != tuple(entry["shape"]) or str(array.dtype) != entry["dtype"]:
                raise InputError(f"weight '{entry['name']}': expected {entry['dtype']}"
                                 f"[{','.join(map(str, entry['shape']))}], found {array.dtype}"
                                 f"[{','.join(map(str, array.shape))}]")
            if check_content and content_key(array) != entry["sha256"]:
                raise InputError(f"weight '{entry['name']}' differs from the one the library "
                                 "was exported with")
            arrays.append(array)
        self._weight_args = [copy_to_device(a, self.device) for a in arrays]

    def run_device(self, device_inputs: list):
        """One call of the model on inputs already on the device; returns device tensors."""
        if self._weight_args is None:
            raise InputError(f"{self.path} takes its weights as parameters: call "
                             "bind_weights(...) first")
        if self.device_kind == "cpu":
            configure_threads(self.threads)
        main = self._main_function()
        result = main(*device_inputs, *self._weight_args, *self._per_thread.workspace)
        return [result] if len(self._output_names) == 1 else list(result)

    def run(self, inputs: Mapping[str, np.ndarray]) -> dict[str, np.ndarray]:
        staged = self._per_thread.__dict__.get("staged_call")
        if staged is not None:
            outputs = staged(inputs, self.threads)
            if outputs is not None:
                return outputs
        arrays = self.check(inputs)
        results = self.run_device(self._to_device(arrays))
        on_cpu = self.device_kind == "cpu"
        # not with weights as parameters (`bind_weights` may replace them): `main` takes the
        # workspace after the inputs
        if on_cpu and staged is None and not self.metadata.get("weights"):
            remember_staged_call(self._per_thread, self._input_specs, arrays,
                                 self._main_function(), self._per_thread.workspace,
                                 self._output_names)
        return {name: run_output(t, on_cpu) for name, t in zip(self._output_names, results)}

    __call__ = run

    def latencies(self, inputs: Mapping[str, np.ndarray], warmup: int = 10,
                  repeat: int = 100) -> list[float]:
        """Seconds per call, inputs already on the device, each call waited for."""
        device_inputs = self._to_device(self.check(inputs))
        times = []
        for i in range(warmup + repeat):
            start = time.perf_counter()
            self.run_device(device_inputs)
            self._sync(self.device, 0)
            if i >= warmup:
                times.append(time.perf_counter() - start)
        return times

    def __repr__(self) -> str:
        return f"LoadedModel('{self.graph_name}', target={self.target!r}, path={self.path!r})"


def numpy_dtype(name: str):
    """numpy's dtype named `name`, or None where numpy has none (bfloat16 without ml_dtypes)."""
    try:
        return np.dtype(name)
    except TypeError:
        return None


# TVM 0.27's VM executable logs "Scope Saving:" / "Scope Loaded:" as a warning for every
# constant when it is written or read (executable.cc, a debugging line): one line per weight
# tensor on stderr at each export and load, hundreds for a large model. TVM's C++ logging has
# no switch for it at run time, so those calls run with stderr (fd 2, where C++ writes) caught
# and written back without the lines.
_SCOPE_LOG_LINE = re.compile(rb"^[^\n]*executable\.cc:\d+: Warning: Scope (?:Saving|Loaded):"
                             rb"[^\n]*(?:\n|$)", re.M)
_stderr_lock = threading.Lock()   # fd 2 is one per process: one redirection at a time


def _flush(stream) -> None:
    try:
        stream.flush()
    except (AttributeError, OSError, ValueError):   # None, or closed
        pass


@contextmanager
def without_scope_log() -> Iterator[None]:
    """Run a TVM executable save or load with TVM's per-constant memory-scope lines left out of
    stderr; everything else written to stderr meanwhile passes through, after the call."""
    with _stderr_lock:
        _flush(sys.stderr)
        saved = caught = None
        try:
            saved = os.dup(2)
            caught = tempfile.TemporaryFile()
        except OSError:   # no fd 2, or nowhere to catch it: the lines stay
            if saved is not None:
                os.close(saved)
        if caught is None:
            yield
            return
        with caught:
            os.dup2(caught.fileno(), 2)
            try:
                yield
            finally:
                _flush(sys.stderr)
                os.dup2(saved, 2)
                os.close(saved)
                caught.seek(0)
                kept = _SCOPE_LOG_LINE.sub(b"", caught.read())
                try:
                    while kept:
                        kept = kept[os.write(2, kept):]
                except OSError:   # stderr's reader went away
                    pass


def load_library(path: str):
    """dlopen an exported library (running its code) through the TVM runtime."""
    import tvm_ffi
    try:
        with without_scope_log():
            return tvm_ffi.load_module(os.path.abspath(path))
    except Exception as e:  # the FFI reports dlopen failures as RuntimeError or OSError
        message = str(e)
        missing = message.split(": cannot open shared object file")[0].rsplit(": ", 1)[-1]
        if "cannot open shared object file" in message:
            # e.g. libgraphopt_onednn.so for a model compiled with kernels="onednn"
            raise ModelFormatError(f"{path} needs {missing}, which the loader cannot find: put "
                                   "it beside the model or on LD_LIBRARY_PATH") from e
        raise ModelFormatError(f"{path} cannot be loaded: {message.strip().splitlines()[-1]}") from e


def load(path: str, device_id: int = 0, threads: int | None = None) -> LoadedModel:
    """Load a library written by `CompiledModel.export`; needs only the TVM runtime. CPU models
    run on `threads` threads (None: every core the process may run on)."""
    path = os.fspath(path)
    if not os.path.isfile(path):
        raise ModelFormatError(f"no such file: {path}")
    near = os.path.dirname(os.path.abspath(path))
    load_runtime("cpu", near)
    metadata, fatbin = read_export(path)
    device_kind = metadata["device"]
    if device_kind not in _DLPACK_DEVICE_TYPE:
        raise ModelFormatError(f"{path}: unknown device {device_kind!r}")
    load_runtime(device_kind, near)
    if device_kind == "cpu":
        check_cpu_features(metadata.get("cpu_features", []), path)
    import tvm_ffi
    if device_kind == "cuda" and "cuda_source_sha256" in metadata:   # else: no kernels
        if fatbin is None:
            raise ModelFormatError(f"{path}: a CUDA export without its embedded GPU binary")
        with serving_cuda_binary(fatbin, metadata["cuda_source_sha256"], path):
            library = load_library(path)
    else:
        library = load_library(path)
    devices = [_DLPACK_DEVICE_TYPE[device_kind], device_id, _POOLED_ALLOCATOR]
    if device_kind != "cpu":  # the VM keeps shapes and scalars on the host device
        devices += [_DLPACK_DEVICE_TYPE["cpu"], 0, _POOLED_ALLOCATOR]

    def new_vm():
        vm = library["vm_load_executable"]()
        vm["vm_initialization"](*devices)
        return vm

    return LoadedModel(path, metadata, new_vm, device_id, threads)
