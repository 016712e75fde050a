"""Run a benchmark as on a CPU without AVX-512 (--as-avx2): the peers' AVX2 kernels, timed on
an AVX-512 host beside graphopt's AVX2 build.

ONNX Runtime, numpy's BLAS, torch's oneDNN and LLVM pick their kernels from what CPUID says.
`cpuid_mask.c`, preloaded into the benchmark's process, makes CPUID answer without AVX-512,
AVX-VNNI and AMX (Linux's CPUID faulting: `cpuid_fault` in /proc/cpuinfo). So ORT runs its
AVX2 kernels (int8: `vpmaddubsw`), and graphopt's host build, whose target comes from LLVM's
host features, is its AVX2 build, on the same cores. The cores still have AVX-512: an AVX2-only
CPU of another design (Zen 3, Haswell) has other latencies and caches, so these numbers say
how graphopt's AVX2 code compares with ORT's, not what such a CPU measures.

`--as-avx-vnni` (int8 benchmarks, on a host with AVX-VNNI) keeps AVX-VNNI visible: a CPU with
256-bit `vpdpbusd` and no AVX-512, like Alder Lake or Sierra Forest. ORT then runs its AVX-VNNI
int8 kernels and graphopt builds its AVX-VNNI code.

    python benchmarks/lowbit_latency.py --as-avx2 --models vgg11:1
    python benchmarks/lowbit_latency.py --as-avx-vnni --models resnet18:1
    python benchmarks/model_zoo.py --as-avx2 --threads 1
"""
from __future__ import annotations

import ctypes
import functools
import os
import pathlib
import subprocess
import sys

SOURCE = pathlib.Path(__file__).with_name("cpuid_mask.c")
LIBRARY = pathlib.Path(__file__).resolve().parents[1] / "build" / "cpuid_mask" / \
    "libcpuid_mask.so"
MARKER = "GRAPHOPT_AS_AVX2"     # "1", or "avx_vnni" where AVX-VNNI stays visible
KEEP_AVX_VNNI = "avx_vnni"
# What cpuid_mask.c hides, as /proc/cpuinfo names the flags.
HIDDEN_FLAGS = frozenset({
    "avx512f", "avx512dq", "avx512ifma", "avx512pf", "avx512er", "avx512cd", "avx512bw",
    "avx512vl", "avx512vbmi", "avx512_vbmi2", "avx512_vnni", "avx512_bitalg",
    "avx512_vpopcntdq", "avx512_vp2intersect", "amx_bf16", "avx512_fp16", "amx_tile",
    "amx_int8", "avx_vnni", "avx512_bf16"})


def build_library(library: pathlib.Path = LIBRARY) -> pathlib.Path:
    """cpuid_mask.c compiled (with `cc`, or $CC) to `library`, again where the source is
    newer."""
    if not library.exists() or library.stat().st_mtime < SOURCE.stat().st_mtime:
        library.parent.mkdir(parents=True, exist_ok=True)
        compiler = os.environ.get("CC", "cc")
        try:
            subprocess.run([compiler, "-O2", "-shared", "-fPIC", "-o", str(library),
                            str(SOURCE), "-ldl"], check=True)
        except (OSError, subprocess.CalledProcessError) as error:
            sys.exit(f"--as-avx2: could not compile {SOURCE.name} with {compiler!r}: {error}")
    return library


def reexec(keep_avx_vnni: bool = False) -> None:
    """Start this script again in a process whose CPUID hides AVX-512 (returns in that
    process), and AVX-VNNI unless `keep_avx_vnni`. Exits with the reason where the host
    cannot: no Linux CPUID faulting, no AVX2 (no AVX-VNNI to keep)."""
    if active():
        return
    from graphopt.runtime import host_cpu_flags   # /proc/cpuinfo: what the CPU has, hidden or not
    flags = host_cpu_flags() or frozenset()
    name = "--as-avx-vnni" if keep_avx_vnni else "--as-avx2"
    if "avx2" not in flags:
        sys.exit(f"{name}: this CPU has no AVX2")
    if keep_avx_vnni and "avx_vnni" not in flags:
        sys.exit(f"{name}: this CPU has no AVX-VNNI")
    if "cpuid_fault" not in flags:
        sys.exit(f"{name}: this CPU or its hypervisor cannot make CPUID fault (no "
                 "'cpuid_fault' in /proc/cpuinfo), which hiding AVX-512 from libraries needs")
    library = build_library()
    env = dict(os.environ, **{MARKER: KEEP_AVX_VNNI if keep_avx_vnni else "1"})
    env["LD_PRELOAD"] = " ".join(filter(None, [str(library), env.get("LD_PRELOAD")]))
    sys.stdout.flush()
    os.execve(sys.executable, [sys.executable, *sys.argv], env)


@functools.cache   # fixed for the process's life
def active() -> bool:
    """Whether CPUID hides AVX-512 in this process."""
    if not os.environ.get(MARKER):
        return False
    # The preloaded library's symbols are in the process's global scope: no second copy.
    check = getattr(ctypes.CDLL(None), "cpuid_mask_active", None)
    if check is None:
        sys.exit(f"--as-avx2: {MARKER} is set but cpuid_mask.c is not preloaded")
    if not check():
        sys.exit("--as-avx2: Linux refused to make CPUID fault (arch_prctl ARCH_SET_CPUID)")
    return True


def hidden_flags() -> frozenset[str]:
    """The CPU flags hidden from this process (none unless --as-avx2 or --as-avx-vnni started
    it)."""
    if not active():
        return frozenset()
    return HIDDEN_FLAGS - ({"avx_vnni"} if os.environ[MARKER] == KEEP_AVX_VNNI else set())


def option() -> str:
    """The command-line option this process was started with: --as-avx2, --as-avx-vnni, or
    "" where CPUID hides nothing."""
    hidden = hidden_flags()
    if not hidden:
        return ""
    return "--as-avx2" if "avx_vnni" in hidden else "--as-avx-vnni"
