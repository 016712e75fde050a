"""Wall-clock latency of a callable: the median of repeated runs after warm-up, in ms."""
from __future__ import annotations

import time
from typing import Callable

import numpy as np


def median_ms(run: Callable[[], object], repeat: int, warmup: int = 1) -> float:
    for _ in range(warmup):
        run()
    times = []
    for _ in range(repeat):
        start = time.perf_counter()
        run()
        times.append(time.perf_counter() - start)
    return 1e3 * float(np.median(times))
