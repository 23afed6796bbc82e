"""tt.compile's surface: decorator and function forms, Modules, methods, options, structures."""
from __future__ import annotations

import numpy as np
import pytest

import tracetorch as tt
import tracetorch.nn as nn


def _np(t):
    return t.detach().numpy()


def test_decorator_forms_and_function_form():
    @tt.compile
    def a(x):
        return x * 2

    @tt.compile(backend="interp", cache_size_limit=4)
    def b(x):
        return x + 1

    c = tt.compile(lambda x: x - 1, backend="auto")
    x = tt.arange(4.0)
    for _ in range(2):
        np.testing.assert_array_equal(_np(a(x)), [0, 2, 4, 6])
        np.testing.assert_array_equal(_np(b(x)), [1, 2, 3, 4])
        np.testing.assert_array_equal(_np(c(x)), [-1, 0, 1, 2])
    assert a.stats()["cache_hits"] == b.stats()["cache_hits"] == c.stats()["cache_hits"] == 1
    assert a.__name__ == "a"


def test_bad_options_are_clear_errors():
    with pytest.raises(ValueError, match="backend 'no-such-backend' is not available"):
        tt.compile(lambda x: x, backend="no-such-backend")
    with pytest.raises(ValueError, match="unknown mode"):
        tt.compile(lambda x: x, mode="fast")
    with pytest.raises(ValueError, match="cache_size_limit"):
        tt.compile(lambda x: x, cache_size_limit=0)
    with pytest.raises(TypeError, match="function or a Module"):
        tt.compile(3)


def test_mode_eager_and_env_disable_never_trace(monkeypatch):
    calls = []

    def f(x):
        calls.append(1)
        return x * 3

    eager = tt.compile(f, mode="eager")
    for _ in range(3):
        eager(tt.ones(2))
    assert len(calls) == 3 and eager.stats()["traces"] == 0

    compiled = tt.compile(f)
    monkeypatch.setenv("TRACETORCH_DISABLE", "1")
    for _ in range(3):
        compiled(tt.ones(2))
    assert len(calls) == 6 and compiled.stats()["traces"] == 0
    monkeypatch.delenv("TRACETORCH_DISABLE")
    compiled(tt.ones(2))
    compiled(tt.ones(2))
    assert len(calls) == 7 and compiled.stats()["cache_hits"] == 1     # Python runs only when tracing


def test_compile_module_forwards_attributes_and_modes():
    tt.manual_seed(0)
    model = nn.Sequential(nn.Linear(3, 4), nn.ReLU(), nn.Linear(4, 2))
    cmodel = tt.compile(model)
    x = tt.randn(5, 3)
    for _ in range(2):
        np.testing.assert_array_equal(_np(cmodel(x)), _np(model(x)))
    assert cmodel.stats()["cache_hits"] == 1
    assert list(cmodel.parameters()) == list(model.parameters())
    assert cmodel.eval() is cmodel and not model.training
    assert cmodel.train() is cmodel and model.training
    assert cmodel[0] is model[0] and len(cmodel) == 3
    assert "matmul" in cmodel.graph.text()


def test_a_compiled_module_is_a_module_its_parent_sees():
    """As PyTorch's OptimizedModule: parameters, state (prefixed `_orig_mod.`), train/eval and an
    optimizer's updates reach a compiled submodule, nn.Sequential takes one, and `.to()` keeps it."""
    tt.manual_seed(0)

    class Net(nn.Module):
        def __init__(self):
            super().__init__()
            self.block = tt.compile(nn.Sequential(nn.Linear(3, 3), nn.Dropout(0.5)))
            self.head = nn.Linear(3, 1)

        def forward(self, x):
            return self.head(self.block(x))

    net = Net()
    assert isinstance(net.block, nn.Module) and len(list(net.parameters())) == 4
    assert list(net.state_dict()) == ["block._orig_mod.0.weight", "block._orig_mod.0.bias", "head.weight",
                                      "head.bias"]
    net.eval()
    assert not net.block.training and not net.block[1].training
    x = tt.randn(4, 3)
    np.testing.assert_array_equal(_np(net(x)), _np(net(x)))           # dropout off in eval, compiled too
    net.train()
    opt = tt.optim.SGD(net.parameters(), lr=1.0)
    before = _np(net.block[0].weight).copy()
    net(x).sum().backward()
    opt.step()
    assert not np.array_equal(_np(net.block[0].weight), before)
    seq = nn.Sequential(tt.compile(nn.Linear(2, 2)), nn.ReLU())
    assert len(list(seq.parameters())) == 2
    moved = tt.compile(nn.Linear(2, 2)).double()
    assert isinstance(moved, tt.jit.CompiledModule) and moved.weight.dtype is tt.float64
    moved(tt.ones(1, 2, dtype=tt.float64))
    assert moved.stats()["calls"] == 1


def test_compiled_methods_bind_to_each_instance_by_identity():
    """Two equal instances (a custom __eq__), an unhashable dataclass and a __slots__ class each get
    their own cache, bound to that very instance."""
    import dataclasses

    class Scaled:
        def __init__(self, k):
            self.k = k

        def __eq__(self, other):
            return isinstance(other, Scaled)

        def __hash__(self):
            return 0

        @tt.compile
        def apply(self, x):
            return x * self.k

    @dataclasses.dataclass
    class Trainer:
        k: float

        @tt.compile
        def apply(self, x):
            return x * self.k

    class Slotted:
        __slots__ = ("k",)

        def __init__(self, k):
            self.k = k

        @tt.compile
        def apply(self, x):
            return x * self.k

    x = tt.ones(3)
    for cls in (Scaled, Trainer, Slotted):
        a, b = cls(2.0), cls(3.0)
        for _ in range(2):
            assert a.apply(x).tolist() == [2.0] * 3 and b.apply(x).tolist() == [3.0] * 3, cls


def test_nested_structures_in_arguments_and_results():
    @tt.compile
    def f(batch, *, scale, names=("a",)):
        x, (y, z) = batch["x"], batch["yz"]
        return {"sum": x + y * scale, "parts": [z, None, scale], "n": len(names)}

    def check(k):
        batch = {"x": tt.full((2,), float(k)), "yz": (tt.ones(2), tt.zeros(1))}
        out = f(batch, scale=2.0)
        np.testing.assert_array_equal(_np(out["sum"]), [k + 2, k + 2])
        assert out["parts"][1] is None and out["parts"][2] == 2.0 and out["n"] == 1
        np.testing.assert_array_equal(_np(out["parts"][0]), [0.0])

    for k in range(3):
        check(k)
    assert f.stats()["traces"] == 1 and f.stats()["cache_hits"] == 2


def test_python_constant_arguments_are_guarded():
    @tt.compile
    def f(x, k):
        return x * k

    assert float(f(tt.ones(()), 2)) == 2.0
    assert float(f(tt.ones(()), 3)) == 3.0          # a new trace, not the frozen 2
    assert float(f(tt.ones(()), 2)) == 2.0
    assert f.stats()["traces"] == 2 and f.stats()["cache_hits"] == 1


def test_returning_an_input_returns_that_object():
    @tt.compile
    def f(x, y):
        x.add_(1)
        return x, y * 1

    x = tt.zeros(2)
    for k in range(1, 4):
        a, b = f(x, x)
        assert a is x
        np.testing.assert_array_equal(_np(x), [k, k])


@pytest.mark.parametrize("backend", ["llvm", "interp"])
def test_a_returned_view_of_an_input_is_a_view_on_every_call(backend):
    """`return x[0]`, `x.t()`, `x.detach()[1:]`: writes into the result reach the input, as eagerly."""
    f = tt.compile(lambda x: (x[0], x.t(), x.detach()[1:], x * 2), backend=backend)
    for k in range(3):
        x = tt.arange(6., dtype=tt.float64).reshape(2, 3)
        row, t, rest, doubled = f(x)
        np.testing.assert_array_equal(_np(doubled), np.arange(6.).reshape(2, 3) * 2)
        row.add_(100)
        t[2, 1] = -1.0
        rest[0, 0] = 7.0
        assert _np(x).tolist() == [[100.0, 101.0, 102.0], [7.0, 4.0, -1.0]], k
        assert row._version is x._version and t.shape == (3, 2) and rest.shape == (1, 3)
    assert f.stats()["cache_hits"] == 2


def test_a_returned_view_of_a_leaf_keeps_its_gradient_path():
    f = tt.compile(lambda w: (w[1:], (w * w).sum()))
    for _ in range(3):
        w = tt.tensor([1.0, 2.0, 3.0], dtype=tt.float64, requires_grad=True)
        view, s = f(w)
        (view.sum() + s).backward()
        np.testing.assert_allclose(_np(w.grad), [2.0, 5.0, 7.0])
        assert view.grad_fn is not None


@pytest.mark.parametrize("backend", ["llvm", "interp"])
def test_results_that_alias_each_other_alias_on_every_call(backend):
    """A tensor returned twice is one object, and a returned view of another result is a view of it."""
    def f(x):
        y = x * 2
        return y, y, y[0], y.view(-1)
    c = tt.compile(f, backend=backend)
    for _ in range(3):
        a, b, row, flat = c(tt.ones(2, 3))
        a.add_(10)
        assert a is b and row.tolist() == [12.0] * 3 and flat.tolist() == [12.0] * 6
        assert row._version is a._version is flat._version


def test_a_view_of_a_differentiable_result_carries_its_gradient():
    w = tt.tensor([1.0, 2.0, 3.0], dtype=tt.float64, requires_grad=True)
    c = tt.compile(lambda w: (lambda y: (y, y[1:]))(w * w))
    for _ in range(3):
        w.grad = None
        y, tail = c(w)
        assert tail.requires_grad and tail.grad_fn is not None
        tail.sum().backward()
        np.testing.assert_allclose(_np(w.grad), [0.0, 4.0, 6.0])


def test_nested_compiled_functions_are_inlined():
    inner = tt.compile(lambda x: x.exp())

    @tt.compile
    def outer(x):
        return inner(x) + 1

    x = tt.zeros(3)
    for _ in range(3):
        np.testing.assert_array_equal(_np(outer(x)), [2, 2, 2])
    assert outer.stats()["cache_hits"] == 2 and inner.stats()["calls"] == 0


def test_compiler_reset_forgets_every_trace():
    f = tt.compile(lambda x: x + 1)
    f(tt.ones(1))
    f(tt.ones(1))
    assert f.stats()["cache_entries"] == 1
    tt.compiler.reset()
    assert f.stats()["cache_entries"] == 0 and f.stats()["traces"] == 0
    f(tt.ones(1))
    assert f.stats()["traces"] == 1


class Affine(nn.Module):
    def __init__(self, scale):
        super().__init__()
        self.scale = nn.Parameter(tt.tensor(float(scale)))

    @tt.compile
    def forward(self, x):
        return x * self.scale


def test_compiled_forward_of_a_module_class_has_one_cache_per_instance():
    a, b = Affine(2), Affine(3)
    x = tt.ones(2)
    for _ in range(2):
        assert _np(a(x)).tolist() == [2, 2] and _np(b(x)).tolist() == [3, 3]
    assert a.forward.stats()["cache_hits"] == 1 and b.forward.stats()["cache_hits"] == 1
    with tt.no_grad():
        a.scale.fill_(5.0)
    assert _np(a(x)).tolist() == [5, 5]
