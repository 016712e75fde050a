"""The wheel: a non-editable install carries every file graphopt reads at run time, not only its
Python modules (the oneDNN kernel source is compiled on first use of kernels="onednn")."""
from __future__ import annotations

import email.parser
import shutil
import subprocess
import sys
import zipfile
from pathlib import Path

import pytest

import graphopt

ROOT = Path(__file__).resolve().parent.parent
BUILD_LEFTOVERS = shutil.ignore_patterns("__pycache__", "*.pyc", "*.so")


def test_wheel_holds_every_package_file(tmp_path):
    # Built from a copy: building in the checkout would write build/ and *.egg-info into it.
    source = tmp_path / "source"
    shutil.copytree(ROOT / "graphopt", source / "graphopt", ignore=BUILD_LEFTOVERS)
    for name in ("pyproject.toml", "README.md", "LICENSE"):
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
    assert "graphopt/py.typed" in expected      # PEP 561: typed
    assert expected - in_wheel == set()
    metadata = email.parser.Parser().parsestr(zipfile.ZipFile(wheel).read(
        f"graphopt-{graphopt.__version__}.dist-info/METADATA").decode())
    assert metadata["License-Expression"] == "Apache-2.0"
    assert metadata["License-File"] == "LICENSE" and metadata["Author"]
    classifiers = metadata.get_all("Classifier")
    assert "Typing :: Typed" in classifiers and "Programming Language :: Python :: 3" in classifiers
    assert any(name.endswith("licenses/LICENSE") for name in in_wheel)


def test_compile_optimize_and_compare_show_their_keyword_arguments():
    """help(go.compile) and inspect.signature show the options **overrides takes, not
    `**overrides`; go.optimize and go.compare those of the functions they call."""
    import dataclasses
    import inspect
    import pydoc
    from graphopt.compare import compare
    from graphopt.passes import optimize
    from graphopt.targets.tvm.options import CompileOptions
    compile_keywords = inspect.signature(graphopt.compile).parameters
    for option in dataclasses.fields(CompileOptions):
        assert compile_keywords[option.name].kind is inspect.Parameter.KEYWORD_ONLY
        assert compile_keywords[option.name].default == option.default
    assert list(compile_keywords)[:3] == ["graph", "target", "options"]
    assert inspect.signature(graphopt.optimize) == inspect.signature(optimize)
    assert inspect.signature(graphopt.compare) == inspect.signature(compare)
    for function, keyword in ((graphopt.compile, "mcpu: 'str | None' = None"),
                              (graphopt.optimize, "check: 'bool' = False"),
                              (graphopt.compare, "per_layer: 'bool' = False")):
        assert keyword in pydoc.render_doc(function, renderer=pydoc.plaintext)


@pytest.mark.skipif(shutil.which("make") is None, reason="make is not installed")
def test_make_demo_installs_no_test_only_dependencies():
    """`make -n -B` prints what each target would run (everything out of date), runs nothing."""
    def installs(target: str) -> list[str]:
        done = subprocess.run(["make", "-n", "-B", target], cwd=ROOT, capture_output=True,
                              text=True, timeout=60)
        assert done.returncode == 0, done.stderr
        return [line for line in done.stdout.splitlines() if "pip install" in line and "-e" in line]
    demo, test = installs("demo"), installs("test")
    assert demo and not any("test" in line for line in demo)
    assert all("report" in line and "view" in line for line in demo)   # the extras it shows
    assert any(".[test," in line for line in test)
