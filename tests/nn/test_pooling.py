import math

import numpy as np
import pytest

import tracetorch as tt
import tracetorch.nn.functional as F
from tracetorch import nn

from gradcheck import gradcheck


def _out(size, k, s, p, d, ceil_mode):
    span = (size + 2 * p - d * (k - 1) - 1) / s
    out = (math.ceil(span) if ceil_mode else math.floor(span)) + 1
    if ceil_mode and (out - 1) * s >= size + p:      # the last window must start inside the input
        out -= 1
    return out


def np_max_pool(x, k, s, p, d=1, ceil_mode=False):
    """Returns the pooled values and, per window, the flat input index of its first maximum."""
    n, c, h, w = x.shape
    oh, ow = _out(h, k, s, p, d, ceil_mode), _out(w, k, s, p, d, ceil_mode)
    out, arg = np.zeros((n, c, oh, ow)), np.zeros((n, c, oh, ow), dtype=np.int64)
    for a in range(n):
        for b in range(c):
            for i in range(oh):
                for j in range(ow):
                    best, where = -np.inf, -1
                    for u in range(k):
                        for v in range(k):
                            r, q = i * s - p + u * d, j * s - p + v * d
                            if 0 <= r < h and 0 <= q < w and x[a, b, r, q] > best:
                                best, where = x[a, b, r, q], r * w + q
                    out[a, b, i, j], arg[a, b, i, j] = best, where
    return out, arg


def np_avg_pool(x, k, s, p, ceil_mode=False, count_include_pad=True):
    n, c, h, w = x.shape
    oh, ow = _out(h, k, s, p, 1, ceil_mode), _out(w, k, s, p, 1, ceil_mode)
    out = np.zeros((n, c, oh, ow))
    for i in range(oh):
        for j in range(ow):
            r0, q0 = i * s - p, j * s - p
            r1, q1 = min(r0 + k, h + p), min(q0 + k, w + p)
            size = (r1 - r0) * (q1 - q0)
            r0c, q0c, r1c, q1c = max(r0, 0), max(q0, 0), min(r1, h), min(q1, w)
            total = x[:, :, r0c:r1c, q0c:q1c].sum((2, 3))
            out[:, :, i, j] = total / (size if count_include_pad else (r1c - r0c) * (q1c - q0c))
    return out


POOL_CASES = [(2, 2, 0, False), (3, 2, 1, False), (3, 1, 1, False), (2, 3, 0, True), (3, 2, 1, True)]


@pytest.mark.parametrize("k,s,p,ceil_mode", POOL_CASES)
def test_max_pool2d_matches_loop(k, s, p, ceil_mode):
    x = np.random.default_rng(0).standard_normal((2, 3, 7, 6))
    want, want_idx = np_max_pool(x, k, s, p, 1, ceil_mode)
    got, idx = F.max_pool2d(tt.tensor(x), k, s, p, ceil_mode=ceil_mode, return_indices=True)
    np.testing.assert_array_equal(got.numpy(), want)
    np.testing.assert_array_equal(idx.numpy(), want_idx)


def test_max_pool2d_dilation_and_rectangular_kernel():
    x = np.random.default_rng(1).standard_normal((1, 2, 9, 9))
    want, _ = np_max_pool(x, 3, 2, 1, d=2)
    np.testing.assert_array_equal(F.max_pool2d(tt.tensor(x), 3, 2, 1, dilation=2).numpy(), want)
    got = F.max_pool2d(tt.tensor(x), (2, 3), stride=(1, 3))
    assert got.shape == (1, 2, 8, 3)
    np.testing.assert_array_equal(got.numpy()[0, 0, 4, 1], x[0, 0, 4:6, 3:6].max())


def test_max_pool2d_gradient_goes_to_the_first_maximum():
    x = np.array([[[[1.0, 3.0, 0.0, 0.0],
                    [3.0, 2.0, 0.0, 0.0]]]])
    t = tt.tensor(x, requires_grad=True)
    F.max_pool2d(t, 2).sum().backward()
    np.testing.assert_array_equal(t.grad.numpy(), [[[[0.0, 1.0, 1.0, 0.0], [0.0, 0.0, 0.0, 0.0]]]])
    rng = np.random.default_rng(2)
    gradcheck(lambda a: F.max_pool2d(a, 3, 2, 1), [rng.permutation(50).reshape(1, 2, 5, 5) * 0.1])


def test_max_pool2d_padding_never_takes_the_maximum():
    """A padded window whose input elements are all -inf still picks its first input element (its
    index and its gradient), as PyTorch does; the padding is not an element of the window."""
    x = tt.tensor([[[[-np.inf, -np.inf, 1.0], [-np.inf, -np.inf, 2.0]]]], requires_grad=True)
    out, idx = F.max_pool2d(x, 2, 2, 1, return_indices=True)
    out.sum().backward()
    np.testing.assert_array_equal(out.detach().numpy(), [[[[-np.inf, 1.0], [-np.inf, 2.0]]]])
    np.testing.assert_array_equal(idx.numpy(), [[[[0, 2], [3, 5]]]])
    np.testing.assert_array_equal(x.grad.numpy(), [[[[1.0, 0.0, 1.0], [1.0, 0.0, 1.0]]]])
    with pytest.raises(NotImplementedError, match="Bool"):
        F.max_pool2d(tt.ones(1, 2, 2, dtype=tt.bool), 2)


def test_max_pool2d_propagates_nan():
    x = np.zeros((1, 1, 4, 4))
    x[0, 0, 1, 0] = np.nan
    x[0, 0, 3, 3] = 5.0
    got = F.max_pool2d(tt.tensor(x), 2).numpy()[0, 0]
    assert np.isnan(got[0, 0]) and got[1, 1] == 5.0 and got[0, 1] == 0.0


@pytest.mark.parametrize("k,s,p,ceil_mode", POOL_CASES)
@pytest.mark.parametrize("count_include_pad", [True, False])
def test_avg_pool2d_matches_loop(k, s, p, ceil_mode, count_include_pad):
    x = np.random.default_rng(3).standard_normal((2, 2, 7, 6))
    want = np_avg_pool(x, k, s, p, ceil_mode, count_include_pad)
    got = F.avg_pool2d(tt.tensor(x), k, s, p, ceil_mode=ceil_mode, count_include_pad=count_include_pad)
    np.testing.assert_allclose(got.numpy(), want, rtol=1e-12, atol=1e-14)


def test_avg_pool2d_divisor_override_and_gradients():
    x = np.random.default_rng(4).standard_normal((1, 1, 4, 4))
    got = F.avg_pool2d(tt.tensor(x), 2, divisor_override=3).numpy()
    np.testing.assert_allclose(got, np_avg_pool(x, 2, 2, 0) * 4 / 3, rtol=1e-12)
    gradcheck(lambda a: F.avg_pool2d(a, 3, 2, 1, ceil_mode=True, count_include_pad=False), [x])


def np_adaptive_avg(x, oh, ow):
    n, c, h, w = x.shape
    out = np.zeros((n, c, oh, ow))
    for i in range(oh):
        for j in range(ow):
            r0, r1 = (i * h) // oh, math.ceil((i + 1) * h / oh)
            q0, q1 = (j * w) // ow, math.ceil((j + 1) * w / ow)
            out[:, :, i, j] = x[:, :, r0:r1, q0:q1].mean((2, 3))
    return out


@pytest.mark.parametrize("size", [1, (3, 2), (5, 4), (4, None), 7])
def test_adaptive_avg_pool2d_matches_loop(size):
    x = np.random.default_rng(5).standard_normal((2, 3, 9, 6))
    oh, ow = (size, size) if isinstance(size, int) else (size[0], size[1] or 6)
    got = nn.AdaptiveAvgPool2d(size)(tt.tensor(x))
    np.testing.assert_allclose(got.numpy(), np_adaptive_avg(x, oh, ow), rtol=1e-12, atol=1e-14)
    gradcheck(lambda a: F.adaptive_avg_pool2d(a, size), [x[:1, :1]])


def test_avg_pool2d_of_integers_truncates_like_pytorch():
    """PyTorch keeps an int64 input's dtype and divides its window sums in integer arithmetic
    (toward zero); this used to return float32 means. Values from PyTorch."""
    x = tt.tensor([[[[-3, -2], [0, 0]], [[5, 2], [0, 0]]]])
    out = F.avg_pool2d(x, 2)
    assert out.dtype is tt.int64
    np.testing.assert_array_equal(out.numpy().ravel(), [-1, 1])
    np.testing.assert_array_equal(F.avg_pool2d(x, 2, divisor_override=3).numpy().ravel(), [-1, 2])
    np.testing.assert_array_equal(F.avg_pool2d(tt.tensor([[[[-7]]]]), 2, padding=1).numpy().ravel(), [-1])
    with pytest.raises(NotImplementedError, match="Bool"):
        F.avg_pool2d(tt.ones(1, 2, 2, dtype=tt.bool), 2)


def test_adaptive_avg_pool2d_checks_its_input_and_output_size():
    """An integer input used to average to zeros (an int64 averaging matrix); PyTorch refuses it."""
    with pytest.raises(NotImplementedError, match="int64"):
        F.adaptive_avg_pool2d(tt.arange(24).reshape(1, 2, 3, 4), 2)
    with pytest.raises(RuntimeError, match="output_size must be 2"):
        F.adaptive_avg_pool2d(tt.ones(1, 2, 4, 4), (2, 3, 4))
    with pytest.raises(RuntimeError, match="greater than or equal to 0"):
        F.adaptive_avg_pool2d(tt.ones(1, 2, 4, 4), (-1, 2))
    with pytest.raises(RuntimeError, match="non-zero size"):
        F.adaptive_avg_pool2d(tt.ones(1, 2, 0, 4), 2)
    assert F.adaptive_avg_pool2d(tt.ones(2, 6, 4), (0, 1)).shape == (2, 0, 1)


def test_pool_modules_unbatched_input_and_reprs():
    x = tt.randn(3, 6, 6)
    assert nn.MaxPool2d(2)(x).shape == (3, 3, 3)
    assert nn.AvgPool2d(3, stride=1, padding=1)(x).shape == (3, 6, 6)
    assert nn.AdaptiveAvgPool2d((2, 1))(x).shape == (3, 2, 1)
    assert repr(nn.MaxPool2d(2)) == "MaxPool2d(kernel_size=2, stride=2, padding=0, dilation=1, ceil_mode=False)"
    assert repr(nn.AvgPool2d(3, 2)) == "AvgPool2d(kernel_size=3, stride=2, padding=0)"
    assert repr(nn.AdaptiveAvgPool2d((1, None))) == "AdaptiveAvgPool2d(output_size=(1, None))"
    with pytest.raises(RuntimeError, match="pad should be at most half"):
        F.max_pool2d(x, 2, padding=2)


@pytest.mark.parametrize("pool", [F.max_pool2d, F.avg_pool2d])
@pytest.mark.parametrize("kwargs,match", [(dict(kernel_size=0), "greater than zero"),
                                          (dict(kernel_size=2, stride=0), "greater than zero"),
                                          (dict(kernel_size=2, padding=-1), "pad must be non-negative"),
                                          (dict(kernel_size=(2, 2, 2)), "pair of ints")])
def test_pools_reject_bad_arguments(pool, kwargs, match):
    """PyTorch raises RuntimeError; these used to give a ZeroDivisionError or a silently wrong pool."""
    with pytest.raises(RuntimeError, match=match):
        pool(tt.zeros(1, 1, 5, 5), **kwargs)


def test_max_pool2d_rejects_zero_dilation_and_avg_pool2d_zero_divisor():
    with pytest.raises(RuntimeError, match="dilation should be greater than zero"):
        F.max_pool2d(tt.zeros(1, 1, 5, 5), 2, dilation=0)
    with pytest.raises(RuntimeError, match="divisor must be not zero"):     # 0 used to mean "no override"
        F.avg_pool2d(tt.zeros(1, 1, 4, 4), 2, divisor_override=0)
