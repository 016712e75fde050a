"""The CPU (LLVM) target: the host's real CPU model and the Relax pipeline used for it."""
from __future__ import annotations

import os


def host_target():
    """An LLVM target for this machine's CPU (its real `mcpu`, so AVX-512 is used where present)
    with `num-cores`, which MetaSchedule needs."""
    from tvm.target import Target
    config = dict(Target.from_device("cpu").export())
    keep = {k: config[k] for k in ("kind", "mtriple", "mcpu") if config.get(k)}
    keep["num-cores"] = physical_cores()
    return Target(keep)


def physical_cores() -> int:
    try:
        import psutil
        return psutil.cpu_count(logical=False) or os.cpu_count() or 1
    except ImportError:
        return os.cpu_count() or 1


def cpu_pipeline(target):
    """Legalize, fold constants and fuse elementwise epilogues into their producers, then lower."""
    from tvm import relax
    return relax.get_default_pipeline(target)
