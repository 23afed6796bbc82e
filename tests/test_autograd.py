"""Eager autograd semantics (PyTorch's): backward, accumulation, graph freeing,
grad modes, hooks, tt.autograd.grad and higher-order gradients."""
import threading

import numpy as np
import pytest

import tracetorch as tt


def f64(values, requires_grad=True):
    return tt.tensor(values, dtype=tt.float64, requires_grad=requires_grad)


class TestBackward:
    def test_scalar_backward(self):
        x = f64([0.5, 1.0, 2.0])
        (x * x * 3).sum().backward()
        np.testing.assert_allclose(x.grad.numpy(), 6 * np.array([0.5, 1.0, 2.0]))

    def test_backward_with_gradient_argument(self):
        x = f64([0.5, 1.0])
        y = x * 2
        y.backward(tt.tensor([1.0, 10.0], dtype=tt.float64))
        assert x.grad.tolist() == [2.0, 20.0]
        z = f64([[1.0, 2.0], [3.0, 4.0]])
        (z ** 2).backward(gradient=tt.ones(2, 2, dtype=tt.float64) * 0.5)
        np.testing.assert_allclose(z.grad.numpy(), z.detach().numpy())

    def test_non_scalar_without_gradient_raises(self):
        x = f64([0.5, 1.0])
        with pytest.raises(RuntimeError, match="grad can be implicitly created only for scalar outputs"):
            (x * 2).backward()

    def test_gradient_shape_mismatch_raises(self):
        x = f64([0.5, 1.0])
        with pytest.raises(RuntimeError, match="Mismatch in shape"):
            (x * 2).backward(tt.ones(3, dtype=tt.float64))

    def test_backward_on_tensor_without_grad_raises(self):
        with pytest.raises(RuntimeError, match="does not require grad and does not have a grad_fn"):
            tt.ones(2).sum().backward()

    def test_grad_accumulates_across_backward_calls(self):
        x = f64([0.5, 1.0])
        (x * 3).sum().backward()
        (x * x).sum().backward()
        np.testing.assert_allclose(x.grad.numpy(), 3 + 2 * np.array([0.5, 1.0]))
        x.grad = None
        (x * 3).sum().backward()
        assert x.grad.tolist() == [3.0, 3.0]

    def test_retain_graph(self):
        x = f64([0.5, 1.0])
        y = (x * x).sum()
        y.backward(retain_graph=True)
        y.backward()
        assert x.grad.tolist() == [2.0, 4.0]
        y = x.exp().sum()
        y.backward()
        with pytest.raises(RuntimeError, match="Trying to backward through the graph a second time"):
            y.backward()

    def test_graph_without_saved_values_can_run_twice(self):
        x = f64([0.5, 1.0])
        y = (x + x).sum()
        y.backward()
        y.backward()                     # nothing was saved, nothing freed (as in PyTorch)
        assert x.grad.tolist() == [4.0, 4.0]

    def test_grad_dtype_and_shape_follow_the_leaf(self):
        x = f64([[0.5, 1.0, 2.0]])
        (x.float() * 2).sum().backward()
        assert x.grad.dtype is tt.float64 and x.grad.shape == (1, 3)
        b = tt.ones(3, requires_grad=True)
        (tt.ones(4, 3) * b).sum().backward()       # broadcast: summed back to b's shape
        assert b.grad.shape == (3,) and b.grad.tolist() == [4.0, 4.0, 4.0]
        h = tt.tensor([1.0, 2.0], dtype=tt.float16, requires_grad=True)
        (h * h).sum().backward()
        assert h.grad.dtype is tt.float16 and h.grad.tolist() == [2.0, 4.0]

    def test_diamond_graph(self):
        x = f64([0.5, 2.0])
        a = x * 2
        b = a.sin()
        c = a * a
        (b + c).sum().backward()       # a is used twice: gradients from both paths add
        xv = np.array([0.5, 2.0])
        np.testing.assert_allclose(x.grad.numpy(), 2 * np.cos(2 * xv) + 8 * xv)

    def test_value_used_twice_in_one_op(self):
        x = f64([3.0])
        (x * x * x).backward()
        assert x.grad.tolist() == [27.0]

    def test_deep_chain_has_no_recursion_limit(self):
        x = f64([0.5, 1.0])
        y = x
        for _ in range(5000):
            y = y * 1.0001 + 0.0
        y.sum().backward()
        np.testing.assert_allclose(x.grad.numpy(), [1.0001 ** 5000] * 2, rtol=1e-9)

    def test_backward_inputs_argument(self):
        x, w = f64([1.0, 2.0]), f64([3.0, 4.0])
        (x * w).sum().backward(inputs=[w])
        assert x.grad is None and w.grad.tolist() == [1.0, 2.0]


class TestLeavesAndFlags:
    def test_is_leaf_and_grad_fn(self):
        x = f64([0.5, 1.0])
        assert x.is_leaf and x.grad_fn is None
        y = x * 2
        assert not y.is_leaf and y.requires_grad
        assert y.grad_fn.name().startswith("MulBackward")
        assert (x + 1).grad_fn.name().startswith("AddBackward")
        assert x.sum().grad_fn.name().startswith("SumBackward")
        assert x.exp().grad_fn.name().startswith("ExpBackward")
        assert "grad_fn=<MulBackward" in repr(y)
        c = tt.tensor([1.0])
        assert c.is_leaf and not c.requires_grad and (c * 2).is_leaf

    def test_ops_on_tensors_without_grad_record_nothing(self):
        a = tt.ones(2)
        b = a * 2 + 1
        assert not b.requires_grad and b.grad_fn is None

    def test_requires_grad_(self):
        x = tt.tensor([0.5, 1.0])
        assert x.requires_grad_() is x and x.requires_grad
        x.requires_grad_(False)
        assert not x.requires_grad
        with pytest.raises(RuntimeError, match="you can only change requires_grad flags of leaf variables"):
            (f64([1.0]) * 2).requires_grad_(False)
        for dtype in (tt.int64, tt.int32, tt.bool):
            with pytest.raises(RuntimeError, match="only Tensors of floating point dtype can require gradients"):
                tt.ones(2, dtype=dtype).requires_grad_()
        with pytest.raises(RuntimeError, match="only Tensors of floating point dtype can require gradients"):
            tt.tensor([1, 2], requires_grad=True)

    def test_detach(self):
        x = f64([0.5, 1.0])
        d = (x * 2).detach()
        assert not d.requires_grad and d.is_leaf and d.grad_fn is None
        y = x * d                       # d is a constant for autograd
        y.sum().backward()
        assert x.grad.tolist() == [1.0, 2.0]
        z = (x * 3)
        z.detach_()
        assert z.is_leaf and not z.requires_grad

    def test_retain_grad(self):
        x = f64([0.5, 1.0])
        y = x * 2
        y.retain_grad()
        assert y.retains_grad
        z = x * 3
        (y * y + z).sum().backward()
        assert y.grad.tolist() == [2.0, 4.0]
        assert z.grad is None
        assert x.grad.tolist() == [7.0, 11.0]

    def test_retain_grad_follows_in_place_writes(self):
        """As PyTorch: .grad is the gradient of the tensor's latest value, also after a write through a view."""
        x = f64([1.0, 2.0])
        h = x * 2
        h.retain_grad()
        h.mul_(3)
        h.add_(1)
        (h * h).sum().backward()
        assert h.grad.tolist() == [14.0, 26.0]
        b = x * 1
        b.retain_grad()
        b[0].mul_(2)
        (b ** 2).sum().backward()
        assert b.grad.tolist() == [4.0, 4.0]
        c = x * 1
        c.retain_grad()
        c[0] = 5.0
        (c * c).sum().backward()
        assert c.grad.tolist() == [10.0, 4.0]

    def test_hooks(self):
        x = f64([0.5, 1.0])
        y = x * 2
        seen = []
        y.register_hook(lambda g: seen.append(g.tolist()))
        y.register_hook(lambda g: g * 10)
        (y * tt.tensor([1.0, 3.0], dtype=tt.float64)).sum().backward()
        assert seen == [[1.0, 3.0]]
        assert x.grad.tolist() == [20.0, 60.0]
        leaf = f64([0.5, 1.0])
        leaf.register_hook(lambda g: g * 10)
        (leaf * 3).sum().backward()
        assert leaf.grad.tolist() == [30.0, 30.0]
        with pytest.raises(RuntimeError, match="doesn't require gradient"):
            tt.ones(2).register_hook(lambda g: g)


class TestGradMode:
    def test_context_managers(self):
        x = f64([1.0])
        with tt.no_grad():
            assert not tt.is_grad_enabled()
            assert not (x * 2).requires_grad
            with tt.enable_grad():
                assert (x * 2).requires_grad
            assert not (x * 2).requires_grad
        assert tt.is_grad_enabled()
        with tt.set_grad_enabled(False):
            assert not (x * 2).requires_grad
        assert tt.is_grad_enabled()
        tt.set_grad_enabled(False)
        try:
            assert not tt.is_grad_enabled()
        finally:
            tt.set_grad_enabled(True)
        assert tt.is_grad_enabled()

    def test_mode_restored_after_exception(self):
        with pytest.raises(ValueError):
            with tt.no_grad():
                raise ValueError
        assert tt.is_grad_enabled()

    def test_decorators(self):
        x = f64([1.0])

        @tt.no_grad()
        def f(a):
            return a * 2

        @tt.no_grad
        def f_bare(a):
            return a * 2

        @tt.enable_grad()
        def g(a):
            return a * 2

        @tt.set_grad_enabled(False)
        def h(a):
            return a * 2

        assert not f(x).requires_grad and not f_bare(x).requires_grad and not h(x).requires_grad
        assert tt.is_grad_enabled() and f.__name__ == "f" and f_bare.__name__ == "f_bare"
        with tt.no_grad():
            assert g(x).requires_grad

    def test_decorated_generators_run_under_the_mode_at_each_step(self):
        """As PyTorch's decorators: the mode holds inside the generator's body whenever it runs, and the
        caller's mode between steps (a plain wrapper's mode ended before the first `next`)."""
        x = f64([1.0])

        @tt.no_grad()
        def steps(n):
            for _ in range(n):
                sent = yield (x * 2).requires_grad, tt.is_grad_enabled()
                assert sent is None
            return "done"

        @tt.set_grad_enabled(False)
        def steps_set():
            yield (x * 2).requires_grad

        gen = steps(2)
        assert next(gen) == (False, False)
        assert tt.is_grad_enabled()
        assert next(gen) == (False, False)
        with pytest.raises(StopIteration) as stop:
            next(gen)
        assert stop.value.value == "done" and steps.__name__ == "steps"
        assert list(steps_set()) == [False] and tt.is_grad_enabled()
        with tt.no_grad():
            assert [step for step, _ in tt.enable_grad()(steps.__wrapped__)(1)] == [True]

    def test_grad_mode_is_thread_local(self):
        x = f64([1.0])
        seen = {}

        def worker():
            seen["enabled"] = tt.is_grad_enabled()
            seen["records"] = (x * 2).requires_grad

        with tt.no_grad():
            t = threading.Thread(target=worker)
            t.start()
            t.join()
        assert seen == {"enabled": True, "records": True}

        def worker_no_grad():
            with tt.no_grad():
                seen["inner"] = tt.is_grad_enabled()
                barrier.wait()
                barrier.wait()

        barrier = threading.Barrier(2, timeout=10)
        t = threading.Thread(target=worker_no_grad, daemon=True)
        t.start()
        barrier.wait()          # the worker is inside no_grad now
        try:
            assert tt.is_grad_enabled() and (x * 2).requires_grad
        finally:
            barrier.wait()
            t.join()
        assert seen["inner"] is False


class TestAutogradGrad:
    def test_grad_returns_without_accumulating(self):
        x = f64([0.5, 1.0])
        g, = tt.autograd.grad((x * 2).sum(), x)
        assert g.tolist() == [2.0, 2.0] and x.grad is None and not g.requires_grad
        g = tt.autograd.grad((x * 2).sum(), x)
        assert isinstance(g, tuple) and len(g) == 1

    def test_grad_outputs(self):
        x = f64([0.5, 1.0])
        w = f64([2.0, 3.0])
        gx, gw = tt.autograd.grad(x * w, [x, w], grad_outputs=tt.tensor([1.0, -1.0], dtype=tt.float64))
        assert gx.tolist() == [2.0, -3.0] and gw.tolist() == [0.5, -1.0]
        gx, = tt.autograd.grad([x * 2, x * x], [x], grad_outputs=[tt.ones(2, dtype=tt.float64)] * 2)
        assert gx.tolist() == [3.0, 4.0]

    def test_allow_unused(self):
        x, z = f64([0.5, 1.0]), f64([1.0])
        y = (x * 2).sum()
        with pytest.raises(RuntimeError, match="appears to not have been used in the graph"):
            tt.autograd.grad(y, [x, z], retain_graph=True)
        gx, gz = tt.autograd.grad(y, [x, z], allow_unused=True)
        assert gx.tolist() == [2.0, 2.0] and gz is None

    def test_grad_of_input_not_requiring_grad_raises(self):
        with pytest.raises(RuntimeError, match="does not require grad"):
            tt.autograd.grad((f64([1.0]) * 2).sum(), tt.ones(1))

    def test_grad_runs_only_the_nodes_between_outputs_and_inputs(self):
        """As PyTorch's engine: a node past the inputs is not run, so one an earlier backward freed does
        not raise, and a user's backward there is not called."""
        x = f64([0.5, 1.0])
        h = x.exp()
        h.sum().backward()                      # frees exp's saved output
        (g,) = tt.autograd.grad((h * 2).sum(), h)
        np.testing.assert_allclose(g.numpy(), [2.0, 2.0])

        calls = []

        class Spy(tt.autograd.Function):
            @staticmethod
            def forward(ctx, a):
                return a * 1

            @staticmethod
            def backward(ctx, grad):
                calls.append(grad)
                return grad

        h = Spy.apply(x)
        (g,) = tt.autograd.grad((h * h).sum(), h)
        np.testing.assert_allclose(g.numpy(), [1.0, 2.0])
        assert calls == []

    def test_second_derivative_of_cube(self):
        xv = np.array([0.5, 2.0, -1.5])
        x = f64(xv)
        g, = tt.autograd.grad((x ** 3).sum(), x, create_graph=True)
        assert g.requires_grad
        np.testing.assert_allclose(g.detach().numpy(), 3 * xv ** 2)
        g2, = tt.autograd.grad(g.sum(), x)
        np.testing.assert_allclose(g2.numpy(), 6 * xv)

    def test_second_and_third_derivatives_of_sin(self):
        xv = np.array([0.3, 1.2, 2.5])
        x = f64(xv)
        g1, = tt.autograd.grad(x.sin().sum(), x, create_graph=True)
        g2, = tt.autograd.grad(g1.sum(), x, create_graph=True)
        g3, = tt.autograd.grad(g2.sum(), x)
        np.testing.assert_allclose(g1.detach().numpy(), np.cos(xv))
        np.testing.assert_allclose(g2.detach().numpy(), -np.sin(xv))
        np.testing.assert_allclose(g3.numpy(), -np.cos(xv))

    def test_create_graph_backward_populates_differentiable_grad(self):
        x = f64([1.5])
        (x ** 3).backward(create_graph=True)
        assert x.grad.requires_grad and x.grad.tolist() == [6.75]
        g = x.grad
        x.grad = None
        g.backward()
        assert x.grad.tolist() == [9.0]       # d(3x^2)/dx

    def test_hessian_vector_product_of_mlp(self):
        rng = np.random.default_rng(0)
        X = tt.tensor(rng.standard_normal((5, 3)), dtype=tt.float64)
        Y = tt.tensor(rng.standard_normal((5, 1)), dtype=tt.float64)
        shapes = [(3, 4), (4,), (4, 1)]
        params0 = [rng.standard_normal(s) * 0.7 for s in shapes]
        vecs = [tt.tensor(rng.standard_normal(s), dtype=tt.float64) for s in shapes]

        def loss(w1, b1, w2):
            return (((X @ w1 + b1).tanh() @ w2 - Y) ** 2).mean()

        def gradient(values, create_graph=False):
            ps = [f64(v) for v in values]
            return ps, tt.autograd.grad(loss(*ps), ps, create_graph=create_graph)

        ps, gs = gradient(params0, create_graph=True)
        gv = sum((g * v).sum() for g, v in zip(gs, vecs))
        hv = tt.autograd.grad(gv, ps)

        # first-order gradient vs central differences of the loss
        eps = 1e-6
        b1, w2 = tt.tensor(params0[1]), tt.tensor(params0[2])
        bump = np.zeros(shapes[0])
        bump[1, 2] = eps
        fd = (loss(tt.tensor(params0[0] + bump), b1, w2).item()
              - loss(tt.tensor(params0[0] - bump), b1, w2).item()) / (2 * eps)
        np.testing.assert_allclose(gs[0][1, 2].item(), fd, rtol=1e-6)

        # Hessian-vector product vs central differences of the gradient along v
        eps = 1e-5
        _, g_plus = gradient([v + eps * d.numpy() for v, d in zip(params0, vecs)])
        _, g_minus = gradient([v - eps * d.numpy() for v, d in zip(params0, vecs)])
        for h, gp, gm in zip(hv, g_plus, g_minus):
            np.testing.assert_allclose(h.numpy(), (gp.numpy() - gm.numpy()) / (2 * eps), rtol=1e-5, atol=1e-8)


class TestFirstGradientWithoutCopy:
    """A leaf's first gradient becomes `.grad` without a copy when nothing else holds it (PyTorch's
    AccumulateGrad steals it); every gradient someone else can reach is copied: `.grad` never shares
    memory with a tensor the user holds, and later accumulation never changes one."""

    def test_a_gradient_passed_in_is_copied(self):
        x = f64(np.arange(6.0).reshape(2, 3))
        v = tt.ones(2, 3, dtype=tt.float64)
        x.clone().backward(v)                      # clone's vjp hands v itself to x
        assert not np.shares_memory(x.grad.numpy(), v.numpy())
        x.clone().backward(v)                      # accumulates into x.grad in place
        np.testing.assert_array_equal(v.numpy(), np.ones((2, 3)))
        np.testing.assert_array_equal(x.grad.numpy(), np.full((2, 3), 2.0))

    def test_a_leaf_used_directly_as_the_root_is_copied(self):
        x = f64([1.0, 2.0])
        v = tt.tensor([3.0, 4.0], dtype=tt.float64)
        x.backward(v)
        assert x.grad is not v and not np.shares_memory(x.grad.numpy(), v.numpy())

    def test_a_gradient_a_hook_kept_is_copied(self):
        x = f64(np.linspace(0, 1, 5))
        kept = []
        y = x.clone()
        y.register_hook(lambda g: kept.append(g))
        (y * 1).sum().backward()
        x.register_hook(lambda g: kept.append(g))
        x.clone().sum().backward()
        for g in kept:
            assert not np.shares_memory(x.grad.numpy(), g.numpy())
        np.testing.assert_array_equal([g.numpy() for g in kept[:1]], [np.ones(5)])

    def test_a_retained_gradient_and_a_view_are_not_shared(self):
        x = f64(np.arange(12.0))
        y = x.reshape(3, 4)
        y.retain_grad()
        (y * 2).sum().backward()
        assert not np.shares_memory(x.grad.numpy(), y.grad.numpy())
        np.testing.assert_array_equal(x.grad.numpy(), np.full(12, 2.0))

    def test_fresh_gradients_are_independent_and_accumulate(self):
        a = f64(np.arange(4.0))
        b = f64(np.arange(4.0) + 1)
        (a * b).sum().backward()
        grads = a.grad, b.grad
        assert not np.shares_memory(grads[0].numpy(), grads[1].numpy())
        np.testing.assert_array_equal(a.grad.numpy(), b.detach().numpy())
        (a * b).sum().backward()                   # in place, into each leaf's own array
        np.testing.assert_array_equal(a.grad.numpy(), 2 * b.detach().numpy())
        np.testing.assert_array_equal(b.grad.numpy(), 2 * a.detach().numpy())
        assert a.grad is grads[0]

    def test_a_linear_layers_gradients_are_plain_contiguous_tensors(self):
        rng = np.random.default_rng(0)
        x = tt.tensor(rng.standard_normal((5, 3)))
        w = f64(rng.standard_normal((4, 3)))
        b = f64(rng.standard_normal(4))
        y = tt.nn.functional.linear(x, w, b)      # x @ w.t() + b: w's gradient is (g^T x), b's a reshaped sum
        y.retain_grad()
        (y * y).sum().backward()
        g = 2 * (x.numpy() @ w.detach().numpy().T + b.detach().numpy())
        np.testing.assert_allclose(w.grad.numpy(), g.T @ x.numpy(), rtol=1e-12)
        np.testing.assert_allclose(b.grad.numpy(), g.sum(0), rtol=1e-12)
        for grad in (w.grad, b.grad):
            assert grad._base is None and grad.numpy().flags.c_contiguous and grad.numpy().flags.writeable
            assert not np.shares_memory(grad.numpy(), y.grad.numpy())
        w_before = w.grad.numpy().copy()
        (y.detach() * 0 + tt.nn.functional.linear(x, w, b)).sum().backward()     # accumulates in place
        np.testing.assert_allclose(w.grad.numpy(), w_before + np.ones((5, 4)).T @ x.numpy(), rtol=1e-12)
