"""examples/custom_model.py runs end to end: its own DSL network is interpreted, compiled for the
CPU, and the compare report it exits with is ok."""
from __future__ import annotations

import pathlib
import subprocess
import sys

EXAMPLE = pathlib.Path(__file__).resolve().parents[1] / "examples" / "custom_model.py"


def test_custom_model_example_compiles_and_matches_the_reference():
    done = subprocess.run([sys.executable, str(EXAMPLE), "--batch", "2", "--classes", "5"],
                          capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stdout + done.stderr
    assert "all outputs ok" in done.stdout
    assert "float32[2,5]" in done.stdout     # the summary's output row: batch 2, 5 classes
