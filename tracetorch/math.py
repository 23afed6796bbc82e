"""Math composites: type promotion around the elementwise primitives, the
reductions users call (sum, mean, var, max with indices, logsumexp, norm),
matmul with 1-D operands, einsum, and small composites (clamp, softmax).
"""
from __future__ import annotations

import builtins
import collections

import numpy as np

from . import dtypes as D
from .ops import REGISTRY as R
from .ops.dispatch import apply
from .tensor import Tensor, _wrap_dim

_py_max, _py_min, _py_abs, _py_sum = builtins.max, builtins.min, builtins.abs, builtins.sum

ADD, SUB, MUL, DIV, POW = R["add"], R["sub"], R["mul"], R["div"], R["pow"]
CAST, WHERE, SUM = R["cast"], R["where"], R["sum"]


# ---------------------------------------------------------------- promotion
def _cast(x, dt):
    if isinstance(x, Tensor):
        return x if x._dtype is dt else apply(CAST, x, dtype=dt)
    return x


def _pyscalar(x):
    if isinstance(x, np.generic):
        return x.item()
    return x


def binary(op, a, b):
    """Apply a binary primitive after PyTorch type promotion; Python scalars stay scalars."""
    ta, tb = type(a) is Tensor or isinstance(a, Tensor), type(b) is Tensor or isinstance(b, Tensor)
    if ta and tb:
        if a._dtype is not b._dtype:
            dt = D.result_type(a, b)
            a, b = _cast(a, dt), _cast(b, dt)
        return apply(op, a, b)
    if ta:
        b = _pyscalar(b)
        dt = _with_scalar(a._dtype, b)
        if dt in _HALF and op not in _FULL_SCALAR_RIGHT:
            b = _as_half(b, dt)
        return apply(op, a if dt is a._dtype else apply(CAST, a, dtype=dt), _wrap_int(b, dt))
    if tb:
        a = _pyscalar(a)
        dt = _with_scalar(b._dtype, a)
        if dt in _HALF and op is not MUL:
            a = _as_half(a, dt)
        return apply(op, _wrap_int(a, dt), b if dt is b._dtype else apply(CAST, b, dtype=dt))
    raise TypeError(f"{op.name}: expected at least one tensor operand, got {type(a).__name__} and "
                    f"{type(b).__name__}")


def _with_scalar(dt, s):
    """dtype of `tensor(dt) op python_scalar`."""
    cls = type(s)
    if cls is float:
        return dt if dt.category == 2 else D.get_default_dtype()
    if cls is int:
        if not -2 ** 63 <= s < 2 ** 64:       # what PyTorch's Scalar holds (int64 or uint64); _wrap_int wraps it
            raise OverflowError("int too big to convert")
        return dt if dt.category >= 1 else D.int64
    if cls is bool:
        return dt
    if isinstance(s, Tensor):
        return D.result_type(s)
    if isinstance(s, (int, float)):     # int/float subclasses (numbers a tracer follows)
        return _with_scalar(dt, 0.0 if isinstance(s, float) else 0)
    raise TypeError(f"unsupported operand type: {cls.__name__}")


def _wrap_int(s, dt):
    """A Python int outside an integer dtype's range wraps like PyTorch's cast (uint8 tensor - 1: 0 -> 255)."""
    if type(s) is int and dt.category == 1:
        info = np.iinfo(dt.np)
        if not info.min <= s <= info.max:
            return int(info.min) + (s - int(info.min)) % 2 ** (8 * dt.itemsize)
    return s


def compare(op, a, b):
    return binary(op, a, b)


_HALF = (D.float16, D.bfloat16)
_FULL_SCALAR_RIGHT = (MUL, DIV, R["floor_divide"])


def _as_half(s, dt):
    """A Python number beside a float16/bfloat16 tensor, rounded to that dtype first as PyTorch's kernels cast
    it (bfloat16 tensor(1.01) == 1.01, x % 0.3 divides by bfloat16(0.3)); numpy keeps bfloat16 in float32 and
    float16 ops are computed in float32, which used the float unrounded. PyTorch's mul, and div and floor_divide
    by a scalar, keep it in float instead (_FULL_SCALAR_RIGHT)."""
    if type(s) is not float and type(s) is not int:
        return s
    with np.errstate(over="ignore"):
        if dt is D.float16:
            return float(np.float16(s))
        return float(D.round_bfloat16(np.float32(s)))


def _float_of(x):
    """Integer/bool tensors become the default float dtype (true division, sqrt, ...)."""
    if isinstance(x, Tensor) and x._dtype.category < 2:
        return apply(CAST, x, dtype=D.get_default_dtype())
    return x


def _tensor_arg(x, like=None):
    if isinstance(x, Tensor):
        return x
    from .creation import tensor
    return tensor(x, dtype=like._dtype if like is not None and isinstance(x, (int, float)) and
                  like._dtype.is_floating_point else None)


# ---------------------------------------------------------------- arithmetic
def add(a, b, *, alpha=1):
    return binary(ADD, a, b if alpha == 1 else b * alpha)


def sub(a, b, *, alpha=1):
    check_bool_sub(a, b)
    return binary(SUB, a, b if alpha == 1 else b * alpha)


def _is_bool(x) -> bool:
    return x._dtype is D.bool_ if isinstance(x, Tensor) else type(x) is bool


def check_bool_sub(a, b) -> None:
    """PyTorch's errors, and their type (the registry's own is a TypeError: sub does not define bool): with one
    bool operand too (float_t - True, int_t - mask), which promotion would otherwise let through."""
    ab, bb = _is_bool(a), _is_bool(b)
    if ab and bb:
        raise RuntimeError("Subtraction, the `-` operator, with two bool tensors is not supported. "
                           "Use the `^` or `logical_xor()` operator instead.")
    if ab or bb:
        raise RuntimeError("Subtraction, the `-` operator, with a bool tensor is not supported. "
                           "If you are trying to invert a mask, use the `~` or `logical_not()` operator instead.")


subtract = sub


def mul(a, b):
    return binary(MUL, a, b)


multiply = mul


def div(a, b, *, rounding_mode=None):
    if rounding_mode is None:
        if isinstance(a, Tensor) and isinstance(b, Tensor):
            dt = D.result_type(a, b)
            if dt.category < 2:
                dt = D.get_default_dtype()
            return apply(DIV, _cast(a, dt), _cast(b, dt))
        tensor_left = isinstance(a, Tensor)
        t = a if tensor_left else b
        other = _pyscalar(b if tensor_left else a)
        dt = _with_scalar(t._dtype, other)
        if dt.category < 2:
            dt = D.get_default_dtype()
        t = _cast(t, dt)
        if tensor_left:
            return apply(DIV, t, other)
        # scalar / t is reciprocal(t) * scalar, as PyTorch's __rtruediv__: the backward saves the result,
        # not t, so writing t in place afterwards is fine
        r = apply(R["reciprocal"], t)
        return r if other == 1 else apply(MUL, r, other)
    if rounding_mode == "floor":
        return floor_divide(a, b)
    if rounding_mode == "trunc":
        if D.result_type(a, b).is_floating_point:    # as PyTorch; from floor division, inf / 2 was nan
            return trunc(div(a, b))
        q = binary(R["floor_divide"], a, b)
        r = binary(R["remainder"], a, b)
        bb = b
        fix = (r != 0) & ((q < 0) | ((q == 0) & ((_sign_of(a) * _sign_of(bb)) < 0)))
        return where(fix, q + 1, q)
    raise ValueError(f"div expected rounding_mode to be one of None, 'trunc', or 'floor' but found '{rounding_mode}'")


def _sign_of(x):
    return sign(x) if isinstance(x, Tensor) else (1 if x > 0 else -1 if x < 0 else 0)


divide = true_divide = div


def floor_divide(a, b):
    return binary(R["floor_divide"], a, b)


def remainder(a, b):
    return binary(R["remainder"], a, b)


def fmod(a, b):
    r = remainder(a, b)
    return where((r != 0) & (_sign_of(r) != _sign_of(a)), r - b, r)


def pow(a, b):
    if isinstance(a, Tensor) and type(b) is bool and a._dtype is D.bool_:    # PyTorch's x ** 1 and x ** 0, in bool
        return a.clone() if b else _full_bool(a, True)
    if isinstance(a, Tensor) and isinstance(b, (int, float)) and not isinstance(b, bool):
        if b == 2 and a._dtype.is_floating_point:
            return apply(MUL, a, a)
        if b == 1:
            return apply(MUL, a, 1)
        if isinstance(b, int) and b < 0 and a._dtype.category < 2:      # PyTorch's error and type (numpy's is a
            raise RuntimeError("Integers to negative integer powers are not allowed.")     # ValueError)
    if isinstance(b, Tensor) and b._dtype.category == 1:
        dt = D.result_type(a, b) if isinstance(a, Tensor) else _with_scalar(b._dtype, _pyscalar(a))
        if dt.category == 1 and dt is not D.uint8:
            return _int_pow(a, b)
    return binary(POW, a, b)


def _int_pow(a, b):
    """Integer a ** b where b may hold negative values, as PyTorch: a ** -k is the integer part of
    1 / a ** k (1 for a == 1, +-1 for a == -1 by k's parity, else 0); the primitive sees b >= 0 only."""
    neg = b < 0
    out = binary(POW, a, where(neg, 0, b))
    at_neg = where(a == 1, 1, where(a == -1, 1 - 2 * (b & 1), 0))
    return where(neg, at_neg, out)


def neg(x):
    if x._dtype is D.bool_:
        raise RuntimeError("Negation, the `-` operator, on a bool tensor is not supported. "
                           "If you are trying to invert a mask, use the `~` or `logical_not()` operator instead.")
    return apply(R["neg"], x)


negative = neg


def abs(x):
    return apply(R["abs"], x)


absolute = abs


def sign(x):
    """A bool tensor is its own sign, as in PyTorch (the primitive defines numbers only)."""
    return x.clone() if x._dtype is D.bool_ else apply(R["sign"], x)


def bitwise_not(x):
    if x._dtype.category == 2:
        raise TypeError(f"bitwise_not: not implemented for floating-point tensors ({x._dtype.name})")
    return apply(R["logical_not"] if x._dtype is D.bool_ else R["bitwise_not"], x)


def logical_not(x):
    return apply(R["logical_not"], x)


def logical_and(a, b):
    return binary(R["bitwise_and"], _tensor_arg(a).bool(), _tensor_arg(b).bool())


def logical_or(a, b):
    return binary(R["bitwise_or"], _tensor_arg(a).bool(), _tensor_arg(b).bool())


def _float_unary(name):
    op = R[name]

    def f(x):
        return apply(op, _float_of(x))
    f.__name__ = name
    f.__doc__ = f"Elementwise {name}; integer inputs are computed in the default float dtype."
    return f


exp = _float_unary("exp")
log = _float_unary("log")
sqrt = _float_unary("sqrt")
rsqrt = _float_unary("rsqrt")
sin = _float_unary("sin")
cos = _float_unary("cos")
tanh = _float_unary("tanh")
sigmoid = _float_unary("sigmoid")
log1p = _float_unary("log1p")
expm1 = _float_unary("expm1")
reciprocal = _float_unary("reciprocal")


def _int_preserving(name):
    op = R[name]

    def f(x):
        return x.clone() if x._dtype.category < 2 else apply(op, x)
    f.__name__ = name
    return f


floor = _int_preserving("floor")
ceil = _int_preserving("ceil")


def round(x, decimals: int = 0):
    if x._dtype.category < 2:
        return x.clone()
    if decimals == 0:
        return apply(R["round"], x)
    scale = 10.0 ** decimals
    return apply(R["round"], x * scale) / scale


def trunc(x):
    return where(x < 0, ceil(x), floor(x))


def square(x):
    return x * x


def isnan(x):
    return apply(R["isnan"], x) if x._dtype.is_floating_point else _full_bool(x, False)


def isfinite(x):
    return apply(R["isfinite"], x) if x._dtype.is_floating_point else _full_bool(x, True)


def isinf(x):
    return logical_not(isfinite(x) | isnan(x))


def _full_bool(x, v):
    return apply(R["full"], shape=x._data.shape, value=v, dtype=D.bool_)


def relu(x):
    """NaN passes through, and the gradient is PyTorch's threshold_backward: 0 where x <= 0, else 1."""
    return where(x <= 0, 0, x)


def maximum(a, b):
    return binary(R["maximum"], a, b)


def minimum(a, b):
    return binary(R["minimum"], a, b)


def clamp(x, min=None, max=None):
    """Gradient passes where min <= x <= max (inclusive), as in PyTorch."""
    if min is None and max is None:
        raise RuntimeError("torch.clamp: At least one of 'min' or 'max' must not be None")
    out = x
    if min is not None:
        out = where(out < min, _scalar_like(min, out), out)
    if max is not None:
        out = where(out > max, _scalar_like(max, out), out)
    return out


clip = clamp


def _scalar_like(v, x):
    if isinstance(v, Tensor):
        return v
    if x._dtype.category < 2 and isinstance(v, float):
        return v
    return v


def where(condition, input=None, other=None):
    if input is None and other is None:
        return nonzero(condition, as_tuple=True)
    if not isinstance(condition, Tensor):
        condition = _tensor_arg(condition)
    if condition._dtype is not D.bool_:
        condition = condition != 0
    ti, to = isinstance(input, Tensor), isinstance(other, Tensor)
    if ti and to:
        if input._dtype is not other._dtype:
            dt = D.result_type(input, other)
            input, other = _cast(input, dt), _cast(other, dt)
    elif ti:
        other = _pyscalar(other)
        dt = _with_scalar(input._dtype, other)
        input, other = _cast(input, dt), _fits(other, dt)
    elif to:
        input = _pyscalar(input)
        dt = _with_scalar(other._dtype, input)
        input, other = _fits(input, dt), _cast(other, dt)
    else:
        dt = D.result_type(_pyscalar(input), _pyscalar(other))
        from .creation import full
        input = full((), input, dtype=dt)
    return apply(WHERE, condition, input, other)


_FLOAT_MAX = {D.float16: 65504.0, D.bfloat16: 3.3895313892515355e38, D.float32: 3.4028234663852886e38}


def _fits(s, dt):
    """A Python number `where`, `clamp` or `masked_fill` writes into a `dt` result, refused as PyTorch refuses
    one `dt` can't hold (binary arithmetic wraps instead): int32 clamp(max=2**40) was 0 everywhere."""
    if type(s) is int and dt.category == 1:
        info = np.iinfo(dt.np)
        bad = not info.min <= s <= info.max
    elif (type(s) is int or type(s) is float) and dt in _FLOAT_MAX:
        bad = _FLOAT_MAX[dt] < _py_abs(s) < float("inf")
    else:
        return s
    if bad:
        raise RuntimeError(f"value cannot be converted to type {dt.name} without overflow")
    return s


def masked_fill(x, mask, value):
    if isinstance(value, Tensor):
        if value.dim() != 0:
            raise RuntimeError(f"masked_fill only supports a 0-dimensional value tensor, but got tensor with "
                               f"{value.dim()} dimension(s).")
        value = _cast(value, x._dtype)
    elif x._dtype.category < 2 and isinstance(value, float):
        value = int(value) if x._dtype is not D.bool_ else bool(value)
    value = _fits(value, x._dtype)
    if mask._dtype is not D.bool_:
        raise RuntimeError(f"masked_fill_ only supports boolean masks, but got mask with dtype {mask._dtype.name}")
    return apply(WHERE, mask, value, x)


def lerp(a, b, weight):
    return a + (b - a) * weight


def nonzero(x, *, as_tuple=False):
    if STATE_tracer():
        STATE_tracer().on_value(x, "nonzero", None)
    a = np.asarray(x._data)
    idx = np.nonzero(np.atleast_1d(a))         # a 0-d tensor counts as 1-d, as in PyTorch (numpy refuses it)
    from .creation import from_numpy
    if as_tuple:
        return tuple(from_numpy(np.ascontiguousarray(i, dtype=np.int64)).to(x.device) for i in idx)
    return from_numpy(np.ascontiguousarray(np.stack(idx, axis=1)[:, :a.ndim], dtype=np.int64)).to(x.device)


def STATE_tracer():
    from .ops.dispatch import STATE
    return STATE.tracer


# ---------------------------------------------------------------- reductions
def _dims(x, dim, what="reduce"):
    n = x._data.ndim
    if dim is None:
        return tuple(range(n))
    if isinstance(dim, (list, tuple)):
        if len(dim) == 0:
            return tuple(range(n))
        ds = sorted({_wrap_dim(d, n, what) for d in dim})
        if len(ds) != len(dim):
            raise RuntimeError(f"dim {list(dim)} appears multiple times in the list of dims")
        return tuple(ds) if n else ()
    d = _wrap_dim(dim, n, what)
    return (d,) if n else ()


def _with_dtype(reduce, x, dtype, **attrs):
    """`reduce` computed in `dtype` when one is given, its result in that dtype too: an integer sum
    widens to int64 only without one (x.sum(dtype=tt.int32) is int32, as in PyTorch)."""
    if dtype is None:
        return apply(reduce, x, **attrs)
    dt = D.as_dtype(dtype)
    return _cast(apply(reduce, _cast(x, dt), **attrs), dt)


def sum(x, dim=None, keepdim=False, *, dtype=None):
    return _with_dtype(SUM, x, dtype, dims=_dims(x, dim, "sum"), keepdim=keepdim)


def sum_to_shape(g, shape):
    """Sum a broadcast result back down to `shape` (the gradient of broadcasting)."""
    shape = tuple(shape)
    gshape = g._data.shape
    if gshape == shape:
        return g
    lead = len(gshape) - len(shape)
    dims = tuple(range(lead)) + tuple(i + lead for i, s in enumerate(shape) if s == 1 and gshape[i + lead] != 1)
    out = apply(SUM, g, dims=dims, keepdim=True) if dims else g
    return out.reshape(shape) if out._data.shape != shape else out


def _wide(x):
    """A float16/bfloat16 tensor as float32: PyTorch computes mean, var, norm and softmax of halves in float and
    rounds once (a float16 mean of 1000 x 100.0 was inf: its sum overflowed before the division)."""
    return apply(CAST, x, dtype=D.float32) if x._dtype in _HALF else x


def mean(x, dim=None, keepdim=False, *, dtype=None):
    if dtype is not None:
        x = _cast(x, D.as_dtype(dtype))
    if not x._dtype.is_floating_point:
        raise RuntimeError(f"mean(): could not infer output dtype. Input dtype must be either a floating point "
                           f"or complex dtype. Got: {x._dtype.name}")
    dt, x = x._dtype, _wide(x)
    dims = _dims(x, dim, "mean")
    n = 1
    for d in dims:
        n *= x._data.shape[d]
    s = apply(SUM, x, dims=dims, keepdim=keepdim)
    return _cast(s / n if n else s * float("nan"), dt)


def var(x, dim=None, unbiased=None, keepdim=False, *, correction=None):
    if isinstance(unbiased, (int, tuple, list)) and not isinstance(unbiased, bool) and dim is None:
        dim, unbiased = unbiased, None
    if isinstance(dim, bool) and unbiased is None:      # x.var(False): PyTorch's var(unbiased) overload, not dim 0
        dim, unbiased = None, dim
    if correction is None:
        correction = 0 if unbiased is False else 1
    dims = _dims(x, dim, "var")
    n = 1
    for d in dims:
        n *= x._data.shape[d]
    dt, x = x._dtype, _wide(x)
    m = mean(x, dims, keepdim=True)
    dev = x - m
    ss = apply(SUM, dev * dev, dims=dims, keepdim=keepdim)
    return _cast(ss / _py_max(n - correction, 0), dt)   # no degrees of freedom left: inf, or nan for 0/0, as PyTorch


def std(x, dim=None, unbiased=None, keepdim=False, *, correction=None):
    """The root of var whose gradient is 0 where var == 0 (a constant slice), as PyTorch's, not 0 * inf;
    a float16/bfloat16 one computed in float32 and rounded once."""
    return _cast(_root(var(_wide(x), dim, unbiased, keepdim, correction=correction), 2), x._dtype)


def var_mean(x, dim=None, unbiased=None, keepdim=False, *, correction=None):
    return var(x, dim, unbiased, keepdim, correction=correction), mean(x, dim, keepdim)


def std_mean(x, dim=None, unbiased=None, keepdim=False, *, correction=None):
    return std(x, dim, unbiased, keepdim, correction=correction), mean(x, dim, keepdim)


def prod(x, dim=None, keepdim=False, *, dtype=None):
    return _with_dtype(R["prod"], x, dtype, dims=_dims(x, dim, "prod"), keepdim=keepdim)


def _minmax_dims(x, dim, what):
    """amax/amin's dims: over all of an empty tensor PyTorch asks for a dim (a RuntimeError), as max()."""
    if (dim is None or isinstance(dim, (list, tuple)) and not dim) and x._data.size == 0:
        raise RuntimeError(f"{what}(): Expected reduction dim to be specified for input.numel() == 0. Specify the "
                           f"reduction dim with the 'dim' argument.")
    return _dims(x, dim, what)


def amax(x, dim=None, keepdim=False):
    return apply(R["amax"], x, dims=_minmax_dims(x, dim, "amax"), keepdim=keepdim)


def amin(x, dim=None, keepdim=False):
    return apply(R["amin"], x, dims=_minmax_dims(x, dim, "amin"), keepdim=keepdim)


MinMax = collections.namedtuple("MinMax", ["values", "indices"])


def max(x, dim=None, keepdim=False, *, out=None):
    if isinstance(dim, Tensor):
        return maximum(x, dim)
    if dim is None:
        if x._data.size == 0:
            raise RuntimeError("max(): Expected reduction dim to be specified for input.numel() == 0.")
        return amax(x)
    return _select_along(x, dim, keepdim, argmax)


def min(x, dim=None, keepdim=False, *, out=None):
    if isinstance(dim, Tensor):
        return minimum(x, dim)
    if dim is None:
        if x._data.size == 0:
            raise RuntimeError("min(): Expected reduction dim to be specified for input.numel() == 0.")
        return amin(x)
    return _select_along(x, dim, keepdim, argmin)


def _select_along(x, dim, keepdim, arg):
    """(values, indices) of max/min along `dim`: the values are gathered at the returned indices, so the
    gradient goes to that one element even with ties, as in PyTorch (amax/amin share it instead)."""
    idx = arg(x, dim, keepdim=True)
    if x._data.ndim == 0:
        return MinMax(apply(R["reshape"], x, shape=()), idx)
    from .indexing import gather
    d = _wrap_dim(dim, x._data.ndim, "max")
    values = gather(x, d, idx)
    if not keepdim:
        values, idx = values.squeeze(d), idx.squeeze(d)
    return MinMax(values, idx)


def argmax(x, dim=None, keepdim=False):
    d = None if dim is None else _wrap_dim(dim, x._data.ndim, "argmax")
    return apply(R["argmax"], x, dim=d, keepdim=keepdim)


def argmin(x, dim=None, keepdim=False):
    d = None if dim is None else _wrap_dim(dim, x._data.ndim, "argmin")
    return apply(R["argmin"], x, dim=d, keepdim=keepdim)


def logsumexp(x, dim=None, keepdim=False):
    x = _float_of(x)
    dims = _dims(x, dim, "logsumexp")
    if 0 in [x._data.shape[d] for d in dims]:       # amax has no identity; the empty sum is 0, its log -inf
        out = log(apply(SUM, exp(x), dims=dims, keepdim=True))
    else:
        m = amax(x, dims, keepdim=True).detach()
        m = where(isfinite(m), m, 0.0)
        out = log(apply(SUM, exp(x - m), dims=dims, keepdim=True)) + m
    return out if keepdim else out.reshape(tuple(s for i, s in enumerate(out._data.shape) if i not in dims))


def _truth(x, dim):
    """x as bools for all/any, and whether dim is an empty list: PyTorch's all/any then reduce nothing
    (x.all(dim=()) is x != 0 elementwise), where sum(dim=()) still reduces every dim."""
    b = x if x._dtype is D.bool_ else x != 0
    return b, isinstance(dim, (list, tuple)) and not dim


def all(x, dim=None, keepdim=False):
    b, nothing = _truth(x, dim)
    if nothing:
        return b.clone() if b is x else b
    return apply(SUM, logical_not(b), dims=_dims(x, dim, "all"), keepdim=keepdim) == 0


def any(x, dim=None, keepdim=False):
    b, nothing = _truth(x, dim)
    if nothing:
        return b.clone() if b is x else b
    return apply(SUM, b, dims=_dims(x, dim, "any"), keepdim=keepdim) > 0


def cumsum(x, dim, *, dtype=None):
    return _with_dtype(R["cumsum"], x, dtype, dim=_wrap_dim(dim, x._data.ndim, "cumsum"))


def norm(x, p="fro", dim=None, keepdim=False, dtype=None):
    if dtype is not None:
        x = _cast(x, D.as_dtype(dtype))
    x = _float_of(x)
    if x._dtype in _HALF:
        return _cast(norm(_wide(x), p, dim, keepdim), x._dtype)
    if p in ("fro", 2, 2.0):
        return _root(sum(x * x, dim, keepdim), 2)
    if p in (float("inf"), "inf"):
        return amax(abs(x), dim, keepdim)
    if p in (float("-inf"), "-inf"):
        return amin(abs(x), dim, keepdim)
    if p == 1:
        return sum(abs(x), dim, keepdim)
    if p == 0:
        return sum((x != 0).to(x._dtype), dim, keepdim)
    if p > 0:                       # 0 ** p is 0, and its gradient too (not 0 * inf for p < 1)
        zero = x == 0
        return _root(sum(where(zero, 0, where(zero, 1, abs(x)) ** p), dim, keepdim), p)
    # p < 0: a zero element makes the norm 0 (|0| ** p is inf), with gradient 0 as PyTorch's (not inf * 0)
    zero = x == 0
    value = sum(where(zero, 1, abs(x)) ** p, dim, keepdim) ** (1.0 / p)
    return where(sum(zero.to(x._dtype), dim, keepdim) > 0, 0, value)


def _root(s, p):
    """s ** (1 / p) whose gradient is 0 where s == 0, as PyTorch's norm at the zero vector (the
    subgradient 0), rather than 0 * inf. Each where keeps the unused branch finite."""
    zero = s == 0
    safe = where(zero, 1, s)
    return where(zero, 0, sqrt(safe) if p == 2 else safe ** (1.0 / p))


def softmax(x, dim, dtype=None):
    if dtype is not None:
        x = _cast(x, D.as_dtype(dtype))
    x = _float_of(x)
    if x._dtype in _HALF:
        return _cast(softmax(_wide(x), dim), x._dtype)
    e = exp(x - _softmax_shift(x, dim))
    return e / sum(e, dim, keepdim=True)


def log_softmax(x, dim, dtype=None):
    if dtype is not None:
        x = _cast(x, D.as_dtype(dtype))
    x = _float_of(x)
    if x._dtype in _HALF:
        return _cast(log_softmax(_wide(x), dim), x._dtype)
    shifted = x - _softmax_shift(x, dim)
    return shifted - log(sum(exp(shifted), dim, keepdim=True))


def _softmax_shift(x, dim):
    """The max over `dim` (kept, no gradient) that softmax subtracts before exp; 0 for an empty tensor,
    whose softmax is empty (PyTorch's), where amax over an empty dim has no value."""
    return amax(x, dim, keepdim=True).detach() if x._data.size else 0


# ---------------------------------------------------------------- linear algebra
def matmul(a, b):
    if not isinstance(a, Tensor) or not isinstance(b, Tensor):
        raise TypeError(f"matmul: expected Tensor operands, got {type(a).__name__} and {type(b).__name__}")
    if a._data.ndim == 0 or b._data.ndim == 0:
        raise RuntimeError(f"both arguments to matmul need to be at least 1D, but they are {a._data.ndim}D and "
                           f"{b._data.ndim}D")
    if a._dtype is not b._dtype:
        raise RuntimeError(f"expected m1 and m2 to have the same dtype, but got: {a._dtype.name} != "
                           f"{b._dtype.name}")
    squeeze_a = a._data.ndim == 1
    squeeze_b = b._data.ndim == 1
    if squeeze_a:
        a = a.reshape(1, -1)
    if squeeze_b:
        b = b.reshape(-1, 1)
    if a._data.shape[-1] != b._data.shape[-2]:
        sa, sb = a._data.shape, b._data.shape
        raise RuntimeError(f"mat1 and mat2 shapes cannot be multiplied ({sa[-2]}x{sa[-1]} and {sb[-2]}x{sb[-1]})")
    out = apply(R["matmul"], a, b)
    if squeeze_a or squeeze_b:
        shape = out._data.shape
        shape = shape[:-2] + (() if squeeze_a else shape[-2:-1]) + (() if squeeze_b else shape[-1:])
        out = out.reshape(shape)
    return out


def mm(a, b):
    if a.dim() != 2 or b.dim() != 2:
        raise RuntimeError(f"mm: expected 2-D tensors, got {a.dim()}-D and {b.dim()}-D")
    return matmul(a, b)


def bmm(a, b):
    if a.dim() != 3 or b.dim() != 3:
        raise RuntimeError(f"batch1 must be a 3D tensor, got {a.dim()}-D and {b.dim()}-D")
    if a.shape[0] != b.shape[0]:
        raise RuntimeError(f"bmm: batch sizes differ: {a.shape[0]} and {b.shape[0]}")
    return matmul(a, b)


def mv(a, v):
    return matmul(a, v)


def dot(a, b):
    if a.dim() != 1 or b.dim() != 1:
        raise RuntimeError("1D tensors expected, but got " f"{a.dim()}D and {b.dim()}D tensors")
    return matmul(a, b)


def outer(a, b):
    return a.reshape(-1, 1) * b.reshape(1, -1)


ger = outer


def einsum(equation: str, *operands):
    """Einstein summation, lowered to permutes, diagonals, sums and batched matmuls."""
    from .einsum import einsum as _einsum
    if len(operands) == 1 and isinstance(operands[0], (list, tuple)):
        operands = tuple(operands[0])
    return _einsum(equation, *operands)


__all__ = [n for n, v in list(globals().items())
           if not n.startswith("_") and getattr(v, "__module__", None) == __name__]
