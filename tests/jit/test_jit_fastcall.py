"""The per-call path of a cached program: generated guard checks, skipped stages, counters.

A cached call checks its guards with one generated function (`guards.compile_guards`), counts
itself after it ran, and skips the stages its program has nothing for. These tests hold it to
the general path: the same guard outcomes as checking each guard, the same results and stats.
"""
from __future__ import annotations

import os

import numpy as np
import pytest

import tracetorch as tt
import tracetorch.jit.backends
import tracetorch.nn as nn
from tracetorch.jit.capture import Call
from tracetorch.jit.guards import compile_guards, first_failure

BACKENDS = sorted(tracetorch.jit.backends.BACKENDS)
needs_llvm = pytest.mark.skipif("llvm" not in BACKENDS, reason="the LLVM backend is not registered")

SCALE = 2.0                     # a global the step reads: a constant guard
BUFFER = tt.ones(2)             # a global tensor the step reads: a binding guard and a captured input


def _training_step():
    tt.manual_seed(0)
    model = nn.Sequential(nn.Linear(3, 4), nn.ReLU(), nn.Linear(4, 2))
    opt = tt.optim.SGD(model.parameters(), lr=0.1, momentum=0.9)

    def step(x, y, z):
        loss = (((model(x) - y) ** 2).mean() + (z * BUFFER).sum()) * SCALE
        loss.backward()                 # accumulates into each .grad: the grads are inputs too
        opt.step()
        return loss

    return model, opt, step


def _assert_compiled_guards_agree(program, call):
    for g in program.guards:            # up to the first failing one (the ones after may not apply)
        holds = g.check(call)
        assert (compile_guards([g])(call) is not None) == holds, g.describe()
        if not holds:
            break
    fits = first_failure(program.guards, call) is None
    inputs = program.inputs_if_fits(call)
    assert (inputs is not None) == fits
    if fits:
        assert all(a is b for a, b in zip(inputs, program.read_inputs(call), strict=True))
    return fits


def test_generated_guard_checks_agree_with_each_guard_as_state_changes():
    model, opt, step = _training_step()
    f = tt.compile(step, backend="interp")
    x, y, z = tt.randn(5, 3), tt.randn(5, 2), tt.randn(2)
    for _ in range(3):                  # the first trace creates the momentum buffers (not cached)
        f(x, y, z)
    (program,) = f.programs
    kinds = {type(g).__name__ for g in program.guards}
    assert kinds >= {"SpecGuard", "GlobalGuard", "ConstantGuard", "BindingGuard", "ObjectGuard", "TensorGuard"}, kinds
    variants = [
        ("as traced", (x, y, z), True),
        ("another shape", (tt.randn(6, 3), tt.randn(6, 2), z), False),
        ("another dtype", (x.double(), y, z), False),
        ("requires_grad", (x, y, z.detach().requires_grad_()), False),
        ("a Python number", (x, y, 1.5), False),
    ]
    for name, args, fits in variants:
        assert _assert_compiled_guards_agree(program, Call.of(args, {})) == fits, name
    call = Call.of((x, y, z), {})
    set_global = globals().__setitem__
    weight, grad, state, dtype, buffer = (model[0].weight, model[2].bias.grad, dict(opt.state),
                                          tt.get_default_dtype(), BUFFER)
    changes = [         # (what, change, undo): each alone makes a guard fail
        ("eval mode", model.eval, model.train),
        ("a new parameter", lambda: setattr(model[0], "weight", nn.Parameter(tt.randn(4, 3))),
         lambda: setattr(model[0], "weight", weight)),
        ("a .grad gone", lambda: setattr(model[2].bias, "grad", None), lambda: setattr(model[2].bias, "grad", grad)),
        ("optimizer state dropped", opt.state.clear, lambda: opt.state.update(state)),
        ("a global constant", lambda: set_global("SCALE", 3.0), lambda: set_global("SCALE", 2.0)),
        ("a global tensor rebound", lambda: set_global("BUFFER", tt.ones(2)), lambda: set_global("BUFFER", buffer)),
        ("default dtype", lambda: tt.set_default_dtype(tt.float64), lambda: tt.set_default_dtype(dtype)),
    ]
    for name, change, undo in changes:
        change()
        assert not _assert_compiled_guards_agree(program, call), name
        undo()
        assert _assert_compiled_guards_agree(program, call), name
    with tt.no_grad():
        assert not _assert_compiled_guards_agree(program, call)


def test_generated_guard_checks_agree_for_a_tensor_passed_twice_a_grad_and_a_freed_capture():
    captured = [tt.ones(3)]
    w = tt.ones(3, requires_grad=True)

    @tt.compile(backend="interp")
    def f(a, b):
        return a * b + captured[0] + (0 if w.grad is None else w.grad)

    x = tt.randn(3)
    f(x, x)
    (program,) = f.programs
    kinds = {type(g).__name__ for g in program.guards}
    assert {"SameObjectGuard", "GradGuard"} <= kinds, kinds
    assert _assert_compiled_guards_agree(program, Call.of((x, x), {}))
    assert not _assert_compiled_guards_agree(program, Call.of((x, x.clone()), {}))
    w.grad = tt.ones(3)
    assert not _assert_compiled_guards_agree(program, Call.of((x, x), {}))
    w.grad = None
    captured[0] = tt.zeros(3)           # the captured tensor is freed: its guard fails
    assert not _assert_compiled_guards_agree(program, Call.of((x, x), {}))
    np.testing.assert_allclose(f(x, x).numpy(), (x * x).numpy())        # and it retraces


@pytest.mark.parametrize("backend", BACKENDS)
def test_a_guard_failure_after_many_cached_calls_retraces_and_counts(backend):
    calls = []

    @tt.compile(backend=backend)
    def f(x):
        calls.append(1)
        return (x * 3).sum(0)

    a, b = tt.randn(4, 2), tt.randn(5, 2)
    for _ in range(50):
        f(a)
    np.testing.assert_allclose(f(b).numpy(), (b.numpy() * 3).sum(0), rtol=1e-6)
    for _ in range(3):
        np.testing.assert_allclose(f(a).numpy(), (a.numpy() * 3).sum(0), rtol=1e-6)
        f(b)
    s = f.stats()
    assert len(calls) == 2 and s["traces"] == 2 and s["calls"] == 57 and s["cache_hits"] == 55, s
    assert list(s["guard_failures"]) == ["shape/dtype/requires_grad of x"], s
    assert [p.inputs_if_fits(Call.of((b,), {})) is not None for p in f.programs] == [True, False]   # MRU first


def test_disabling_at_run_time_after_cached_calls(monkeypatch):
    calls = []

    @tt.compile
    def f(x):
        calls.append(1)
        return x + 1

    for _ in range(5):
        f(tt.ones(2))
    monkeypatch.setenv("TRACETORCH_DISABLE", "1")
    f(tt.ones(2))
    assert len(calls) == 2                                  # ran eagerly
    monkeypatch.setenv("TRACETORCH_DISABLE", "0")
    f(tt.ones(2))
    assert len(calls) == 2
    monkeypatch.setattr(os, "environ", dict(os.environ, TRACETORCH_DISABLE="1"))    # os.environ replaced
    f(tt.ones(2))
    assert len(calls) == 3
    assert f.stats()["calls"] == 6 and f.stats()["cache_hits"] == 5


@pytest.mark.parametrize("backend", BACKENDS)
def test_a_cached_run_that_raises_counts_the_call_not_a_hit(backend):
    @tt.compile(backend=backend)
    def f(x, idx):
        return x[idx] * 2

    x = tt.arange(4.0)
    f(x, tt.tensor([0, 1]))
    f(x, tt.tensor([2, 3]))
    with pytest.raises(IndexError):
        f(x, tt.tensor([1, 9]))
    np.testing.assert_array_equal(f(x, tt.tensor([3, 0])).numpy(), [6.0, 0.0])
    s = f.stats()
    assert s["calls"] == 4 and s["cache_hits"] == 2 and s["traces"] == 1, s


@pytest.mark.parametrize("backend", BACKENDS)
def test_results_of_one_value_are_separate_tensors(backend):
    @tt.compile(backend=backend)
    def f(x):
        y = x * 2
        return y, y * 1, x

    x = tt.arange(3.0)
    for _ in range(3):
        a, b, c = f(x)
    assert c is x
    a.add_(100)
    np.testing.assert_array_equal(b.numpy(), [0.0, 2.0, 4.0])
    np.testing.assert_array_equal(x.numpy(), [0.0, 1.0, 2.0])


@needs_llvm
def test_llvm_results_are_owned_unless_one_is_an_input():
    def owned(fn, *args):
        f = tt.compile(fn, backend="llvm")
        f(*args)
        return f.programs[0].executable.results_owned

    buf = tt.zeros(3)

    def write_back_an_input(x):
        buf.copy_(x)
        return x * 2

    assert owned(lambda x: (x * 2, x + 1), tt.ones(3))
    assert not owned(write_back_an_input, tt.ones(3))       # buf's new value is the input x
    x = tt.arange(3.0)
    tt.compile(write_back_an_input, backend="llvm")(x)
    x.add_(1)
    np.testing.assert_array_equal(buf.numpy(), [0.0, 1.0, 2.0])


@needs_llvm
def test_an_engine_without_fresh_outputs_gets_its_results_checked():
    from tracetorch.jit.llvm_backend import _caller

    class SharedOutputs:
        """Returns views of one buffer, and does not claim fresh outputs."""

        def __call__(self, *inputs):
            return tuple(np.zeros((2, 3))[:, :])

    @tt.compile(backend="llvm")
    def f(x):
        return x * 2, x * 3

    f(tt.ones(2))
    lowered = f.programs[0].executable.lowered
    call, results_owned = _caller(SharedOutputs(), lowered, 1)
    assert results_owned is False and isinstance(call([np.ones(2)]), list)
