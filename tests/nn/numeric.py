"""Helpers shared by the nn tests: tensors from numpy and gradient checks by finite differences."""
from __future__ import annotations

import numpy as np

import tracetorch as tt


def leaf(a: np.ndarray) -> tt.Tensor:
    """A float64 leaf tensor that requires grad."""
    return tt.tensor(np.asarray(a, dtype=np.float64), requires_grad=True)


def numeric_grads(f, arrays: list[np.ndarray], eps: float = 1e-6) -> list[np.ndarray]:
    """Central differences of the scalar f(*arrays) with respect to each array."""
    grads = []
    for a in arrays:
        g = np.zeros_like(a)
        for i in np.ndindex(a.shape):
            old = a[i]
            a[i] = old + eps
            hi = f(*arrays)
            a[i] = old - eps
            lo = f(*arrays)
            a[i] = old
            g[i] = (hi - lo) / (2 * eps)
        grads.append(g)
    return grads


def check_grads(fn, *arrays, atol: float = 1e-6, rtol: float = 1e-5, seed: int = 0) -> None:
    """Compare autograd's gradient of sum(fn(*x) * w), w random, with finite differences (float64)."""
    arrays = [np.array(a, dtype=np.float64) for a in arrays]
    out_shape = tuple(fn(*[tt.tensor(a) for a in arrays]).shape)
    weights = np.random.default_rng(seed).standard_normal(out_shape)

    def scalar(*xs):
        return float((fn(*[tt.tensor(x) for x in xs]).numpy() * weights).sum())

    leaves = [leaf(a) for a in arrays]
    (fn(*leaves) * tt.tensor(weights)).sum().backward()
    for got, want in zip([t.grad.numpy() for t in leaves], numeric_grads(scalar, arrays)):
        np.testing.assert_allclose(got, want, atol=atol, rtol=rtol)
