"""Progress of long steps on stderr, drawn by tqdm only where stderr is a terminal: a log, a pipe
or CI gets no bars and no carriage returns. Used for calibration batches, sensitivity layers,
tuning trials, the steps of a report, and a running clock while one long call (TVM compiling a
big model) says nothing."""
from __future__ import annotations

import sys
import threading
from contextlib import contextmanager
from typing import Iterator


def on_terminal(stream=None) -> bool:
    """Whether `stream` (default: stderr) is a terminal."""
    stream = sys.stderr if stream is None else stream
    try:
        return stream.isatty()
    except (AttributeError, ValueError):    # replaced by a non-file, or closed
        return False


def bar(total: int | None, description: str, unit: str = "it", *, quiet: bool = False,
        **options):
    """A tqdm bar on stderr (a context manager; `.update(n)`, `.set_description_str(text)`),
    disabled when `quiet` or when stderr is not a terminal; it clears its line when closed."""
    from tqdm import tqdm
    return tqdm(total=total, desc=description, unit=unit, file=sys.stderr, leave=False,
                dynamic_ncols=True, disable=quiet or not on_terminal(), **options)


@contextmanager
def clock(description: str, *, quiet: bool = False, interval: float = 0.5) -> Iterator:
    """While inside, one line with `description` and the time elapsed, redrawn every `interval`
    seconds (the bar is yielded: its description may change as the work goes on)."""
    with bar(None, description, quiet=quiet, bar_format="{desc} {elapsed}") as shown:
        if shown.disable:
            yield shown
            return
        stop = threading.Event()

        def tick() -> None:
            while not stop.wait(interval):
                shown.refresh()
        ticker = threading.Thread(target=tick, name="graphopt-progress", daemon=True)
        ticker.start()
        try:
            yield shown
        finally:
            stop.set()
            ticker.join()
