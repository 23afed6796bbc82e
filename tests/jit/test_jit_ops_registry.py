"""Registry-driven: every primitive op, compiled, equals eager: forward, and gradients both inside
the compiled region (`autograd.grad` -> the autodiff pass) and across its boundary (the joint
graph split into forward and backward programs). float64 to 1e-12 relative.

The compiled function is traced on different values than it is run on, so a baked-in input would
show up as a mismatch."""
from __future__ import annotations

import numpy as np
import pytest

import tracetorch as tt
from op_samples import PUBLIC_SAMPLES, SAMPLES, op_samples, public_samples
from tracetorch.ops import REGISTRY

ALL_OPS = sorted(REGISTRY)
DIFFERENTIABLE = sorted(n for n, op in REGISTRY.items() if op.differentiable)
PUBLIC = sorted(PUBLIC_SAMPLES)
PUBLIC_DIFFERENTIABLE = sorted(n for n, info in PUBLIC_SAMPLES.items() if info.differentiable)
RTOL, ATOL = 1e-12, 1e-13


def _dtype(name, table=SAMPLES):
    dts = table[name].dtypes
    return tt.float64 if tt.float64 in dts else dts[0]


def _samples(name, dtype, rng):
    """Primitive samples for a registry name, else the public composite's (prefixed 'public:')."""
    if name.startswith("public:"):
        return public_samples(name[7:], dtype, rng)
    return op_samples(name, dtype, rng)


def _perturbed(sample):
    """The sample's inputs with floats scaled: same shapes and dtypes, different values."""
    out = []
    for v in sample.tensors():
        if isinstance(v, tt.Tensor) and v.is_floating_point():
            v = v * 0.75
        out.append(v)
    return out


def _assert_same(compiled, eager, what):
    compiled = compiled if isinstance(compiled, (tuple, list)) else (compiled,)
    eager = eager if isinstance(eager, (tuple, list)) else (eager,)
    assert len(compiled) == len(eager), what
    for c, e in zip(compiled, eager):
        if e is None:
            assert c is None, what
            continue
        assert c.shape == e.shape and c.dtype is e.dtype, f"{what}: {c.shape} {c.dtype} vs {e.shape} {e.dtype}"
        a, b = c.detach().numpy(), e.detach().numpy()
        if e.is_floating_point():
            np.testing.assert_allclose(a, b, rtol=RTOL, atol=ATOL, equal_nan=True, err_msg=what)
        else:
            np.testing.assert_array_equal(a, b, err_msg=what)


@pytest.mark.parametrize("name", ALL_OPS + [f"public:{n}" for n in PUBLIC])
def test_forward_compiled_equals_eager(name, rng):
    dtype = _dtype(name[7:], PUBLIC_SAMPLES) if name.startswith("public:") else _dtype(name)
    for s in _samples(name, dtype, rng):
        f = tt.compile(lambda *xs, s=s: s.fn(*xs, **s.attrs))
        f(*_perturbed(s))                            # traces (runs eagerly)
        _assert_same(f(*s.tensors()), s.run(), f"{name} {s.desc}")
        assert f.stats()["cache_hits"] == 1, f"{name} {s.desc}: the second call did not run the program"


def _grad_samples(name, rng):
    return [s for s in _samples(name, tt.float64, rng) if s.grad and s.grad_indices() and _differentiable(s)]


def _differentiable(sample) -> bool:
    """Whether some output depends differentiably on the inputs (norm(p=0) does not)."""
    args = sample.tensors()
    for i in sample.grad_indices():
        args[i] = args[i].detach().requires_grad_(True)
    out = sample.fn(*args, **sample.attrs)
    return any(o.requires_grad for o in (out if isinstance(out, tuple) else (out,)))


def _weights(sample, rng):
    out = sample.fn(*sample.tensors(), **sample.attrs)
    outs = out if isinstance(out, tuple) else (out,)
    return [tt.tensor(rng.uniform(-1, 1, tuple(o.shape)), dtype=o.dtype) for o in outs]


def _loss(sample, args, weights):
    out = sample.fn(*args, **sample.attrs)
    outs = out if isinstance(out, tuple) else (out,)
    return sum((o * w).sum() for o, w in zip(outs, weights))


GRAD_NAMES = DIFFERENTIABLE + [f"public:{n}" for n in PUBLIC_DIFFERENTIABLE]


@pytest.mark.parametrize("name", GRAD_NAMES)
def test_gradient_inside_compiled_region(name, rng):
    for s in _grad_samples(name, rng):
        idx = s.grad_indices()
        weights = _weights(s, rng)

        def grads(*args, s=s, idx=idx):
            args = list(args)
            leaves = []
            for i in idx:
                args[i] = args[i].detach().requires_grad_(True)
                leaves.append(args[i])
            loss = _loss(s, args, weights)
            return tt.autograd.grad(loss, leaves, allow_unused=True, materialize_grads=True)

        f = tt.compile(grads)
        f(*_perturbed(s))
        _assert_same(f(*s.tensors()), grads(*s.tensors()), f"{name} {s.desc}")
        assert f.stats()["cache_hits"] == 1


@pytest.mark.parametrize("name", GRAD_NAMES)
def test_gradient_across_compiled_boundary(name, rng):
    for s in _grad_samples(name, rng):
        idx = s.grad_indices()
        weights = _weights(s, rng)
        f = tt.compile(lambda *xs, s=s: s.fn(*xs, **s.attrs))

        def run(fn, values):
            args = list(values)
            for i in idx:
                args[i] = args[i].detach().requires_grad_(True)
            out = fn(*args)
            outs = out if isinstance(out, tuple) else (out,)
            sum((o * w).sum() for o, w in zip(outs, weights)).backward()
            return [args[i].grad for i in idx]

        run(f, _perturbed(s))
        _assert_same(run(f, s.tensors()), run(lambda *a: s.fn(*a, **s.attrs), s.tensors()), f"{name} {s.desc}")
        assert f.stats()["cache_hits"] == 1


@pytest.mark.parametrize("backend", ["interp", "llvm"])
def test_float16_scans_and_reductions_accumulate_in_float32_as_eager(backend):
    # eager computes a float16 op in float32 and rounds once (PyTorch's opmath); an op the compiled
    # program runs through the registry's numpy kernel must too, or a long cumsum drifts
    x = tt.tensor(np.random.default_rng(0).standard_normal((4, 500)).astype(np.float16))
    for fn in (lambda x: tt.cumsum(x, 1), lambda x: x.sum(1)):
        f = tt.compile(fn, backend=backend)
        f(x)
        np.testing.assert_array_equal(f(x).numpy(), fn(x).numpy())
