"""Parsing registry lowering strings into typed expression trees."""
from __future__ import annotations

import pytest

from codegen.kernel import Arg, Const, Op
from codegen.scalar import LoweringError, lower, op
from tracetorch.dtypes import bool_, float32, float64, int32, int64

X = Arg("x0", float32)
Y = Arg("x1", float32)


def test_binary_and_unary_forms():
    assert lower("x0 + x1", [X, Y]) == Op("add", (X, Y), float32)
    assert lower("exp(x0)", [X]) == Op("exp", (X,), float32)
    assert lower("-x0", [X]) == Op("neg", (X,), float32)
    assert lower("where(x0, x1, x2)", [Arg("c", bool_), X, Y]) == Op("where", (Arg("c", bool_), X, Y), float32)


def test_python_constants_adopt_the_operand_dtype():
    assert lower("1 / x0", [X]) == Op("div", (Const(1.0, float32), X), float32)
    e = lower("x0 * x1", [Arg("i", int32), 3])
    assert e.args[1] == Const(3, int32) and e.dtype is int32


def test_predicates_are_bool_and_cast_takes_the_output_dtype():
    assert lower("x0 < x1", [X, Y]).dtype is bool_
    assert lower("isnan(x0)", [X]).dtype is bool_
    assert lower("not x0", [X], bool_) == Op("not", (Op("ne", (X, Const(0.0, float32)), bool_),), bool_)
    assert lower("cast(x0)", [X], int64) == Op("cast", (X,), int64)
    assert lower("cast(x0)", [X], float32) is X


def test_bool_arithmetic_is_logic():
    b = Arg("b", bool_)
    assert lower("x0 + x1", [b, b]).op == "or"
    assert lower("x0 * x1", [b, b]).op == "and"


@pytest.mark.parametrize("source,operands,out,message", [
    ("x0 + x1", [X, Arg("y", float64)], None, "one dtype"),
    ("exp(x0)", [Arg("i", int32)], None, "floating-point"),
    ("x0 & x1", [X, Y], None, "integer or bool"),
    ("x0 + x3", [X, Y], None, "refers to x3"),
    ("foo(x0)", [X], None, "unsupported syntax"),
    ("x0 +", [X], None, "not a Python expression"),
    ("cast(x0)", [X], None, "needs the output dtype"),
    ("x0 + x1", [X, Y], float64, "output dtype is float64"),
    ("x0 - x1", [Arg("b", bool_), Arg("b", bool_)], None, "not defined on bool"),
])
def test_errors_name_the_lowering_and_dtypes(source, operands, out, message):
    with pytest.raises(LoweringError, match=message):
        lower(source, operands, out)


def test_op_helper_applies_the_same_rules():
    assert op("max", X, 0.0) == Op("max", (X, Const(0.0, float32)), float32)
    with pytest.raises(LoweringError):
        op("add", 1.0, 2.0)
