"""The wheel: a non-editable install carries every file graphopt reads at run time, not only its
Python modules (the oneDNN kernel source is compiled on first use of kernels="onednn")."""
from __future__ import annotations

import shutil
import subprocess
import sys
import zipfile
from pathlib import Path

import graphopt

ROOT = Path(__file__).resolve().parent.parent
BUILD_LEFTOVERS = shutil.ignore_patterns("__pycache__", "*.pyc", "*.so")


def test_wheel_holds_every_package_file(tmp_path):
    # Built from a copy: building in the checkout would write build/ and *.egg-info into it.
    source = tmp_path / "source"
    shutil.copytree(ROOT / "graphopt", source / "graphopt", ignore=BUILD_LEFTOVERS)
    for name in ("pyproject.toml", "README.md"):
        shutil.copy(ROOT / name, source / name)
    built = subprocess.run([sys.executable, "-m", "pip", "wheel", str(source), "--no-deps",
                            "--no-build-isolation", "--no-index", "-q", "-w", str(tmp_path)],
                           capture_output=True, text=True, timeout=300)
    assert built.returncode == 0, built.stdout + built.stderr
    wheel, = tmp_path.glob("graphopt-*.whl")
    assert wheel.name.startswith(f"graphopt-{graphopt.__version__}-")   # one source: __init__.py
    in_wheel = set(zipfile.ZipFile(wheel).namelist())
    expected = {path.relative_to(source).as_posix()
                for path in (source / "graphopt").rglob("*") if path.is_file()}
    assert "graphopt/targets/tvm/onednn/conv2d.cc" in expected
    assert expected - in_wheel == set()
