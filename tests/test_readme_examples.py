"""The README's ```python examples run as written, one after the other in a fresh folder: every
name and file they use comes from a line before them (theirs or an earlier block's)."""
from __future__ import annotations

import builtins
import re
import shutil
import symtable
from pathlib import Path

import pytest

README = Path(__file__).resolve().parent.parent / "README.md"


def python_blocks() -> list[tuple[int, str]]:
    """(line of the block's first statement, source) of each ```python block, in order."""
    text = README.read_text()
    return [(text.count("\n", 0, m.start(1)) + 1, m.group(1))
            for m in re.finditer(r"^```python\n(.*?)^```", text, re.S | re.M)]


def names(source: str) -> tuple[set[str], set[str]]:
    """(names the block binds at module level, module-level names it reads, in functions too)."""
    bound, read = set(), set()

    def visit(table: symtable.SymbolTable) -> None:
        for symbol in table.get_symbols():
            if table.get_type() == "module":
                if symbol.is_assigned() or symbol.is_imported():
                    bound.add(symbol.get_name())
                if symbol.is_referenced():
                    read.add(symbol.get_name())
            elif symbol.is_global() and symbol.is_referenced():
                read.add(symbol.get_name())
        for child in table.get_children():
            visit(child)
    visit(symtable.symtable(source, "README.md", "exec"))
    return bound, read


def test_the_readme_has_its_examples():
    blocks = python_blocks()
    assert len(blocks) >= 5
    assert any("def my_pass" in source for _, source in blocks)    # the "Write a pass" example


def test_every_name_a_block_reads_is_defined_before_it():
    defined = set(dir(builtins))
    for line, source in python_blocks():
        bound, read = names(source)
        undefined = read - defined - bound
        assert not undefined, f"README.md:{line}: the block reads {sorted(undefined)}, which no " \
                              f"line before it defines"
        defined |= bound


@pytest.mark.slow       # compiles ResNet-18 for the CPU twice and for CUDA: about 40 s
@pytest.mark.skipif(shutil.which("nvcc") is None, reason="nvcc is not installed: the README "
                    "compiles for CUDA")
def test_the_blocks_run_in_order_in_a_fresh_folder(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    namespace: dict = {"__name__": "readme"}
    for line, source in python_blocks():
        # padded so that a traceback shows the README's own line numbers
        exec(compile("\n" * (line - 1) + source, str(README), "exec"), namespace)
    assert {"resnet18.onnx", "googlenet.onnx", "resnet18_cpu.so", "x.npy"} <= \
        {p.name for p in tmp_path.iterdir()}
    assert namespace["go"].compare(namespace["t"], namespace["res"].graph,
                                   namespace["probe"]).ok


def test_the_write_a_pass_example_runs_as_written(tmp_path, monkeypatch):
    """The "Write a pass" section's block, after the block defining `tiny` it builds on (fast:
    the default suite runs it; the slow test above runs every block)."""
    import numpy as np
    import graphopt as go
    monkeypatch.chdir(tmp_path)
    blocks = python_blocks()
    namespace: dict = {"__name__": "readme", "np": np, "go": go}
    for line, source in (next(b for b in blocks if "def tiny" in b[1]),
                         next(b for b in blocks if "def my_pass" in b[1])):
        exec(compile("\n" * (line - 1) + source, str(README), "exec"), namespace)
    report = namespace["res"].report
    assert "my_pass" in str(report)
    assert [n.op_name for n in namespace["res"].graph.nodes].index("max_pool2d") < \
        [n.op_name for n in namespace["res"].graph.nodes].index("relu")      # rewritten
    assert go.compare(namespace["t"], namespace["m"], namespace["probe"]).ok
    source = next(b for b in blocks if "def my_pass" in b[1])[1]
    assert len(source.strip().splitlines()) <= 25       # a short example
