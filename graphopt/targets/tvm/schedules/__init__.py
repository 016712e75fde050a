"""Deterministic CPU schedules for the PrimFuncs graphopt's lowering produces (after legalization
and fusion): register-tiled conv2d and dense kernels with fused epilogues, and a generic rule for
pooling, reductions and elementwise work. No tuning needed; see `dispatch.apply_cpu_schedules`."""
from .common import VectorShape
from .dispatch import SCHEDULE_ATTR, apply_cpu_schedules, schedule_module

__all__ = ["SCHEDULE_ATTR", "VectorShape", "apply_cpu_schedules", "schedule_module"]
