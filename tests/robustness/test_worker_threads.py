"""Threads running native work are waited for even when a signal's exception comes: raised
before they end, interpreter exit would go on while one is inside a TVM call and the process
abort in C++ (a SIGTERM during a two-part export did, now and then). The end-to-end check is
`test_damaged_libraries.py::test_sigterm_during_export_leaves_nothing_behind`."""
import os
import signal
import threading
import time

import pytest

from graphopt.worker_threads import in_threads, map_in_threads


def slow(seconds: float, ended: list, value):
    def task():
        time.sleep(seconds)     # the lock released, as in a TVM call
        ended.append(value)
        return value
    return task


def test_in_threads_returns_the_results_in_order():
    ended: list = []
    assert in_threads([slow(0.2, ended, "a"), slow(0.0, ended, "b"), lambda: 3]) == ["a", "b", 3]
    assert sorted(ended) == ["a", "b"]
    assert in_threads([]) == []


def test_in_threads_raises_the_first_error_after_every_thread_ended():
    ended: list = []

    def fails():
        raise ValueError("part failed")

    with pytest.raises(ValueError, match="part failed"):
        in_threads([fails, slow(0.3, ended, "other")])
    assert ended == ["other"]


def test_in_threads_names_its_threads():
    names = in_threads([lambda: threading.current_thread().name] * 3, "graphopt-build")
    assert names[1:] == ["graphopt-build-1", "graphopt-build-2"]
    assert names[0] == threading.current_thread().name


@pytest.mark.parametrize("when", ["in the calling thread's task", "while waiting"])
def test_a_signal_is_raised_after_every_thread_ended(interruptible, when):
    """Ctrl-C during the calling thread's own task, or while it waits for the others: the
    KeyboardInterrupt comes once the other thread has ended, not before."""
    ended: list = []

    def own_task():
        if when == "in the calling thread's task":
            os.kill(os.getpid(), signal.SIGINT)
            time.sleep(0.05)
        else:
            threading.Timer(0.1, os.kill, (os.getpid(), signal.SIGINT)).start()

    with pytest.raises(KeyboardInterrupt):
        in_threads([own_task, slow(0.6, ended, "worker")])
    assert ended == ["worker"]
    assert [t.name for t in threading.enumerate() if t.name.startswith("graphopt-")] == []
    assert signal.getsignal(signal.SIGINT) is signal.default_int_handler


def test_map_in_threads_maps_in_order_and_waits_through_a_signal(interruptible):
    assert map_in_threads(lambda x: x * x, range(7), 3) == [0, 1, 4, 9, 16, 25, 36]
    assert map_in_threads(lambda x: x, [], 2) == []
    ended: list = []
    threading.Timer(0.1, os.kill, (os.getpid(), signal.SIGINT)).start()
    with pytest.raises(KeyboardInterrupt):
        map_in_threads(lambda x: slow(0.4, ended, x)(), range(4), 2)
    assert sorted(ended) == [0, 1, 2, 3]
