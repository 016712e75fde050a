"""`CompileOptions`: everything a compile may be told, in one frozen object passed down
explicitly. Nothing in the TVM target reads environment variables or changes process-wide
settings on its own; what is not given here has a documented default."""
from __future__ import annotations

import os
from dataclasses import dataclass, fields, replace
from pathlib import Path

from ...errors import GraphoptError
from ...runtime import available_cores

# Who computes the convolutions on the CPU: graphopt's TVM schedules, or oneDNN.
KERNELS = ("tvm", "onednn")
WEIGHTS = ("embedded", "params")
# `tuning="user"`: the records `graphopt tune` keeps in the user's cache folder.
USER_TUNING = "user"


@dataclass(frozen=True)
class CompileOptions:
    """How `go.compile` builds a model.

    passes:   graphopt graph passes run before lowering (names or pass functions, or one str of
              comma-separated names); None: the default pipeline; () runs none.
    target_passes: then run the target's own passes (default True): they decide how the
              target computes each node (conv algorithm and weight layout, separable pooling);
              without them every node lowers to its plain form, correct but unscheduled.
    mcpu:     the LLVM CPU to compile for ("haswell", "skylake-avx512", ...); None: this host.
              The vector width the schedule rules use follows from it.
    threads:  threads a compiled model runs on; None: every core the process may run on.
    build_threads: threads that schedule and build a CPU model's kernels
              (`schedules/dispatch.py`, `parallel_build.py`); None: every core the process may
              run on; 1: one thread and one module, as TVM builds it.
    tuning:   a folder of MetaSchedule records from `graphopt tune`, "user" for the user's
              cache folder, or None (default): no tuning records are read.
    kernels:  "tvm" (graphopt's schedules) or "onednn" (CPU convolutions through oneDNN).
    weights:  "embedded" (constants in the library) or "params" (bound at load time).
    bounds_check: instrument every kernel with TVM's buffer bounds checks (a test mode: an
              out-of-bounds access raises instead of corrupting memory), and keep TVM's
              checks of each kernel's arguments (`tir_lowering.py`).
    """

    passes: tuple | None = None
    target_passes: bool = True
    mcpu: str | None = None
    threads: int | None = None
    build_threads: int | None = None
    tuning: str | os.PathLike | None = None
    kernels: str = "tvm"
    weights: str = "embedded"
    bounds_check: bool = False

    def __post_init__(self):
        if self.passes is not None and not isinstance(self.passes, tuple):
            from ...passes.manager import pass_list     # a str: comma-separated pass names
            object.__setattr__(self, "passes", tuple(pass_list(self.passes)))
        if self.kernels not in KERNELS:
            raise GraphoptError(f"kernels must be one of {', '.join(map(repr, KERNELS))}, "
                                f"found {self.kernels!r}")
        if self.weights not in WEIGHTS:
            raise GraphoptError(f"weights must be 'embedded' or 'params', found {self.weights!r}")
        for name in ("threads", "build_threads"):
            value = getattr(self, name)
            if value is not None and (not isinstance(value, int) or value < 1):
                raise GraphoptError(f"{name} must be a positive int or None, found {value!r}")

    @classmethod
    def of(cls, options: "CompileOptions | None" = None, **overrides) -> "CompileOptions":
        """`options` (or the defaults) with `overrides` applied; unknown names are refused."""
        known = {f.name for f in fields(cls)}
        unknown = sorted(set(overrides) - known)
        if unknown:
            raise GraphoptError(f"unknown compile option(s) {', '.join(unknown)}; expected "
                                f"{', '.join(sorted(known))}")
        return replace(options or cls(), **overrides)

    @property
    def thread_count(self) -> int:
        return self.threads or available_cores()

    @property
    def build_thread_count(self) -> int:
        return self.build_threads or available_cores()

    def tuning_dir(self) -> Path | None:
        """The tuning database folder root this compile reads, or None."""
        if self.tuning is None:
            return None
        if str(self.tuning) == USER_TUNING:
            from .tuning_database import cache_root
            return cache_root()
        return Path(self.tuning)
