"""Views share storage with their base (PyTorch's view semantics), and in-place
writes through views are differentiable (CopySlices semantics)."""
import numpy as np
import pytest

import tracetorch as tt
from tracetorch.dtypes import round_bfloat16


def grid(*shape, dtype=None):
    return tt.arange(float(np.prod(shape)), dtype=dtype).reshape(*shape)


def shares(a, b) -> bool:
    return np.shares_memory(a.numpy(), b.numpy())


# (name, make view of a 3x4 base, numpy equivalent on the base array)
VIEWS = [
    ("view", lambda x: x.view(4, 3), lambda a: a.reshape(4, 3)),
    ("view_flat", lambda x: x.view(-1), lambda a: a.reshape(-1)),
    ("reshape_contiguous", lambda x: x.reshape(2, 6), lambda a: a.reshape(2, 6)),
    ("slice_steps", lambda x: x[1:, ::2], lambda a: a[1:, ::2]),
    ("slice_negative_start", lambda x: x[-2:, 1:3], lambda a: a[-2:, 1:3]),
    ("transpose", lambda x: x.transpose(0, 1), lambda a: a.T),
    ("t", lambda x: x.t(), lambda a: a.T),
    ("T", lambda x: x.T, lambda a: a.T),
    ("mT", lambda x: x.mT, lambda a: a.T),
    ("permute", lambda x: x.permute(1, 0), lambda a: a.transpose(1, 0)),
    ("unsqueeze", lambda x: x.unsqueeze(1), lambda a: a[:, None]),
    ("squeeze", lambda x: x.unsqueeze(0).squeeze(0), lambda a: a),
    ("narrow", lambda x: x.narrow(1, 1, 2), lambda a: a[:, 1:3]),
    ("select", lambda x: x.select(1, 2), lambda a: a[:, 2]),
    ("select_negative", lambda x: x.select(0, -1), lambda a: a[-1]),
    ("getitem_int", lambda x: x[1], lambda a: a[1]),
    ("split", lambda x: x.split(2, dim=1)[1], lambda a: a[:, 2:4]),
    ("chunk", lambda x: x.chunk(3, dim=0)[2], lambda a: a[2:3]),
    ("unbind", lambda x: x.unbind(1)[3], lambda a: a[:, 3]),
    ("flatten_contiguous", lambda x: x.flatten(), lambda a: a.reshape(-1)),
    ("detach", lambda x: x.detach(), lambda a: a),
    ("data", lambda x: x.data, lambda a: a),
    ("chain", lambda x: x.t()[1:, :2].unsqueeze(0)[0], lambda a: a.T[1:, :2]),
]


@pytest.mark.parametrize("dtype", [tt.float32, tt.bfloat16], ids=["float32", "bfloat16"])
@pytest.mark.parametrize("name,make,ref", VIEWS, ids=[v[0] for v in VIEWS])
def test_view_shares_storage_both_ways(name, make, ref, dtype):
    """bfloat16 too: its views were rounded copies, so writes through them (t[0] = v) were lost."""
    x = grid(3, 4, dtype=dtype)
    base = x.numpy().copy()
    v = make(x)
    assert shares(x, v)
    np.testing.assert_array_equal(v.numpy(), ref(base))
    # write through the view: the base sees it
    v.mul_(-1)
    expected = base.copy()
    ref(expected)[...] *= -1
    np.testing.assert_array_equal(x.numpy(), expected)
    # write into the base: the view sees it
    x.add_(100)
    np.testing.assert_array_equal(v.numpy(), ref(expected + 100))


def test_numpy_shares_memory():
    x = tt.zeros(2, 3)
    n = x.numpy()
    n[1, 1] = 4
    assert x[1, 1].item() == 4
    x[0, 1] = 5
    assert n[0, 1] == 5


def test_reshape_of_non_contiguous_copies():
    x = grid(3, 4)
    r = x.t().reshape(12)
    assert not shares(x, r)
    r[0] = 99
    assert x[0, 0].item() == 0
    np.testing.assert_array_equal(r.numpy()[1:], np.arange(12.0).reshape(3, 4).T.reshape(-1)[1:])


def test_view_of_non_viewable_raises_pytorch_message():
    x = grid(3, 4).t()
    with pytest.raises(RuntimeError, match="view size is not compatible with input tensor's size and stride"):
        x.view(12)
    assert x.reshape(12).shape == (12,)
    with pytest.raises(RuntimeError, match=r"shape '\[5, -1\]' is invalid for input of size 12"):
        grid(3, 4).view(5, -1)


def test_contiguous_and_clone_copy():
    x = grid(3, 4)
    assert x.contiguous() is x
    c = x.t().contiguous()
    assert c.is_contiguous() and not x.t().is_contiguous()
    assert not shares(x, c)
    c[0, 0] = -1
    assert x[0, 0].item() == 0
    k = x.clone()
    assert not shares(x, k)
    k.add_(1)
    np.testing.assert_array_equal(x.numpy(), np.arange(12.0).reshape(3, 4))
    np.testing.assert_array_equal(k.numpy(), np.arange(12.0).reshape(3, 4) + 1)


def test_expand_shares_and_rejects_writes():
    x = tt.arange(3.0)
    e = x.expand(2, 3)
    assert shares(x, e)
    x[0] = 7
    assert e.tolist() == [[7.0, 1.0, 2.0], [7.0, 1.0, 2.0]]
    with pytest.raises(RuntimeError, match="more than one element of the written-to tensor refers to a single"):
        e.add_(1)
    with pytest.raises(RuntimeError, match="single memory location"):
        e.fill_(0)
    assert x.tolist() == [7.0, 1.0, 2.0]
    ec = e.clone()
    ec.add_(1)                                    # a clone is writable
    assert ec.tolist() == [[8.0, 2.0, 3.0]] * 2


def test_setitem_through_strided_views():
    x = tt.arange(10.0)
    x[1:9:3] = -1
    assert x.tolist() == [0.0, -1.0, 2.0, 3.0, -1.0, 5.0, 6.0, -1.0, 8.0, 9.0]
    y = grid(2, 3, 4)
    ref = np.arange(24.0).reshape(2, 3, 4)
    y.permute(2, 0, 1)[::2, :, 1:].zero_()
    ref.transpose(2, 0, 1)[::2, :, 1:] = 0
    np.testing.assert_array_equal(y.numpy(), ref)


def test_setitem_bfloat16_writes_rounded_values():
    x = tt.zeros(2, 3, dtype=tt.bfloat16)
    x[0] = 1.01                                   # bfloat16(1.01) = 1.0078125
    x[1, 1:] = tt.tensor([2.5, -3.0])
    x[:, 0].fill_(7.0)
    assert x.tolist() == [[7.0, 1.0078125, 1.0078125], [7.0, 2.5, -3.0]]


def test_version_counter_is_shared_by_views():
    """Modifying a view after its base was saved for backward is detected, and the other way round."""
    x = tt.tensor([0.5, 1.0, 1.5], requires_grad=True)
    y = x.exp()                                   # ExpBackward saves y
    y[1:].add_(1)
    with pytest.raises(RuntimeError, match="modified by an inplace operation"):
        y.sum().backward()

    x = tt.tensor([0.5, 1.0, 1.5], requires_grad=True)
    y = x * 1
    v = y[:2]
    w = v * v                                     # MulBackward saves v
    y.mul_(2)                                     # writes the base
    with pytest.raises(RuntimeError, match="modified by an inplace operation"):
        w.sum().backward()

    x = tt.tensor([0.5, 1.0, 1.5], requires_grad=True)
    d = x.detach()
    y = x.sin()                                   # SinBackward saves x
    d.zero_()                                     # detach() shares storage and version
    with pytest.raises(RuntimeError, match="modified by an inplace operation"):
        y.sum().backward()


class TestInPlaceAutograd:
    def test_setitem_zero_on_non_leaf(self):
        x = tt.tensor([1.0, 2.0, 3.0], requires_grad=True)
        y = x * 2
        y[0] = 0
        y.sum().backward()
        assert x.grad.tolist() == [0.0, 2.0, 2.0]
        assert y.tolist() == [0.0, 4.0, 6.0]

    def test_clone_then_add_column(self):
        x = tt.ones(3, 3, requires_grad=True)
        w = tt.tensor([1.0, 2.0, 3.0], requires_grad=True)
        z = x.clone()
        z[:, 1] += w
        (z * z).sum().backward()
        # d/dx sum(z^2) = 2z; column 1 of z is 1 + w
        np.testing.assert_allclose(x.grad.numpy(), [[2.0, 4.0, 2.0], [2.0, 6.0, 2.0], [2.0, 8.0, 2.0]])
        np.testing.assert_allclose(w.grad.numpy(), [4.0, 6.0, 8.0])

    def test_inplace_through_permuted_strided_view(self):
        """The general (index_put) path: the view is a transpose then a strided slice of a non-leaf."""
        x = tt.arange(12.0, requires_grad=True)
        y = x.reshape(3, 4) * 1
        v = y.t()[::2, 1:]
        v.mul_(3)
        (y * y).sum().backward()
        scale = np.ones((3, 4))
        scale.T[::2, 1:] = 3
        ref = 2 * np.arange(12.0).reshape(3, 4) * scale ** 2
        np.testing.assert_allclose(x.grad.numpy(), ref.reshape(-1))

    def test_inplace_through_view_with_tensor_operand(self):
        x = tt.tensor([[1.0, 2.0], [3.0, 4.0]], requires_grad=True)
        m = tt.tensor([[1.0, 2.0], [3.0, 4.0]], requires_grad=True)
        y = x * 1
        y.t().mul_(m)
        y.sum().backward()
        np.testing.assert_allclose(x.grad.numpy(), m.detach().numpy().T)
        np.testing.assert_allclose(m.grad.numpy(), x.detach().numpy().T)

    def test_assign_leaf_into_slice_of_plain_tensor(self):
        x = tt.tensor([1.0, 2.0], requires_grad=True)
        y = tt.zeros(3)
        y[1:] = x
        assert y.requires_grad and not y.is_leaf
        (y * tt.tensor([5.0, 6.0, 7.0])).sum().backward()
        assert x.grad.tolist() == [6.0, 7.0]

    def test_add_mul_on_non_leaf(self):
        x = tt.arange(6.0, requires_grad=True)
        y = x * 1
        y.add_(x)            # y = 2x
        y.mul_(x)            # y = 2x^2, mul_ needs y's value before the write
        y.sum().backward()
        np.testing.assert_allclose(x.grad.numpy(), 4 * np.arange(6.0))

    @pytest.mark.parametrize("stmt,deriv", [
        ("y.mul_(3)", lambda a: 6 + 0 * a),
        ("y.div_(4)", lambda a: 0.5 + 0 * a),
        ("y.pow_(2)", lambda a: 8 * a),
        ("y.log_()", lambda a: 1 / a),
        ("y.exp_()", lambda a: 2 * np.exp(2 * a)),
        ("y.sqrt_()", lambda a: 1 / np.sqrt(2 * a)),
        ("y.sigmoid_()", lambda a: 2 * np.exp(-2 * a) / (1 + np.exp(-2 * a)) ** 2),
        ("y.tanh_()", lambda a: 2 / np.cosh(2 * a) ** 2),
        ("y.abs_()", lambda a: 2 * np.sign(a)),
        ("y.neg_()", lambda a: -2 + 0 * a),
        ("y.reciprocal_()", lambda a: -0.5 / a ** 2),
        ("y.clamp_(0, 1.5)", lambda a: np.where(2 * a <= 1.5, 2.0, 0.0)),
        ("y *= x", lambda a: 4 * a),
        ("y += x", lambda a: 3 + 0 * a),
        ("y -= x", lambda a: 1 + 0 * a),
        ("y /= x.detach()", lambda a: 2 / a),
    ])
    def test_inplace_ops_on_non_leaf(self, stmt, deriv):
        a = np.array([0.3, 0.6, 1.1])
        x = tt.tensor(a, dtype=tt.float64, requires_grad=True)
        y = x * 2
        exec(stmt, {"x": x, "y": y})
        y.sum().backward()
        np.testing.assert_allclose(x.grad.numpy(), deriv(a), rtol=1e-10)

    def test_inplace_unary_on_view_of_non_leaf(self):
        x = tt.tensor([0.5, 1.0], requires_grad=True)
        y = x * 1
        y[1:].exp_()
        y.sum().backward()
        np.testing.assert_allclose(x.grad.numpy(), [1.0, np.e], rtol=1e-6)

    def test_setitem_from_own_slice(self):
        x = tt.tensor([[0.5, 1.0], [2.0, 3.0]], requires_grad=True)
        y = x * 1
        y[:, 0] = y[:, 1] * 2
        y.sum().backward()
        assert x.grad.tolist() == [[0.0, 3.0], [0.0, 3.0]]
        assert y.tolist() == [[2.0, 1.0], [6.0, 3.0]]

    def test_view_taken_before_base_is_modified_sees_new_history(self):
        x = tt.tensor([1.0, 2.0, 3.0], requires_grad=True)
        y = x * 1
        v = y[0:2]
        y.mul_(2)
        assert v.tolist() == [2.0, 4.0]
        v.sum().backward()
        assert x.grad.tolist() == [2.0, 2.0, 0.0]

    def test_view_sees_write_through_sibling_view(self):
        x = tt.tensor([1.0, 2.0, 3.0], requires_grad=True)
        y = x * 1
        v, w = y[0:2], y[1:]
        w.mul_(3)
        assert v.tolist() == [1.0, 6.0]
        v.sum().backward()
        assert x.grad.tolist() == [1.0, 3.0, 0.0]
        x = tt.tensor([1.0, 2.0, 3.0], requires_grad=True)
        y = x * 1
        t = y.unsqueeze(1)
        y[0] = 5
        (t.squeeze(1) * tt.tensor([1.0, 2.0, 3.0])).sum().backward()
        assert x.grad.tolist() == [0.0, 2.0, 3.0]

    def test_saved_tensor_modified_raises(self):
        for make in (lambda x: x.exp(), lambda x: x.sigmoid(), lambda x: x.tanh()):
            x = tt.tensor([0.5, 1.0], requires_grad=True)
            y = make(x)
            y.add_(1)
            with pytest.raises(RuntimeError, match="one of the variables needed for gradient computation has been "
                                                   "modified by an inplace operation"):
                y.sum().backward()
        x = tt.tensor([0.5, 1.0], requires_grad=True)
        y = x * 2
        z = y * y
        y.add_(1)
        with pytest.raises(RuntimeError, match="is at version 1; expected version 0"):
            z.sum().backward()

    def test_unsaved_tensor_modified_is_fine(self):
        x = tt.tensor([0.5, 1.0], requires_grad=True)
        y = x + 1            # AddBackward saves nothing
        y.add_(1)
        y.sum().backward()
        assert x.grad.tolist() == [1.0, 1.0]
        x = tt.tensor([0.5, 1.0], requires_grad=True)
        y = x * 2
        z = y + y
        y.add_(1)
        z.sum().backward()
        assert x.grad.tolist() == [4.0, 4.0]

    def test_scalar_over_tensor_saves_its_result_not_the_tensor(self):
        """`c / w` is reciprocal(w) * c, as PyTorch's __rtruediv__: writing w afterwards is fine."""
        for c, want in ((1, [-1.0, -0.25, -1 / 9]), (3.0, [-3.0, -0.75, -1 / 3])):
            x = tt.tensor([1.0, 2.0, 3.0], dtype=tt.float64, requires_grad=True)
            w = x * 1
            y = (c / w).sum()
            w.mul_(2)
            y.backward()
            np.testing.assert_allclose(x.grad.numpy(), want, rtol=1e-15)

    def test_self_times_self_in_place_raises_like_pytorch(self):
        x = tt.tensor([0.5, 1.0], requires_grad=True)
        y = x * 2
        y.mul_(y)            # the second operand is y itself, overwritten by the write
        with pytest.raises(RuntimeError, match="modified by an inplace operation"):
            y.sum().backward()

    def test_inplace_on_leaf_requiring_grad_raises(self):
        x = tt.tensor([0.5, 1.0], requires_grad=True)
        with pytest.raises(RuntimeError, match="a leaf Variable that requires grad is being used in an in-place"):
            x.add_(1)
        with pytest.raises(RuntimeError, match="a view of a leaf Variable that requires grad"):
            x[0] = 1
        with pytest.raises(RuntimeError, match="a view of a leaf Variable that requires grad"):
            x.view(2).mul_(2)
        with tt.no_grad():
            x.add_(1)
            x[0] = 5
        assert x.tolist() == [5.0, 2.0] and x.is_leaf and x.requires_grad

    def test_inplace_plain_tensor_gets_history_from_operand(self):
        x = tt.tensor([0.5, 1.0], requires_grad=True)
        y = tt.tensor([0.5, 1.0])
        y.add_(x)
        assert y.requires_grad and not y.is_leaf
        (y * y).sum().backward()
        assert x.grad.tolist() == [2.0, 4.0]


def test_inplace_bfloat16_without_grad_rounds_its_result():
    """Under no_grad the same-dtype in-place ops take a ufunc fast path; bfloat16 (stored as float32) kept the
    unrounded float32 result there, a value no bfloat16 holds (an optimizer's update of bfloat16 weights)."""
    x, y = tt.tensor([1.0, 3.0], dtype=tt.bfloat16), tt.tensor([0.01, 0.02], dtype=tt.bfloat16)
    with tt.no_grad():
        x += y
        x.mul_(y)
        x.add_(y)
    assert x.tolist() == [0.02001953125, 0.080078125]
    np.testing.assert_array_equal(x.numpy(), round_bfloat16(x.numpy()))
