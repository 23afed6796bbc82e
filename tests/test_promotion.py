"""Type promotion, checked against tables generated once from PyTorch 2.13
(torch.promote_types and the dtypes of real tensor expressions)."""
import numpy as np
import pytest

import tracetorch as tt

NAMES = "bool uint8 int8 int16 int32 int64 float16 bfloat16 float32 float64".split()

# torch.promote_types(row, column), columns in NAMES order.
PROMOTE = {
    "bool": "bool uint8 int8 int16 int32 int64 float16 bfloat16 float32 float64",
    "uint8": "uint8 uint8 int16 int16 int32 int64 float16 bfloat16 float32 float64",
    "int8": "int8 int16 int8 int16 int32 int64 float16 bfloat16 float32 float64",
    "int16": "int16 int16 int16 int16 int32 int64 float16 bfloat16 float32 float64",
    "int32": "int32 int32 int32 int32 int32 int64 float16 bfloat16 float32 float64",
    "int64": "int64 int64 int64 int64 int64 int64 float16 bfloat16 float32 float64",
    "float16": "float16 float16 float16 float16 float16 float16 float16 float32 float32 float64",
    "bfloat16": "bfloat16 bfloat16 bfloat16 bfloat16 bfloat16 bfloat16 float32 bfloat16 float32 float64",
    "float32": "float32 float32 float32 float32 float32 float32 float32 float32 float32 float64",
    "float64": "float64 float64 float64 float64 float64 float64 float64 float64 float64 float64",
}

# (1-D tensor of dtype row) + (0-d tensor of dtype column): a 0-d tensor only matters when it is
# of a higher category (bool < integer < float) than the dimensioned one.
DIM_WITH_ZERO_DIM = {
    "bool": "bool uint8 int8 int16 int32 int64 float16 bfloat16 float32 float64",
    "uint8": "uint8 uint8 uint8 uint8 uint8 uint8 float16 bfloat16 float32 float64",
    "int8": "int8 int8 int8 int8 int8 int8 float16 bfloat16 float32 float64",
    "int16": "int16 int16 int16 int16 int16 int16 float16 bfloat16 float32 float64",
    "int32": "int32 int32 int32 int32 int32 int32 float16 bfloat16 float32 float64",
    "int64": "int64 int64 int64 int64 int64 int64 float16 bfloat16 float32 float64",
    "float16": "float16 float16 float16 float16 float16 float16 float16 float16 float16 float16",
    "bfloat16": "bfloat16 bfloat16 bfloat16 bfloat16 bfloat16 bfloat16 bfloat16 bfloat16 bfloat16 bfloat16",
    "float32": "float32 float32 float32 float32 float32 float32 float32 float32 float32 float32",
    "float64": "float64 float64 float64 float64 float64 float64 float64 float64 float64 float64",
}

# dtype of t + True, t + 1, t + 1.5 for a 1-D tensor t of the row's dtype.
WITH_SCALAR = {
    "bool": "bool int64 float32",
    "uint8": "uint8 uint8 float32",
    "int8": "int8 int8 float32",
    "int16": "int16 int16 float32",
    "int32": "int32 int32 float32",
    "int64": "int64 int64 float32",
    "float16": "float16 float16 float16",
    "bfloat16": "bfloat16 bfloat16 bfloat16",
    "float32": "float32 float32 float32",
    "float64": "float64 float64 float64",
}


def dt(name):
    return getattr(tt, name) if name != "bool" else tt.bool


def sample(name, n=4):
    """Small exact values every dtype holds."""
    vals = np.array([3, 0, 2, 1][:n])
    return tt.tensor(vals.astype(bool) if name == "bool" else vals, dtype=dt(name))


def as_f64(t):
    return np.asarray(t.numpy(), dtype=np.float64)


@pytest.mark.parametrize("a", NAMES)
def test_promote_types_table(a):
    for b, want in zip(NAMES, PROMOTE[a].split()):
        assert tt.promote_types(dt(a), dt(b)) is dt(want), (a, b)


@pytest.mark.parametrize("a", NAMES)
def test_tensor_tensor_arithmetic_dtypes_and_values(a):
    x = sample(a)
    for b, want in zip(NAMES, PROMOTE[a].split()):
        y = sample(b).flip(0)
        s, p = x + y, x * y
        assert s.dtype is dt(want) and p.dtype is dt(want), (a, b, s.dtype, p.dtype)
        assert (y + x).dtype is dt(want)
        ref_sum = as_f64(x) + as_f64(y)
        if want == "bool":
            ref_sum = np.minimum(ref_sum, 1)    # bool + bool is logical or
        np.testing.assert_array_equal(as_f64(s), ref_sum)
        np.testing.assert_array_equal(as_f64(p), as_f64(x) * as_f64(y))


@pytest.mark.parametrize("a", NAMES)
def test_dimensioned_tensor_with_zero_dim_tensor(a):
    x = sample(a)
    for b, want in zip(NAMES, DIM_WITH_ZERO_DIM[a].split()):
        z = tt.tensor(True if b == "bool" else 2, dtype=dt(b))
        out = x * z
        assert out.dtype is dt(want), (a, b, out.dtype)
        assert (z * x).dtype is dt(want)
        np.testing.assert_array_equal(as_f64(out), as_f64(x) * float(z.item()))


def test_zero_dim_with_zero_dim_follows_promote_types():
    for a, b in [("int32", "float16"), ("int32", "int64"), ("uint8", "int8"), ("bool", "float64")]:
        out = tt.tensor(1, dtype=dt(a)) + tt.tensor(1, dtype=dt(b))
        assert out.dtype is tt.promote_types(dt(a), dt(b))
        assert out.dim() == 0 and out.item() == 2


@pytest.mark.parametrize("a", NAMES)
def test_tensor_with_python_scalars(a):
    x = sample(a)
    for scalar, want in zip((True, 1, 1.5), WITH_SCALAR[a].split()):
        assert (x + scalar).dtype is dt(want), (a, scalar)
        assert (scalar + x).dtype is dt(want), (a, scalar)
        ref = as_f64(x) + float(scalar)
        if want == "bool":
            ref = np.minimum(ref, 1)
        np.testing.assert_allclose(as_f64(x + scalar), ref, rtol=1e-2)


def test_named_cases_from_pytorch():
    r = tt.tensor([1, 2]) * 2.5
    assert r.dtype is tt.float32 and r.tolist() == [2.5, 5.0]
    r = tt.tensor([1, 2], dtype=tt.int32) + 1
    assert r.dtype is tt.int32 and r.tolist() == [2, 3]
    r = tt.tensor([True, False]) + 1
    assert r.dtype is tt.int64 and r.tolist() == [2, 1]
    r = tt.tensor([1.0], dtype=tt.float16) + tt.tensor(1.0, dtype=tt.float64)
    assert r.dtype is tt.float16 and r.tolist() == [2.0]
    r = tt.tensor([1, 2]) + tt.tensor(1.0, dtype=tt.float64)
    assert r.dtype is tt.float64 and r.tolist() == [2.0, 3.0]
    r = tt.tensor([1, 2], dtype=tt.int32) + tt.tensor(1, dtype=tt.int64)
    assert r.dtype is tt.int32
    r = tt.tensor([1.0], dtype=tt.bfloat16) + tt.tensor([1.0], dtype=tt.float16)
    assert r.dtype is tt.float32


def test_scalar_on_the_left():
    x = tt.tensor([2, 4])
    r = 5 / x
    assert r.dtype is tt.float32
    np.testing.assert_allclose(r.numpy(), [2.5, 1.25])
    assert (10 - x).tolist() == [8, 6]
    assert (2 ** tt.tensor([1, 2])).dtype is tt.int64 and (2 ** tt.tensor([1, 2])).tolist() == [2, 4]
    r = 2.0 ** tt.tensor([1, 2])
    assert r.dtype is tt.float32 and r.tolist() == [2.0, 4.0]
    r = 1.0 / tt.tensor([4.0], dtype=tt.float64)
    assert r.dtype is tt.float64 and r.tolist() == [0.25]
    assert (7 // x).tolist() == [3, 1] and (7 % x).tolist() == [1, 3]


@pytest.mark.parametrize("a", NAMES)
def test_true_division(a):
    x, y = sample(a), tt.tensor([2, 4, 4, 8], dtype=dt(a)) if a != "bool" else sample(a).logical_not()
    want = dt(a) if dt(a).is_floating_point else tt.float32
    out = x / y
    assert out.dtype is want
    with np.errstate(divide="ignore", invalid="ignore"):
        ref = as_f64(x) / as_f64(y)
    np.testing.assert_allclose(as_f64(out), ref, rtol=1e-2)
    assert (x / 2).dtype is want and (x.div(2)).dtype is want


def test_floor_division_and_remainder_stay_integer():
    x = tt.tensor([-7, 7, -8])
    assert (x // 2).dtype is tt.int64
    assert (x // 2).tolist() == [-4, 3, -4]
    assert (x % 3).tolist() == [2, 1, 1]              # the divisor's sign, like Python
    assert (x % -3).tolist() == [-1, -2, -2]
    r = tt.tensor([1.5, -1.5]) // 1
    assert r.dtype is tt.float32 and r.tolist() == [1.0, -2.0]


def test_integer_overflow_wraps_like_pytorch():
    r = tt.tensor([1], dtype=tt.uint8) - 2
    assert r.dtype is tt.uint8 and r.tolist() == [255]
    assert (tt.tensor([100], dtype=tt.int8) + 100).tolist() == [-56]
    assert (tt.tensor([1, 2], dtype=tt.uint8) + (-1)).tolist() == [0, 1]
    assert (tt.tensor([1, 2], dtype=tt.uint8) * 300).tolist() == [44, 88]
    assert (tt.tensor([1], dtype=tt.int32) + 2 ** 40).tolist() == [1]


def test_comparisons_across_dtypes():
    r = tt.tensor([1, 2]) < tt.tensor([1.5, 2.5])
    assert r.dtype is tt.bool and r.tolist() == [True, True]
    r = tt.tensor([1, 2], dtype=tt.uint8) == tt.tensor([1, -2], dtype=tt.int8)
    assert r.tolist() == [True, False]                 # compared as int16, so 2 != -2
    assert (tt.tensor([1, 2]) == 1.0).tolist() == [True, False]
    assert (tt.tensor([True, False]) == 1).tolist() == [True, False]
    assert (tt.tensor([0.5, 3.0], dtype=tt.float16) >= tt.tensor([1, 3])).tolist() == [False, True]
    assert (tt.tensor([1.0, 2.0], dtype=tt.float64) != tt.tensor([1.0, 2.5])).tolist() == [False, True]
    for op in ("__lt__", "__le__", "__gt__", "__ge__", "__eq__", "__ne__"):
        x = np.array([1, 5, 3])
        y = np.array([2.5, 5.0, 1.0])
        got = getattr(tt.tensor(x, dtype=tt.int32), op)(tt.tensor(y, dtype=tt.float64))
        assert got.dtype is tt.bool
        np.testing.assert_array_equal(got.numpy(), getattr(x, op)(y))


@pytest.mark.parametrize("backend", [None, "llvm", "interp"])
def test_python_scalars_beside_a_half_tensor_are_rounded_to_its_dtype(backend):
    """PyTorch casts the scalar to the tensor's dtype: bfloat16(1.01) == 1.01 is True, and x % 0.3 divides by
    bfloat16(0.3) (eager bfloat16 and compiled float16 used the unrounded float); mul and div by a scalar
    keep it in float, as PyTorch's kernels do."""

    def f(x):
        return x == 1.01, x > 1 / 3, 1.01 <= x, x % 0.3, x + 0.3, 0.3 - x, x * 0.3, x / 0.3

    g = f if backend is None else tt.compile(f, backend=backend)
    xs = np.array([1.01, 1 / 3, 0.5, -2.7, 7.1], np.float32)
    for dt, rnd in ((tt.float16, lambda a: np.float32(np.float16(a))), (tt.bfloat16, tt.dtypes.round_bfloat16)):
        x = rnd(xs)
        for _ in range(3):
            eq, gt, le, mod, add, rsub, mul, div = (r.float().numpy() for r in g(tt.tensor(xs, dtype=dt)))
            assert eq.tolist() == [True, False, False, False, False]
            assert gt.tolist() == [True, False, True, False, True]
            assert le.tolist() == [True, False, False, False, True]
            np.testing.assert_array_equal(mod, rnd(np.mod(x, rnd(np.float32(0.3)))))
            np.testing.assert_array_equal(add, rnd(x + rnd(np.float32(0.3))))
            np.testing.assert_array_equal(rsub, rnd(rnd(np.float32(0.3)) - x))
            np.testing.assert_array_equal(mul, rnd(x * np.float32(0.3)))
            np.testing.assert_array_equal(div, rnd(x / np.float32(0.3)))


def wrap32(v):
    return (v + 2 ** 31) % 2 ** 32 - 2 ** 31


@pytest.mark.parametrize("backend", [None, "llvm", "interp"])
def test_reductions_return_the_dtype_asked_for(backend):
    """x.sum(dtype=int32) is int32 as in PyTorch (integer sums were int64 whatever dtype= said), wrapping
    like an int32 accumulator; without dtype=, integer and bool sums are int64."""

    def f(x, b):
        return (x.sum(dtype=tt.int32), x.prod(dtype=tt.int32), x.cumsum(0, dtype=tt.int32), b.sum(dtype=tt.int32),
                x.sum(), b.cumsum(0), b.sum(dtype=tt.float16))
    g = f if backend is None else tt.compile(f, backend=backend)
    for k in range(3):
        out = g(tt.tensor([2 ** 31 - 1, 2, k], dtype=tt.int32), tt.tensor([True, False, True]))
        assert [o.dtype for o in out] == [tt.int32] * 4 + [tt.int64, tt.int64, tt.float16]
        assert out[0].item() == wrap32(2 ** 31 + 1 + k) and out[1].item() == wrap32((2 ** 31 - 1) * 2 * k)
        assert out[2].tolist() == [2 ** 31 - 1, wrap32(2 ** 31 + 1), wrap32(2 ** 31 + 1 + k)] and out[3].item() == 2
        assert out[4].item() == 2 ** 31 + 1 + k and out[5].tolist() == [1, 1, 2] and out[6].item() == 2.0


def test_python_ints_beyond_64_bits_raise_as_in_pytorch():
    """PyTorch's Scalar holds int64 or uint64: t * 2**64 raises OverflowError (it wrapped to 0, and float
    tensors took any int); up to 2**64 - 1 it wraps as PyTorch's cast does."""
    for f in (lambda: tt.tensor([1]) * 2 ** 64, lambda: tt.tensor([1.0]) + 2 ** 70, lambda: tt.tensor([1]) < 2 ** 70,
              lambda: tt.tensor([1]) - (-2 ** 63 - 1), lambda: 2 ** 64 * tt.tensor([1.0])):
        with pytest.raises(OverflowError):
            f()
    assert (tt.tensor([1]) + 2 ** 63).item() == -2 ** 63 + 1 and (tt.tensor([1.0]) + 2 ** 63).item() == 2.0 ** 63


def test_bitwise_promotion():
    r = tt.tensor([True]) & tt.tensor([3])
    assert r.dtype is tt.int64 and r.tolist() == [1]
    assert (tt.tensor([5, 6]) & 3).tolist() == [1, 2]
    assert (tt.tensor([1, 2], dtype=tt.int32) | tt.tensor([4], dtype=tt.int64)).dtype is tt.int64
    assert (~tt.tensor([True, False])).tolist() == [False, True]
    assert (~tt.tensor([1])).tolist() == [-2]
    with pytest.raises(TypeError, match="bitwise"):
        tt.tensor([1.0]) & 1


class TestInPlace:
    """In-place ops keep self's dtype; a result of a higher category cannot be cast back."""

    @pytest.mark.parametrize("stmt", [
        "t += 1.5", "t -= 0.5", "t *= tt.tensor([1.5, 1.0])", "t /= 2", "t.mul_(2.0)", "t.add_(0.5)",
        "t.div_(tt.tensor(2))", "t.exp_()", "t.pow_(0.5)", "t += tt.tensor(1.0, dtype=tt.float64)",
    ])
    def test_lossy_cast_raises(self, stmt):
        t = tt.tensor([1, 2])
        with pytest.raises(RuntimeError, match="result type float.* can't be cast to the desired output type int64"):
            exec(stmt, {"t": t, "tt": tt})
        assert t.tolist() == [1, 2]

    def test_bool_plus_int_raises(self):
        t = tt.tensor([True, False])
        with pytest.raises(RuntimeError, match="can't be cast to the desired output type bool"):
            t += 1
        t |= tt.tensor([False, True])
        assert t.tolist() == [True, True]

    def test_same_category_casts_back(self):
        t = tt.tensor([1, 2], dtype=tt.int32)
        t += tt.tensor([1], dtype=tt.int64)
        assert t.dtype is tt.int32 and t.tolist() == [2, 3]
        h = tt.tensor([1.0, 2.0], dtype=tt.float16)
        h += tt.tensor([0.5], dtype=tt.float64)
        assert h.dtype is tt.float16 and h.tolist() == [1.5, 2.5]
        u = tt.tensor([1, 2], dtype=tt.uint8)
        u += tt.tensor([300])
        assert u.dtype is tt.uint8 and u.tolist() == [45, 46]     # wraps modulo 256
        f = tt.tensor([1.0])
        f.add_(tt.tensor([1]))
        assert f.dtype is tt.float32 and f.tolist() == [2.0]
        i = tt.tensor([7, -7])
        i //= 2
        assert i.tolist() == [3, -4]


@pytest.fixture
def float64_default():
    tt.set_default_dtype(tt.float64)
    try:
        yield
    finally:
        tt.set_default_dtype(tt.float32)


def test_set_default_dtype_float64(float64_default):
    assert tt.get_default_dtype() is tt.float64
    assert tt.tensor([1.0, 2.0]).dtype is tt.float64
    assert (tt.tensor([1, 2]) * 2.5).dtype is tt.float64
    assert (tt.tensor([1, 2]) / 2).dtype is tt.float64
    assert tt.arange(3.0).dtype is tt.float64 and tt.arange(3).dtype is tt.int64
    assert tt.zeros(2).dtype is tt.float64 and tt.ones(2).dtype is tt.float64
    assert tt.full((2,), 1.5).dtype is tt.float64
    assert tt.rand(2).dtype is tt.float64 and tt.randn(2).dtype is tt.float64
    assert (tt.tensor(1) + 0.5).dtype is tt.float64
    assert (tt.tensor([1.0], dtype=tt.float32) * 2.5).dtype is tt.float32
    assert (tt.tensor([1.0], dtype=tt.float32) + tt.tensor(2.0)).dtype is tt.float32
    # the full float64 value survives, not a float32 rounding of it
    assert tt.tensor([0.1]).item() == 0.1


def test_default_dtype_is_restored_and_validated():
    assert tt.get_default_dtype() is tt.float32
    assert tt.tensor([0.1]).item() != 0.1
    with pytest.raises(TypeError):
        tt.set_default_dtype(tt.int64)
    assert tt.get_default_dtype() is tt.float32
