"""Sample inputs for every primitive op and for the public composites, OpInfo-style.

`SAMPLES[name]` covers the primitive `tracetorch.ops.REGISTRY[name]` and
`PUBLIC_SAMPLES[name]` a public function built from primitives. Each entry
(`OpSamples`) lists the dtypes it supports and makes, for one dtype, a list of
`Sample`s: positional inputs (numpy arrays or Python scalars), attrs and a
numpy reference. One table drives the eager forward, inference and gradient
tests and the JIT's registry-driven tests, so a new op needs one entry here to
be tested everywhere:

    for s in op_samples("add", tt.float32, rng):
        out = s.run(layout="transposed")         # tensors made with tracetorch views
        assert_close(out, s.expected(), s.result_dtype())

Samples cover broadcasting, 0-d and size-0 shapes. Those marked `grad=True`
(the default) keep inputs away from kinks, ties and poles, so finite
differences are valid there.
"""
from __future__ import annotations

import warnings
from dataclasses import dataclass, replace
from functools import partial
from typing import Callable

import numpy as np

import tracetorch as tt
from tracetorch.dtypes import (DType, bfloat16, bool_, float16, float32, float64, from_numpy_dtype, int16, int32,
                               int64, round_bfloat16, uint8)
from tracetorch.ops import REGISTRY, apply

FLOATS = (float32, float64)
LOW_PRECISION = (float16, bfloat16)
INTS = (int64, int32)
SMALL_INTS = (uint8, int16)
BOOL = (bool_,)
LAYOUTS = ("contiguous", "transposed", "strided")


# ---------------------------------------------------------------- the records
@dataclass(frozen=True)
class Sample:
    """One call: `fn(*tensors(inputs), **attrs)` should equal `ref(*inputs, **attrs)`."""
    inputs: tuple
    attrs: dict
    ref: Callable
    desc: str = ""
    grad: bool = True                   # fit for finite differences (float64 samples)
    fn: Callable | None = None          # set by op_samples / public_samples
    dtype: DType | None = None          # the dtype under test; float32 arrays stand for it when bfloat16

    def __repr__(self) -> str:
        return f"Sample({self.desc})"

    def tensor_dtype(self, value: np.ndarray) -> DType:
        if self.dtype is bfloat16 and value.dtype == np.float32:
            return bfloat16
        return from_numpy_dtype(value.dtype)

    def tensors(self, layout: str = "contiguous") -> list:
        """The inputs as tracetorch tensors (scalars stay scalars), laid out as asked."""
        return [to_tensor(v, self.tensor_dtype(v), layout) if isinstance(v, np.ndarray) else v
                for v in self.inputs]

    def result_dtype(self) -> DType:
        """What float32 references stand for: the `dtype` attr of creation ops and cast, else the sample's."""
        return self.attrs.get("dtype", self.dtype)

    def run(self, layout: str = "contiguous"):
        return self.fn(*self.tensors(layout), **self.attrs)

    def expected(self):
        with np.errstate(all="ignore"), warnings.catch_warnings():
            warnings.simplefilter("ignore", RuntimeWarning)     # numpy's "mean of empty slice" and kin
            return self.ref(*self.inputs, **self.attrs)

    def grad_indices(self) -> tuple:
        """Inputs to differentiate: every floating-point array."""
        return tuple(i for i, v in enumerate(self.inputs) if isinstance(v, np.ndarray) and v.dtype.kind == "f")


@dataclass(frozen=True)
class OpSamples:
    make: Callable                      # (dtype, rng) -> list[Sample]
    dtypes: tuple
    differentiable: bool = True         # public composites only; primitives say it in the registry


def op_samples(name: str, dtype: DType, rng: np.random.Generator) -> list[Sample]:
    """Samples of primitive `name` for `dtype`, each calling `apply(op, ...)`."""
    fn = partial(apply, REGISTRY[name])
    return [replace(s, fn=fn, dtype=dtype) for s in SAMPLES[name].make(dtype, rng)]


def public_samples(name: str, dtype: DType, rng: np.random.Generator) -> list[Sample]:
    """Samples of the public composite `name` for `dtype`."""
    return [replace(s, dtype=dtype) for s in PUBLIC_SAMPLES[name].make(dtype, rng)]


# ---------------------------------------------------------------- tensors and comparison
def to_tensor(value: np.ndarray, dtype: DType, layout: str = "contiguous"):
    """A tensor equal to `value`: contiguous, or a non-contiguous view made with tracetorch ops
    ("transposed": permute of a transposed copy; "strided": every other element of a wider one)."""
    if layout == "transposed" and value.ndim >= 2:
        order = tuple(reversed(range(value.ndim)))
        return tt.tensor(np.ascontiguousarray(value.transpose(order)), dtype=dtype).permute(*order)
    if layout in ("transposed", "strided") and value.ndim >= 1:
        wide = np.zeros(value.shape[:-1] + (2 * value.shape[-1],), value.dtype)
        wide[..., ::2] = value
        return tt.tensor(wide, dtype=dtype)[..., ::2]
    if layout not in LAYOUTS:
        raise ValueError(f"unknown layout {layout!r}; expected one of {LAYOUTS}")
    return tt.tensor(value, dtype=dtype)


def tolerance(dtype: DType) -> tuple[float, float]:
    """(rtol, atol) for comparing a result of `dtype` with a reference computed in numpy."""
    return {float64: (1e-9, 1e-12), float32: (1e-5, 1e-6), float16: (4e-3, 1e-3),
            bfloat16: (1.6e-2, 1e-2)}.get(dtype, (0.0, 0.0))


def expected_dtype(ref_out: np.ndarray, dtype: DType) -> DType:
    """The dtype a result should have, read off the numpy reference (float32 stands for bfloat16 when
    `dtype` is bfloat16)."""
    if dtype is bfloat16 and ref_out.dtype == np.float32:
        return bfloat16
    return from_numpy_dtype(ref_out.dtype)


def as_tuple(out) -> tuple:
    return tuple(out) if isinstance(out, (tuple, list)) else (out,)


def assert_close(actual, expected, dtype: DType, what: str = "") -> None:
    """Compare tensor(s) with numpy reference(s): shape, dtype, then values within `dtype`'s tolerance."""
    actual, expected = as_tuple(actual), as_tuple(expected)
    assert len(actual) == len(expected), f"{what}: {len(actual)} outputs, expected {len(expected)}"
    for k, (a, e) in enumerate(zip(actual, expected)):
        e = np.asarray(e)
        label = f"{what} output {k}"
        assert tuple(a.shape) == e.shape, f"{label}: shape {tuple(a.shape)}, expected {e.shape}"
        want = expected_dtype(e, dtype)
        assert a.dtype is want, f"{label}: dtype {a.dtype.name}, expected {want.name}"
        got = a.detach().numpy()
        if want.is_floating_point:
            rtol, atol = tolerance(want)
            np.testing.assert_allclose(got.astype(np.float64), e.astype(np.float64), rtol=rtol, atol=atol,
                                       equal_nan=True, err_msg=label)
        else:
            np.testing.assert_array_equal(got, e, err_msg=label)


# ---------------------------------------------------------------- value makers
def values(rng, shape, dtype: DType, low=-2.0, high=2.0) -> np.ndarray:
    """Random values of `dtype`: uniform floats in [low, high), integers in [low, high], coin-flip bools."""
    shape = tuple(shape)
    if dtype is bool_:
        return np.asarray(rng.random(shape) < 0.5)
    if not dtype.is_floating_point:
        return np.asarray(rng.integers(int(low), int(high), size=shape, endpoint=True)).astype(dtype.np)
    return _as_float(np.asarray(rng.uniform(low, high, shape)), dtype)


def away_from_zero(rng, shape, dtype: DType, low=0.5, high=2.0) -> np.ndarray:
    """Random magnitudes in [low, high) with random signs: no zeros, no kinks at 0."""
    sign = np.where(rng.random(tuple(shape)) < 0.5, -1, 1)
    if dtype.is_floating_point:
        return _as_float(sign * np.asarray(rng.uniform(low, high, tuple(shape))), dtype)
    low, high = max(1, int(np.ceil(low))), max(1, int(high))
    return np.asarray(sign * rng.integers(low, high, size=tuple(shape), endpoint=True)).astype(dtype.np)


def small_ints(rng, shape, dtype: DType, low=-2, high=2) -> np.ndarray:
    """Few distinct values, so that ties and equalities actually occur."""
    ints = np.asarray(rng.integers(low, high, size=tuple(shape), endpoint=True))
    if dtype is bool_:
        return ints > (low + high) / 2
    return _as_float(ints, dtype) if dtype.is_floating_point else ints.astype(dtype.np)


def specials(dtype: DType) -> np.ndarray:
    return _as_float(np.array([0.0, -0.0, 1.0, -1.0, 0.5, np.inf, -np.inf, np.nan]), dtype)


def scalar(dtype: DType, f: float = 1.5, i: int = 2, b: bool = True):
    """A Python scalar of `dtype`'s category (a primitive takes it at the tensor's dtype)."""
    return f if dtype.is_floating_point else b if dtype is bool_ else i


def _as_float(a, dtype: DType) -> np.ndarray:
    a = np.asarray(a)
    if dtype is bfloat16:
        return np.asarray(round_bfloat16(a.astype(np.float32)))
    return a.astype(dtype.np)


def np_cast(x, dtype: DType) -> np.ndarray:
    """Reference dtype conversion (bfloat16: float32 rounded to 8 mantissa bits)."""
    x = np.asarray(x)
    if dtype is bfloat16:
        return round_bfloat16(x.astype(np.float32))
    return x.astype(dtype.np)


def _sum_dtype(x):
    return np.int64 if x.dtype.kind in "biu" else None


# ---------------------------------------------------------------- elementwise
UNARY_SHAPES = ((3, 4), (), (0, 3), (2, 3, 2))
BINARY_SHAPES = (((3, 4), (3, 4)), ((3, 1), (1, 4)), ((2, 3, 4), (4,)), ((), (2, 3)), ((0, 3), (1, 3)))


def _unary(ref, make_x=values, with_specials=True, **bounds):
    def make(dt, rng):
        out = [Sample((make_x(rng, s, dt, **bounds),), {}, ref, f"shape={s}") for s in UNARY_SHAPES]
        if with_specials and dt.is_floating_point:
            out.append(Sample((specials(dt),), {}, ref, "0, -0, +-1, +-inf, nan", grad=False))
        return out
    return make


def _off_integers(rng, shape, dtype, **_):
    """Values whose fractional part is in [0.15, 0.35] or [0.65, 0.85]: away from floor/round jumps."""
    k = rng.integers(-3, 3, size=tuple(shape))
    frac = rng.uniform(0.15, 0.35, tuple(shape)) + np.where(rng.random(tuple(shape)) < 0.5, 0.0, 0.5)
    return _as_float(k + frac, dtype)


def _rounding(ref):
    def make(dt, rng):
        out = _unary(ref, _off_integers)(dt, rng)
        halves = _as_float(np.array([0.5, 1.5, 2.5, -0.5, -1.5, -2.5, 3.0, -3.0]), dt)
        return out + [Sample((halves,), {}, ref, "halves and integers", grad=False)]
    return make


def _binary(ref, make_a=values, make_b=values):
    """Samples over BINARY_SHAPES plus a Python scalar on either side; make_a/make_b(rng, shape, dtype)."""
    def make(dt, rng):
        out = [Sample((make_a(rng, sa, dt), make_b(rng, sb, dt)), {}, ref, f"{sa} with {sb}")
               for sa, sb in BINARY_SHAPES]
        s = scalar(dt)
        out.append(Sample((make_a(rng, (3, 4), dt), s), {}, ref, f"(3, 4) with scalar {s!r}"))
        out.append(Sample((s, make_b(rng, (2, 3), dt)), {}, ref, f"scalar {s!r} with (2, 3)"))
        return out
    return make


def _with_extra(make, *extra):
    """Add hand-written samples (functions of dtype and rng) to a maker's list."""
    def both(dt, rng):
        return make(dt, rng) + [s for e in extra for s in e(dt, rng)]
    return both


def _minmax_extra(ref):
    def extra(dt, rng):
        a = _cast_list([1, 2, 3, -1], dt)
        b = _cast_list([1, 5, 3, -2], dt)
        out = [Sample((a, b), {}, ref, "ties", grad=False)]
        if dt.is_floating_point:
            out.append(Sample((_cast_list([np.nan, 1.0, 2.0], dt), _cast_list([1.0, np.nan, 0.0], dt)), {}, ref,
                              "nan propagates", grad=False))
        return out
    return extra


def _cast_list(v, dt):
    return np_cast(np.array(v), dt)


def _pow_base(rng, shape, dt):
    return values(rng, shape, dt, 0.5, 2.0) if dt.is_floating_point else values(rng, shape, dt, -3, 3)


def _pow_exponent(rng, shape, dt):
    return values(rng, shape, dt, -2.0, 2.0) if dt.is_floating_point else values(rng, shape, dt, 0, 3)


def _pow_extra(dt, rng):
    if not dt.is_floating_point:
        return [Sample((values(rng, (3, 4), dt, -3, 3), 2), {}, np.power, "int ** 2")]
    x = values(rng, (3, 4), dt, 0.5, 2.0)
    zeros = (_cast_list([0.0, 0.0, 0.0, 0.0, 2.0], dt), _cast_list([0.0, 2.0, 0.5, 1.0, -1.0], dt))
    return [Sample((x, 2.0), {}, np.power, "x ** 2.0"), Sample((x, 0.5), {}, np.power, "x ** 0.5"),
            Sample((x, -1.5), {}, np.power, "x ** -1.5"), Sample((x, 0.0), {}, np.power, "x ** 0.0"),
            Sample((2.0, values(rng, (2, 3), dt)), {}, np.power, "2.0 ** x"),
            Sample(zeros, {}, np.power, "zero base", grad=False)]


def _remainder_samples(ref):
    """a = b * (k + frac) with frac in [0.2, 0.8]: away from the jumps of remainder."""
    def make(dt, rng):
        out = []
        for sa, sb in (((3, 4), (3, 4)), ((3, 4), (1, 4)), ((), ()), ((0, 3), (1, 3)), ((2, 3), ())):
            b = away_from_zero(rng, sb, dt, 0.5, 2.0) if dt.is_floating_point else away_from_zero(rng, sb, dt, 1, 4)
            if dt.is_floating_point:
                q = rng.integers(-3, 3, size=sa) + rng.uniform(0.2, 0.8, sa)
                a = _as_float(np.broadcast_to(b, sa) * q, dt)
            else:
                a = values(rng, sa, dt, -9, 9)
            out.append(Sample((a, b), {}, ref, f"{sa} with {sb}"))
        s = 1.5 if dt.is_floating_point else 3
        out.append(Sample((out[0].inputs[0], s), {}, ref, f"(3, 4) with scalar {s}", grad=False))
        out.append(Sample((-7 if not dt.is_floating_point else -7.5, out[0].inputs[1]), {}, ref, "scalar with (3, 4)",
                          grad=False))
        return out
    return make


def _compare(ref):
    return _binary(ref, small_ints, small_ints)


def _where_make(dt, rng):
    def cond(s):
        return rng.random(s) < 0.5

    def x(s):
        return values(rng, s, dt)
    out = [Sample((cond(sc), x(sa), x(sb)), {}, np.where, f"{sc}, {sa}, {sb}")
           for sc, sa, sb in (((3, 4), (3, 4), (3, 4)), ((3, 1), (1, 4), ()), ((), (2, 3), (2, 3)),
                              ((0, 3), (1, 3), (0, 1)), ((2, 3, 4), (4,), (3, 1)))]
    s = scalar(dt, -0.5, 7, False)
    out += [Sample((cond((3, 4)), x((3, 4)), s), {}, _np_where_scalar, f"tensor, scalar {s!r}"),
            Sample((cond((3, 4)), s, x((1, 4))), {}, _np_where_scalar, f"scalar {s!r}, tensor")]
    return out


def _np_where_scalar(c, a, b):
    arr = a if isinstance(a, np.ndarray) else b
    return np.where(c, a, b).astype(arr.dtype)


CAST_TARGETS = (float32, float64, float16, bfloat16, int64, int32, int16, uint8, bool_)


def _cast_make(dt, rng):
    out = []
    for target in CAST_TARGETS:
        low = 0 if target is uint8 else -3
        x = values(rng, (3, 4), dt, low, 3.0)
        fit = dt is float64 and target is float64
        out.append(Sample((x,), {"dtype": target}, np_cast, f"to {target.name}", grad=fit))
    out.append(Sample((values(rng, (), dt),), {"dtype": float64}, np_cast, "0-d to float64"))
    out.append(Sample((values(rng, (0, 2), dt),), {"dtype": int64}, np_cast, "empty to int64", grad=False))
    if dt.is_floating_point:
        out.append(Sample((_cast_list([2.7, -2.7, 0.4, -0.4, 0.0], dt),), {"dtype": int64}, np_cast,
                          "float to int truncates toward 0", grad=False))
    return out


# ---------------------------------------------------------------- reductions and scans
REDUCE_CASES = (((3, 4), (0,), False), ((3, 4), (1,), True), ((3, 4), (0, 1), False), ((2, 3, 4), (0, 2), True),
                ((), (), False), ((), (), True), ((0, 3), (0,), False), ((0, 3), (1,), True))


def _reduce(np_fn, make_x=values, empty_ok=True, **bounds):
    """Samples over REDUCE_CASES; sum and prod of integers and bools accumulate in int64."""
    def ref(x, dims, keepdim):
        if np_fn in (np.sum, np.prod) and x.dtype.kind in "biu":
            return np_fn(x, axis=dims, keepdims=keepdim, dtype=np.int64)
        return np_fn(x, axis=dims, keepdims=keepdim)

    def make(dt, rng):
        out = []
        for shape, dims, keepdim in REDUCE_CASES:
            if not empty_ok and any(shape[d] == 0 for d in dims):
                continue
            x = make_x(rng, shape, dt, **bounds) if dt.is_floating_point else values(rng, shape, dt)
            out.append(Sample((x,), {"dims": dims, "keepdim": keepdim}, ref, f"{shape} dims={dims} keepdim={keepdim}"))
        return out
    return make


def _prod_zeros(dt, rng):
    """Rows with no, one, two and three zeros: the gradient is the product of the others (never 0/0) and,
    prod being multilinear, finite differences are exact there too."""
    if not dt.is_floating_point:
        return []
    x = _as_float([[2.0, 0.0, 3.0, 0.5], [1.5, 4.0, 0.5, 2.0], [0.0, 0.0, 3.0, 1.5], [0.0, 2.0, 0.0, 0.0]], dt)
    return [Sample((x,), {"dims": dims, "keepdim": False}, lambda a, dims, keepdim: np.prod(a, axis=dims),
                   f"zeros dims={dims}") for dims in ((1,), (0,), (0, 1))]


def _minmax_reduce(np_fn):
    base = _reduce(np_fn, empty_ok=False)

    def make(dt, rng):
        out = base(dt, rng)
        ties = small_ints(rng, (4, 5), dt, -1, 1)
        return out + [Sample((ties,), {"dims": (1,), "keepdim": False}, out[0].ref, "ties", grad=False)]
    return make


def _np_arg(np_fn):
    def ref(x, dim, keepdim):
        if dim is None:
            r = np.asarray(np_fn(x.reshape(-1)), dtype=np.int64)
            return r.reshape((1,) * x.ndim) if keepdim else r
        if x.ndim == 0:
            return np.zeros((), np.int64)
        return np_fn(x, axis=dim, keepdims=keepdim).astype(np.int64)
    return ref


def _arg_make(np_fn):
    def make(dt, rng):
        cases = (((3, 4), 0, False), ((3, 4), 1, True), ((3, 4), None, False), ((3, 4), None, True),
                 ((2, 3, 4), 2, False), ((), None, False), ((), 0, True), ((0, 3), 1, False))
        out = [Sample((values(rng, s, dt),), {"dim": d, "keepdim": k}, _np_arg(np_fn), f"{s} dim={d} keepdim={k}")
               for s, d, k in cases]
        out.append(Sample((small_ints(rng, (4, 6), dt, 0, 1),), {"dim": 1, "keepdim": False}, _np_arg(np_fn),
                          "ties: first index"))
        return out
    return make


def _np_cumsum(x, dim):
    if x.ndim == 0:
        return x.astype(np.int64) if x.dtype.kind in "biu" else x.copy()
    return np.cumsum(x, axis=dim, dtype=_sum_dtype(x))


def _cumsum_make(dt, rng):
    cases = (((3, 4), 0), ((3, 4), 1), ((2, 3, 4), 2), ((), 0), ((0, 3), 0), ((5,), 0))
    return [Sample((values(rng, s, dt),), {"dim": d}, _np_cumsum, f"{s} dim={d}") for s, d in cases]


# ---------------------------------------------------------------- movement
def _reshape_make(dt, rng):
    cases = (((3, 4), (4, 3)), ((3, 4), (12,)), ((2, 3, 4), (6, 4)), ((), (1, 1)), ((1, 1), ()), ((0, 3), (3, 0)))
    return [Sample((values(rng, s, dt),), {"shape": t}, lambda x, shape: x.reshape(shape), f"{s} -> {t}")
            for s, t in cases]


def _permute_make(dt, rng):
    cases = (((2, 3, 4), (2, 0, 1)), ((3, 4), (1, 0)), ((), ()), ((0, 3), (1, 0)), ((2, 3, 4), (0, 1, 2)))
    return [Sample((values(rng, s, dt),), {"dims": d}, lambda x, dims: np.transpose(x, dims), f"{s} dims={d}")
            for s, d in cases]


def _expand_make(dt, rng):
    cases = (((3, 1), (3, 4)), ((4,), (2, 3, 4)), ((), (2, 3)), ((1, 0), (3, 0)), ((2, 1, 3), (2, 4, 3)),
             ((3, 4), (3, 4)))
    return [Sample((values(rng, s, dt),), {"shape": t}, lambda x, shape: np.broadcast_to(x, shape).copy(),
                   f"{s} -> {t}") for s, t in cases]


SLICE_CASES = (((5, 6), (1, 0), (4, 6), (2, 3)), ((7,), (2,), (2,), (1,)), ((), (), (), ()),
               ((3, 4, 5), (0, 1, 2), (3, 4, 5), (1, 2, 1)), ((4, 3), (3, 0), (4, 3), (5, 1)))


def _slice_key(starts, stops, steps):
    return tuple(slice(a, b, c) for a, b, c in zip(starts, stops, steps))


def _slice_make(dt, rng):
    return [Sample((values(rng, s, dt),), {"starts": a, "stops": b, "steps": c},
                   lambda x, starts, stops, steps: x[_slice_key(starts, stops, steps)], f"{s} [{a}:{b}:{c}]")
            for s, a, b, c in SLICE_CASES]


def _np_slice_scatter(base, src, starts, stops, steps):
    out = base.copy()
    out[_slice_key(starts, stops, steps)] = src
    return out


def _slice_scatter_make(dt, rng):
    out = []
    for s, a, b, c in SLICE_CASES:
        region = np.zeros(s)[_slice_key(a, b, c)].shape
        out.append(Sample((values(rng, s, dt), values(rng, region, dt)), {"starts": a, "stops": b, "steps": c},
                          _np_slice_scatter, f"{s} [{a}:{b}:{c}] <- {region}"))
    a, b, c = (1, 0), (4, 6), (2, 3)
    out.append(Sample((values(rng, (5, 6), dt), values(rng, (1, 2), dt)), {"starts": a, "stops": b, "steps": c},
                      _np_slice_scatter, "broadcast src (1, 2)"))
    out.append(Sample((values(rng, (5, 6), dt), scalar(dt)), {"starts": a, "stops": b, "steps": c},
                      _np_slice_scatter, "scalar src"))
    return out


def _cat_make(dt, rng):
    cases = ((((2, 3), (4, 3)), 0), (((2, 3), (2, 1), (2, 2)), 1), (((0, 3), (2, 3)), 0), (((3,), (2,)), 0),
             (((2, 0), (2, 3)), 1), (((4,),), 0), (((1, 2, 3), (1, 2, 3)), 2))
    return [Sample(tuple(values(rng, s, dt) for s in shapes), {"dim": d},
                   lambda *xs, dim: np.concatenate(xs, axis=dim), f"{shapes} dim={d}") for shapes, d in cases]


def _idx(v):
    return np.array(v, dtype=np.int64)


def _np_index(x, *idx, dims):
    key = [slice(None)] * x.ndim
    for d, i in zip(dims, idx):
        key[d] = i
    return x[tuple(key)]


def _index_make(dt, rng):
    cases = (((5, 4), (_idx([0, 3, -1, 3]),), (0,), "dim 0, negative and repeated"),
             ((5, 4), (_idx([[0], [2]]), _idx([1, 3])), (0, 1), "two broadcast indices"),
             ((3, 4, 5), (_idx([0, 2]), _idx([4, -5])), (0, 2), "non-adjacent dims"),
             ((3, 4, 5), (_idx([[1, 2], [3, 0]]),), (1,), "2-D index in the middle"),
             ((5, 4), (_idx([], ),), (1,), "empty index"),
             ((4,), (_idx(2),), (0,), "0-d index"),
             ((3, 4), (np.array([2, 0], np.int32),), (1,), "int32 index"))
    return [Sample((values(rng, s, dt),) + idx, {"dims": d}, _np_index, f"{s} {desc}") for s, idx, d, desc in cases]


def _np_index_put(x, v, *idx, dims, accumulate):
    out = x.copy()
    key = [slice(None)] * x.ndim
    for d, i in zip(dims, idx):
        key[d] = i
    if accumulate:
        np.add.at(out, tuple(key), v)
    else:
        out[tuple(key)] = v
    return out


def _index_put_make(dt, rng):
    out = []
    cases = (((5, 4), (_idx([0, 3, -1]),), (0,), False, (3, 4), "rows, negative"),
             ((5, 4), (_idx([0, 4, -1, 0]),), (0,), True, (4, 4), "accumulate duplicates (4 is -1)"),
             ((3, 4, 5), (_idx([0, 2]), _idx([4, -4])), (0, 2), False, (2, 4), "non-adjacent dims"),
             ((5, 4), (_idx([[0], [2]]), _idx([1, 3])), (0, 1), True, (1, 2), "broadcast value"),
             ((5, 4), (_idx([1, 3]),), (0,), False, (), "0-d value"),
             ((5, 4), (_idx([]),), (1,), True, (5, 0), "empty index"))
    for s, idx, dims, acc, vs, desc in cases:
        if dt is bool_ and acc:
            continue
        out.append(Sample((values(rng, s, dt), values(rng, vs, dt)) + idx, {"dims": dims, "accumulate": acc},
                          _np_index_put, f"{s} {desc}"))
    out.append(Sample((values(rng, (5, 4), dt), scalar(dt)) + (_idx([1, -1]),), {"dims": (0,), "accumulate": False},
                      _np_index_put, "scalar value"))
    return out


# ---------------------------------------------------------------- matmul
MATMUL_SHAPES = (((3, 4), (4, 2)), ((2, 3, 4), (4, 5)), ((1, 3, 4), (2, 4, 2)), ((2, 1, 3, 4), (3, 4, 2)),
                 ((3, 0), (0, 2)), ((0, 4), (4, 2)), ((1, 1), (1, 1)))


def _matmul_make(dt, rng):
    lo, hi = (-3, 3) if not dt.is_floating_point else (-1.0, 1.0)
    return [Sample((values(rng, sa, dt, lo, hi), values(rng, sb, dt, lo, hi)), {}, np.matmul, f"{sa} @ {sb}")
            for sa, sb in MATMUL_SHAPES]


# ---------------------------------------------------------------- random: a pure-Python model of the generator
_M64 = 2 ** 64 - 1
_GOLDEN = 0x9E3779B97F4A7C15


def _mix64(z: int) -> int:
    z = ((z ^ (z >> 30)) * 0xBF58476D1CE4E5B9) & _M64
    z = ((z ^ (z >> 27)) * 0x94D049BB133111EB) & _M64
    return z ^ (z >> 31)


def random_word(seed: int, counter: int) -> int:
    """Draw `counter` of stream `seed`: splitmix64 of the counter, keyed by the hashed seed (DESIGN.md)."""
    key = _mix64((seed * _GOLDEN + _GOLDEN) & _M64)
    return _mix64((counter * _GOLDEN + key) & _M64)


DIGITS = {float64: 53, float32: 24, float16: 11, bfloat16: 8}


def _uniform_ref(seed, offset, n, digits):
    """The top `digits` bits of each word as a fraction: exactly representable, never 1.0."""
    return np.array([(random_word(seed, offset + i) >> (64 - digits)) * 2.0 ** -digits for i in range(n)])


def _np_rand(seed, offset, shape, dtype, normal):
    seed, offset, n = int(seed), int(offset), int(np.prod(shape, dtype=np.int64))
    if normal:
        u = _uniform_ref(seed, offset, 2 * n, 53)
        out = np.sqrt(-2.0 * np.log1p(-u[:n])) * np.cos(2 * np.pi * u[n:])
    else:
        out = _uniform_ref(seed, offset, n, DIGITS[dtype])
    return np_cast(out.reshape(shape), dtype)


def _rand_make(dt, rng):
    def state(seed, offset):
        return np.array(seed, np.int64), np.array(offset, np.int64)
    cases = ((7, 0, (3, 4), False), (7, 5, (3, 4), False), (123456789, 2 ** 40, (5,), False), (0, 0, (), False),
             (7, 0, (0, 3), False), (7, 3, (2, 3), True), (2 ** 62, 1, (7,), True))
    return [Sample(state(s, o), {"shape": shape, "dtype": dt, "normal": nrm}, _np_rand,
                   f"seed={s} offset={o} shape={shape} normal={nrm}") for s, o, shape, nrm in cases]


def _np_randperm(seed, offset, n):
    words = [random_word(int(seed), int(offset) + i) for i in range(n)]
    return np.array(sorted(range(n), key=lambda i: words[i]), dtype=np.int64)


def _randperm_make(dt, rng):
    return [Sample((np.array(s, np.int64), np.array(o, np.int64)), {"n": n}, _np_randperm, f"seed={s} n={n}")
            for s, o, n in ((7, 0, 10), (7, 3, 1), (11, 0, 0), (2 ** 40, 9, 33))]


# ---------------------------------------------------------------- creation
def _full_make(dt, rng):
    v = scalar(dt, -1.25, 3 if dt is uint8 else -3, True)
    ref = lambda shape, value, dtype: np_cast(np.full(shape, value), dtype)   # noqa: E731
    return [Sample((), {"shape": s, "value": v, "dtype": dt}, ref, f"shape={s}") for s in ((2, 3), (), (0, 4))]


def _arange_make(dt, rng):
    cases = ((0, 5, 1), (-3, 7, 2), (5, 0, -2), (3, 3, 1))
    if dt.is_floating_point:
        cases += ((1.0, 2.0, 0.25), (0.0, -1.0, -0.3))
    ref = lambda start, end, step, dtype: np_cast(np.arange(start, end, step), dtype)   # noqa: E731
    return [Sample((), {"start": a, "end": b, "step": c, "dtype": dt}, ref, f"{a}:{b}:{c}") for a, b, c in cases]


def _constant_make(dt, rng):
    ref = lambda value, dtype: np_cast(value, dtype)   # noqa: E731
    return [Sample((), {"value": values(rng, s, dt), "dtype": dt}, ref, f"shape={s}") for s in ((2, 3), (), (0,))]


# ---------------------------------------------------------------- the primitive table
def _sigmoid(x):
    return 1 / (1 + np.exp(-x))


def _rsqrt(x):
    return 1 / np.sqrt(x)


ALL = FLOATS + LOW_PRECISION + INTS + SMALL_INTS + BOOL
NUMERIC = FLOATS + INTS

SAMPLES: dict[str, OpSamples] = {
    # unary float math
    "exp": OpSamples(_unary(np.exp), FLOATS + LOW_PRECISION),
    "log": OpSamples(_unary(np.log, low=0.3, high=3.0), FLOATS + LOW_PRECISION),
    "sqrt": OpSamples(_unary(np.sqrt, low=0.3, high=3.0), FLOATS + LOW_PRECISION),
    "rsqrt": OpSamples(_unary(_rsqrt, low=0.3, high=3.0), FLOATS + LOW_PRECISION),
    "sin": OpSamples(_unary(np.sin), FLOATS + LOW_PRECISION),
    "cos": OpSamples(_unary(np.cos), FLOATS + LOW_PRECISION),
    "tanh": OpSamples(_unary(np.tanh), FLOATS + LOW_PRECISION),
    "sigmoid": OpSamples(_unary(_sigmoid, low=-4.0, high=4.0), FLOATS + LOW_PRECISION),
    "log1p": OpSamples(_unary(np.log1p, low=-0.7, high=2.0), FLOATS + LOW_PRECISION),
    "expm1": OpSamples(_unary(np.expm1), FLOATS + LOW_PRECISION),
    "reciprocal": OpSamples(_unary(np.reciprocal, away_from_zero), FLOATS + LOW_PRECISION),
    # unary, any numeric dtype
    "neg": OpSamples(_unary(np.negative), NUMERIC + LOW_PRECISION),
    "abs": OpSamples(_unary(np.abs, away_from_zero), NUMERIC + LOW_PRECISION),
    "sign": OpSamples(_unary(lambda a: np.where(np.isnan(a), 0, np.sign(a)).astype(a.dtype), away_from_zero),
                      NUMERIC),
    "floor": OpSamples(_rounding(np.floor), FLOATS + LOW_PRECISION),
    "ceil": OpSamples(_rounding(np.ceil), FLOATS + LOW_PRECISION),
    "round": OpSamples(_rounding(np.rint), FLOATS + LOW_PRECISION),
    "isnan": OpSamples(_unary(np.isnan), FLOATS + LOW_PRECISION),
    "isfinite": OpSamples(_unary(np.isfinite), FLOATS + LOW_PRECISION),
    "logical_not": OpSamples(_unary(np.logical_not, small_ints, with_specials=False), NUMERIC + BOOL),
    "bitwise_not": OpSamples(_unary(np.invert), INTS + BOOL),
    "clone": OpSamples(_unary(np.copy), ALL),
    # binary arithmetic
    "add": OpSamples(_binary(np.add), ALL),
    "sub": OpSamples(_binary(np.subtract), NUMERIC + LOW_PRECISION + SMALL_INTS),
    "mul": OpSamples(_binary(np.multiply), ALL),
    "div": OpSamples(_binary(np.true_divide, make_b=away_from_zero), FLOATS + LOW_PRECISION),
    "pow": OpSamples(_with_extra(_binary(np.power, _pow_base, _pow_exponent), _pow_extra), NUMERIC + LOW_PRECISION),
    "maximum": OpSamples(_with_extra(_binary(np.maximum), _minmax_extra(np.maximum)), NUMERIC + BOOL),
    "minimum": OpSamples(_with_extra(_binary(np.minimum), _minmax_extra(np.minimum)), NUMERIC + BOOL),
    "floor_divide": OpSamples(_remainder_samples(np.floor_divide), NUMERIC),
    "remainder": OpSamples(_remainder_samples(np.remainder), NUMERIC),
    # comparisons and bitwise
    "eq": OpSamples(_compare(np.equal), NUMERIC + SMALL_INTS + BOOL),
    "ne": OpSamples(_compare(np.not_equal), NUMERIC + BOOL),
    "lt": OpSamples(_compare(np.less), NUMERIC + SMALL_INTS + BOOL),
    "le": OpSamples(_compare(np.less_equal), NUMERIC + BOOL),
    "gt": OpSamples(_compare(np.greater), NUMERIC + BOOL),
    "ge": OpSamples(_compare(np.greater_equal), NUMERIC + BOOL),
    "bitwise_and": OpSamples(_binary(np.bitwise_and, small_ints, small_ints), INTS + SMALL_INTS + BOOL),
    "bitwise_or": OpSamples(_binary(np.bitwise_or, small_ints, small_ints), INTS + BOOL),
    "bitwise_xor": OpSamples(_binary(np.bitwise_xor, small_ints, small_ints), INTS + BOOL),
    # where, cast
    "where": OpSamples(_where_make, ALL),
    "cast": OpSamples(_cast_make, ALL),
    # reductions, scans
    "sum": OpSamples(_reduce(np.sum), ALL),
    "prod": OpSamples(_with_extra(_reduce(np.prod, away_from_zero, low=0.5, high=1.5), _prod_zeros), ALL),
    "amax": OpSamples(_minmax_reduce(np.max), NUMERIC + BOOL + (bfloat16,)),
    "amin": OpSamples(_minmax_reduce(np.min), NUMERIC + BOOL + (bfloat16,)),
    "argmax": OpSamples(_arg_make(np.argmax), NUMERIC + SMALL_INTS + BOOL),
    "argmin": OpSamples(_arg_make(np.argmin), NUMERIC + BOOL),
    "cumsum": OpSamples(_cumsum_make, NUMERIC + SMALL_INTS + BOOL + (bfloat16,)),
    # movement
    "reshape": OpSamples(_reshape_make, NUMERIC + SMALL_INTS + BOOL),
    "permute": OpSamples(_permute_make, NUMERIC + BOOL),
    "expand": OpSamples(_expand_make, NUMERIC + BOOL),
    "slice": OpSamples(_slice_make, NUMERIC + BOOL),
    "slice_scatter": OpSamples(_slice_scatter_make, NUMERIC + BOOL),
    "cat": OpSamples(_cat_make, NUMERIC + BOOL + (bfloat16,)),
    # indexing
    "index": OpSamples(_index_make, NUMERIC + BOOL),
    "index_put": OpSamples(_index_put_make, NUMERIC + BOOL),
    # linear algebra
    "matmul": OpSamples(_matmul_make, NUMERIC + LOW_PRECISION + SMALL_INTS),
    # random
    "rand": OpSamples(_rand_make, FLOATS + LOW_PRECISION),
    "randperm": OpSamples(_randperm_make, (int64,)),
    # creation
    "full": OpSamples(_full_make, ALL),
    "arange": OpSamples(_arange_make, NUMERIC + LOW_PRECISION),
    "constant": OpSamples(_constant_make, ALL),
}


# ---------------------------------------------------------------- public composites
def P(fn, inputs, ref, desc, grad=True) -> Sample:
    """A composite sample: `fn(*tensors)` against `ref(*arrays)` (attrs live in the closures)."""
    return Sample(tuple(inputs), {}, ref, desc, grad=grad, fn=fn)


def avoid(x: np.ndarray, points, gap=0.1) -> np.ndarray:
    """Move values within `gap` of any of `points` (kinks of clamp, relu, ...) by 2 * gap."""
    x = x.copy()
    for p in points:
        x[np.abs(x - p) < gap] += 2 * gap
    return x


def _reduction_dims_samples(tt_fn, np_fn, dt, rng, make_x=values, **bounds):
    """fn(x, dim, keepdim) over the usual dim arguments: None, int, negative, tuple, 0-d."""
    x = make_x(rng, (3, 4), dt, **bounds)
    x3 = make_x(rng, (2, 3, 4), dt, **bounds)
    x0 = make_x(rng, (), dt, **bounds)
    return [P(lambda t: tt_fn(t), (x,), lambda a: np_fn(a, None, False), "all dims"),
            P(lambda t: tt_fn(t, 1), (x,), lambda a: np_fn(a, 1, False), "dim=1"),
            P(lambda t: tt_fn(t, -1, True), (x3,), lambda a: np_fn(a, -1, True), "dim=-1 keepdim"),
            P(lambda t: tt_fn(t, (0, 2)), (x3,), lambda a: np_fn(a, (0, 2), False), "dim=(0, 2)"),
            P(lambda t: tt_fn(t, 0), (x0,), lambda a: np_fn(a, None, False), "0-d, dim=0")]


def _sum_public(dt, rng):
    def ref(a, dim, keepdim):
        return np.sum(a, axis=dim, keepdims=keepdim, dtype=_sum_dtype(a))
    out = _reduction_dims_samples(tt.sum, ref, dt, rng)
    x = values(rng, (3, 4), dt)
    out.append(P(lambda t: tt.sum(t, dtype=tt.float64), (x,), lambda a: np.sum(a, dtype=np.float64), "dtype=float64"))
    return out


def _mean_public(dt, rng):
    out = _reduction_dims_samples(tt.mean, lambda a, d, k: np.mean(a, axis=d, keepdims=k), dt, rng)
    out.append(P(lambda t: tt.mean(t, 0), (values(rng, (0, 3), dt),), lambda a: np.mean(a, axis=0),
                 "empty dim: nan"))
    if dt is float32:
        out.append(P(lambda t: tt.mean(t, dtype=tt.float64), (values(rng, (3, 4), dt),),
                     lambda a: np.mean(a, dtype=np.float64), "dtype=float64"))
    return out


def _var_public(std: bool):
    def make(dt, rng):
        fn, np_fn = (tt.std, np.std) if std else (tt.var, np.var)
        x, v = values(rng, (3, 4), dt), values(rng, (7,), dt)
        return [P(lambda t: fn(t), (x,), lambda a: np_fn(a, ddof=1), "unbiased default"),
                P(lambda t: fn(t, 1), (x,), lambda a: np_fn(a, axis=1, ddof=1), "dim=1"),
                P(lambda t: fn(t, 0, unbiased=False), (x,), lambda a: np_fn(a, axis=0), "unbiased=False"),
                P(lambda t: fn(t, dim=1, correction=0, keepdim=True), (x,),
                  lambda a: np_fn(a, axis=1, keepdims=True), "correction=0 keepdim"),
                P(lambda t: fn(t, correction=2), (v,), lambda a: np_fn(a, ddof=2), "correction=2"),
                P(lambda t: fn(t, (0, 1)), (x,), lambda a: np_fn(a, axis=(0, 1), ddof=1), "dim=(0, 1)"),
                P(lambda t: fn(t, 1), (values(rng, (3, 1), dt),), lambda a: np_fn(a, axis=1, ddof=1),
                  "one element: nan", grad=False),
                P(lambda t: fn(t, 1, correction=4), (np.concatenate([x[:2], np.ones((1, 4), x.dtype)]),),
                  lambda a: np_fn(a, axis=1, ddof=4), "correction >= N: inf, or nan where all equal", grad=False)]
    return make


def _np_logsumexp(a, axis=None, keepdims=False):
    m = np.max(a, axis=axis, keepdims=True)
    m = np.where(np.isfinite(m), m, 0)
    out = np.log(np.sum(np.exp(a - m), axis=axis, keepdims=True)) + m
    return out if keepdims else np.squeeze(out, axis=axis) if axis is not None else out.reshape(())


def _logsumexp_public(dt, rng):
    x = values(rng, (3, 4), dt)
    big = _as_float(np.array([[1000.0, 1000.5, 999.0], [-1000.0, -999.0, -1001.0]]), dt)
    neg_inf = _as_float(np.array([[-np.inf, -np.inf], [-np.inf, 0.0]]), dt)
    out = [P(lambda t: tt.logsumexp(t, 1), (x,), lambda a: _np_logsumexp(a, 1), "dim=1"),
           P(lambda t: tt.logsumexp(t, (0, 1)), (x,), lambda a: _np_logsumexp(a, (0, 1)), "dim=(0, 1)"),
           P(lambda t: tt.logsumexp(t, -1, keepdim=True), (x,), lambda a: _np_logsumexp(a, -1, True), "keepdim"),
           P(lambda t: tt.logsumexp(t, 1), (big,), lambda a: _np_logsumexp(a, 1), "large magnitudes"),
           P(lambda t: tt.logsumexp(t, 1), (neg_inf,), lambda a: _np_logsumexp(a, 1), "-inf row", grad=False),
           P(lambda t: tt.logsumexp(t, 0), (values(rng, (0, 3), dt),), lambda a: np.full(3, -np.inf, a.dtype),
             "empty dim: -inf", grad=False),
           P(lambda t: tt.logsumexp(t, (0, 1), keepdim=True), (values(rng, (2, 0), dt),),
             lambda a: np.full((1, 1), -np.inf, a.dtype), "empty dims keepdim", grad=False)]
    if dt is float32:
        ints = values(rng, (2, 3), int64, -3, 3)
        out.append(P(lambda t: tt.logsumexp(t, 1), (ints,), lambda a: _np_logsumexp(a.astype(np.float32), 1),
                     "int64 input gives the default float"))
    return out


def _np_norm(a, p, axis=None, keepdims=False):
    a = np.abs(a)
    if p in ("fro", 2):
        return np.sqrt(np.sum(a * a, axis=axis, keepdims=keepdims))
    if p == np.inf:
        return np.max(a, axis=axis, keepdims=keepdims)
    if p == -np.inf:
        return np.min(a, axis=axis, keepdims=keepdims)
    if p == 0:
        return np.sum(a != 0, axis=axis, keepdims=keepdims).astype(a.dtype)
    return np.sum(a ** p, axis=axis, keepdims=keepdims) ** (1.0 / p)


def _norm_public(dt, rng):
    x = away_from_zero(rng, (3, 4), dt, 0.3, 2.0)
    out = [P(lambda t: tt.norm(t), (x,), lambda a: _np_norm(a, "fro"), "fro (default)")]
    for p in (1, 2, float("inf"), float("-inf"), 3, 0):
        out.append(P(lambda t, p=p: tt.norm(t, p, dim=1), (x,), lambda a, p=p: _np_norm(a, p, 1), f"p={p} dim=1"))
    out.append(P(lambda t: tt.norm(t, "fro", dim=(0, 1), keepdim=True), (x,),
                 lambda a: _np_norm(a, "fro", (0, 1), True), "fro dim=(0, 1) keepdim"))
    out.append(P(lambda t: tt.norm(t, 1), (x,), lambda a: _np_norm(a, 1), "p=1 all"))
    return out


def _np_softmax(a, axis, log=False):
    s = a - np.max(a, axis=axis, keepdims=True)
    if log:
        return s - np.log(np.sum(np.exp(s), axis=axis, keepdims=True))
    e = np.exp(s)
    return e / np.sum(e, axis=axis, keepdims=True)


def _softmax_public(log: bool):
    def make(dt, rng):
        fn = tt.log_softmax if log else tt.softmax
        x, x3 = values(rng, (3, 4), dt), values(rng, (2, 3, 4), dt)
        big = _as_float(np.array([[1000.0, 1001.0, 999.0], [-1000.0, -999.0, -1001.0]]), dt)
        masked = _as_float(np.array([[-np.inf, 0.5, 1.0], [2.0, -np.inf, -1.0]]), dt)
        out = [P(lambda t, d=d: fn(t, d), (x,), lambda a, d=d: _np_softmax(a, d, log), f"dim={d}") for d in (0, 1, -1)]
        out += [P(lambda t: fn(t, 1), (x3,), lambda a: _np_softmax(a, 1, log), "3-D dim=1"),
                P(lambda t: fn(t, 0), (values(rng, (), dt),), lambda a: _np_softmax(a, None, log), "0-d"),
                P(lambda t: fn(t, 1), (big,), lambda a: _np_softmax(a, 1, log), "large magnitudes"),
                P(lambda t: fn(t, 1), (masked,), lambda a: _np_softmax(a, 1, log), "-inf entries", grad=False)]
        if dt is float32:
            out.append(P(lambda t: fn(t, 1, dtype=tt.float64), (x,),
                         lambda a: _np_softmax(a.astype(np.float64), 1, log), "dtype=float64"))
        return out
    return make


def _clamp_public(dt, rng):
    if dt.is_floating_point:
        x = avoid(values(rng, (3, 4), dt), (-0.5, 0.7))
        lo, hi = values(rng, (3, 1), dt, -1.5, -0.2), values(rng, (4,), dt, 0.2, 1.5)
        x2 = avoid(avoid(values(rng, (3, 4), dt), lo.reshape(-1)), hi.reshape(-1))
        return [P(lambda t: tt.clamp(t, -0.5, 0.7), (x,), lambda a: np.clip(a, -0.5, 0.7), "min and max"),
                P(lambda t: tt.clamp(t, min=-0.5), (x,), lambda a: np.maximum(a, np_cast(-0.5, dt)), "min only"),
                P(lambda t: t.clamp(max=0.7), (x,), lambda a: np.minimum(a, np_cast(0.7, dt)), "max only"),
                P(lambda t, a, b: tt.clamp(t, a, b), (x2, lo, hi), lambda t, a, b: np.minimum(np.maximum(t, a), b),
                  "tensor bounds, broadcast")]
    x = values(rng, (3, 4), dt, -5, 5)
    return [P(lambda t: tt.clamp(t, -2, 3), (x,), lambda a: np.clip(a, -2, 3), "int bounds"),
            P(lambda t: tt.clamp(t, min=0), (x,), lambda a: np.maximum(a, 0).astype(a.dtype), "min only")]


def _cumsum_public(dt, rng):
    x = values(rng, (3, 4), dt)
    out = [P(lambda t: tt.cumsum(t, -1), (x,), lambda a: np.cumsum(a, -1, dtype=_sum_dtype(a)), "dim=-1"),
           P(lambda t: t.cumsum(0), (x,), lambda a: np.cumsum(a, 0, dtype=_sum_dtype(a)), "dim=0 (method)")]
    if dt is not float64:
        out.append(P(lambda t: tt.cumsum(t, 1, dtype=tt.float64), (x,), lambda a: np.cumsum(a, 1, dtype=np.float64),
                     "dtype=float64"))
    return out


def _prod_public(dt, rng):
    def ref(a, dim, keepdim):
        return np.prod(a, axis=dim, keepdims=keepdim, dtype=_sum_dtype(a))
    if dt.is_floating_point:
        return _reduction_dims_samples(tt.prod, ref, dt, rng, away_from_zero, low=0.5, high=1.5)
    x = values(rng, (3, 4), dt, -3, 3)
    return [P(lambda t: tt.prod(t), (x,), lambda a: ref(a, None, False), "all"),
            P(lambda t: tt.prod(t, 1, keepdim=True), (x,), lambda a: ref(a, 1, True), "dim=1 keepdim")]


def _max_min_public(is_max: bool):
    def make(dt, rng):
        fn = tt.max if is_max else tt.min
        np_val, np_arg = (np.max, np.argmax) if is_max else (np.min, np.argmin)

        def ref(a, dim, keepdim=False):
            return (np_val(a, axis=dim, keepdims=keepdim), np_arg(a, axis=dim, keepdims=keepdim).astype(np.int64))
        x, x3 = values(rng, (3, 4), dt), values(rng, (2, 3, 4), dt)
        ties = small_ints(rng, (3, 5), dt, 0, 1)
        return [P(lambda t: fn(t), (x,), lambda a: np_val(a), "no dim: value only"),
                P(lambda t: fn(t, 1), (x,), lambda a: ref(a, 1), "dim=1"),
                P(lambda t: fn(t, -1, keepdim=True), (x3,), lambda a: ref(a, -1, True), "dim=-1 keepdim"),
                P(lambda t: fn(t, 0), (x3,), lambda a: ref(a, 0), "dim=0"),
                P(lambda t: tuple(fn(t, 1)), (ties,), lambda a: ref(a, 1), "ties: first index", grad=False)]
    return make


def _arg_public(is_max: bool):
    def make(dt, rng):
        fn, np_fn = (tt.argmax, np.argmax) if is_max else (tt.argmin, np.argmin)
        x, x3 = values(rng, (3, 4), dt), small_ints(rng, (2, 3, 4), dt, 0, 2)
        return [P(lambda t: fn(t), (x,), lambda a: np.asarray(np_fn(a), np.int64), "flattened"),
                P(lambda t: fn(t, 1), (x,), lambda a: np_fn(a, 1).astype(np.int64), "dim=1"),
                P(lambda t: fn(t, -2, keepdim=True), (x3,), lambda a: np_fn(a, -2, keepdims=True).astype(np.int64),
                  "dim=-2 keepdim, ties"),
                P(lambda t: fn(t, keepdim=True), (x3,), lambda a: np.asarray(np_fn(a), np.int64).reshape(1, 1, 1),
                  "flattened keepdim")]
    return make


def _all_any_public(is_all: bool):
    def make(dt, rng):
        fn, np_fn = (tt.all, np.all) if is_all else (tt.any, np.any)
        x = small_ints(rng, (3, 4), dt, 0, 1)
        ones = np.ones((2, 3), dt.np if dt is not bfloat16 else np.float32)
        return [P(lambda t: fn(t), (x,), lambda a: np.asarray(np_fn(a)), "all dims"),
                P(lambda t: fn(t, 1), (x,), lambda a: np_fn(a, 1), "dim=1"),
                P(lambda t: fn(t, 0, keepdim=True), (x,), lambda a: np_fn(a, 0, keepdims=True), "dim=0 keepdim"),
                P(lambda t: fn(t), (ones,), lambda a: np.asarray(np_fn(a)), "all nonzero"),
                P(lambda t: fn(t, 0), (values(rng, (0, 3), dt),), lambda a: np_fn(a, 0), "empty dim")]
    return make


EINSUM_CASES = (("ij,jk->ik", ((3, 4), (4, 2))), ("bij,bjk->bik", ((2, 3, 4), (2, 4, 5))), ("ii->", ((3, 3),)),
                ("ii->i", ((3, 3),)), ("i,j->ij", ((3,), (4,))), ("...ij,...jk->...ik", ((2, 3, 4), (2, 4, 5))),
                ("...ij,...jk->...ik", ((3, 4, 5), (2, 3, 5, 6))), ("...ij,...jk->...ik", ((2, 3, 4), (4, 5))),
                ("...ij,...jk", ((1, 3, 4), (2, 4, 5))), ("bij,bjk->bik", ((1, 3, 4), (2, 4, 5))),
                ("ij->ji", ((3, 4),)), ("ij->", ((3, 4),)), ("i,i->", ((5,), (5,))), ("ij,ij->ij", ((3, 4), (3, 4))),
                ("ij,jk,kl->il", ((2, 3), (3, 4), (4, 2))), ("bij,bkj->bik", ((2, 3, 4), (2, 5, 4))),
                ("ij,jk", ((3, 4), (4, 2))), ("ba,ca->bc", ((0, 3), (4, 3))), ("i...->...", ((3, 2, 2),)),
                (" ij , jk -> ik ", ((2, 3), (3, 2))))


def _einsum_public(dt, rng):
    out = []
    for eq, shapes in EINSUM_CASES:
        xs = tuple(values(rng, s, dt) for s in shapes)
        out.append(P(lambda *ts, eq=eq: tt.einsum(eq, *ts), xs, lambda *a, eq=eq: np.einsum(eq.replace(" ", ""), *a),
                     f"'{eq}' {shapes}"))
    a, b = values(rng, (3, 4), dt), values(rng, (4, 2), dt)
    out.append(P(lambda x, y: tt.einsum("ij,jk->ik", [x, y]), (a, b), lambda x, y: x @ y, "operands as a list"))
    return out


def _matmul_public(dt, rng):
    cases = (((4,), (4,)), ((4,), (4, 3)), ((3, 4), (4,)), ((2, 3, 4), (4,)), ((4,), (2, 4, 3)), ((2, 3, 4), (4, 2)))
    out = [P(lambda x, y: tt.matmul(x, y), (values(rng, sa, dt), values(rng, sb, dt)), np.matmul, f"{sa} @ {sb}")
           for sa, sb in cases]
    out.append(P(lambda x, y: x @ y, (values(rng, (0,), dt), values(rng, (0,), dt)), np.matmul, "empty dot: 0"))
    return out


def _outer_public(dt, rng):
    return [P(lambda x, y: tt.outer(x, y), (values(rng, (3,), dt), values(rng, (4,), dt)), np.outer, "(3,) x (4,)"),
            P(lambda x, y: x.outer(y), (values(rng, (0,), dt), values(rng, (2,), dt)), np.outer, "empty")]


def _cat_stack_public(dt, rng):
    a, b, c = values(rng, (2, 3), dt), values(rng, (1, 3), dt), values(rng, (0, 3), dt)
    empty1d = np.zeros((0,), dt.np if dt is not bfloat16 else np.float32)
    out = [P(lambda x, y, z: tt.cat([x, y, z]), (a, b, c), lambda x, y, z: np.concatenate([x, y, z]),
             "dim 0 with empty"),
           P(lambda x, y: tt.cat((x, y), dim=-1), (a, values(rng, (2, 2), dt)), lambda x, y: np.concatenate([x, y], -1),
             "dim=-1"),
           P(lambda x, e: tt.cat([x, e]), (a, empty1d), lambda x, e: x.copy(), "legacy: 1-D empty is skipped"),
           P(lambda x: tt.cat([x]), (a,), lambda x: x.copy(), "one tensor"),
           P(lambda x, y: tt.stack([x, y]), (a, a + 1 if dt is not bool_ else ~a), lambda x, y: np.stack([x, y]),
             "stack dim 0"),
           P(lambda x, y: tt.stack([x, y], 1), (a, a), lambda x, y: np.stack([x, y], 1), "stack dim 1"),
           P(lambda x, y: tt.stack([x, y], -1), (a, a), lambda x, y: np.stack([x, y], -1), "stack dim -1"),
           P(lambda x: tt.stack([x, x]), (values(rng, (), dt),), lambda x: np.stack([x, x]), "stack 0-d")]
    if dt is float32:
        ints = values(rng, (1, 3), int64)
        out.append(P(lambda x, y: tt.cat([x, y]), (a, ints), lambda x, y: np.concatenate([x, y.astype(np.float32)]),
                     "int64 and float32 promote"))
    return out


def _split_public(dt, rng):
    x = values(rng, (5, 4), dt)

    def np_split(a, sizes, axis=0):
        return tuple(np.split(a, np.cumsum(sizes)[:-1], axis=axis))
    return [P(lambda t: tt.split(t, 2), (x,), lambda a: np_split(a, [2, 2, 1]), "split size 2 (uneven)"),
            P(lambda t: t.split([1, 3], dim=1), (x,), lambda a: np_split(a, [1, 3], 1), "sections on dim 1"),
            P(lambda t: tt.split(t, [0, 5]), (x,), lambda a: np_split(a, [0, 5]), "empty section"),
            P(lambda t: tt.chunk(t, 2), (x,), lambda a: np_split(a, [3, 2]), "chunk 2"),
            P(lambda t: t.chunk(3, -1), (x,), lambda a: np_split(a, [2, 2], 1), "chunk 3 of 4 gives 2 chunks"),
            P(lambda t: tt.chunk(t, 5), (x,), lambda a: np_split(a, [1] * 5), "chunk 5")]


def _repeat_public(dt, rng):
    x = values(rng, (2, 3), dt)
    return [P(lambda t: t.repeat(2, 1), (x,), lambda a: np.tile(a, (2, 1)), "(2, 1)"),
            P(lambda t: t.repeat(2, 1, 3), (x,), lambda a: np.tile(a, (2, 1, 3)), "new leading dim"),
            P(lambda t: t.repeat(3), (values(rng, (), dt),), lambda a: np.tile(a, 3), "0-d"),
            P(lambda t: t.repeat(0, 2), (x,), lambda a: np.tile(a, (0, 2)), "zero repeats")]


def _tri_public(upper: bool):
    def make(dt, rng):
        fn, np_fn = (tt.triu, np.triu) if upper else (tt.tril, np.tril)
        x, x3 = values(rng, (4, 5), dt), values(rng, (2, 3, 4), dt)
        out = [P(lambda t, d=d: fn(t, d), (x,), lambda a, d=d: np_fn(a, d), f"diagonal={d}") for d in (0, 1, -1, 7)]
        return out + [P(lambda t: fn(t), (x3,), lambda a: np_fn(a), "batched")]
    return make


def _flip_public(dt, rng):
    x = values(rng, (2, 3, 4), dt)
    return [P(lambda t, d=d: tt.flip(t, d), (x,), lambda a, d=d: np.flip(a, d).copy(), f"dims={d}")
            for d in ((0,), (0, 2), (-1,), [1, 2])] + \
        [P(lambda t: t.flip(0), (values(rng, (0, 2), dt),), lambda a: a.copy(), "empty")]


def _np_gather(x, dim, index):
    x = x[tuple(slice(0, s) if d != dim else slice(None) for d, s in enumerate(index.shape))]
    return np.take_along_axis(x, index, axis=dim)


def _gather_public(dt, rng):
    x = values(rng, (3, 4), dt)
    i0, i1 = _idx([[0, 2, 1, 0], [2, 2, 0, 1]]), _idx([[3, 0], [1, 1], [0, 2]])
    return [P(lambda t, i: tt.gather(t, 0, i), (x, i0), lambda a, i: _np_gather(a, 0, i), "dim 0, repeats"),
            P(lambda t, i: t.gather(1, i), (x, i1), lambda a, i: _np_gather(a, 1, i), "dim 1, narrower index"),
            P(lambda t, i: tt.gather(t, -1, i), (x, _idx([[1], [3], [0]])), lambda a, i: _np_gather(a, 1, i),
              "dim -1")]


def _index_select_public(dt, rng):
    x = values(rng, (3, 4), dt)
    return [P(lambda t, i: tt.index_select(t, 1, i), (x, _idx([3, 0, 3])), lambda a, i: np.take(a, i, 1),
              "dim 1, repeats"),
            P(lambda t, i: t.index_select(-2, i), (x, _idx([2])), lambda a, i: np.take(a, i, 0), "dim -2"),
            P(lambda t, i: tt.index_select(t, 0, i), (x, _idx([])), lambda a, i: np.take(a, i, 0), "empty index"),
            P(lambda t, i: tt.index_select(t, 0, i), (values(rng, (5,), dt), _idx(4)),
              lambda a, i: np.take(a, i.reshape(-1), 0), "0-d index")]


def _masked_fill_public(dt, rng):
    x = values(rng, (3, 4), dt)
    mask, row_mask = rng.random((3, 4)) < 0.5, rng.random((1, 4)) < 0.5
    v = scalar(dt, -7.5, -7, True)
    out = [P(lambda t, m: tt.masked_fill(t, m, v), (x, mask), lambda a, m: np.where(m, v, a).astype(a.dtype),
             f"value {v!r}"),
           P(lambda t, m: t.masked_fill(m, v), (x, row_mask), lambda a, m: np.where(m, v, a).astype(a.dtype),
             "broadcast mask"),
           P(lambda t, m: t.masked_fill(m, tt.tensor(v)), (x, mask), lambda a, m: np.where(m, v, a).astype(a.dtype),
             "0-d tensor value")]
    if not dt.is_floating_point and dt is not bool_:
        out.append(P(lambda t, m: t.masked_fill(m, 2.0), (x, mask), lambda a, m: np.where(m, 2, a).astype(a.dtype),
                     "float value into an int tensor"))
    return out


def _where_public(dt, rng):
    x, y = values(rng, (3, 4), dt), values(rng, (1, 4), dt)
    c = rng.random((3, 4)) < 0.5
    s = scalar(dt, -0.5, 7)
    default = np.float32 if dt.is_floating_point else np.int64
    return [P(lambda c_, t, u: tt.where(c_, t, u), (c, x, y), np.where, "tensors, broadcast"),
            P(lambda c_, t: tt.where(c_, t, s), (c, x), lambda c_, a: np.where(c_, a, s).astype(a.dtype),
              f"scalar other {s!r}"),
            P(lambda c_, t: tt.where(c_, s, t), (c, x), lambda c_, a: np.where(c_, s, a).astype(a.dtype),
              f"scalar input {s!r}"),
            P(lambda c_: tt.where(c_, s, 2 * s), (c,), lambda c_: np.where(c_, s, 2 * s).astype(default),
              "two scalars take the default dtype"),
            P(lambda c_, t: t.where(c_, 0), (c, x), lambda c_, a: np.where(c_, a, 0).astype(a.dtype),
              "method form")]


def _relu_public(dt, rng):
    x = avoid(values(rng, (3, 4), dt), (0,)) if dt.is_floating_point else values(rng, (3, 4), dt)
    return [P(lambda t: tt.relu(t), (x,), lambda a: np.maximum(a, 0).astype(a.dtype), "relu"),
            P(lambda t: t.relu(), (values(rng, (0, 2), dt),), lambda a: a.copy(), "empty")] + (
        [P(lambda t: tt.relu(t), (specials(dt),), lambda a: np.maximum(a, 0).astype(a.dtype),
           "0, -0, +-1, +-inf, nan (NaN passes, as in PyTorch)", grad=False)] if dt.is_floating_point else [])


def _np_int_pow(a, b):
    """PyTorch's integer a ** b: for b < 0 the integer part of 1 / a ** -b (numpy refuses)."""
    a, b = np.broadcast_arrays(np.asarray(a), np.asarray(b))
    neg = np.where(a == 1, 1, np.where(a == -1, np.where(b % 2 == 1, -1, 1), 0))
    return np.where(b < 0, neg, np.power(a, np.maximum(b, 0))).astype(np.result_type(a.dtype, b.dtype))


def _int_pow_public(dt, rng):
    a = _cast_list([2, 1, -1, -1, 0, 3, -2, 0, 5], dt)
    b = _cast_list([-1, -1, -1, -2, -1, 2, -3, 0, 1], dt)

    def in_place(x, y):
        x = x.clone()
        x **= y
        return x
    return [P(lambda x, y: x ** y, (a, b), _np_int_pow, "negative exponents"),
            P(lambda y: 2 ** y, (b,), lambda y: _np_int_pow(np.asarray(2, y.dtype), y), "scalar base"),
            P(lambda x, y: x ** y, (a.reshape(3, 3), b[:3]), _np_int_pow, "broadcast"),
            P(in_place, (a, b), _np_int_pow, "in place")]


def _trunc_public(dt, rng):
    x = _off_integers(rng, (3, 4), dt) if dt.is_floating_point else values(rng, (3, 4), dt, -5, 5)
    return [P(lambda t: tt.trunc(t), (x,), np.trunc if dt.is_floating_point else np.copy, "trunc")]


def _division_operands(dt, rng, shape=(3, 4)):
    """a, b with b != 0 and a / b away from integers (the jumps of floor, trunc and the remainders)."""
    if not dt.is_floating_point:
        return values(rng, shape, dt, -9, 9), away_from_zero(rng, shape, dt, 1, 4)
    b = away_from_zero(rng, shape, dt, 0.5, 2.0)
    q = rng.integers(-3, 3, size=shape) + rng.uniform(0.2, 0.8, shape)
    return _as_float(b * q, dt), b


def _np_trunc_div(a, b):
    if np.asarray(a).dtype.kind == "f" or np.asarray(b).dtype.kind == "f":
        return np.trunc(np.true_divide(a, b))
    return (np.sign(a) * np.sign(b) * (np.abs(a) // np.abs(b))).astype(np.result_type(a, b))


def _rounding_public(tt_fn, np_fn):
    def make(dt, rng):
        a, b = _division_operands(dt, rng)
        s = scalar(dt, 1.75, 3)
        return [P(lambda x, y: tt_fn(x, y), (a, b), np_fn, "tensors"),
                P(lambda x: tt_fn(x, s), (a,), lambda x: np_fn(x, np_cast(s, dt) if dt is not bfloat16 else s),
                  f"scalar divisor {s!r}", grad=False),
                P(lambda y: tt_fn(-7 if not dt.is_floating_point else -7.5, y), (b,),
                  lambda y: np_fn(np_cast(-7 if not dt.is_floating_point else -7.5, dt), y), "scalar dividend",
                  grad=False)]
    return make


def _div_public(dt, rng):
    a, b = _division_operands(dt, rng)
    out = [P(lambda x, y, m=m: tt.div(x, y, rounding_mode=m), (a, b), ref, f"rounding_mode={m}", grad=False)
           for m, ref in (("trunc", _np_trunc_div), ("floor", np.floor_divide))]
    if dt.is_floating_point:
        out.append(P(lambda x, y: tt.div(x, y), (a, b), np.true_divide, "true division"))
    else:
        out.append(P(lambda x, y: x / y, (a, b), lambda x, y: (x / y).astype(np.float32),
                     "integers divide to the default float"))
        out.append(P(lambda x: tt.div(x, -2, rounding_mode="trunc"), (a,), lambda x: _np_trunc_div(x, -2),
                     "trunc by a negative scalar"))
    return out


DIFF_FLOATS = FLOATS + (bfloat16,)

PUBLIC_SAMPLES: dict[str, OpSamples] = {
    "sum": OpSamples(_sum_public, ALL),
    "mean": OpSamples(_mean_public, DIFF_FLOATS),
    "var": OpSamples(_var_public(False), FLOATS),
    "std": OpSamples(_var_public(True), FLOATS),
    "logsumexp": OpSamples(_logsumexp_public, FLOATS),
    "norm": OpSamples(_norm_public, FLOATS),
    "softmax": OpSamples(_softmax_public(False), DIFF_FLOATS),
    "log_softmax": OpSamples(_softmax_public(True), DIFF_FLOATS),
    "clamp": OpSamples(_clamp_public, NUMERIC),
    "cumsum": OpSamples(_cumsum_public, NUMERIC + BOOL),
    "prod": OpSamples(_prod_public, NUMERIC),
    "max": OpSamples(_max_min_public(True), NUMERIC),
    "min": OpSamples(_max_min_public(False), NUMERIC),
    "argmax": OpSamples(_arg_public(True), NUMERIC + BOOL, differentiable=False),
    "argmin": OpSamples(_arg_public(False), NUMERIC + BOOL, differentiable=False),
    "all": OpSamples(_all_any_public(True), NUMERIC + BOOL, differentiable=False),
    "any": OpSamples(_all_any_public(False), NUMERIC + BOOL, differentiable=False),
    "einsum": OpSamples(_einsum_public, FLOATS),
    "matmul": OpSamples(_matmul_public, NUMERIC),
    "outer": OpSamples(_outer_public, NUMERIC),
    "cat_stack": OpSamples(_cat_stack_public, NUMERIC + BOOL),
    "split_chunk": OpSamples(_split_public, NUMERIC + BOOL),
    "repeat": OpSamples(_repeat_public, NUMERIC + BOOL),
    "tril": OpSamples(_tri_public(False), NUMERIC + BOOL),
    "triu": OpSamples(_tri_public(True), NUMERIC + BOOL),
    "flip": OpSamples(_flip_public, NUMERIC + BOOL),
    "gather": OpSamples(_gather_public, NUMERIC + BOOL),
    "index_select": OpSamples(_index_select_public, NUMERIC + BOOL),
    "masked_fill": OpSamples(_masked_fill_public, NUMERIC + BOOL),
    "where": OpSamples(_where_public, NUMERIC),
    "relu": OpSamples(_relu_public, NUMERIC),
    "trunc": OpSamples(_trunc_public, NUMERIC),
    "int_pow": OpSamples(_int_pow_public, INTS, differentiable=False),
    "fmod": OpSamples(_rounding_public(tt.fmod, np.fmod), NUMERIC),
    "remainder": OpSamples(_rounding_public(tt.remainder, np.remainder), NUMERIC),
    "floor_divide": OpSamples(_rounding_public(tt.floor_divide, np.floor_divide), NUMERIC, differentiable=False),
    "div": OpSamples(_div_public, NUMERIC),
}
