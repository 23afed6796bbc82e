"""Tensor creation (dtype inference, memory sharing) and random sampling
(shapes, dtypes, ranges, seeding, generators, basic distribution checks)."""
import numpy as np
import pytest

import tracetorch as tt


class TestTensor:
    def test_dtype_inference(self):
        assert tt.tensor([1, 2]).dtype is tt.int64
        assert tt.tensor([1.0, 2]).dtype is tt.float32
        assert tt.tensor([True, False]).dtype is tt.bool
        assert tt.tensor(3).dtype is tt.int64 and tt.tensor(3).dim() == 0
        assert tt.tensor([[1, 2], [3, 4]]).shape == (2, 2)
        for np_type, dtype in [(np.int32, tt.int32), (np.uint8, tt.uint8), (np.float64, tt.float64),
                               (np.float16, tt.float16), (np.int8, tt.int8), (np.bool_, tt.bool)]:
            assert tt.tensor(np.array([1, 0], dtype=np_type)).dtype is dtype
        assert tt.tensor(np.float64(2.5)).dtype is tt.float64
        assert tt.tensor([tt.tensor(1.0), tt.tensor(2.0)]).tolist() == [1.0, 2.0]

    def test_sequences_of_numpy_scalars_and_tensors_promote_their_dtypes(self):
        """As PyTorch: the elements' own dtypes count (they were read as Python numbers: float32 or int64)."""
        for data, dtype in [([np.float64(1.5), 2], tt.float64), ([np.float32(1.5), np.float64(2)], tt.float64),
                            ([np.int32(1), np.int32(2)], tt.int32), ([np.int32(1), 2], tt.int64),
                            ([np.float16(1.5), 2.5], tt.float32), ([np.int32(1), 2.5], tt.float32),
                            ([tt.tensor(1.5, dtype=tt.float64)], tt.float64), ([tt.tensor(1, dtype=tt.int32), 2], tt.int64),
                            ([tt.tensor(1.01, dtype=tt.bfloat16), tt.tensor(2.0, dtype=tt.bfloat16)], tt.bfloat16),
                            ([np.array([1, 2], np.int32), np.array([3, 4], np.int32)], tt.int32),
                            ([[1, 2], [3.5, 4]], tt.float32), ([True, 2], tt.int64)]:
            t = tt.tensor(data)
            assert t.dtype is dtype, data
        assert tt.tensor([tt.tensor(1.01, dtype=tt.bfloat16)]).tolist() == [1.0078125]
        assert tt.tensor([np.float64(0.1)]).item() == 0.1

    def test_python_numbers_an_integer_dtype_cannot_hold_raise(self):
        """As PyTorch (numpy's cast wrapped them: tensor([2**40], dtype=int32) was 0, NaN became INT_MIN)."""
        for data, dtype in [([2 ** 40], tt.int32), ([1, -2 ** 40], tt.int32), (2 ** 40, tt.int32), ([1e10], tt.int32),
                            ([float("nan")], tt.int64), ([1e19], tt.int64)]:
            with pytest.raises(RuntimeError, match="without overflow"):
                tt.tensor(data, dtype=dtype)
        assert tt.tensor([2 ** 31 - 1, -2 ** 31], dtype=tt.int32).tolist() == [2 ** 31 - 1, -2 ** 31]
        assert tt.tensor([1, 2.7, -2.7], dtype=tt.int32).tolist() == [1, 2, -2]

    def test_explicit_dtype_and_requires_grad(self):
        t = tt.tensor([1, 2], dtype=tt.float64, requires_grad=True)
        assert t.dtype is tt.float64 and t.requires_grad and t.is_leaf
        assert tt.tensor([1.7, -1.7], dtype=tt.int32).tolist() == [1, -1]
        assert tt.tensor([0.1], dtype=tt.bfloat16).item() == 0.10009765625     # rounded to bfloat16

    def test_python_ints_beyond_int64_raise_unless_a_float_dtype_is_asked(self):
        """As PyTorch (numpy would wrap 2**63 to -2**63, or widen [1, 2**63] to float64)."""
        for data in (2 ** 63, [1, 2 ** 63], [[1], [-2 ** 63 - 1]], 2 ** 64, [True, 2 ** 63]):
            with pytest.raises(ValueError, match="Overflow"):
                tt.tensor(data)
        with pytest.raises(ValueError, match="Overflow"):
            tt.tensor(2 ** 63, dtype=tt.int64)
        assert tt.tensor(2 ** 63 - 1).item() == 2 ** 63 - 1 and tt.tensor(-2 ** 63).item() == -2 ** 63
        assert tt.tensor([2 ** 63, 1], dtype=tt.float64).tolist() == [2.0 ** 63, 1.0]
        assert tt.tensor(2 ** 70, dtype=tt.float64).item() == 2.0 ** 70
        assert tt.tensor([1.5, 2 ** 63]).dtype is tt.float32           # a float in the data: floating point

    def test_tensor_copies(self):
        a = np.array([1.0, 2.0])
        t = tt.tensor(a)
        a[0] = 9
        assert t.tolist() == [1.0, 2.0]
        u = tt.tensor(t)
        u.add_(1)
        assert t.tolist() == [1.0, 2.0]

    def test_from_numpy_and_as_tensor_share_memory(self):
        a = np.arange(6, dtype=np.int32).reshape(2, 3)
        t = tt.from_numpy(a)
        assert t.dtype is tt.int32 and t.shape == (2, 3)
        a[0, 0] = 100
        assert t[0, 0].item() == 100
        t[1, 2] = -1
        assert a[1, 2] == -1
        f = np.zeros(3)
        s = tt.as_tensor(f)
        s.add_(2)
        assert f.tolist() == [2.0, 2.0, 2.0] and s.dtype is tt.float64
        c = tt.as_tensor(f, dtype=tt.float32)             # a dtype change must copy
        assert c.dtype is tt.float32 and not np.shares_memory(c.numpy(), f)
        assert tt.as_tensor(t) is t and tt.as_tensor([1, 2]).dtype is tt.int64
        with pytest.raises(TypeError):
            tt.from_numpy([1, 2])
        with pytest.raises(TypeError):
            tt.from_numpy(np.array([1j]))


class TestFactories:
    def test_zeros_ones_empty_full(self):
        for size in [(2, 3), ((2, 3),), ([2, 3],)]:
            assert tt.zeros(*size).shape == (2, 3) and tt.ones(*size).shape == (2, 3)
            assert tt.empty(*size).shape == (2, 3)
        assert tt.zeros(2).dtype is tt.float32 and tt.zeros(2).tolist() == [0.0, 0.0]
        assert tt.ones(2, dtype=tt.int32).dtype is tt.int32 and tt.ones(2, dtype=tt.int32).tolist() == [1, 1]
        assert tt.zeros(()).shape == () and tt.zeros(0, 3).shape == (0, 3)
        assert tt.empty(3, dtype=tt.int64).dtype is tt.int64
        z = tt.zeros(2, requires_grad=True)
        assert z.requires_grad and z.is_leaf

    def test_full_infers_dtype_from_fill_value(self):
        assert tt.full((2,), True).dtype is tt.bool and tt.full((2,), True).tolist() == [True, True]
        assert tt.full((2,), 2).dtype is tt.int64
        assert tt.full((2,), 2.0).dtype is tt.float32
        assert tt.full((2, 2), 1.5, dtype=tt.float64).dtype is tt.float64
        assert tt.full((), 7).shape == () and tt.full([3], -1).tolist() == [-1, -1, -1]

    def test_arange(self):
        cases = [((5,), np.arange(5), tt.int64), ((2, 7, 2), np.arange(2, 7, 2), tt.int64),
                 ((5, 0, -1), np.arange(5, 0, -1), tt.int64), ((10, 0, -3), np.arange(10, 0, -3), tt.int64),
                 ((0, 1, 0.25), np.arange(0, 1, 0.25), tt.float32), ((5.0,), np.arange(5.0), tt.float32),
                 ((5.0, 0, -1.5), np.arange(5.0, 0, -1.5), tt.float32), ((0, 1, 0.1), np.arange(0, 1, 0.1), tt.float32),
                 ((-1.0, -3.0, -0.5), np.arange(-1.0, -3.0, -0.5), tt.float32), ((3, 3), np.arange(3, 3), tt.int64)]
        for args, ref, dtype in cases:
            got = tt.arange(*args)
            assert got.dtype is dtype, args
            np.testing.assert_allclose(got.numpy(), ref, rtol=1e-6, err_msg=str(args))
        assert tt.arange(1, 4, dtype=tt.float64).tolist() == [1.0, 2.0, 3.0]
        assert tt.arange(tt.tensor(3)).tolist() == [0, 1, 2]
        with pytest.raises(RuntimeError, match="step must be nonzero"):
            tt.arange(0, 5, 0)

    def test_linspace_and_eye(self):
        np.testing.assert_allclose(tt.linspace(-1, 1, 5).numpy(), np.linspace(-1, 1, 5))
        np.testing.assert_allclose(tt.linspace(0, 1, 7, dtype=tt.float64).numpy(), np.linspace(0, 1, 7))
        assert tt.linspace(0, 1, 1).tolist() == [0.0] and tt.linspace(0, 1, 0).shape == (0,)
        assert tt.linspace(0, 1, 3).dtype is tt.float32
        np.testing.assert_array_equal(tt.eye(3).numpy(), np.eye(3))
        np.testing.assert_array_equal(tt.eye(2, 4).numpy(), np.eye(2, 4))
        e = tt.eye(2, dtype=tt.int64)
        assert e.dtype is tt.int64 and e.tolist() == [[1, 0], [0, 1]]

    def test_like_factories(self):
        i = tt.tensor([[1, 2, 3]], dtype=tt.int32)
        for fn, value in [(tt.zeros_like, 0), (tt.ones_like, 1), (tt.empty_like, None)]:
            out = fn(i)
            assert out.dtype is tt.int32 and out.shape == (1, 3)
            if value is not None:
                assert out.tolist() == [[value] * 3]
        assert tt.ones_like(i, dtype=tt.float64).dtype is tt.float64
        assert tt.full_like(tt.tensor([1, 2]), 2.7).tolist() == [2, 2]       # cast to the int dtype
        assert tt.full_like(tt.ones(2), 7).tolist() == [7.0, 7.0]
        assert tt.zeros_like(tt.ones(2), requires_grad=True).requires_grad


class TestRandom:
    def test_shapes_and_dtypes(self):
        assert tt.rand(2, 3).shape == (2, 3) and tt.rand((2, 3)).shape == (2, 3) and tt.randn([4]).shape == (4,)
        assert tt.randn(()).shape == () and tt.rand(0).shape == (0,)
        assert tt.rand(2).dtype is tt.float32 and tt.randn(2, dtype=tt.float64).dtype is tt.float64
        assert tt.rand(3, dtype=tt.float16).dtype is tt.float16
        assert tt.randint(0, 10, (3,)).dtype is tt.int64 and tt.randint(5, (3,)).shape == (3,)
        assert tt.randint(0, 10, (2, 2), dtype=tt.int32).dtype is tt.int32
        assert tt.randperm(5).dtype is tt.int64
        assert tt.normal(0.0, 1.0, (2, 3)).shape == (2, 3) and tt.normal(0.0, 1.0, (2, 3)).dtype is tt.float32
        assert tt.normal(tt.tensor([0.0, 10.0]), 1.0).shape == (2,)
        assert tt.normal(0.0, tt.ones(3, dtype=tt.float64)).dtype is tt.float64
        x = tt.ones(3, 2, dtype=tt.float64)
        assert tt.rand_like(x).dtype is tt.float64 and tt.randn_like(x).shape == (3, 2)
        r = tt.rand(3, requires_grad=True)
        assert r.requires_grad and r.is_leaf

    def test_ranges(self):
        tt.manual_seed(0)
        u = tt.rand(10000, dtype=tt.float64).numpy()
        assert u.min() >= 0.0 and u.max() < 1.0
        k = tt.randint(-3, 4, (10000,)).numpy()
        assert k.min() == -3 and k.max() == 3
        k = tt.randint(5, (1000,)).numpy()
        assert set(np.unique(k)) == {0, 1, 2, 3, 4}
        with pytest.raises(RuntimeError, match="expects 'from' to be less than 'to'"):
            tt.randint(5, 2, (3,))

    def test_randint_keyword_forms_and_normal_rejects_a_negative_std(self):
        """As PyTorch: randint(high=, size=) and low= keywords; normal with std < 0 raises."""
        tt.manual_seed(3)
        k = tt.randint(high=5, size=(1000,)).numpy()
        assert k.shape == (1000,) and k.min() == 0 and k.max() == 4
        k = tt.randint(low=2, high=5, size=(1000,)).numpy()
        assert k.min() == 2 and k.max() == 4
        assert tt.randint(size=(2,), high=3).shape == (2,)
        with pytest.raises(RuntimeError, match=r"normal expects std >= 0.0, but found std -1"):
            tt.normal(0.0, -1.0, (2,))
        with pytest.raises(RuntimeError, match=r"normal expects std >= 0.0"):
            tt.normal(tt.zeros(3), -1.0)
        with pytest.raises(RuntimeError, match=r"normal expects all elements of std >= 0.0"):
            tt.normal(0.0, tt.tensor([1.0, -1.0]))
        assert tt.normal(0.0, 0.0, (2,)).tolist() == [0.0, 0.0]

    def test_randperm_is_a_permutation(self):
        tt.manual_seed(1)
        for n in (0, 1, 7, 1000):
            p = tt.randperm(n).numpy()
            assert sorted(p.tolist()) == list(range(n))
        assert tt.randperm(1000).tolist() != list(range(1000))

    def test_manual_seed_reproducibility(self):
        tt.manual_seed(123)
        a1, b1, c1 = tt.rand(5), tt.randn(5), tt.randint(0, 100, (5,))
        tt.manual_seed(123)
        a2, b2, c2 = tt.rand(5), tt.randn(5), tt.randint(0, 100, (5,))
        assert a1.tolist() == a2.tolist() and b1.tolist() == b2.tolist() and c1.tolist() == c2.tolist()
        assert tt.rand(5).tolist() != a1.tolist()          # the stream moves on
        tt.manual_seed(124)
        assert tt.rand(5).tolist() != a1.tolist()
        assert tt.initial_seed() == 124

    def test_rng_state_roundtrip(self):
        tt.manual_seed(7)
        tt.rand(3)
        state = tt.get_rng_state()
        a = tt.randn(4)
        tt.set_rng_state(state)
        assert tt.randn(4).tolist() == a.tolist()

    def test_generator_objects_are_independent(self):
        tt.manual_seed(1)
        ref = tt.rand(4).tolist()
        tt.manual_seed(1)
        g = tt.Generator().manual_seed(5)
        tt.rand(100, generator=g)                          # does not touch the default generator
        tt.randn(10, generator=g)
        assert tt.rand(4).tolist() == ref
        g1, g2 = tt.Generator().manual_seed(42), tt.Generator().manual_seed(42)
        assert tt.randn(6, generator=g1).tolist() == tt.randn(6, generator=g2).tolist()
        assert tt.randperm(8, generator=g1).tolist() == tt.randperm(8, generator=g2).tolist()
        tt.manual_seed(42)
        assert tt.rand(3).tolist() == tt.rand(3, generator=tt.Generator().manual_seed(42)).tolist()

    def test_normal_distribution(self):
        tt.manual_seed(2024)
        x = tt.randn(100_000, dtype=tt.float64).numpy()
        assert abs(x.mean()) < 0.015 and abs(x.std() - 1.0) < 0.015
        assert abs(np.mean(np.abs(x) > 1.959964) - 0.05) < 0.004       # two-sided 5% tail
        assert abs(np.mean(x ** 3)) < 0.05                              # symmetric
        y = tt.normal(3.0, 0.5, (100_000,)).numpy()
        assert abs(y.mean() - 3.0) < 0.01 and abs(y.std() - 0.5) < 0.01
        m = tt.normal(tt.tensor([0.0, 100.0]).expand(50_000, 2), 2.0).numpy()
        np.testing.assert_allclose(m.mean(0), [0.0, 100.0], atol=0.05)

    def test_uniform_histogram(self):
        tt.manual_seed(99)
        u = tt.rand(100_000).numpy()
        counts, _ = np.histogram(u, bins=10, range=(0.0, 1.0))
        assert counts.sum() == 100_000
        assert np.all(np.abs(counts - 10_000) < 500), counts            # ~5 standard deviations
        k = tt.randint(0, 6, (60_000,)).numpy()
        assert np.all(np.abs(np.bincount(k, minlength=6) - 10_000) < 500)
        assert abs(np.corrcoef(u[:-1], u[1:])[0, 1]) < 0.01             # successive draws uncorrelated
