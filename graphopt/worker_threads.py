"""Native work (LLVM, TVM's schedule primitives) run in threads of this process, waited for so
that no signal leaves one running into interpreter exit.

CPython 3.11's `Thread.join()`, interrupted by a signal handler's exception (Ctrl-C's
KeyboardInterrupt, SIGTERM's `files.Terminated`), releases the still-running thread's state lock
and marks it stopped (`threading._wait_for_tstate_lock`, bpo-45274), so a second `join` (in a
`finally`) returns at once. Interpreter exit then goes on while the thread is inside a TVM
call; when the call returns, CPython ends the thread with `pthread_exit`, whose unwinding
through TVM's FFI frames calls `std::terminate`: a SIGTERM during the export of LeNet-5 built in
two parts aborted the process ("terminate called without an active exception", status -6)
instead of ending it with status 143 in 2 of 24 tries. So SIGTERM and SIGINT are deferred
(`files.signals_deferred`) until every thread has ended, and then handled (which also keeps an
export's clean-up from removing its scratch folder while a thread still writes into it): the
wait is at most the other threads' share of the work, as the calling thread's own native call
delays a handler anyway."""
from __future__ import annotations

import threading
from concurrent.futures import ThreadPoolExecutor
from typing import Callable, Iterable, Sequence, TypeVar

from .files import signals_deferred

T = TypeVar("T")


def in_threads(tasks: Sequence[Callable[[], T]], name: str = "graphopt-worker") -> list[T]:
    """Each of `tasks` in a thread of its own (`name`-1, `name`-2, ...), the first in the
    calling thread; their results in order. The first error, or a signal's exception that came
    meanwhile, is raised after every thread has ended."""
    if not tasks:
        return []
    results: list = [None] * len(tasks)
    errors: list = [None] * len(tasks)

    def run(i: int) -> None:
        try:
            results[i] = tasks[i]()
        except Exception as e:    # noqa: BLE001 - re-raised in the calling thread below
            errors[i] = e

    with signals_deferred():
        workers = [threading.Thread(target=run, args=(i,), name=f"{name}-{i}")
                   for i in range(1, len(tasks))]
        for worker in workers:
            worker.start()
        run(0)
        for worker in workers:
            worker.join()
    for error in errors:
        if error is not None:
            raise error
    return results


def map_in_threads(func: Callable[..., T], items: Iterable, threads: int,
                   name: str = "graphopt-worker") -> list[T]:
    """[func(item) for item in items] in `threads` threads, each taking the next item not yet
    taken (a pool's map); the first error, or a signal's exception that came meanwhile, is
    raised after every thread has ended."""
    items = list(items)
    with signals_deferred(), \
            ThreadPoolExecutor(max(1, min(threads, len(items))), thread_name_prefix=name) as pool:
        return list(pool.map(func, items))
