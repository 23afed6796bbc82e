"""Registry lowering strings ("exp(x0)", "x0 + x1", "where(x0, x1, x2)") to scalar expression trees.

The registry's elementwise ops carry a Python-syntax expression over the
operands x0, x1, x2; `lower` parses it with `ast` and builds an `Expr` over
the operand expressions it is given, applying the type rules below. Both
renderers then see only `Op` nodes with explicit dtypes.

Type rules (the registry's primitives take operands of one dtype; the
composite layer in tracetorch.math promotes before calling them):
- arithmetic, max/min, bitwise ops, where: the operands' common dtype;
- comparisons, isnan, isfinite, not: bool;
- cast: the requested output dtype;
- float-only ops (exp, div, sigmoid, ...) reject integer and bool operands;
- on bool, add is `or` and mul is `and` (numpy's and PyTorch's semantics);
- a Python scalar operand adopts the dtype of the expression it meets;
- random(counter, seed): int64 operands, a floating-point result (`random`).
"""
from __future__ import annotations

import ast
import functools
from typing import Sequence, Union

from tracetorch.dtypes import DType, bfloat16, bool_, float16, float32, float64, int64

from .kernel import SCALAR_OPS, Const, Expr, Op

Operand = Union[Expr, int, float, bool]

_BINOPS = {ast.Add: "add", ast.Sub: "sub", ast.Mult: "mul", ast.Div: "div", ast.FloorDiv: "floordiv",
           ast.Mod: "mod", ast.Pow: "pow", ast.BitAnd: "and", ast.BitOr: "or", ast.BitXor: "xor"}
_UNARYOPS = {ast.USub: "neg", ast.Not: "not", ast.Invert: "invert"}
_COMPARES = {ast.Eq: "eq", ast.NotEq: "ne", ast.Lt: "lt", ast.LtE: "le", ast.Gt: "gt", ast.GtE: "ge"}
_BOOLOPS = {ast.And: "and", ast.Or: "or"}
_CALLS = {"exp", "log", "sqrt", "rsqrt", "sin", "cos", "tanh", "sigmoid", "log1p", "expm1", "abs", "sign",
          "floor", "ceil", "rint", "isnan", "isfinite", "where", "cast", "max", "min", "pow", "floordiv", "mod"}

FLOAT_ONLY = {"exp", "log", "sqrt", "rsqrt", "sin", "cos", "tanh", "sigmoid", "log1p", "expm1", "div"}
BITWISE = {"and", "or", "xor", "invert"}
PREDICATES = {"eq", "ne", "lt", "le", "gt", "ge", "isnan", "isfinite", "not"}
BOOL_ARITHMETIC = {"add": "or", "mul": "and"}   # numpy: True + True is True


class LoweringError(ValueError):
    """A lowering string that is not a valid scalar expression, or operands of the wrong types."""


@functools.lru_cache(maxsize=None)
def _parse_cached(source: str) -> ast.expr:
    try:
        return ast.parse(source, mode="eval").body
    except SyntaxError as e:
        raise LoweringError(f"lowering {source!r} is not a Python expression: {e.msg}") from None


def lower(source: str, operands: Sequence[Operand], out_dtype: DType | None = None) -> Expr:
    """The expression tree of lowering string `source` applied to `operands` (x0, x1, ...).

    `out_dtype` is the op's inferred output dtype: required for cast, and
    checked against the result for every other op.
    """
    builder = _Builder(source, tuple(operands), out_dtype)
    result = builder.build(_parse_cached(source))
    if not isinstance(result, Expr):
        if out_dtype is None:
            raise LoweringError(f"lowering {source!r}: a constant expression needs an output dtype")
        result = const(result, out_dtype)
    if out_dtype is not None and result.dtype is not out_dtype:
        raise LoweringError(f"lowering {source!r} of {_dtypes(operands)} gives {result.dtype.name}, "
                            f"but the op's output dtype is {out_dtype.name}")
    return result


def const(value, dtype: DType) -> Const:
    """A constant of `dtype` (the value converted the way numpy converts a Python scalar)."""
    if dtype is bool_:
        return Const(bool(value), dtype)
    if dtype.is_floating_point:
        return Const(float(value), dtype)
    return Const(int(value), dtype)


# The counter-based generator of tracetorch/ops/random.py, for the `random` op: the 64-bit word of draw
# `counter` of stream `seed` is mix64(counter * GOLDEN + mix64(seed * GOLDEN + GOLDEN)) (splitmix64's
# finalizer, wrapping unsigned arithmetic), and the float in [0, 1) is its top RANDOM_BITS[dtype] bits
# times 2^-bits: exact in the dtype, never 1.0, bit for bit what eager draws (float16/bfloat16 keep the
# bits they hold, as eager does with _SHORT_FLOAT_DIGITS).
RNG_GOLDEN, RNG_MIX1, RNG_MIX2 = 0x9E3779B97F4A7C15, 0xBF58476D1CE4E5B9, 0x94D049BB133111EB
RANDOM_BITS = {float64: 53, float32: 24, float16: 11, bfloat16: 8}


def random(counter: Expr, seed: Expr, dtype: DType) -> Op:
    """Uniform draw `counter` (the draw's index in the generator's stream: offset + element index) of
    stream `seed`, as a `dtype` in [0, 1)."""
    if counter.dtype is not int64 or seed.dtype is not int64:
        raise LoweringError(f"random: counter and seed must be int64, got {counter.dtype.name}, {seed.dtype.name}")
    if dtype not in RANDOM_BITS:
        raise LoweringError(f"random: expected a floating-point dtype, got {dtype.name}")
    return Op("random", (counter, seed), dtype)


def op(name: str, *args: Operand, dtype: DType | None = None) -> Expr:
    """Build one scalar op with the type rules (Python scalars adopt the other operands' dtype)."""
    return _make(name, list(args), dtype, context=name)


def _dtypes(operands) -> str:
    return ", ".join(o.dtype.name if isinstance(o, Expr) else type(o).__name__ for o in operands)


class _Builder:
    def __init__(self, source: str, operands: tuple, out_dtype: DType | None):
        self.source, self.operands, self.out_dtype = source, operands, out_dtype

    def fail(self, message: str):
        raise LoweringError(f"lowering {self.source!r} ({_dtypes(self.operands)}): {message}")

    def build(self, node: ast.expr) -> Operand:
        if isinstance(node, ast.Name):
            if node.id.startswith("x") and node.id[1:].isdigit():
                i = int(node.id[1:])
                if i >= len(self.operands):
                    self.fail(f"refers to {node.id} but has {len(self.operands)} operands")
                return self.operands[i]
            self.fail(f"unknown name {node.id!r}")
        if isinstance(node, ast.Constant) and isinstance(node.value, (bool, int, float)):
            return node.value
        if isinstance(node, ast.BinOp) and type(node.op) in _BINOPS:
            return self.make(_BINOPS[type(node.op)], [node.left, node.right])
        if isinstance(node, ast.UnaryOp) and type(node.op) in _UNARYOPS:
            return self.make(_UNARYOPS[type(node.op)], [node.operand])
        if isinstance(node, ast.UnaryOp) and isinstance(node.op, ast.UAdd):
            return self.build(node.operand)
        if isinstance(node, ast.Compare) and len(node.ops) == 1 and type(node.ops[0]) in _COMPARES:
            return self.make(_COMPARES[type(node.ops[0])], [node.left, node.comparators[0]])
        if isinstance(node, ast.BoolOp) and type(node.op) in _BOOLOPS:
            out = self.make(_BOOLOPS[type(node.op)], node.values[:2])
            for extra in node.values[2:]:
                out = _make(_BOOLOPS[type(node.op)], [out, self.build(extra)], None, self.source)
            return out
        if isinstance(node, ast.Call) and isinstance(node.func, ast.Name) and node.func.id in _CALLS \
                and not node.keywords:
            return self.make(node.func.id, node.args)
        self.fail(f"unsupported syntax {ast.dump(node)}")

    def make(self, name: str, arg_nodes) -> Expr:
        args = [self.build(a) for a in arg_nodes]
        return _make(name, args, self.out_dtype if name == "cast" else None, self.source)


def _make(name: str, args: list, cast_to: DType | None, context: str) -> Expr:
    if name == "random":
        raise LoweringError(f"{context}: build random draws with codegen.scalar.random (it needs the output dtype)")
    if SCALAR_OPS.get(name) != len(args):
        raise LoweringError(f"{context}: {name} takes {SCALAR_OPS.get(name)} operands, got {len(args)}")
    if name == "cast":
        if cast_to is None:
            raise LoweringError(f"{context}: cast needs the output dtype")
        (x,) = args
        if not isinstance(x, Expr):
            return const(x, cast_to)
        return x if x.dtype is cast_to else Op("cast", (x,), cast_to)
    if name == "where":
        cond, a, b = args
        cond = cond if isinstance(cond, Expr) else const(cond, bool_)
        if cond.dtype is not bool_:
            cond = Op("ne", (cond, const(0, cond.dtype)), bool_)
        a, b = _unify([a, b], context, name)
        return Op("where", (cond, a, b), a.dtype)
    args = _unify(args, context, name)
    dt = args[0].dtype
    if name in FLOAT_ONLY and not dt.is_floating_point:
        raise LoweringError(f"{context}: {name} needs floating-point operands, got {dt.name}")
    if name in BITWISE and dt.is_floating_point:
        raise LoweringError(f"{context}: {name} needs integer or bool operands, got {dt.name}")
    if name == "not" and dt is not bool_:
        args = [Op("ne", (args[0], const(0, dt)), bool_)]
    if dt is bool_ and name in BOOL_ARITHMETIC:
        name = BOOL_ARITHMETIC[name]
    if dt is bool_ and name in ("sub", "floordiv", "mod", "pow", "neg", "sign"):
        raise LoweringError(f"{context}: {name} is not defined on bool operands")
    return Op(name, tuple(args), bool_ if name in PREDICATES else dt)


def _unify(args: list, context: str, name: str) -> list[Expr]:
    """Give Python scalars the dtype of the expression operands; expression dtypes must agree."""
    dts = [a.dtype for a in args if isinstance(a, Expr)]
    if not dts:
        raise LoweringError(f"{context}: {name} of Python scalars only; fold it before lowering")
    if any(d is not dts[0] for d in dts):
        raise LoweringError(f"{context}: {name} operands must have one dtype, got "
                            f"{', '.join(d.name for d in dts)} (promote before lowering)")
    return [a if isinstance(a, Expr) else const(a, dts[0]) for a in args]
