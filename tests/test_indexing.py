"""`t[key]`, `t[key] = v` and `t[key] += v`, compared with numpy's indexing of the
same array under PyTorch's one difference: an integer selects (drops its dim)
before advanced indexing, so for x of shape (4, 5, 6), x[1, :, [0, 2]] has shape
(5, 2) in PyTorch (numpy: (2, 5)). Key lists below were checked against PyTorch 2.13."""
import numpy as np
import pytest

import tracetorch as tt

A = np.arange(120.0).reshape(4, 5, 6)
M1 = np.array([True, False, True, True])
M2 = A[:, :, 0] % 3 == 0
M5 = np.array([False, True, True, False, True])

KEYS = [
    1, -1, (1, 2), (1, 2, 3), (-4, -5, -6), slice(None, None, 2), (slice(1, None, 2), slice(None, None, 3)),
    None, (None, 1), Ellipsis, (Ellipsis, 1), (1, Ellipsis, None), slice(-3, None), slice(10, 20), slice(3, 1),
    slice(-100, 2), (slice(None), None, slice(1, 4), None), (Ellipsis, slice(None, None, 4)), (None, Ellipsis, None),
    # bool masks
    M1, M2, A > 50, (Ellipsis, A[0, 0] > 100), (slice(None), M5), (Ellipsis, A[0, 0] > 2), (M1, slice(None), 2),
    True, False, np.array(True), np.array(False), [True, False, True, False],
    # integer lists / arrays, adjacent and non-adjacent
    [0, 2], [[0, 1], [2, 3]], [-1, 0, -1], ([0, 1], [1, 2]), ([0, 1], slice(None), [1, 2]),
    (slice(None), [0, 1], [1, 2]), ([[0], [1]], slice(None), [1, 2, 3]), (Ellipsis, [0, 1]), (None, [0, 1], None),
    ([0, 1], None, [2, 3]), (M1, [0, 1, 2]), (slice(1, 3), [0, 1], slice(None, None, 2)), np.array([0, 3]), [],
    # integers mixed with advanced indices
    (1, [0, 2]), (1, slice(None), [0, 2]), ([0, 2], 1), ([0, 2], slice(None), 1), (0, [1, 2], slice(1, 3)),
    (slice(None), 1, [1, 2]), ([[0], [1]], 1, [1, 2, 3]), (np.int64(2), slice(None)),
]


def is_advanced(k) -> bool:
    return isinstance(k, (list, np.ndarray, bool, np.bool_))


def torch_ref(a, key):
    """numpy indexing with PyTorch's rule that integers select before advanced indexing."""
    key = key if isinstance(key, tuple) else (key,)
    if not any(is_advanced(k) for k in key):
        return a[key]
    consumed = sum(np.ndim(k) if np.asarray(k).dtype == bool else 1
                   for k in key if k is not None and k is not Ellipsis and not isinstance(k, (bool, np.bool_)))
    if any(k is Ellipsis for k in key):
        i = next(j for j, k in enumerate(key) if k is Ellipsis)
        key = key[:i] + (slice(None),) * (a.ndim - consumed) + key[i + 1:]
    rest, dim = [], 0
    for k in key:
        if isinstance(k, (int, np.integer)) and not isinstance(k, (bool, np.bool_)):
            a = a[(slice(None),) * dim + (k,)]
            continue
        rest.append(k)
        if k is not None and not isinstance(k, (bool, np.bool_)):
            dim += np.ndim(k) if np.asarray(k).dtype == bool else 1
    return a[tuple(rest)]


def to_tt(k):
    """The same key with tensors in place of arrays (lists stay lists: both must work)."""
    if isinstance(k, tuple):
        return tuple(to_tt(x) for x in k)
    if isinstance(k, np.ndarray):
        return tt.from_numpy(k)
    return k


def key_id(k):
    return repr(k).replace("\n", "")[:40]


@pytest.mark.parametrize("key", KEYS, ids=key_id)
def test_getitem_matches_numpy(key):
    ref = torch_ref(A, key)
    got = tt.tensor(A)[to_tt(key)]
    assert tuple(got.shape) == ref.shape
    np.testing.assert_array_equal(got.numpy(), ref)


def test_int_before_advanced_placement():
    x = tt.tensor(A)
    assert x[1, :, [0, 2]].shape == (5, 2)       # numpy would give (2, 5)
    assert x[[0, 2], :, 1].shape == (2, 5)
    assert x[[[0], [1]], 1, [1, 2, 3]].shape == (2, 3)


def test_0d_index_tensor_selects_like_an_int_before_advanced_indexing():
    """PyTorch takes a 0-d integer tensor as an int, so it does not separate the other advanced indices:
    x[tensor(0), :, [1, 2]] has shape (5, 2) like x[0, :, [1, 2]] (it gave the separated-indices (2, 5))."""
    x = tt.tensor(A)
    i0 = tt.tensor(0)
    np.testing.assert_array_equal(x[i0, :, [1, 2]].numpy(), A[0][:, [1, 2]])
    np.testing.assert_array_equal(x[None, i0, None, [[2], [3]]].numpy(), A[0][None, None, [[2], [3]]])
    np.testing.assert_array_equal(x[[1, 2], tt.tensor(-1), :, None].numpy(), A[:, -1][[1, 2], :, None])

    def write(x, v):
        x[tt.tensor(1), :, [0, 2]] = v
        return x
    want = A.copy()
    want[1][:, [0, 2]] = np.arange(10.0).reshape(5, 2)
    for fn in (write, tt.compile(write, backend="llvm"), tt.compile(write, backend="interp")):
        for _ in range(2):
            got = fn(tt.tensor(A), tt.arange(10.0).reshape(5, 2))
            np.testing.assert_array_equal(got.numpy(), want)


def test_basic_indexing_returns_views_and_advanced_copies():
    x = tt.tensor(A)
    v = x[1, ::2]
    assert np.shares_memory(v.numpy(), x.numpy())
    c = x[[1, 2]]
    assert not np.shares_memory(c.numpy(), x.numpy())


def test_ranges_index_like_lists():
    """PyTorch takes a range as a sequence of integers (it was rejected as an unknown index type)."""
    x = tt.tensor(A)
    np.testing.assert_array_equal(x[range(1, 3)].numpy(), A[1:3])
    np.testing.assert_array_equal(x[:, range(0, 5, 2), 1].numpy(), A[:, [0, 2, 4], 1])
    assert x[range(0)].shape == (0, 5, 6)
    x[range(2), 0, range(1, 3)] = -1.0
    assert x[0, 0, 1].item() == -1.0 and x[1, 0, 2].item() == -1.0 and (x < 0).sum().item() == 2


def test_index_tensor_dtypes():
    x = tt.arange(6.0)
    for dtype in (tt.int64, tt.int32, tt.uint8, tt.int16):
        assert x[tt.tensor([1, 3], dtype=dtype)].tolist() == [1.0, 3.0]
    assert x[tt.tensor(2)].item() == 2.0 and x[tt.tensor(2)].dim() == 0
    assert x[tt.tensor([2])].shape == (1,)


def flat_positions(shape, key):
    return torch_ref(np.arange(int(np.prod(shape))).reshape(shape), key)


SET_KEYS = [
    1, (1, 2), slice(None, None, 2), (slice(1, None, 2), slice(None, None, 3)), (Ellipsis, 1), (None, 1),
    M1, M2, A > 50, (slice(None), M5), [0, 2], [[0, 1], [2, 3]], ([0, 1], [1, 2]), ([0, 1], slice(None), [1, 2]),
    (slice(None), [0, 1], [1, 2]), (1, slice(None), [0, 2]), ([0, 2], slice(None), 1),
]


@pytest.mark.parametrize("key", SET_KEYS, ids=key_id)
@pytest.mark.parametrize("value_kind", ["scalar", "tensor", "broadcast"])
def test_setitem_matches_numpy(key, value_kind):
    pos = flat_positions(A.shape, key)
    rng = np.random.default_rng(0)
    if value_kind == "scalar":
        value, ref_value = -7.5, np.float64(-7.5)
    elif value_kind == "tensor":
        ref_value = rng.standard_normal(pos.shape)
        value = tt.tensor(ref_value, dtype=tt.float64)
    else:   # broadcast along all but the last dim
        ref_value = rng.standard_normal(pos.shape[-1:])
        value = tt.tensor(ref_value, dtype=tt.float64)
    ref = A.copy()
    ref.reshape(-1)[pos] = np.broadcast_to(ref_value, pos.shape)
    x = tt.tensor(A, dtype=tt.float64)
    x[to_tt(key)] = value
    np.testing.assert_array_equal(x.numpy(), ref)


@pytest.mark.parametrize("key", [1, (slice(None), 2), slice(1, None, 2), (Ellipsis, 0), [0, 3],
                                 ([0, 1], slice(None), [1, 2]), M2, (1, slice(None), [0, 2])], ids=key_id)
def test_augmented_setitem(key):
    pos = flat_positions(A.shape, key)
    ref = A.copy()
    ref.reshape(-1)[pos] += 2.5
    ref.reshape(-1)[pos] *= 3
    x = tt.tensor(A, dtype=tt.float64)
    x[to_tt(key)] += 2.5
    x[to_tt(key)] *= 3
    np.testing.assert_array_equal(x.numpy(), ref)


def test_setitem_duplicates_and_dtype_conversion():
    x = tt.tensor([1.0, 2.0, 3.0])
    x[tt.tensor([0, 0])] += 1                    # read once, written once: no accumulation
    assert x.tolist() == [2.0, 2.0, 3.0]
    x[[0, 0]] = tt.tensor([4.0, 5.0])           # last write wins
    assert x.tolist() == [5.0, 2.0, 3.0]
    i = tt.arange(6).reshape(2, 3)
    i[0] = 2.7                                   # assignment casts (truncates), unlike +=
    i[1] = tt.tensor([1.5, 2.5, 3.5])
    assert i.tolist() == [[2, 2, 2], [1, 2, 3]] and i.dtype is tt.int64
    with pytest.raises(RuntimeError, match="can't be cast"):
        i[0] += 1.5
    b = tt.zeros(2, 3, dtype=tt.bool)
    b[:, 1] = True
    assert b.tolist() == [[False, True, False]] * 2
    f = tt.zeros(3)
    f[1] = tt.tensor(4, dtype=tt.int64)
    f[tt.tensor([True, False, True])] = tt.tensor(-1.0, dtype=tt.float64)
    assert f.tolist() == [-1.0, 4.0, -1.0] and f.dtype is tt.float32


def test_setitem_from_python_and_numpy_values():
    x = tt.zeros(2, 3)
    x[0] = [1, 2, 3]
    x[1] = np.array([4.0, 5.0, 6.0])
    assert x.tolist() == [[1, 2, 3], [4, 5, 6]]


def test_setitem_strips_the_values_leading_size_one_dims_eager_and_compiled():
    """As PyTorch: a value with extra leading 1s writes into a target of fewer dims."""
    def write(x, v):
        x[0] = v
        x[1, 0] = v[0] * 2
        x[tt.tensor([1]), 2] = v * 4
        return x
    f = tt.compile(write, backend="llvm")
    want = np.zeros((2, 3, 4))
    want[0], want[1, 0], want[1, 2] = 1, 2, 4
    for fn in (write, f, f):                        # eager, then compiled: traced and a cache hit
        out = fn(tt.zeros(2, 3, 4, dtype=tt.float64), tt.ones(1, 1, 4, dtype=tt.float64))
        np.testing.assert_array_equal(out.numpy(), want)
    w = tt.ones(1, 1, 4, dtype=tt.float64, requires_grad=True)
    z = tt.zeros(3, 4, dtype=tt.float64)
    z[1:] = w * 2
    z.sum().backward()
    np.testing.assert_array_equal(w.grad.numpy(), np.full((1, 1, 4), 4.0))
    with pytest.raises(RuntimeError, match="broadcast shape"):
        tt.zeros(2, 3, 4)[0] = tt.ones(2, 3, 4)


class TestErrors:
    def test_int_out_of_range_names_dim_and_size(self):
        x = tt.zeros(3, 4)
        with pytest.raises(IndexError, match="index 3 is out of bounds for dimension 0 with size 3"):
            x[3]
        with pytest.raises(IndexError, match="index 4 is out of bounds for dimension 1 with size 4"):
            x[:, 4]
        with pytest.raises(IndexError, match="index -5 is out of bounds for dimension 1 with size 4"):
            x[0, -5]
        with pytest.raises(IndexError, match="index 3 is out of bounds for dimension 0 with size 3"):
            x[3] = 1.0

    def test_tensor_index_out_of_range(self):
        x = tt.zeros(3, 4)
        with pytest.raises(IndexError, match="index 5 is out of bounds for dimension 0 with size 3"):
            x[tt.tensor([0, 5])]
        with pytest.raises(IndexError, match="index 5 is out of bounds for dimension 1 with size 4"):
            x[:, tt.tensor([0, 5])]
        with pytest.raises(IndexError, match="index -7 is out of bounds for dimension 0 with size 3"):
            x[[-7]]
        with pytest.raises(IndexError, match="out of bounds for dimension 0 with size 3"):
            x[[0, 3]] = 1.0

    def test_bad_masks_and_keys(self):
        x = tt.zeros(3, 4)
        with pytest.raises(IndexError, match=r"The shape of the mask \[2\] at index 0 does not match"):
            x[tt.tensor([True, False])]
        with pytest.raises(IndexError, match="too many indices for tensor of dimension 2"):
            x[0, 0, 0]
        with pytest.raises(IndexError, match="only integers, slices"):
            x[1.5]
        with pytest.raises(IndexError, match="tensors used as indices must be long, int, byte or bool"):
            x[tt.tensor([1.0])]
        with pytest.raises(ValueError, match="step must be greater than zero"):
            x[::-1]
        with pytest.raises(IndexError, match="single ellipsis"):
            x[..., ...]

    def test_value_shape_mismatch(self):
        x = tt.zeros(2, 3)
        with pytest.raises(RuntimeError, match=r"\[3\].*\[2\]|\[2\].*\[3\]"):
            x[0] = tt.ones(2)
        with pytest.raises(RuntimeError, match=r"shape mismatch: value tensor of shape \[3, 3\] cannot be broadcast "
                                               r"to indexing result of shape \[2, 3\]"):
            x[[0, 1]] = tt.ones(3, 3)


def grad_ref(shape, key, upstream):
    """d/dx sum(x[key] * upstream): scatter-add of upstream into the selected positions."""
    pos = flat_positions(shape, key)
    return np.bincount(pos.reshape(-1), weights=np.broadcast_to(upstream, pos.shape).reshape(-1),
                       minlength=int(np.prod(shape))).reshape(shape)


GRAD_KEYS = [1, (slice(1, None, 2), slice(None, None, 3)), (Ellipsis, 1), (None, 1), M2, A > 50,
             [0, 0, 2], [[0, 1], [1, 1]], ([0, 1], slice(None), [1, 1]), (1, slice(None), [0, 2, 0]),
             (slice(None), [0, 1], [1, 2])]


@pytest.mark.parametrize("key", GRAD_KEYS, ids=key_id)
def test_getitem_gradient(key):
    x = tt.tensor(A, dtype=tt.float64, requires_grad=True)
    y = x[to_tt(key)]
    upstream = np.random.default_rng(1).standard_normal(tuple(y.shape))
    (y * tt.tensor(upstream, dtype=tt.float64)).sum().backward()
    np.testing.assert_allclose(x.grad.numpy(), grad_ref(A.shape, key, upstream))


@pytest.mark.parametrize("key", [1, slice(1, 3), (slice(None), 2), [0, 2], M2, ([0, 1], slice(None), [1, 2])],
                         ids=key_id)
def test_setitem_gradient(key):
    """y = x * 1; y[key] = w * 2: x gets the gradient outside the written region, w the gradient inside."""
    pos = flat_positions(A.shape, key)
    upstream = np.random.default_rng(2).standard_normal(A.shape)
    x = tt.tensor(A, dtype=tt.float64, requires_grad=True)
    w = tt.tensor(np.ones(pos.shape), dtype=tt.float64, requires_grad=True)
    y = x * 1
    y[to_tt(key)] = w * 2
    (y * tt.tensor(upstream, dtype=tt.float64)).sum().backward()
    written = np.zeros(A.size, bool)
    written[pos.reshape(-1)] = True
    np.testing.assert_allclose(x.grad.numpy(), np.where(written.reshape(A.shape), 0.0, upstream))
    np.testing.assert_allclose(w.grad.numpy(), 2 * upstream.reshape(-1)[pos])


def test_advanced_augmented_setitem_gradient():
    x = tt.tensor([1.0, 2.0, 3.0], requires_grad=True)
    w = tt.tensor([5.0, 6.0], requires_grad=True)
    y = x * 1
    y[tt.tensor([0, 2])] += w * w
    (y * y).sum().backward()
    # y = [1 + 25, 2, 3 + 36]; d sum(y^2)/dx = 2y; d/dw = 2y[idx] * 2w
    assert x.grad.tolist() == [52.0, 4.0, 78.0]
    assert w.grad.tolist() == [520.0, 936.0]


def test_mask_setitem_gradient():
    x = tt.tensor([1.0, 2.0, 3.0], requires_grad=True)
    y = x * 1
    y[y > 1.5] = 0
    y.sum().backward()
    assert x.grad.tolist() == [1.0, 0.0, 0.0]


def test_a_zero_dim_integer_tensor_index_selects_a_view_as_an_int():
    """PyTorch: x[t] with a 0-d integer tensor t (and no other advanced index) is x[int(t)], a view, so
    writes through it reach x; compiled, the index's value is guarded (one program per value)."""
    x = tt.zeros(2, 3)
    x[tt.tensor(1)][0] = 5.0
    np.testing.assert_array_equal(x.numpy(), [[0, 0, 0], [5, 0, 0]])
    x = tt.zeros(3, 2)
    for i in tt.tensor([0, 2]):            # iterating a tensor yields 0-d tensors
        x[i].fill_(1.0)
    np.testing.assert_array_equal(x.numpy(), [[1, 1], [0, 0], [1, 1]])
    w = tt.arange(6.0).reshape(2, 3).requires_grad_()
    (w[tt.tensor(-1)] * tt.tensor([1.0, 2.0, 3.0])).sum().backward()
    np.testing.assert_array_equal(w.grad.numpy(), [[0, 0, 0], [1, 2, 3]])
    with pytest.raises(IndexError, match="out of bounds"):
        w[tt.tensor(2)]
    f = tt.compile(lambda a, i: a[i] * 2, backend="llvm")
    a = tt.arange(12.0).reshape(4, 3)
    for k in (1, 1, 2, 1):
        np.testing.assert_array_equal(f(a, tt.tensor(k)).numpy(), a.numpy()[k] * 2)
    assert f.stats()["traces"] == 2
