"""Progress of long steps (graphopt.progress, tqdm): bars on a terminal, nothing but one line per
step where stderr is a file or a pipe. The command line is run with stderr on a pseudo-terminal
to see what a user sees."""
from __future__ import annotations

import fcntl
import io
import os
import pty
import struct
import subprocess
import sys
import termios
import time

import numpy as np
import pytest

from graphopt import progress


class Terminal(io.StringIO):
    def isatty(self) -> bool:
        return True


@pytest.mark.parametrize("stream, drawn", [(Terminal(), True), (io.StringIO(), False)])
def test_bars_are_drawn_only_on_a_terminal(stream, drawn, monkeypatch):
    monkeypatch.setattr(sys, "stderr", stream)
    with progress.bar(3, "calibrating", "batch", mininterval=0) as shown:
        for _ in range(3):
            shown.update()
    with progress.clock("compiling", interval=0.05) as shown:
        time.sleep(0.2)
        shown.set_description_str("compiling: linking")
    text = stream.getvalue()
    assert ("calibrating" in text and "3/3" in text and "compiling: linking" in text) == drawn
    assert (text == "") == (not drawn)


def test_quiet_draws_nothing_even_on_a_terminal(monkeypatch):
    monkeypatch.setattr(sys, "stderr", Terminal())
    with progress.bar(2, "calibrating", quiet=True) as shown:
        shown.update(2)
    with progress.clock("compiling", quiet=True, interval=0.01):
        time.sleep(0.05)
    assert sys.stderr.getvalue() == ""


def run_on_a_terminal(args: list[str], cwd) -> tuple[int, str]:
    """`graphopt ARGS` with stderr on a pseudo-terminal: (exit code, what the terminal got)."""
    script = os.path.join(os.path.dirname(sys.executable), "graphopt")
    command = [script] if os.path.exists(script) else [sys.executable, "-m", "graphopt"]
    leader, follower = pty.openpty()
    fcntl.ioctl(follower, termios.TIOCSWINSZ, struct.pack("HHHH", 24, 100, 0, 0))  # 100 columns
    done = subprocess.Popen(command + args, stdout=subprocess.DEVNULL, stderr=follower, cwd=cwd)
    os.close(follower)
    received = b""
    while True:
        try:
            chunk = os.read(leader, 4096)
        except OSError:         # the command closed its end
            break
        if not chunk:
            break
        received += chunk
    os.close(leader)
    return done.wait(timeout=300), received.decode(errors="replace")


def test_calibration_shows_a_bar_on_a_terminal_and_one_line_in_a_pipe(tmp_path):
    rng = np.random.default_rng(0)
    np.savez(tmp_path / "calib.npz", input=rng.standard_normal((6, 1, 32, 32), np.float32))
    args = ["quantize", "lenet5", "--calib", "calib.npz", "-o", "lenet5_int8.onnx"]
    code, seen = run_on_a_terminal(args, tmp_path)
    assert code == 0, seen
    assert "calibrating (minmax):" in seen and "0/6 [" in seen     # the bar, drawn at once
    assert "calibrating (minmax) ... done in" in seen      # and the step's line when it ends
    piped = subprocess.run([sys.executable, "-m", "graphopt"] + args, capture_output=True,
                           text=True, cwd=tmp_path, timeout=300)
    assert piped.returncode == 0, piped.stderr
    assert "calibrating (minmax) ... done in" in piped.stderr
    assert "\r" not in piped.stderr and "/6 [" not in piped.stderr
