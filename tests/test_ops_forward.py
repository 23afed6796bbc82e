"""Forward results and shape/dtype inference of every registered op and of the public
composites, against numpy references, over shapes, layouts and dtypes (samples: op_samples.py)."""
from __future__ import annotations

import numpy as np
import pytest

import tracetorch as tt
from op_samples import (LAYOUTS, PUBLIC_SAMPLES, SAMPLES, as_tuple, assert_close, op_samples, public_samples,
                        to_tensor)
from tracetorch.dtypes import ALL_DTYPES, round_bfloat16
from tracetorch.ops import REGISTRY, Aval

PRIMITIVE_CASES = [(name, dt) for name, info in SAMPLES.items() for dt in info.dtypes]
PUBLIC_CASES = [(name, dt) for name, info in PUBLIC_SAMPLES.items() for dt in info.dtypes]


def _case_id(case):
    return getattr(case, "name", str(case))


def test_every_registered_op_has_samples():
    missing = sorted(set(REGISTRY) - set(SAMPLES))
    unknown = sorted(set(SAMPLES) - set(REGISTRY))
    assert not missing, f"ops without samples in tests/op_samples.py: {missing}"
    assert not unknown, f"samples for ops that are not registered: {unknown}"


def _layouts(sample):
    """Non-contiguous layouts only where some input has a dim to lay out."""
    if any(isinstance(v, np.ndarray) and v.ndim for v in sample.inputs):
        return LAYOUTS
    return LAYOUTS[:1]


def _check_forward(sample, what):
    expected = sample.expected()
    for layout in _layouts(sample):
        tensors = sample.tensors(layout)
        out = sample.fn(*tensors, **sample.attrs)
        assert_close(out, expected, sample.result_dtype(), f"{what} [{layout}]")
        for t, v in zip(tensors, sample.inputs):
            if isinstance(v, np.ndarray):
                np.testing.assert_array_equal(t.numpy(), v, err_msg=f"{what} [{layout}] changed an input")


@pytest.mark.parametrize("name,dtype", PRIMITIVE_CASES, ids=_case_id)
def test_primitive_forward(name, dtype, rng):
    samples = op_samples(name, dtype, rng)
    assert samples, f"{name}: no samples for {dtype.name}"
    for s in samples:
        _check_forward(s, f"{name}[{dtype.name}] {s.desc}")


def _aval(x):
    return Aval(tuple(x.shape), x.dtype) if isinstance(x, tt.Tensor) else x


@pytest.mark.parametrize("name,dtype", PRIMITIVE_CASES, ids=_case_id)
def test_primitive_infer_matches_eager(name, dtype, rng):
    """op.infer on abstract values predicts the eager result exactly (what the IR verifier relies on)."""
    op = REGISTRY[name]
    for s in op_samples(name, dtype, rng):
        out = s.run()
        inferred = op.infer(*[_aval(x) for x in s.tensors()], **s.attrs)
        what = f"{name}[{dtype.name}] {s.desc}"
        assert type(inferred.shape) is tuple and all(type(d) is int for d in inferred.shape), \
            f"{what}: infer gave shape {inferred.shape!r}, expected a tuple of ints"
        assert inferred.shape == tuple(out.shape), f"{what}: infer gave shape {inferred.shape}, eager {out.shape}"
        assert inferred.dtype is out.dtype, f"{what}: infer gave {inferred.dtype}, eager {out.dtype}"


@pytest.mark.parametrize("name", sorted(SAMPLES))
def test_infer_rejects_dtypes_the_kernel_handles_differently(name, rng):
    """For dtypes outside an op's sample list: where infer accepts the inputs, eager must not fail on the
    dtype and must agree with it (a verified IR never computes what eager would not)."""
    op = REGISTRY[name]
    for dtype in ALL_DTYPES:
        if dtype in SAMPLES[name].dtypes:
            continue
        try:
            samples = op_samples(name, dtype, rng)
        except (TypeError, ValueError, OverflowError):
            continue        # the sample maker has no values of this dtype
        for s in samples:
            tensors = s.tensors()
            try:
                inferred = op.infer(*[_aval(x) for x in tensors], **s.attrs)
            except (TypeError, RuntimeError):
                continue
            what = f"{name}[{dtype.name}] {s.desc}: infer accepts {inferred}"
            try:
                out = s.fn(*tensors, **s.attrs)
            except TypeError as e:
                raise AssertionError(f"{what} but eager raises {e}") from e
            except (RuntimeError, ValueError, OverflowError):
                continue    # a value this dtype can't hold (a negative scalar for uint8), not a dtype mismatch
            assert (inferred.shape, inferred.dtype) == (tuple(out.shape), out.dtype), \
                f"{what} but eager gives {out.dtype.name} {tuple(out.shape)}"


@pytest.mark.parametrize("name,dtype", PUBLIC_CASES, ids=_case_id)
def test_public_forward(name, dtype, rng):
    samples = public_samples(name, dtype, rng)
    assert samples, f"{name}: no samples for {dtype.name}"
    for s in samples:
        _check_forward(s, f"{name}[{dtype.name}] {s.desc}")


def test_layouts_are_really_non_contiguous():
    a = np.arange(12.0).reshape(3, 4)
    for layout in LAYOUTS[1:]:
        t = to_tensor(a, tt.float64, layout)
        assert not t.is_contiguous(), layout
        np.testing.assert_array_equal(t.numpy(), a)


def test_bfloat16_results_are_representable(rng):
    """Every bfloat16 result holds bfloat16 values (rounded after each op), not raw float32."""
    for name, info in SAMPLES.items():
        if tt.bfloat16 not in info.dtypes:
            continue
        for s in op_samples(name, tt.bfloat16, rng):
            for out in as_tuple(s.run()):
                if out.dtype is tt.bfloat16:
                    data = out.numpy()
                    np.testing.assert_array_equal(round_bfloat16(data), data, err_msg=f"{name} {s.desc}")


# ---------------------------------------------------------------- regressions and semantics
def test_round_bfloat16_ties_to_even():
    one_ulp = 2.0 ** -7
    x = np.array([1 + one_ulp / 2, 1 + 3 * one_ulp / 2, -(1 + one_ulp / 2), np.inf, 3.4e38, np.nan], np.float32)
    got = round_bfloat16(x)
    np.testing.assert_array_equal(got[:5], [1.0, 1 + 2 * one_ulp, -1.0, np.inf, np.inf])
    assert np.isnan(got[5])


# (a dtype, a shape, b: dtype and shape or a Python scalar, result) -- results checked against PyTorch 2.x.
PROMOTIONS = [
    ("int32", (2,), ("int64", ()), "int32"),
    ("int32", (2,), ("int64", (2,)), "int64"),
    ("bool", (2,), 1, "int64"),
    ("int32", (2,), 1.5, "float32"),
    ("uint8", (2,), ("int8", (2,)), "int16"),
    ("float32", (2,), ("float64", ()), "float32"),
    ("int32", (2,), ("float64", ()), "float64"),
    ("uint8", (2,), ("int64", ()), "uint8"),
    ("float16", (2,), ("bfloat16", (2,)), "float32"),
    ("bool", (2,), ("bool", ()), "bool"),
    ("int32", (), ("float64", ()), "float64"),
    ("float16", (2,), 2.5, "float16"),
    ("bfloat16", (2,), 1, "bfloat16"),
    ("int64", (2,), True, "int64"),
]


@pytest.mark.parametrize("a_dtype,a_shape,b,want", PROMOTIONS)
def test_binary_promotion(a_dtype, a_shape, b, want):
    a = tt.ones(a_shape, dtype=getattr(tt, a_dtype))
    if isinstance(b, tuple):
        b = tt.ones(b[1], dtype=getattr(tt, b[0]))
    assert (a + b).dtype is getattr(tt, want)
    assert (b + a).dtype is getattr(tt, want)


def test_result_type_of_python_scalars_only_is_the_default_dtype():
    assert tt.dtypes.result_type(1.0, 2) is tt.get_default_dtype()
    assert tt.dtypes.result_type(1, 2) is tt.int64
    assert tt.dtypes.result_type(True, False) is tt.bool


def test_einsum_is_still_callable_after_first_use():
    """Loading the submodule tracetorch.einsum must not replace the function tt.einsum."""
    x = tt.ones(2, 3)
    tt.einsum("ij->j", x)
    assert callable(tt.einsum)
    np.testing.assert_array_equal(tt.einsum("ij->j", x).numpy(), [2.0, 2.0, 2.0])


def test_rand_low_precision_never_reaches_one():
    """Uniform draws keep only as many random bits as the dtype holds (as torch does), so no 1.0."""
    for dt in (tt.float16, tt.bfloat16):
        x = tt.rand(20000, dtype=dt, generator=tt.Generator().manual_seed(3))
        assert x.dtype is dt and float(x.max()) < 1.0 and float(x.min()) >= 0.0


def test_rand_offsets_address_one_stream():
    seed, offset = np.array(9, np.int64), np.array(0, np.int64)
    rand = REGISTRY["rand"]
    whole = tt.ops.apply(rand, tt.tensor(seed), tt.tensor(offset), shape=(10,), dtype=tt.float64, normal=False)
    tail = tt.ops.apply(rand, tt.tensor(seed), tt.tensor(np.array(4, np.int64)), shape=(6,), dtype=tt.float64,
                        normal=False)
    np.testing.assert_array_equal(whole.numpy()[4:], tail.numpy())


def test_clone_does_not_share_storage():
    x = tt.arange(6.0)
    y = tt.ops.apply(REGISTRY["clone"], x[::2])
    assert y.is_contiguous() and not np.shares_memory(y.numpy(), x.numpy())


def test_reductions_of_0d_tensors_accept_dim_0_and_minus_1():
    x = tt.tensor(2.5)
    for fn in (tt.sum, tt.mean, tt.amax, tt.prod, tt.logsumexp):
        for d in (0, -1):
            assert fn(x, d).shape == () and fn(x, d, keepdim=True).shape == ()
    assert tt.sum(tt.tensor(True), 0).dtype is tt.int64
    assert tt.argmax(x, 0).item() == 0 and tt.cumsum(x, -1).item() == 2.5
    with pytest.raises(IndexError):
        tt.sum(x, 1)


def test_sum_of_bool_and_int_accumulates_in_int64():
    assert tt.sum(tt.ones(3, dtype=tt.bool)).dtype is tt.int64
    assert tt.sum(tt.ones(3, dtype=tt.int32), 0).dtype is tt.int64
    big = tt.full((4,), 2 ** 30, dtype=tt.int32)
    assert tt.sum(big).item() == 2 ** 32


def test_reductions_with_dtype_return_that_dtype_eager_and_compiled():
    """sum/prod/cumsum(dtype=int32) stay int32 as in PyTorch; without dtype= integers widen to int64."""
    def reduce(x):
        return (x.sum(dtype=tt.int32), x.sum(1, dtype=tt.int32), x.prod(dtype=tt.int32),
                x.cumsum(0, dtype=tt.int32), (x > 2).sum(dtype=tt.int32), x.float().sum(dtype=tt.float64))
    want = ([10, [3, 7], 24, [[1, 2], [4, 6]], 2, 10.0], [tt.int32] * 5 + [tt.float64])
    for fn in (reduce, tt.compile(reduce, backend="llvm"), tt.compile(reduce, backend="interp")):
        for _ in range(2):
            out = fn(tt.tensor([[1, 2], [3, 4]], dtype=tt.int32))
            assert [o.tolist() for o in out] == want[0] and [o.dtype for o in out] == want[1]


def test_cat_skips_legacy_empty_and_keeps_2d_empty_shape_checks():
    x = tt.ones(2, 3)
    assert tt.cat([tt.ones(0), x, tt.ones(0)]).shape == (2, 3)
    assert tt.cat([tt.ones(0, 3), x]).shape == (2, 3)
    with pytest.raises(RuntimeError):
        tt.cat([tt.ones(0, 2), x])


def test_var_and_std_take_a_positional_bool_as_unbiased():
    """x.var(False) is PyTorch's var(unbiased=False) over all elements (it reduced dim 0 instead)."""
    a = np.random.default_rng(0).normal(size=(3, 4))
    x = tt.tensor(a)
    np.testing.assert_allclose(x.var(False).numpy(), a.var(), rtol=1e-12)
    np.testing.assert_allclose(tt.var(x, True).numpy(), a.var(ddof=1), rtol=1e-12)
    np.testing.assert_allclose(x.std(False).numpy(), a.std(), rtol=1e-12)
    np.testing.assert_allclose(x.var(1, False).numpy(), a.var(1), rtol=1e-12)         # dim, unbiased


def test_shape_ops_take_pytorchs_keyword_names():
    x = tt.arange(24.0).reshape(2, 3, 4)
    assert x.reshape(shape=(4, 6)).shape == (4, 6) and tt.reshape(x, shape=(6, 4)).shape == (6, 4)
    assert x.view(size=(4, 6)).shape == (4, 6)
    assert x.permute(dims=(2, 0, 1)).shape == (4, 2, 3) and tt.permute(x, dims=(1, 0, 2)).shape == (3, 2, 4)
    assert x[:1].expand(size=(2, 3, 4)).shape == (2, 3, 4) and tt.broadcast_to(x[0], size=(2, 3, 4)).shape == (2, 3, 4)
    assert x.repeat(repeats=(1, 2, 1)).shape == (2, 6, 4)
    assert [p.shape for p in x.split(split_size=2, dim=1)] == [(2, 2, 4), (2, 1, 4)]
    assert [p.shape for p in tt.split(x, split_size_or_sections=[1, 3], dim=2)] == [(2, 3, 1), (2, 3, 3)]


def test_all_and_any_over_an_empty_dim_list_reduce_nothing():
    """PyTorch's x.all(dim=()) is x != 0 elementwise (it reduced every dim, as sum(dim=()) still does)."""
    x = tt.tensor([[1.0, 0.0], [2.0, 3.0]])
    assert x.all(dim=()).tolist() == [[True, False], [True, True]] == x.any(dim=[]).tolist()
    assert (x > 1).all(dim=(), keepdim=True).tolist() == [[False, False], [True, True]]
    assert tt.zeros(2, 0).any(dim=()).shape == (2, 0)
    assert x.sum(dim=()).shape == () and not x.all().item() and x.any(dim=(0,)).tolist() == [True, True]


def test_chunk_of_an_empty_dim_gives_chunks_empty_pieces():
    assert [c.shape for c in tt.zeros(0, 2).chunk(3)] == [(0, 2)] * 3        # PyTorch's
    assert [c.shape for c in tt.zeros(2, 0).chunk(2, dim=-1)] == [(2, 0)] * 2
    assert [c.shape for c in tt.zeros(3, 0).chunk(2)] == [(2, 0), (1, 0)]


def test_where_and_nonzero_of_a_0d_condition_count_it_as_1d():
    """PyTorch's: tt.where(tensor(True)) is (tensor([0]),); numpy's nonzero refuses 0-d arrays."""
    for v, n in ((True, 1), (False, 0)):
        (i,) = tt.where(tt.tensor(v))
        assert i.tolist() == [0] * n and i.dtype is tt.int64
        assert tt.nonzero(tt.tensor(v)).shape == (n, 0)
    f = tt.compile(lambda c: tt.where(c > 0)[0] + 1, backend="llvm")
    for v in (1.0, 2.0, -1.0):
        assert f(tt.tensor(v)).tolist() == ([1] if v > 0 else [])


def test_index_rejects_out_of_range_including_negative():
    x = tt.arange(5.0)
    assert x[tt.tensor([-5, -1])].tolist() == [0.0, 4.0]
    for bad in ([5], [-6]):
        with pytest.raises(IndexError):
            x[tt.tensor(bad)]


def test_float16_ops_compute_in_float32_and_round_once():
    """As PyTorch's half "opmath": no overflow of a Python scalar, no float16 accumulation."""
    x = np.random.default_rng(0).random(100_000).astype(np.float16)
    t = tt.tensor(x)
    total = np.float16(x.astype(np.float32).sum())
    assert t.dtype is tt.float16 and t.cumsum(0)[-1].item() == total and t.sum().item() == total
    np.testing.assert_allclose(t.mean().item(), x.astype(np.float64).mean(), rtol=1e-3)
    np.testing.assert_allclose((t[:3] / 1e5).numpy(), (x[:3] / np.float32(1e5)).astype(np.float16))


def test_half_mean_var_norm_softmax_compute_in_float32_and_round_once():
    """As PyTorch's kernels: a float16 sum of 1000 x 100.0 overflows, its mean must not; var, std, norm and
    softmax round once, not after each op of their composite (bfloat16 var was 2 ulps off)."""
    assert tt.full((1000,), 100.0, dtype=tt.float16).mean().item() == 100.0
    x = np.array([[1.5, -1.0, 1.5], [2.0, 0.25, 2.0]], np.float32)
    w = x.astype(np.float64)
    for dt, rnd in ((tt.float16, lambda a: np.float16(a)), (tt.bfloat16, lambda a: round_bfloat16(np.float32(a)))):
        t = tt.tensor(x, dtype=dt)
        e = np.exp(w - w.max(1, keepdims=True))
        for got, want in ((t.var(), w.var(ddof=1)), (t.var(1), w.var(1, ddof=1)), (t.std(), w.std(ddof=1)),
                          (t.mean(0), w.mean(0)), (t.norm(), np.sqrt((w * w).sum())),
                          (t.softmax(1), e / e.sum(1, keepdims=True))):
            assert got.dtype is dt
            np.testing.assert_array_equal(got.numpy().astype(np.float32), np.float32(rnd(want)))


@pytest.mark.parametrize("dtype", [np.float32, np.float64, np.float16, np.int64, np.int32, np.uint8, np.bool_])
def test_where_on_large_tensors_selects_exactly_what_np_where_does(dtype):
    # from WHERE_SELECT_MIN elements `where` selects bits (np.where mispredicts a random mask): the
    # same values to the bit, NaN payloads and -0.0 included, through broadcasting and Python scalars
    from tracetorch.ops.elementwise import WHERE_SELECT_MIN, _where_eager
    rng = np.random.default_rng(0)
    shape = (64, WHERE_SELECT_MIN // 32)
    c = rng.random(shape) > 0.5
    a = (rng.standard_normal(shape) * 50).astype(dtype)
    b = (rng.standard_normal((1, shape[1])) * 50).astype(dtype)
    if np.dtype(dtype).kind == "f":
        a[0, :5] = [np.nan, -0.0, np.inf, -np.inf, 0.0]
        b[0, :5] = [-0.0, np.nan, 1.0, np.inf, -0.0]
    scalar = True if dtype is np.bool_ else 3
    for x, y in [(a, b), (b, a), (a, scalar), (scalar, b), (a, a)]:
        got = _where_eager(c, x, y)
        want = np.where(c, x, y).astype(dtype)
        assert got.dtype == want.dtype and got.shape == want.shape
        np.testing.assert_array_equal(got.view(np.uint8), want.view(np.uint8))
    t = tt.where(tt.tensor(c), tt.tensor(a), tt.tensor(b))            # through the public op
    np.testing.assert_array_equal(t.numpy().view(np.uint8), np.where(c, a, b).astype(dtype).view(np.uint8))


@pytest.mark.parametrize("dtype", [tt.float32, tt.float64])
def test_sigmoid_keeps_its_relative_accuracy_for_large_negative_inputs(dtype):
    """sigmoid(-20) ~ 2e-9 is representable: eager must not lose it to cancellation (the compiled kernel
    did not), and both agree to a few ulps."""
    xs = np.array([-80.0, -40.0, -20.0, -17.0, -5.0, 0.0, 5.0, 17.0, 40.0])
    exact = np.exp(xs) / (1 + np.exp(xs))             # float64, no cancellation on this side
    x = tt.tensor(xs, dtype=dtype)
    rtol = 1e-6 if dtype is tt.float32 else 1e-14
    np.testing.assert_allclose(x.sigmoid().numpy().astype(np.float64), exact, rtol=rtol, atol=1e-38)
    f = tt.compile(lambda t: t.sigmoid(), backend="llvm")
    f(x)
    np.testing.assert_allclose(f(x).numpy(), x.sigmoid().numpy(), rtol=4 * rtol, atol=1e-38)


@pytest.mark.parametrize("backend", [None, "llvm", "interp"])
def test_float_trunc_division_is_trunc_of_the_quotient(backend):
    """PyTorch's rounding_mode="trunc" on floats is trunc(a / b): inf / 2 is inf (it was nan, from floor
    division), and a tiny negative quotient is -0.0."""
    a = np.array([5.5, -5.5, np.inf, -np.inf, 1e-30, np.nan, 7.0], np.float32)
    b = np.array([2.0, 2.0, 2.0, 3.0, -1.0, 1.0, 0.0], np.float32)

    def f(x, y):
        return tt.div(x, y, rounding_mode="trunc"), tt.div(x, -2.5, rounding_mode="trunc")
    g = f if backend is None else tt.compile(f, backend=backend)
    for _ in range(3):
        q, qs = g(tt.tensor(a), tt.tensor(b))
        with np.errstate(all="ignore"):
            np.testing.assert_array_equal(q.numpy(), np.trunc(a / b))
            np.testing.assert_array_equal(qs.numpy(), np.trunc(a / np.float32(-2.5)))
        assert np.signbit(q.numpy()[4])


@pytest.mark.parametrize("backend", [None, "llvm", "interp"])
def test_float64_to_float16_rounds_through_float32(backend):
    """As PyTorch (c10::Half from float) and the LLVM kernels: numpy's direct rounding differed at ties
    that the float32 rounding creates (1 + 2^-11 + 2^-30 is 1.0, not 1 + 2^-10)."""
    v = np.array([1 + 2 ** -11 + 2 ** -30, 1 + 3 * 2 ** -11 + 2 ** -30, 1e300, 1 + 2 ** -11 - 2 ** -30])
    f = (lambda t: t.half()) if backend is None else tt.compile(lambda t: t.half(), backend=backend)
    for _ in range(3):
        assert f(tt.tensor(v, dtype=tt.float64)).tolist() == [1.0, 1.001953125, float("inf"), 1.0]
