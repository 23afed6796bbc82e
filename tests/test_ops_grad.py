"""Gradients of every differentiable op and public composite against central finite
differences in float64 (first and second order), plus PyTorch's conventions at kinks and ties."""
from __future__ import annotations

import numpy as np
import pytest
from hypothesis import given, settings, strategies as st

import tracetorch as tt
from gradcheck import float_outputs, gradcheck, gradgradcheck, vjp
from op_samples import PUBLIC_SAMPLES, SAMPLES, op_samples, public_samples
from tracetorch.ops import REGISTRY

DIFFERENTIABLE_OPS = sorted(name for name, op in REGISTRY.items() if op.differentiable)
DIFFERENTIABLE_PUBLIC = sorted(name for name, info in PUBLIC_SAMPLES.items() if info.differentiable)
SECOND_ORDER_OPS = ["add", "sub", "mul", "div", "pow", "exp", "log", "sqrt", "rsqrt", "tanh", "sigmoid", "sin", "cos",
                    "log1p", "expm1", "reciprocal", "abs", "neg", "maximum", "minimum", "remainder", "sum", "prod",
                    "amax", "amin", "cumsum", "matmul", "reshape", "permute", "expand", "slice", "slice_scatter", "cat",
                    "index", "index_put", "where", "cast", "clone"]
SECOND_ORDER_PUBLIC = ["mean", "var", "std", "softmax", "log_softmax", "logsumexp", "norm", "einsum", "max"]


def _grad_samples(samples):
    return [s for s in samples if s.grad and s.grad_indices()]


def _as_function(sample):
    """`sample` as a function of its floating-point inputs (the others held fixed), and those inputs."""
    idx = sample.grad_indices()
    fixed = sample.tensors()

    def fn(*xs):
        args = list(fixed)
        for i, x in zip(idx, xs):
            args[i] = x
        return sample.fn(*args, **sample.attrs)
    return fn, [sample.inputs[i] for i in idx]


def _check(sample, what, second_order=False):
    fn, inputs = _as_function(sample)
    (gradgradcheck if second_order else gradcheck)(fn, inputs, name=f"{what} {sample.desc}")


def test_every_differentiable_op_has_float64_grad_samples(rng):
    for name in DIFFERENTIABLE_OPS:
        assert tt.float64 in SAMPLES[name].dtypes, f"{name}: no float64 samples to gradcheck"
        assert _grad_samples(op_samples(name, tt.float64, rng)), f"{name}: no sample is fit for finite differences"


@pytest.mark.parametrize("name", DIFFERENTIABLE_OPS)
def test_primitive_vjp(name, rng):
    for s in _grad_samples(op_samples(name, tt.float64, rng)):
        _check(s, name)


@pytest.mark.parametrize("name", SECOND_ORDER_OPS)
def test_primitive_second_derivative(name, rng):
    for s in _grad_samples(op_samples(name, tt.float64, rng)):
        if s.inputs[s.grad_indices()[0]].size:
            _check(s, name, second_order=True)


@pytest.mark.parametrize("name", DIFFERENTIABLE_PUBLIC)
def test_public_vjp(name, rng):
    for s in _grad_samples(public_samples(name, tt.float64, rng)):
        _check(s, name)


@pytest.mark.parametrize("name", SECOND_ORDER_PUBLIC)
def test_public_second_derivative(name, rng):
    for s in _grad_samples(public_samples(name, tt.float64, rng)):
        _check(s, name, second_order=True)


NARROW_FLOAT_CASES = [(name, dt) for name in DIFFERENTIABLE_OPS for dt in (tt.float32, tt.float16, tt.bfloat16)
                       if dt in SAMPLES[name].dtypes]


@pytest.mark.parametrize("name,dtype", NARROW_FLOAT_CASES, ids=lambda v: getattr(v, "name", str(v)))
def test_vjp_keeps_input_dtype_and_shape(name, dtype, rng):
    """Gradients come back in each input's dtype and shape; float32 ones agree with float64's."""
    for s in _grad_samples(op_samples(name, dtype, rng)):
        fn, inputs = _as_function(s)
        leaves = [tt.tensor(a, dtype=s.tensor_dtype(a), requires_grad=True) for a in inputs]
        ws = [np.ones(tuple(o.shape)) for o in float_outputs(fn(*leaves))]
        grads = vjp(fn, leaves, ws)
        for k, (g, x) in enumerate(zip(grads, leaves)):
            assert g.dtype is x.dtype and g.shape == x.shape, \
                f"{name} {s.desc}: grad of input {k} is {g.dtype.name} {tuple(g.shape)}, " \
                f"expected {x.dtype.name} {tuple(x.shape)}"
        if dtype is tt.float32:
            wide = vjp(fn, [tt.tensor(a.astype(np.float64), requires_grad=True) for a in inputs], ws)
            for k, (g, r) in enumerate(zip(grads, wide)):
                np.testing.assert_allclose(g.numpy(), r.numpy(), rtol=1e-4, atol=1e-4,
                                           err_msg=f"{name} {s.desc}: float32 grad of input {k}")


# ---------------------------------------------------------------- PyTorch's conventions where the derivative jumps
def _grad(fn, *values):
    xs = [tt.tensor(v, dtype=tt.float64, requires_grad=True) for v in values]
    out = fn(*xs)
    grads = tt.autograd.grad(out.sum(), xs, allow_unused=True)
    return [g.numpy() if g is not None else None for g in grads]


def test_maximum_and_minimum_split_ties_evenly():
    ga, gb = _grad(tt.maximum, [1.0, 3.0, 3.0], [1.0, 0.0, 5.0])
    np.testing.assert_array_equal(ga, [0.5, 1.0, 0.0])
    np.testing.assert_array_equal(gb, [0.5, 0.0, 1.0])
    ga, gb = _grad(tt.minimum, [2.0, 3.0], [2.0, 5.0])
    np.testing.assert_array_equal(ga, [0.5, 1.0])
    np.testing.assert_array_equal(gb, [0.5, 0.0])


def test_amax_and_full_max_share_ties_evenly():
    (g,) = _grad(lambda x: tt.amax(x, 0), [1.0, 3.0, 3.0, 2.0])
    np.testing.assert_array_equal(g, [0.0, 0.5, 0.5, 0.0])
    (g,) = _grad(lambda x: tt.max(x), [[1.0, 3.0], [3.0, 3.0]])
    np.testing.assert_allclose(g, [[0.0, 1 / 3], [1 / 3, 1 / 3]])
    (g,) = _grad(lambda x: tt.amin(x, 1), [[1.0, 1.0, 2.0], [0.0, 4.0, 0.0]])
    np.testing.assert_array_equal(g, [[0.5, 0.5, 0.0], [0.5, 0.0, 0.5]])


def test_max_min_with_dim_send_the_gradient_to_the_returned_index():
    (g,) = _grad(lambda x: tt.max(x, 0).values, [1.0, 3.0, 3.0, 2.0])
    np.testing.assert_array_equal(g, [0.0, 1.0, 0.0, 0.0])
    (g,) = _grad(lambda x: tt.min(x, 1, keepdim=True)[0], [[2.0, 1.0, 1.0], [0.0, 0.0, 5.0]])
    np.testing.assert_array_equal(g, [[0.0, 1.0, 0.0], [1.0, 0.0, 0.0]])


def test_clamp_passes_the_gradient_at_its_bounds():
    (g,) = _grad(lambda x: tt.clamp(x, 0.0, 1.0), [-1.0, 0.0, 0.5, 1.0, 2.0])
    np.testing.assert_array_equal(g, [0.0, 1.0, 1.0, 1.0, 0.0])
    (g,) = _grad(lambda x: tt.clamp(x, min=0.0), [-1.0, 0.0, 1.0])
    np.testing.assert_array_equal(g, [0.0, 1.0, 1.0])


def test_kinks_at_zero_follow_pytorch():
    (g,) = _grad(tt.abs, [-2.0, 0.0, 3.0])
    np.testing.assert_array_equal(g, [-1.0, 0.0, 1.0])
    (g,) = _grad(tt.relu, [-2.0, 0.0, 3.0])
    np.testing.assert_array_equal(g, [0.0, 0.0, 1.0])


def test_prod_gradient_with_zeros_is_the_product_of_the_others_eager_and_compiled():
    rows = [[2.0, 0.0, 3.0], [1.0, 4.0, 5.0], [0.0, 0.0, 3.0]]
    want = [[0.0, 6.0, 0.0], [20.0, 5.0, 4.0], [0.0, 0.0, 0.0]]         # PyTorch's
    (g,) = _grad(lambda x: x.prod(1), rows)
    np.testing.assert_array_equal(g, want)
    (g,) = _grad(lambda x: x.prod(), [4.0, 0.0, 2.0])
    np.testing.assert_array_equal(g, [0.0, 8.0, 0.0])

    def step(x):
        x.prod(1).sum().backward()
        return x.grad
    f = tt.compile(step, backend="llvm")
    for _ in range(2):                                                  # traced, then a cache hit
        x = tt.tensor(rows, dtype=tt.float64, requires_grad=True)
        np.testing.assert_array_equal(f(x).numpy(), want)


@pytest.mark.parametrize("p", [2, "fro", 3, 0.5])
def test_norm_gradient_at_a_zero_vector_is_zero_eager_and_compiled(p):
    """PyTorch's subgradient 0 at a zero norm, also per row with dim= (and at zero elements for p < 1)."""
    (g,) = _grad(lambda x: x.norm(p), [0.0, 0.0, 0.0])
    np.testing.assert_array_equal(g, [0.0, 0.0, 0.0])
    q = 2 if p == "fro" else p
    rows = [[0.0, 0.0], [3.0, 4.0], [0.0, 2.0]]
    n = (3 ** q + 4 ** q) ** (1 / q)
    want = [[0.0, 0.0], [(3 / n) ** (q - 1), (4 / n) ** (q - 1)], [0.0, 1.0]]      # (|x| / norm) ** (p - 1)
    (g,) = _grad(lambda x: x.norm(p, dim=1), rows)
    np.testing.assert_allclose(g, want, rtol=1e-14)
    for g in _compiled_row_norm_grads(p, rows):
        np.testing.assert_allclose(g, want, rtol=1e-14)


def _compiled_row_norm_grads(p, rows) -> list:
    """x.grad of x.norm(p, dim=1).sum() in a compiled step, from its traced call and from a cache hit."""
    def step(x):
        x.norm(p, dim=1).sum().backward()
        return x.grad
    f = tt.compile(step, backend="llvm")
    return [f(tt.tensor(rows, dtype=tt.float64, requires_grad=True)).numpy() for _ in range(2)]


@pytest.mark.parametrize("p", [-1.0, -2.5])
def test_negative_norm_is_zero_with_zero_gradient_at_a_zero_element(p):
    """p < 0: a zero element makes the norm 0 (|0| ** p is inf) and PyTorch's gradient is 0 there for every
    element of that norm; other rows keep (|x| / norm) ** (p - 1) * sign(x)."""
    rows = [[0.0, 2.0, -3.0], [1.0, -2.0, 4.0]]
    n = sum(abs(v) ** p for v in rows[1]) ** (1 / p)
    want_norm = [0.0, n]
    want_grad = [[0.0, 0.0, 0.0], [(abs(v) / n) ** (p - 1) * np.sign(v) for v in rows[1]]]
    x = tt.tensor(rows, dtype=tt.float64, requires_grad=True)
    out = x.norm(p, dim=1)
    out.sum().backward()
    np.testing.assert_allclose(out.detach().numpy(), want_norm, rtol=1e-14)
    np.testing.assert_allclose(x.grad.numpy(), want_grad, rtol=1e-13)
    for g in _compiled_row_norm_grads(p, rows):
        np.testing.assert_allclose(g, want_grad, rtol=1e-13)


@pytest.mark.filterwarnings("ignore:invalid value encountered in multiply")   # 0 * inf, masked by where
def test_pow_gradient_at_zero_base():
    ga, gb = _grad(lambda a, b: a ** b, [0.0, 0.0, 2.0], [0.0, 2.0, 0.5])
    np.testing.assert_allclose(ga, [0.0, 0.0, 0.5 * 2.0 ** -0.5])
    np.testing.assert_allclose(gb, [0.0, 0.0, np.sqrt(2.0) * np.log(2.0)])
    (g,) = _grad(lambda a: a ** 0, [0.0, 2.0])
    np.testing.assert_array_equal(g, [0.0, 0.0])
    (g,) = _grad(lambda a: a ** 1, [0.0, 2.0])
    np.testing.assert_array_equal(g, [1.0, 1.0])
    (g,) = _grad(lambda a: a ** 0.5, [0.0, 4.0])
    np.testing.assert_array_equal(g, [np.inf, 0.25])


def test_index_gradients_accumulate_over_repeated_and_negative_indices():
    (g,) = _grad(lambda x: x[tt.tensor([0, -1, 3, 0])], [1.0, 2.0, 3.0, 4.0])
    np.testing.assert_array_equal(g, [2.0, 0.0, 0.0, 2.0])


def test_integer_results_do_not_require_grad():
    """Casting to an integer or bool dtype ends the graph, as in PyTorch."""
    x = tt.tensor([1.5, -2.5], requires_grad=True)
    for y in (x.long(), x.to(tt.int32), x.bool(), tt.argmax(x), x > 0):
        assert not y.requires_grad and y.grad_fn is None
    assert x.round().requires_grad and x.double().requires_grad


# ---------------------------------------------------------------- broadcasting, property-based
@st.composite
def _broadcastable_shapes(draw):
    """Two shapes that broadcast: suffixes of one result shape, some sizes replaced by 1 (sizes 0..3)."""
    out = draw(st.lists(st.integers(0, 3), max_size=4))

    def operand():
        k = draw(st.integers(0, len(out)))
        return tuple(draw(st.sampled_from((s, 1))) for s in out[len(out) - k:])
    return operand(), operand()


def _sum_to(g, shape):
    """numpy reference of reducing a broadcast gradient back to `shape`."""
    g = g.sum(axis=tuple(range(g.ndim - len(shape)))) if g.ndim > len(shape) else g
    return g.sum(axis=tuple(i for i, s in enumerate(shape) if s == 1), keepdims=True).reshape(shape)


@settings(max_examples=40, deadline=None)
@given(shapes=_broadcastable_shapes(), name=st.sampled_from(["add", "sub", "mul", "div", "where"]))
def test_broadcast_gradients_sum_back_to_input_shapes(shapes, name):
    rng = np.random.default_rng(0)
    a, b = (rng.uniform(0.5, 2.0, s) for s in shapes)
    cond = rng.random(np.broadcast_shapes(*shapes)) < 0.5
    x, y = (tt.tensor(v, requires_grad=True) for v in (a, b))
    args = (tt.tensor(cond), x, y) if name == "where" else (x, y)
    out = tt.ops.apply(REGISTRY[name], *args)
    w = rng.standard_normal(tuple(out.shape))
    gx, gy = tt.autograd.grad(out, [x, y], grad_outputs=tt.tensor(w))
    wa, wb = {"add": (w, w), "sub": (w, -w), "mul": (w * b, w * a), "div": (w / b, -w * a / (b * b)),
              "where": (np.where(cond, w, 0), np.where(cond, 0, w))}[name]
    np.testing.assert_allclose(gx.numpy(), _sum_to(np.broadcast_to(wa, w.shape), a.shape), rtol=1e-12, atol=1e-12)
    np.testing.assert_allclose(gy.numpy(), _sum_to(np.broadcast_to(wb, w.shape), b.shape), rtol=1e-12, atol=1e-12)


def test_std_gradient_of_a_constant_slice_is_zero_eager_and_compiled():
    """PyTorch masks std's gradient to 0 where std == 0 (it was 0 * inf = nan)."""
    rows = [[2.0, 2.0, 2.0], [1.0, 2.0, 3.0]]
    want = [[0.0, 0.0, 0.0], [-0.5, 0.0, 0.5]]                          # (x - mean) / (std * (n - 1))
    (g,) = _grad(lambda x: x.std(dim=1), rows)
    np.testing.assert_allclose(g, want, rtol=1e-14)
    (g,) = _grad(lambda x: x.std(), [3.0, 3.0])
    np.testing.assert_array_equal(g, [0.0, 0.0])

    def step(x):
        x.std(dim=1).sum().backward()
        return x.grad
    f = tt.compile(step, backend="llvm")
    for _ in range(2):                                                  # traced, then a cache hit
        x = tt.tensor(rows, dtype=tt.float64, requires_grad=True)
        np.testing.assert_allclose(f(x).numpy(), want, rtol=1e-14)
