"""benchmarks/as_avx2.py: a process whose CPUID hides AVX-512 (what --as-avx2 times ORT's and
graphopt's AVX2 kernels with), and whose own crash handlers still see its crashes."""
from __future__ import annotations

import os
import pathlib
import platform
import shutil
import subprocess
import sys
import textwrap

import pytest

from graphopt.runtime import host_cpu_flags

sys.path.insert(0, str(pathlib.Path(__file__).resolve().parents[1] / "benchmarks"))
import as_avx2  # noqa: E402

FLAGS = host_cpu_flags() or frozenset()
pytestmark = [
    pytest.mark.skipif(platform.machine() != "x86_64", reason="x86 CPUID"),
    pytest.mark.skipif("cpuid_fault" not in FLAGS,
                       reason="this CPU or hypervisor has no CPUID faulting"),
    pytest.mark.skipif("avx512f" not in FLAGS, reason="no AVX-512 to hide"),
    pytest.mark.skipif(shutil.which(os.environ.get("CC", "cc")) is None, reason="no C compiler"),
]


def run_preloaded(tmp_path, code: str, mode: str = "1") -> subprocess.CompletedProcess:
    library = as_avx2.build_library(tmp_path / "libcpuid_mask.so")
    env = dict(os.environ, LD_PRELOAD=str(library), **{as_avx2.MARKER: mode})
    return subprocess.run([sys.executable, "-c", textwrap.dedent(code)], env=env,
                          capture_output=True, text=True, timeout=120)


def test_libraries_see_the_cpu_without_avx512(tmp_path):
    """LLVM's host features (CPUID) lose AVX-512 and VNNI, keep AVX2 and FMA, also in threads
    started later and after a crash handler was installed (faulthandler's SIGSEGV)."""
    result = run_preloaded(tmp_path, """
        import faulthandler, threading
        faulthandler.enable()
        import tvm, tvm_ffi
        features = tvm_ffi.get_global_func("tvm.codegen.llvm.GetHostCPUFeatures")
        seen = []
        thread = threading.Thread(target=lambda: seen.append(dict(features())))
        thread.start(); thread.join()
        for found in (dict(features()), seen[0]):
            print(*(f"{f}={int(found.get(f, False))}" for f in
                    ("avx2", "fma", "avx512f", "avx512bw", "avx512vnni")))
        import ctypes, os
        mask = ctypes.CDLL(os.environ["LD_PRELOAD"])
        mask.cpuid_mask_faults.restype = ctypes.c_ulong
        print(mask.cpuid_mask_active(), mask.cpuid_mask_faults() > 0)
        """)
    assert result.returncode == 0, result.stderr
    assert result.stdout.splitlines() == \
        ["avx2=1 fma=1 avx512f=0 avx512bw=0 avx512vnni=0"] * 2 + ["1 True"]


FEATURES = """
    import tvm, tvm_ffi
    found = dict(tvm_ffi.get_global_func("tvm.codegen.llvm.GetHostCPUFeatures")())
    print(*(f"{f}={int(found.get(f, False))}" for f in
            ("avx2", "avx512f", "avx512vnni", "avxvnni", "avx512bf16")))
    """


@pytest.mark.skipif("avx_vnni" not in FLAGS, reason="no AVX-VNNI to keep")
@pytest.mark.parametrize("mode, avx_vnni", [("1", 0), (as_avx2.KEEP_AVX_VNNI, 1)])
def test_avx_vnni_stays_visible_only_where_asked(tmp_path, mode, avx_vnni):
    """--as-avx-vnni keeps AVX-VNNI (256-bit vpdpbusd) and still hides AVX-512's VNNI and
    BF16; --as-avx2 hides all three."""
    result = run_preloaded(tmp_path, FEATURES, mode)
    assert result.returncode == 0, result.stderr
    assert result.stdout.split() == \
        ["avx2=1", "avx512f=0", "avx512vnni=0", f"avxvnni={avx_vnni}", "avx512bf16=0"]


def test_other_segfaults_reach_the_program_s_handler(tmp_path):
    """A real crash still reaches the handler the program installed (faulthandler's report)
    and ends the process with SIGSEGV."""
    result = run_preloaded(tmp_path, """
        import ctypes, faulthandler
        faulthandler.enable()
        ctypes.string_at(0)
        """)
    assert result.returncode == -11
    assert "Segmentation fault" in result.stderr
