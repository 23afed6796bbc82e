"""`tt.autograd.Function`: user forward/backward pairs inside eager autograd."""
import numpy as np
import pytest

import tracetorch as tt


class Exp(tt.autograd.Function):
    @staticmethod
    def forward(ctx, x):
        y = x.exp()
        ctx.save_for_backward(y)
        return y

    @staticmethod
    def backward(ctx, g):
        y, = ctx.saved_tensors
        return g * y


class StraightThroughClamp(tt.autograd.Function):
    """Clamp forward, identity backward (the straight-through estimator)."""

    @staticmethod
    def forward(ctx, x, lo, hi):
        return x.clamp(lo, hi)

    @staticmethod
    def backward(ctx, g):
        return g, None, None


class ScaleMul(tt.autograd.Function):
    """x * k * w with a Python scalar k; records which inputs need a gradient."""
    seen_needs = None

    @staticmethod
    def forward(ctx, x, k, w):
        ctx.k = k
        ctx.save_for_backward(x, w)
        ScaleMul.seen_needs = ctx.needs_input_grad
        return x * k * w

    @staticmethod
    def backward(ctx, g):
        x, w = ctx.saved_tensors
        gx = g * ctx.k * w if ctx.needs_input_grad[0] else None
        gw = (g * ctx.k * x).sum(0) if ctx.needs_input_grad[2] else None
        return gx, None, gw


class SinCos(tt.autograd.Function):
    @staticmethod
    def forward(ctx, x):
        ctx.save_for_backward(x)
        return x.sin(), x.cos()

    @staticmethod
    def backward(ctx, g_sin, g_cos):
        x, = ctx.saved_tensors
        return g_sin * x.cos() - g_cos * x.sin()


class MaxWithIndex(tt.autograd.Function):
    @staticmethod
    def forward(ctx, x):
        idx = x.argmax()
        ctx.mark_non_differentiable(idx)
        ctx.save_for_backward(idx)
        ctx.n = x.shape[0]
        return x.max(), idx

    @staticmethod
    def backward(ctx, g, g_idx):
        idx, = ctx.saved_tensors
        out = tt.zeros(ctx.n, dtype=g.dtype)
        out[idx] = g
        return out


class Identity(tt.autograd.Function):
    @staticmethod
    def forward(ctx, x):
        return x

    @staticmethod
    def backward(ctx, g):
        return g * 5


def f64(values, requires_grad=True):
    return tt.tensor(values, dtype=tt.float64, requires_grad=requires_grad)


def finite_difference(fn, xv, eps=1e-6):
    """Central differences of sum(fn(x)) at xv, in float64."""
    grad = np.zeros_like(xv)
    for i in range(xv.size):
        d = np.zeros_like(xv)
        d.flat[i] = eps
        hi = fn(tt.tensor(xv + d)).sum().item()
        lo = fn(tt.tensor(xv - d)).sum().item()
        grad.flat[i] = (hi - lo) / (2 * eps)
    return grad


def test_custom_exp_matches_finite_differences():
    xv = np.array([[0.3, -1.2], [0.7, 2.0]])
    x = f64(xv)
    y = Exp.apply(x)
    np.testing.assert_allclose(y.detach().numpy(), np.exp(xv))
    assert y.requires_grad and y.grad_fn.name() == "ExpBackward"
    (y * tt.tensor([[1.0, 2.0], [3.0, 4.0]], dtype=tt.float64)).sum().backward()
    np.testing.assert_allclose(x.grad.numpy(), np.exp(xv) * [[1, 2], [3, 4]])
    np.testing.assert_allclose(x.grad.numpy(), finite_difference(
        lambda t: Exp.apply(t) * tt.tensor([[1.0, 2.0], [3.0, 4.0]], dtype=tt.float64), xv), rtol=1e-6)


def test_straight_through_clamp():
    x = f64([-2.0, 0.5, 3.0])
    y = StraightThroughClamp.apply(x, -1.0, 1.0)
    assert y.tolist() == [-1.0, 0.5, 1.0]
    (y * tt.tensor([1.0, 2.0, 3.0], dtype=tt.float64)).sum().backward()
    assert x.grad.tolist() == [1.0, 2.0, 3.0]        # identity, unlike clamp's own gradient


def test_non_tensor_args_and_needs_input_grad():
    x = f64([[0.5, 1.0]])
    w = f64([2.0, 3.0])
    y = ScaleMul.apply(x, 3.0, w)
    assert ScaleMul.seen_needs == (True, False, True)
    y.sum().backward()
    assert x.grad.tolist() == [[6.0, 9.0]] and w.grad.tolist() == [1.5, 3.0]
    x2 = f64([[0.5, 1.0]])
    y = ScaleMul.apply(x2, 3.0, tt.tensor([2.0, 3.0], dtype=tt.float64))
    assert ScaleMul.seen_needs == (True, False, False)
    y.sum().backward()
    assert x2.grad.tolist() == [[6.0, 9.0]]


def test_forward_runs_without_recording():
    seen = []

    class Probe(tt.autograd.Function):
        @staticmethod
        def forward(ctx, x):
            seen.append(tt.is_grad_enabled())
            y = x * 2
            seen.append(y.requires_grad)
            return y

        @staticmethod
        def backward(ctx, g):
            return g * 2

    y = Probe.apply(f64([1.0]))
    assert seen == [False, False] and y.requires_grad


def test_multiple_outputs_get_their_own_gradients():
    xv = np.array([0.4, 1.3])
    x = f64(xv)
    s, c = SinCos.apply(x)
    np.testing.assert_allclose(s.detach().numpy(), np.sin(xv))
    np.testing.assert_allclose(c.detach().numpy(), np.cos(xv))
    (2 * s + 3 * c).sum().backward()
    np.testing.assert_allclose(x.grad.numpy(), 2 * np.cos(xv) - 3 * np.sin(xv))
    # only one output used: the other's gradient arrives as zeros
    x2 = f64(xv)
    s, _ = SinCos.apply(x2)
    s.sum().backward()
    np.testing.assert_allclose(x2.grad.numpy(), np.cos(xv))


def test_mark_non_differentiable():
    x = f64([0.5, 3.0, 0.2])
    m, i = MaxWithIndex.apply(x)
    assert m.requires_grad and not i.requires_grad and i.dtype is tt.int64 and i.item() == 1
    (m * 4).backward()
    assert x.grad.tolist() == [0.0, 4.0, 0.0]


def test_returning_an_input_as_is():
    x = f64([0.5, 1.0])
    y = Identity.apply(x)
    assert y is not x and y.requires_grad and not y.is_leaf
    assert np.shares_memory(y.detach().numpy(), x.detach().numpy())
    y.sum().backward()
    assert x.grad.tolist() == [5.0, 5.0]


def test_composes_with_regular_ops_and_itself():
    xv = np.array([0.5, 1.0])
    x = f64(xv)
    y = Exp.apply(Exp.apply(x) * 2).sum() + (x * x).sum()
    y.backward()
    ref = np.exp(2 * np.exp(xv)) * 2 * np.exp(xv) + 2 * xv
    np.testing.assert_allclose(x.grad.numpy(), ref)
    np.testing.assert_allclose(x.grad.numpy(), finite_difference(
        lambda t: Exp.apply(Exp.apply(t) * 2) + t * t, xv), rtol=1e-6)


def test_input_without_grad_or_no_grad_mode_records_nothing():
    y = Exp.apply(tt.tensor([0.5, 1.0]))
    assert not y.requires_grad and y.grad_fn is None
    with tt.no_grad():
        y = Exp.apply(f64([0.5, 1.0]))
    assert not y.requires_grad


def test_saved_tensor_modified_in_place_raises():
    x = f64([0.5, 1.0])
    y = Exp.apply(x)
    y.add_(1)
    with pytest.raises(RuntimeError, match="modified by an inplace operation"):
        y.sum().backward()


def test_second_backward_without_retain_graph_raises():
    y = Exp.apply(f64([0.5, 1.0])).sum()
    y.backward()
    with pytest.raises(RuntimeError, match="backward through the graph a second time"):
        y.backward()
    x = f64([0.5, 1.0])
    y = Exp.apply(x).sum()
    y.backward(retain_graph=True)
    y.backward()
    np.testing.assert_allclose(x.grad.numpy(), 2 * np.exp([0.5, 1.0]))


def test_bad_backward_results_raise():
    class WrongShape(tt.autograd.Function):
        @staticmethod
        def forward(ctx, x):
            return x * 2

        @staticmethod
        def backward(ctx, g):
            return g[:1]

    class TooFew(tt.autograd.Function):
        @staticmethod
        def forward(ctx, x, w):
            return x * w

        @staticmethod
        def backward(ctx, g):
            return g

    with pytest.raises(RuntimeError, match="WrongShapeBackward returned an invalid gradient"):
        WrongShape.apply(f64([0.5, 1.0])).sum().backward()
    with pytest.raises(RuntimeError, match="incorrect number of gradients"):
        TooFew.apply(f64([0.5, 1.0]), f64([1.0, 1.0])).sum().backward()


def test_missing_backward_raises():
    class NoBackward(tt.autograd.Function):
        @staticmethod
        def forward(ctx, x):
            return x * 2

    y = NoBackward.apply(f64([1.0]))
    with pytest.raises(NotImplementedError):
        y.sum().backward()


class AddBias(tt.autograd.Function):
    """x + b * k, whose backward hands b the gradient in the output's (broadcast) shape, plus an extra None."""

    @staticmethod
    def forward(ctx, x, b, k):
        return x + b * k

    @staticmethod
    def backward(ctx, g):
        return g, g * 3.0, None, None


def test_a_broadcast_shaped_gradient_is_summed_to_its_input():
    """PyTorch sums a gradient of a shape the input broadcasts to down to the input's shape, and drops
    trailing None gradients beyond the inputs."""
    x, b = f64(np.arange(6.0).reshape(2, 3)), f64([1.0, 2.0, 3.0])
    (AddBias.apply(x, b, 3.0) * 2).sum().backward()
    np.testing.assert_allclose(x.grad.numpy(), np.full((2, 3), 2.0))
    np.testing.assert_allclose(b.grad.numpy(), [12.0, 12.0, 12.0])
    for backend in ("llvm", "interp"):
        cf = tt.compile(lambda x, b: (AddBias.apply(x, b, 3.0) * 2).sum(), backend=backend)
        for _ in range(3):
            b = f64([1.0, 2.0, 3.0])
            cf(f64(np.ones((2, 3))), b).backward()
            np.testing.assert_allclose(b.grad.numpy(), [12.0, 12.0, 12.0])


def test_gradients_beyond_the_inputs_or_for_non_tensors_raise():
    class TooMany(tt.autograd.Function):
        @staticmethod
        def forward(ctx, x):
            return x * 2

        @staticmethod
        def backward(ctx, g):
            return g, g

    class ForScalar(tt.autograd.Function):
        @staticmethod
        def forward(ctx, x, k):
            return x * k

        @staticmethod
        def backward(ctx, g):
            return g * 2, g

    with pytest.raises(RuntimeError, match=r"incorrect number of gradients \(expected 1, got 2\)"):
        TooMany.apply(f64([0.5, 1.0])).sum().backward()
    with pytest.raises(RuntimeError, match="different than None at position 2"):
        ForScalar.apply(f64([0.5, 1.0]), 2.0).sum().backward()


def test_a_tensor_passed_by_keyword_is_an_input_with_a_gradient():
    """PyTorch binds apply's keyword arguments to forward's positional parameters (defaults left out):
    a tensor passed by keyword gets backward's gradient in its position (it got none)."""
    class Scaled(tt.autograd.Function):
        @staticmethod
        def forward(ctx, x, w=None, k=2.0):
            ctx.save_for_backward(x, w)
            ctx.k = k
            return x * w * k

        @staticmethod
        def backward(ctx, g):
            x, w = ctx.saved_tensors
            return g * w * ctx.k, g * x * ctx.k, None

    x, w = f64([1.0, 2.0]), f64([3.0, 4.0])
    Scaled.apply(x, k=3.0, w=w).sum().backward()
    np.testing.assert_allclose(x.grad.numpy(), [9.0, 12.0])
    np.testing.assert_allclose(w.grad.numpy(), [3.0, 6.0])
    x, w = f64([1.0, 2.0]), f64([3.0, 4.0])
    Scaled.apply(x, w=w).sum().backward()           # (x, w): the third gradient is a trailing None
    np.testing.assert_allclose(w.grad.numpy(), [2.0, 4.0])
