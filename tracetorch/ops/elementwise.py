"""Elementwise primitives: unary math, binary arithmetic and comparison, where, cast.

Binary and ternary ops broadcast their inputs (numpy rules) and take tensors
of one dtype; Python scalars are allowed as operands and adopt the tensor's
dtype (the composite layer in `tracetorch.math` does the type promotion).
`lowering` is a scalar expression over x0, x1, x2 that both code generators
render.
"""
from __future__ import annotations

import numpy as np

from ..dtypes import as_dtype, bfloat16, bool_, float16, round_bfloat16
from .registry import ELEMENTWISE, Aval, register

import tracetorch as tt


def _aval(x):
    if isinstance(x, Aval):
        return x
    return None


def _same_dtype(*xs):
    dts = [x.dtype for x in xs if isinstance(x, Aval)]
    return dts[0]


def _bshape(*xs):
    shapes = [tuple(x.shape) for x in xs if isinstance(x, Aval)]
    try:
        return np.broadcast_shapes(*shapes)
    except ValueError:
        pass
    for i in range(1, max(len(s) for s in shapes) + 1):   # PyTorch's wording, from the last dim
        sizes = [s[-i] for s in shapes if len(s) >= i and s[-i] != 1]
        if len(set(sizes)) > 1:
            a, b = sizes[0], next(n for n in sizes if n != sizes[0])
            dim = max(len(s) for s in shapes) - i
            raise RuntimeError(f"The size of tensor a ({a}) must match the size of tensor b ({b}) at "
                               f"non-singleton dimension {dim}")
    raise RuntimeError(f"shapes {[list(s) for s in shapes]} cannot be broadcast together")


def _infer_unary(x):
    return Aval(tuple(x.shape), x.dtype)


def _infer_unary_float(x):
    if not x.dtype.is_floating_point:
        raise TypeError(f"expected a floating-point tensor, got {x.dtype.name}")
    return Aval(tuple(x.shape), x.dtype)


def _infer_unary_numeric(x):
    if x.dtype is bool_:
        raise TypeError("expected a numeric tensor, got bool (use logical_not to invert a mask)")
    return Aval(tuple(x.shape), x.dtype)


def _infer_unary_bitwise(x):
    if x.dtype.is_floating_point:
        raise TypeError(f"bitwise ops are only implemented on integer and bool tensors, got {x.dtype.name}")
    return Aval(tuple(x.shape), x.dtype)


def _infer_pred(x):
    return Aval(tuple(x.shape), bool_)


def _infer_binary(a, b):
    return Aval(tuple(_bshape(a, b)), _same_dtype(a, b))


def _infer_binary_numeric(a, b):
    out = _infer_binary(a, b)
    if out.dtype is bool_:
        raise TypeError("expected numeric tensors, got bool")
    return out


def _infer_binary_float(a, b):
    out = _infer_binary(a, b)
    if not out.dtype.is_floating_point:
        raise TypeError(f"expected floating-point tensors, got {out.dtype.name} (the composite casts first)")
    return out


def _infer_bitwise(a, b):
    out = _infer_binary(a, b)
    if out.dtype.is_floating_point:
        raise TypeError(f"bitwise ops are only implemented on integer and bool tensors, got {out.dtype.name}")
    return out


def _infer_compare(a, b):
    return Aval(tuple(_bshape(a, b)), bool_)


def _quiet(f):
    """numpy warns on log(0), 1/0, overflow; PyTorch silently returns inf/nan."""
    def kernel(*args):
        with np.errstate(all="ignore"):
            return f(*args)
    kernel.__name__ = getattr(f, "__name__", "kernel")
    return kernel


def _need(node, i) -> bool:
    return node.edges[i] is not None


def _unb(g, node, i):
    """Sum a broadcast gradient back to input i's shape."""
    return tt.sum_to_shape(g, node.shape(i))


def _zero_grad(node, g):
    return (tt.zeros_like(g),)


# ---------------------------------------------------------------- unary
def _unary(name, eager, vjp, saves, lowering, infer=_infer_unary_float, doc=""):
    return register(name, ELEMENTWISE, eager=eager, infer=infer, vjp=vjp, saves=saves,
                    lowering=lowering, doc=doc)


NEG = _unary("neg", np.negative, lambda n, g: (-g,), (), "-x0", infer=_infer_unary_numeric)
EXP = _unary("exp", _quiet(np.exp), lambda n, g: (g * n.out,), ("out",), "exp(x0)")
LOG = _unary("log", _quiet(np.log), lambda n, g: (g / n.x(0),), (0,), "log(x0)")
SQRT = _unary("sqrt", _quiet(np.sqrt), lambda n, g: (g / (2 * n.out),), ("out",), "sqrt(x0)")
RSQRT = _unary("rsqrt", _quiet(lambda x: 1 / np.sqrt(x)), lambda n, g: (g * (-0.5) * n.out ** 3,),
               ("out",), "rsqrt(x0)")
SIN = _unary("sin", _quiet(np.sin), lambda n, g: (g * tt.cos(n.x(0)),), (0,), "sin(x0)")
COS = _unary("cos", _quiet(np.cos), lambda n, g: (-(g * tt.sin(n.x(0))),), (0,), "cos(x0)")
TANH = _unary("tanh", np.tanh, lambda n, g: (g * (1 - n.out * n.out),), ("out",), "tanh(x0)")
def _sigmoid(x):
    """1 / (1 + e^-x) for x >= 0, e^x / (1 + e^x) below: no cancellation for large negative x, where
    (tanh(x / 2) + 1) / 2 lost every digit (sigmoid(-20) was 0 in float32; the kernels' is exact)."""
    e = np.exp(-np.abs(x))
    one = x.dtype.type(1)
    return np.where(x >= 0, one / (one + e), e / (one + e))


SIGMOID = _unary("sigmoid", _sigmoid, lambda n, g: (g * n.out * (1 - n.out),), ("out",), "sigmoid(x0)")
LOG1P = _unary("log1p", _quiet(np.log1p), lambda n, g: (g / (n.x(0) + 1),), (0,), "log1p(x0)")
EXPM1 = _unary("expm1", _quiet(np.expm1), lambda n, g: (g * (n.out + 1),), ("out",), "expm1(x0)")
RECIPROCAL = _unary("reciprocal", _quiet(np.reciprocal), lambda n, g: (-(g * n.out * n.out),), ("out",),
                    "1 / x0")
ABS = _unary("abs", np.abs, lambda n, g: (g * tt.sign(n.x(0)),), (0,), "abs(x0)", infer=_infer_unary)
def _sign(x):
    out = np.sign(x)
    return np.where(np.isnan(out), out.dtype.type(0), out) if out.dtype.kind == "f" else out


SIGN = _unary("sign", _sign, _zero_grad, (), "where(isnan(x0), 0, sign(x0))", infer=_infer_unary_numeric,
              doc="sign(nan) is 0, as PyTorch's (x > 0) - (x < 0); the kernels' sign passes NaN on")
FLOOR = _unary("floor", np.floor, _zero_grad, (), "floor(x0)")
CEIL = _unary("ceil", np.ceil, _zero_grad, (), "ceil(x0)")
ROUND = _unary("round", np.rint, _zero_grad, (), "rint(x0)",
               doc="round half to even, like torch.round")
ISNAN = _unary("isnan", np.isnan, None, (), "isnan(x0)", infer=_infer_pred)
ISFINITE = _unary("isfinite", np.isfinite, None, (), "isfinite(x0)", infer=_infer_pred)
LOGICAL_NOT = _unary("logical_not", np.logical_not, None, (), "not x0", infer=_infer_pred)
BITWISE_NOT = _unary("bitwise_not", np.invert, None, (), "~x0", infer=_infer_unary_bitwise)
CLONE = _unary("clone", lambda x: np.array(x, order="C"), lambda n, g: (g,), (), "x0", infer=_infer_unary,
               doc="a C-contiguous copy in fresh storage (clone, contiguous)")


# ---------------------------------------------------------------- binary
def _binary(name, eager, vjp, saves, lowering, infer=_infer_binary, doc=""):
    return register(name, ELEMENTWISE, eager=eager, infer=infer, vjp=vjp, saves=saves,
                    lowering=lowering, doc=doc)


def _add_vjp(n, g):
    return (_unb(g, n, 0) if _need(n, 0) else None, _unb(g, n, 1) if _need(n, 1) else None)


def _sub_vjp(n, g):
    return (_unb(g, n, 0) if _need(n, 0) else None, _unb(-g, n, 1) if _need(n, 1) else None)


def _mul_vjp(n, g):
    return (_unb(g * n.x(1), n, 0) if _need(n, 0) else None,
            _unb(g * n.x(0), n, 1) if _need(n, 1) else None)


def _div_vjp(n, g):
    b = n.x(1)
    return (_unb(g / b, n, 0) if _need(n, 0) else None,
            _unb(-(g * n.x(0)) / (b * b), n, 1) if _need(n, 1) else None)


def _pow_vjp(n, g):
    a, b = n.x(0), n.x(1)
    ga = gb = None
    if _need(n, 0):
        if isinstance(b, (int, float)):
            ga = g * b * a ** (b - 1) if b != 0 else tt.zeros_like(g)
        else:
            ga = tt.where(b == 0, 0.0, g * b * a ** (b - 1))
        ga = _unb(ga, n, 0)
    if _need(n, 1):
        out = a ** b
        gb = g * out * tt.log(a)
        if isinstance(a, tt.Tensor):
            gb = tt.where((a == 0) & (b >= 0), 0.0, gb)
        gb = _unb(gb, n, 1)
    return ga, gb


def _minmax_vjp(n, g, pick_first):
    a, b = n.x(0), n.x(1)
    first = pick_first(a, b)
    tie = a == b
    half = g * 0.5
    ga = tt.where(tie, half, tt.where(first, g, 0.0)) if _need(n, 0) else None
    gb = tt.where(tie, half, tt.where(first, 0.0, g)) if _need(n, 1) else None
    return (_unb(ga, n, 0) if ga is not None else None, _unb(gb, n, 1) if gb is not None else None)


def _remainder_vjp(n, g):
    return (_unb(g, n, 0) if _need(n, 0) else None,
            _unb(-(g * tt.floor_divide(n.x(0), n.x(1))), n, 1) if _need(n, 1) else None)


def _not_bool(dt):
    """numpy computes bool // bool, bool % bool and bool ** bool in int8; PyTorch does not define them."""
    if dt == np.bool_:
        raise TypeError("expected numeric tensors, got bool")


def _remainder(a, b):
    dt = np.result_type(a, b)
    _not_bool(dt)
    if np.issubdtype(dt, np.integer) and np.any(np.asarray(b) == 0):
        raise ZeroDivisionError("integer division by zero")     # as PyTorch; numpy would return 0
    with np.errstate(all="ignore"):
        return np.remainder(a, b)


def _floor_divide(a, b):
    dt = np.result_type(a, b)
    _not_bool(dt)
    if np.issubdtype(dt, np.integer) and np.any(np.asarray(b) == 0):
        raise ZeroDivisionError("integer division by zero")
    with np.errstate(all="ignore"):
        return np.floor_divide(a, b)


def _power(a, b):
    _not_bool(np.result_type(a, b))
    with np.errstate(all="ignore"):
        return np.power(a, b)


ADD = _binary("add", np.add, _add_vjp, (), "x0 + x1")
SUB = _binary("sub", np.subtract, _sub_vjp, (), "x0 - x1", infer=_infer_binary_numeric)
MUL = _binary("mul", np.multiply, _mul_vjp, (0, 1), "x0 * x1")
DIV = _binary("div", _quiet(np.true_divide), _div_vjp, (0, 1), "x0 / x1", infer=_infer_binary_float)
POW = _binary("pow", _power, _pow_vjp, (0, 1), "pow(x0, x1)", infer=_infer_binary_numeric)
MAXIMUM = _binary("maximum", np.maximum, lambda n, g: _minmax_vjp(n, g, lambda a, b: a > b), (0, 1),
                  "max(x0, x1)", doc="NaN-propagating; ties split the gradient like PyTorch")
MINIMUM = _binary("minimum", np.minimum, lambda n, g: _minmax_vjp(n, g, lambda a, b: a < b), (0, 1),
                  "min(x0, x1)")
FLOOR_DIVIDE = _binary("floor_divide", _floor_divide, None, (), "floordiv(x0, x1)", infer=_infer_binary_numeric)
REMAINDER = _binary("remainder", _remainder, _remainder_vjp, (0, 1), "mod(x0, x1)", infer=_infer_binary_numeric,
                    doc="Python-style modulus: the result has the divisor's sign")
EQ = _binary("eq", np.equal, None, (), "x0 == x1", infer=_infer_compare)
NE = _binary("ne", np.not_equal, None, (), "x0 != x1", infer=_infer_compare)
LT = _binary("lt", np.less, None, (), "x0 < x1", infer=_infer_compare)
LE = _binary("le", np.less_equal, None, (), "x0 <= x1", infer=_infer_compare)
GT = _binary("gt", np.greater, None, (), "x0 > x1", infer=_infer_compare)
GE = _binary("ge", np.greater_equal, None, (), "x0 >= x1", infer=_infer_compare)
BITWISE_AND = _binary("bitwise_and", np.bitwise_and, None, (), "x0 & x1", infer=_infer_bitwise)
BITWISE_OR = _binary("bitwise_or", np.bitwise_or, None, (), "x0 | x1", infer=_infer_bitwise)
BITWISE_XOR = _binary("bitwise_xor", np.bitwise_xor, None, (), "x0 ^ x1", infer=_infer_bitwise)


# ---------------------------------------------------------------- where, cast
def _infer_where(c, a, b):
    dt = _same_dtype(a, b) if isinstance(a, Aval) or isinstance(b, Aval) else None
    return Aval(tuple(_bshape(c, a, b)), dt)


def _where_vjp(n, g):
    c = n.x(0)
    ga = _unb(tt.where(c, g, 0.0), n, 1) if _need(n, 1) else None
    gb = _unb(tt.where(c, 0.0, g), n, 2) if _need(n, 2) else None
    return None, ga, gb


_SAME_WIDTH_INT = {1: np.int8, 2: np.int16, 4: np.int32, 8: np.int64}
WHERE_SELECT_MIN = 4096      # elements from which where selects bits instead of calling np.where


def _where_eager(c, a, b):
    # np.where of a float32 tensor and a Python float stays float32 (NEP 50); make sure
    dt = a.dtype if isinstance(a, np.ndarray) else b.dtype if isinstance(b, np.ndarray) else None
    if c.size >= WHERE_SELECT_MIN and c.dtype == np.bool_:
        target = np.dtype(dt) if dt is not None else np.result_type(a, b)
        if target.kind in "biuf" and target.itemsize in _SAME_WIDTH_INT:
            return _select_bits(c, np.asarray(a).astype(target, copy=False), np.asarray(b).astype(target, copy=False))
    out = np.where(c, a, b)
    if dt is not None and out.dtype != dt:
        out = out.astype(dt)
    return out


def _select_bits(c, a, b):
    """np.where(c, a, b) for a and b of one dtype, as b ^ ((a ^ b) & mask) on their bits: the same
    values to the bit (NaN payloads, -0.0), without np.where's branch per element, which a mask like
    ReLU's (random signs) mispredicts: 250 us -> ~40 us for 2^16 floats."""
    ints = _SAME_WIDTH_INT[a.dtype.itemsize]
    ai, bi = a.view(ints), b.view(ints)
    mask = np.subtract(0, c, dtype=ints)                # 0 or all ones
    out = np.empty(np.broadcast_shapes(c.shape, a.shape, b.shape), ints)
    np.bitwise_xor(ai, bi, out=out)
    np.bitwise_and(out, mask, out=out)
    np.bitwise_xor(out, bi, out=out)
    return out.view(a.dtype)


WHERE = register("where", ELEMENTWISE, eager=_where_eager, infer=_infer_where, vjp=_where_vjp, saves=(0,),
                 lowering="where(x0, x1, x2)")


def _cast_vjp(n, g):
    src = n.dtype(0)
    return (g.to(src) if src.is_floating_point else None,)


def _cast_eager(x, dtype):
    if dtype is bfloat16:
        return round_bfloat16(x.astype(np.float32))
    if dtype is float16 and x.dtype == np.float64:     # through float32, as PyTorch (c10::Half(float)) and the
        with np.errstate(over="ignore"):                 # LLVM kernels convert; numpy rounds once
            return x.astype(np.float32).astype(np.float16)
    if x.dtype.kind == "f" and dtype.np.kind in "iu":
        with np.errstate(all="ignore"):
            return x.astype(dtype.np)
    return x.astype(dtype.np)


CAST = register("cast", ELEMENTWISE, eager=_cast_eager,
                infer=lambda x, dtype: Aval(tuple(x.shape), as_dtype(dtype)),
                vjp=_cast_vjp, lowering="cast(x0)", doc="dtype conversion; float -> int truncates toward 0")
