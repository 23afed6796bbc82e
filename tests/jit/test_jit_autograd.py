"""Autograd and tt.compile: backward inside the region (one node, expanded by the autodiff pass),
across its boundary (compiled forward + compiled backward), tt.grad / value_and_grad, custom
Functions."""
from __future__ import annotations

import numpy as np
import pytest

import tracetorch as tt
import tracetorch.nn as nn
import tracetorch.nn.functional as F


def _np(t):
    return t.detach().numpy()


def _mlp(seed=0):
    tt.manual_seed(seed)
    return nn.Sequential(nn.Linear(4, 8), nn.Tanh(), nn.Linear(8, 3))


def test_compiled_model_with_backward_outside_matches_eager():
    mc, me = _mlp(), _mlp()
    cm = tt.compile(mc)
    oc, oe = tt.optim.SGD(mc.parameters(), lr=0.1), tt.optim.SGD(me.parameters(), lr=0.1)
    x, y = tt.randn(6, 4), tt.randint(0, 3, (6,))
    for _ in range(4):
        for model, fwd, opt in ((mc, cm, oc), (me, me, oe)):
            opt.zero_grad()
            out = fwd(x)
            assert out.requires_grad and out.grad_fn is not None
            F.cross_entropy(out, y).backward()
            opt.step()
        for pc, pe in zip(mc.parameters(), me.parameters()):
            np.testing.assert_allclose(_np(pc.grad), _np(pe.grad), rtol=1e-6, atol=1e-7)
            np.testing.assert_allclose(_np(pc), _np(pe), rtol=1e-6, atol=1e-7)
    s = cm.stats()
    assert s["traces"] == 1 and s["cache_hits"] == 3
    assert cm._compiled.programs[0].backward is not None


def test_gradients_reach_inputs_and_multiple_outputs():
    @tt.compile
    def f(a, b):
        h = a @ b
        return h.tanh(), (h * h).sum(), h.argmax(1)

    def run(fn, seed):
        tt.manual_seed(seed)
        a = tt.randn(3, 4, dtype=tt.float64, requires_grad=True)
        b = tt.randn(4, 2, dtype=tt.float64, requires_grad=True)
        t, s, idx = fn(a, b)
        assert not idx.requires_grad
        (t.sum() * 3 + s).backward()
        return a.grad, b.grad

    run(f, 0)
    for seed in (1, 2):
        for g, h in zip(run(f, seed), run(f.__wrapped__, seed)):
            np.testing.assert_allclose(_np(g), _np(h), rtol=1e-12)
    assert f.stats()["cache_hits"] == 2


def test_backward_through_a_compiled_output_twice_raises():
    f = tt.compile(lambda w: (w * w).sum())
    w = tt.ones(3, requires_grad=True)
    f(w)
    out = f(w)
    out.backward()
    with pytest.raises(RuntimeError, match="second time"):
        out.backward()


def test_modifying_a_saved_input_before_backward_raises_like_eager():
    f = tt.compile(lambda w, x: (w * x).sum())
    w, x = tt.ones(3, requires_grad=True), tt.ones(3)
    f(w, x)
    out = f(w, x)
    x.add_(1)
    with pytest.raises(RuntimeError, match="modified by an inplace operation"):
        out.backward()


def test_double_backward_through_a_compiled_function_is_a_clear_error():
    f = tt.compile(lambda w: (w * w * w).sum())
    w = tt.ones(2, requires_grad=True)
    f(w)
    (g,) = tt.autograd.grad(f(w), w, create_graph=False)
    np.testing.assert_array_equal(_np(g), [3, 3])
    with pytest.raises(RuntimeError, match="double backward"):
        tt.autograd.grad(f(w), w, create_graph=True)


def test_backward_inside_the_region_is_one_node_expanded_by_autodiff():
    w = tt.tensor([1.0, 2.0], requires_grad=True)

    @tt.compile
    def step(x):
        w.grad = None
        loss = ((w * x).sin()).sum()
        loss.backward()
        return w.grad * 1

    for k in range(3):
        x = tt.tensor([0.5, float(k)])
        np.testing.assert_allclose(_np(step(x)), _np(x * (w * x).cos()), rtol=1e-6)
    program = step.programs[0]
    assert [n.op.name for n in program.raw.nodes].count("backward") == 1
    assert all(n.op.name != "backward" for n in program.graph.nodes)


def test_a_linear_weight_gradient_takes_eagers_formula_so_the_interpreter_is_bit_for_bit():
    """Eager computes the gradient of a weight read as weight.t() as (g^T x)^T (C-contiguous, like
    PyTorch's linear backward); the autodiff pass must pick the same formula, not x^T g: a BLAS may
    round the two differently (OpenBLAS's Haswell kernels do), and the interpreter promises eager's bits."""
    model = _mlp(3)
    x = tt.randn(10, 4)

    def grads(x):
        for p in model.parameters():
            p.grad = None
        model(x).square().sum().backward()
        return [p.grad * 1 for p in model.parameters()]

    step = tt.compile(grads, backend="interp")
    step(x)
    compiled = step(x)                                   # the second call runs the program
    for c, e in zip(compiled, grads(x)):
        np.testing.assert_array_equal(_np(c), _np(e))
    graph = step.programs[0].graph
    matmul_shapes = [n.out.shape for n in graph.nodes if n.op.name == "matmul"]
    assert (8, 4) in matmul_shapes and (3, 8) in matmul_shapes, matmul_shapes     # g^T x: [out, in]
    assert (4, 8) not in matmul_shapes and (8, 3) not in matmul_shapes, matmul_shapes


@pytest.mark.parametrize("backend", ["llvm", "interp"])
def test_a_gradient_penalty_inside_the_region_matches_eager(backend):
    """autograd.grad(create_graph=True) inside the region is recorded op by op, so the penalty on the
    gradient is differentiable: by a backward inside the call, and across it (exp, tanh and sigmoid
    read their saved output, which must stay the traced value on every replay)."""
    def inside(x, w):
        (g,) = tt.autograd.grad((x @ w).tanh().exp().sum(), x, create_graph=True)
        penalty = g.pow(2).sum()
        penalty.backward()
        return penalty

    def across(x, w):
        (g,) = tt.autograd.grad((x @ w).sigmoid().sum(), x, create_graph=True)
        return g.pow(2).sum()

    rng = np.random.default_rng(0)
    for fn in (inside, across):
        compiled = tt.compile(fn, backend=backend)
        for _ in range(3):
            xv, wv = rng.standard_normal((3, 4)), rng.standard_normal((4, 2))
            results = []
            for f in (compiled, fn):
                x, w = tt.tensor(xv, requires_grad=True), tt.tensor(wv, requires_grad=True)
                penalty = f(x, w)
                if fn is across:
                    penalty.backward()
                results.append((penalty.item(), _np(x.grad), _np(w.grad)))
            for c, e in zip(*results):
                np.testing.assert_allclose(c, e, rtol=1e-9, atol=1e-12)
        assert compiled.stats()["traces"] == 1


def test_backward_with_create_graph_inside_the_region_is_a_clear_error():
    @tt.compile
    def f(w):
        (w ** 3).sum().backward(create_graph=True)
        return w.grad

    with pytest.raises(tt.jit.GraphBreak, match="create_graph"):
        f(tt.ones(2, requires_grad=True))


def test_grad_and_value_and_grad():
    def loss(w, x, scale=1.0):
        return ((x @ w).tanh() ** 2).sum() * scale

    w, x = tt.randn(3, 2, dtype=tt.float64), tt.randn(5, 3, dtype=tt.float64)
    we = w.detach().requires_grad_()
    xe = x.detach().requires_grad_()
    loss(we, xe).backward()
    g = tt.grad(loss)
    for _ in range(2):
        np.testing.assert_allclose(_np(g(w, x)), _np(we.grad), rtol=1e-12)
    vg = tt.value_and_grad(loss, argnums=(0, 1))
    value, (gw, gx) = vg(w, x, scale=1.0)
    value, (gw, gx) = vg(w, x, scale=1.0)
    assert float(value) == pytest.approx(float(loss(w, x)), rel=1e-12)
    np.testing.assert_allclose(_np(gx), _np(xe.grad), rtol=1e-12)
    assert vg.stats()["cache_hits"] == 1 and not w.requires_grad

    def with_aux(w):
        return (w * w).sum(), w.shape[0]

    grads, aux = tt.grad(with_aux, has_aux=True)(w)
    assert aux == 3 and np.allclose(_np(grads), 2 * _np(w))


class CubeWithScaledGrad(tt.autograd.Function):
    """y = x^3 with a deliberately different backward: the user's backward must win."""

    @staticmethod
    def forward(ctx, x, k):
        ctx.save_for_backward(x)
        ctx.k = k
        return x * x * x

    @staticmethod
    def backward(ctx, g):
        (x,) = ctx.saved_tensors
        return g * ctx.k * x, None


def test_custom_function_backward_replaces_differentiation():
    def f(x):
        return CubeWithScaledGrad.apply(x * 2, 10.0).sum()

    x = tt.tensor([1.0, 2.0], dtype=tt.float64)
    expected = 10.0 * 2 * (2 * _np(x))                  # chain rule through x*2 with the user's rule
    for _ in range(2):
        np.testing.assert_allclose(_np(tt.grad(f)(x)), expected)
    cf = tt.compile(lambda x: CubeWithScaledGrad.apply(x * 2, 10.0))
    for _ in range(2):
        xr = x.detach().requires_grad_()
        cf(xr).sum().backward()
        np.testing.assert_allclose(_np(xr.grad), expected)


def test_a_result_whose_graph_the_call_backwarded_still_requires_grad():
    """`loss.backward(); return loss`: as eagerly, the returned loss requires grad and has a grad_fn on
    every call, and backward through it again raises PyTorch's error instead of a silent no-op."""
    w = tt.tensor([1.0, 2.0], requires_grad=True)

    @tt.compile
    def step(x):
        loss = (x * w).sum()
        loss.backward()
        return loss

    for _ in range(3):
        w.grad = None
        loss = step(tt.ones(2))
        assert loss.requires_grad and loss.grad_fn is not None and loss.grad_fn.name() == "SumBackward"
        assert w.grad.tolist() == [1.0, 1.0]
        with pytest.raises(RuntimeError, match="backward through the graph a second time"):
            loss.backward()
    assert step.stats()["cache_hits"] >= 1


@pytest.mark.parametrize("compiled_mode", ["default", "eager"])
def test_grad_of_an_argument_the_value_does_not_depend_on_is_zero(compiled_mode):
    """As torch.func.grad: zeros of the argument's shape, not autograd's 'does not require grad' error."""
    def f(x, w):
        return (x * 2).sum()
    g = tt.grad(f, argnums=(0, 1), mode=compiled_mode)
    for _ in range(2):
        gx, gw = g(tt.ones(2), tt.ones(3))
        assert gx.tolist() == [2.0, 2.0] and gw.tolist() == [0.0, 0.0, 0.0]
    value, gw = tt.value_and_grad(lambda x, w: x.sum(), argnums=1, mode=compiled_mode)(tt.ones(2), tt.ones(2))
    assert value.item() == 2.0 and gw.tolist() == [0.0, 0.0]


@pytest.mark.parametrize("compiled_mode", ["default", "eager"])
def test_grad_composes_into_higher_derivatives(compiled_mode):
    """tt.grad(tt.grad(f)) is the second derivative (it was silently zero: the inner gradient was
    detached), with only fn's own uses of an argument counted, and an argument that autograd tracks
    keeps its gradient path through tt.grad."""
    def grad(fn):
        return tt.grad(fn, mode=compiled_mode)
    cube = lambda x: (x ** 3).sum()
    first = grad(cube)
    second = grad(lambda x: first(x).sum())
    third = grad(lambda x: second(x).sum())
    for scale in (1.0, 2.0, -0.5):         # first calls trace, later ones replay
        x = tt.tensor([1.0, 2.0, -3.0], dtype=tt.float64) * scale
        xs = x.numpy()
        np.testing.assert_allclose(first(x).numpy(), 3 * xs ** 2, rtol=1e-12)
        np.testing.assert_allclose(second(x).numpy(), 6 * xs, rtol=1e-12)
        np.testing.assert_allclose(third(x).numpy(), np.full(3, 6.0), rtol=1e-12)
        # d/dx [x * (d/dy x.y at y = x)] = d/dx x.x = 2x: the inner gradient is w.r.t. y alone
        mixed = grad(lambda x: (x * grad(lambda y: (x * y).sum())(x)).sum())
        np.testing.assert_allclose(mixed(x).numpy(), 2 * xs, rtol=1e-12)
    w = tt.tensor([1.0, 2.0], dtype=tt.float64, requires_grad=True)
    gw = first(w)
    assert gw.requires_grad
    gw.sum().backward()
    np.testing.assert_allclose(w.grad.numpy(), [6.0, 12.0], rtol=1e-12)
    if compiled_mode == "default":
        assert second.stats()["compiles"] >= 1 and second.stats()["cache_hits"] >= 1
