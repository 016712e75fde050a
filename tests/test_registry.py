"""The op registry: every registered op is complete and covered by the op tests table."""
from __future__ import annotations

import dataclasses

import pytest

from graphopt import ops
from graphopt.errors import UnsupportedOpError
from graphopt.ops.base import Op

from test_ops import ROWS

PARTS = ("infer", "reference", "lower_tvm")


@pytest.mark.parametrize("name", sorted(ops.OPS))
def test_op_is_complete(name: str):
    cls = ops.OPS[name]
    assert issubclass(cls, Op)
    assert dataclasses.is_dataclass(cls), f"{name}: not a dataclass"
    assert cls.__dataclass_params__.frozen, f"{name}: attributes must be frozen"
    assert cls.name == name, f"registered as '{name}' but named '{cls.name}'"
    low, high = cls.arity
    assert 0 < low <= high, f"{name}: arity {cls.arity}"
    missing = [part for part in PARTS if getattr(cls, part) is getattr(Op, part)]
    assert not missing, f"{name}: does not define {missing}"
    for f in dataclasses.fields(cls):
        assert f.default is not dataclasses.MISSING, f"{name}.{f.name}: attributes need defaults"


@pytest.mark.parametrize("name", sorted(ops.OPS))
def test_op_has_test_rows(name: str):
    assert any(row.op.name == name for row in ROWS), f"no row of tests/test_ops.py covers '{name}'"


def test_every_row_op_is_registered():
    assert {row.op.name for row in ROWS} <= set(ops.OPS)


def test_default_instances_print_and_compare():
    for name, cls in ops.OPS.items():
        a, b = cls(), cls()
        assert a == b and hash(a) == hash(b), f"{name}: equal attributes must mean equal ops"
        assert str(a).startswith(name)


def test_get_op_unknown_names_known_ops():
    assert ops.get_op("conv2d") is ops.Conv2d
    with pytest.raises(UnsupportedOpError, match="no op named 'conv3d'.*conv2d"):
        ops.get_op("conv3d")


def test_register_rejects_duplicates():
    with pytest.raises(ValueError, match="registered twice"):
        ops.register(ops.Relu)
