"""oneDNN convolutions inside compiled CPU models: `go.compile(graph, "cpu", kernels="onednn")`.

`conv2d.cc` registers global packed functions (`graphopt.onednn.conv2d*`) that Relax calls
with `call_dps_packed`; `lowering.py` lowers the convolutions whose algorithm is "onednn" to
them. This module finds oneDNN (the optional extra `onednn`: the `onednn-cpu-gomp` wheels,
oneDNN 3.2 on the system's libgomp), builds the library once per source and toolchain into the
user cache, and loads it. `python -m graphopt.targets.tvm.onednn` builds it ahead of time
(`make` does).

oneDNN's OpenMP threads spin after each call by default and starve TVM's own pool, which runs
the other kernels (VGG-11 on two threads: 1.23x ORT spinning, 1.01x with
`OMP_WAIT_POLICY=PASSIVE`). libgomp reads that variable when it is loaded; graphopt leaves the
process environment to the caller, so set it before starting Python."""
from __future__ import annotations

import ctypes
import hashlib
import os
import shutil
import subprocess
from importlib import metadata
from pathlib import Path

from ....errors import GraphoptError
from ....files import atomic_output, write_text
from ..user_cache import user_cache_dir, warn_corrupt

SOURCE = Path(__file__).with_name("conv2d.cc")
LIBRARY = "libgraphopt_onednn.so"
DISTRIBUTIONS = ("onednn-cpu-gomp", "onednn-devel-cpu-gomp")
CACHE_ENV = "GRAPHOPT_ONEDNN_DIR"
FUNCTION_PREFIX = "graphopt.onednn."


class OneDnnUnavailableError(GraphoptError):
    """oneDNN, its headers or a C++ compiler is missing, or the kernel library failed to build
    or cannot be loaded."""


def _installed_file(distribution: str, name: str) -> Path:
    try:
        files = metadata.distribution(distribution).files or []
    except metadata.PackageNotFoundError:
        raise OneDnnUnavailableError(
            f"kernels='onednn' needs the Python package {distribution}: install graphopt's "
            "'onednn' extra (pip install -e '.[onednn]'; `make` does)") from None
    for f in files:
        if f.name == name:
            return Path(f.locate()).resolve()
    raise OneDnnUnavailableError(f"{distribution} is installed but holds no {name}")


def paths() -> dict[str, Path]:
    """oneDNN's header and library folders, and tvm_ffi's."""
    import tvm_ffi.libinfo
    return {"dnnl_include": _installed_file("onednn-devel-cpu-gomp", "dnnl.hpp").parent,
            "dnnl_lib": _installed_file("onednn-cpu-gomp", "libdnnl.so.3").parent,
            "ffi_include": Path(tvm_ffi.libinfo.find_include_path()),
            "ffi_lib": Path(tvm_ffi.libinfo.find_libtvm_ffi()).parent}


def available() -> bool:
    """Whether the oneDNN route can be built here (the wheels and a C++ compiler)."""
    try:
        paths()
    except OneDnnUnavailableError:
        return False
    return _compiler_found()


def _compiler_found() -> bool:
    return shutil.which(os.environ.get("CXX", "g++")) is not None


def compile_command(output: str) -> list[str]:
    p = paths()
    return [os.environ.get("CXX", "g++"), "-std=c++17", "-O2", "-shared", "-fPIC",
            f"-Wl,-soname,{LIBRARY}", str(SOURCE), "-o", output,
            f"-I{p['ffi_include']}", f"-I{p['dnnl_include']}",
            f"-L{p['dnnl_lib']}", f"-L{p['ffi_lib']}", "-ldnnl", "-ltvm_ffi", "-lgomp",
            # the wheels' lib/ is not on the loader's path
            f"-Wl,-rpath,{p['dnnl_lib']}:{p['ffi_lib']}"]


def cache_dir() -> Path:
    return user_cache_dir("onednn", CACHE_ENV)


def library_path() -> Path:
    """Where the library for this source and toolchain lives: the folder is named by a hash of
    the source and the compile command (which holds the absolute oneDNN and tvm_ffi paths), so
    each environment builds its own and an edited source rebuilds."""
    digest = hashlib.sha256(SOURCE.read_bytes())
    digest.update("\0".join(compile_command("<out>")).encode())
    return cache_dir() / digest.hexdigest()[:16] / LIBRARY


def build() -> Path:
    """Build the kernel library if the cache does not hold a sound one yet; returns its path.
    The library is built beside its final path and renamed into place, and its sha256 kept
    beside it: a library cut short or overwritten is found before loading (loading it could
    kill the process with SIGBUS), reported once, and rebuilt."""
    path = library_path()
    if _sound(path):
        return path
    if not _compiler_found():
        raise OneDnnUnavailableError("kernels='onednn' needs a C++ compiler (g++, or $CXX) to "
                                     f"build {SOURCE.name}")
    path.parent.mkdir(parents=True, exist_ok=True)
    if path.is_dir():
        shutil.rmtree(path)
    with atomic_output(path) as partial:
        result = subprocess.run(compile_command(partial), capture_output=True, text=True)
        if result.returncode != 0:
            raise OneDnnUnavailableError(f"building {SOURCE.name} failed:\n"
                                         f"{result.stderr.strip()[-3000:]}")
        digest = _sha256(partial)
    write_text(_checksum_path(path), digest + "\n")
    return path


def _checksum_path(library: Path) -> Path:
    return library.with_name(library.name + ".sha256")


def _sha256(path) -> str:
    return hashlib.sha256(Path(path).read_bytes()).hexdigest()


def _sound(path: Path) -> bool:
    """Whether the cached library at `path` is the one built there (its checksum matches); a
    damaged one is reported."""
    if not path.exists():
        return False
    checksum = _checksum_path(path)
    try:
        if not path.is_file():
            problem = "is not a file"
        elif not checksum.is_file():
            problem = "has no checksum beside it (a build cut short, or an older graphopt's)"
        elif _sha256(path) != checksum.read_text().strip():
            problem = "does not match its checksum from the build (truncated or overwritten)"
        else:
            problem = None
    except OSError as e:
        problem = f"is unreadable ({e.strerror})"
    if problem is None:
        return True
    warn_corrupt(path, problem, "rebuilding it")
    return False


_loaded: dict[str, ctypes.CDLL] = {}


def load() -> Path:
    """Build (if needed) and load the kernel library, which registers its packed functions."""
    path = build()
    if _loaded and str(path) not in _loaded:
        # Both builds register the same global function names: TVM would abort the process.
        raise OneDnnUnavailableError(
            f"another build of the oneDNN kernel library ({next(iter(_loaded))}) is already "
            f"loaded in this process, so {path} cannot be; restart Python to use the new one")
    if str(path) not in _loaded:
        import tvm_ffi  # noqa: F401  (libtvm_ffi.so first: the library links against it)
        try:
            _loaded[str(path)] = ctypes.CDLL(str(path), mode=ctypes.RTLD_GLOBAL)
        except OSError as e:
            raise OneDnnUnavailableError(f"cannot load the oneDNN kernel library {path}: "
                                         f"{e}") from None
    return path


def export_link_options() -> list[str]:
    """Linker options that make an exported model need (and find) the kernel library: it is
    loaded with the model, so `go.load` needs no graphopt code to register the functions.
    --no-as-needed: the model never references a symbol of it, only its registrations."""
    folder = build().parent
    return ["-Wl,--no-as-needed", f"-L{folder}", f"-l:{LIBRARY}",
            f"-Wl,-rpath,$ORIGIN:{folder}", "-Wl,--as-needed"]

