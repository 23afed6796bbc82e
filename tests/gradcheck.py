"""Finite-difference checks of tracetorch autograd, first and second order.

The outputs of `fn` are projected to one scalar with fixed random cotangents
`w` (L = sum_k <out_k, w_k>), so a single VJP per input is compared with
central differences of L in every input element, in float64.
"""
from __future__ import annotations

from typing import Callable, Sequence

import numpy as np

import tracetorch as tt


def gradcheck(fn: Callable, inputs: Sequence[np.ndarray], *, eps: float = 1e-6, rtol: float = 1e-5,
              atol: float = 1e-6, seed: int = 0, name: str = "") -> None:
    """Assert that tt.autograd.grad of `fn` at `inputs` matches central differences."""
    inputs = [np.array(a, dtype=np.float64) for a in inputs]
    ws = _cotangents(fn, inputs, seed)
    analytic = [g.detach().numpy() for g in vjp(fn, [_leaf(a) for a in inputs], ws)]
    for i, a in enumerate(inputs):
        numeric = np.zeros_like(a)
        for j in range(a.size):
            numeric.flat[j] = (_projected(fn, _nudged(inputs, i, j, eps), ws) -
                               _projected(fn, _nudged(inputs, i, j, -eps), ws)) / (2 * eps)
        np.testing.assert_allclose(analytic[i], numeric, rtol=rtol, atol=atol,
                                   err_msg=f"{name}: gradient of input {i} (shape {a.shape})")


def gradgradcheck(fn: Callable, inputs: Sequence[np.ndarray], *, seed: int = 0, name: str = "", **tol) -> None:
    """Assert that the gradient of `fn` (built with create_graph=True) itself has correct gradients."""
    inputs = [np.array(a, dtype=np.float64) for a in inputs]
    ws = _cotangents(fn, inputs, seed)

    def first_derivative(*xs):
        return vjp(fn, xs, ws, create_graph=True)
    gradcheck(first_derivative, inputs, seed=seed + 1, name=f"{name} (second order)", **tol)


def vjp(fn: Callable, xs: Sequence, ws: Sequence[np.ndarray], create_graph: bool = False) -> list:
    """d<fn(xs), ws>/dxs as tensors; inputs the outputs do not depend on get zeros."""
    outs = float_outputs(fn(*xs))
    pairs = [(o, w) for o, w in zip(outs, ws) if o.requires_grad]
    if not pairs:
        return [tt.zeros_like(x) for x in xs]
    grads = tt.autograd.grad([o for o, _ in pairs], list(xs), grad_outputs=[tt.tensor(w, dtype=o.dtype)
                                                                         for o, w in pairs],
                             create_graph=create_graph, allow_unused=True)
    return [g if g is not None else tt.zeros_like(x) for g, x in zip(grads, xs)]


def float_outputs(out) -> list:
    """The floating-point tensors among `out` (a tensor or a tuple of them): what has a gradient."""
    outs = list(out) if isinstance(out, (tuple, list)) else [out]
    return [o for o in outs if isinstance(o, tt.Tensor) and o.dtype.is_floating_point]


def _cotangents(fn, inputs, seed):
    outs = float_outputs(fn(*[_leaf(a) for a in inputs]))
    if not outs:
        raise AssertionError("gradcheck: the function has no floating-point output")
    rng = np.random.default_rng(seed)
    return [rng.standard_normal(tuple(o.shape)) for o in outs]


def _leaf(a: np.ndarray):
    return tt.tensor(a, dtype=tt.float64, requires_grad=True)


def _nudged(inputs, i, j, delta):
    out = list(inputs)
    out[i] = inputs[i].copy()
    out[i].flat[j] += delta
    return out


def _projected(fn, arrays, ws) -> float:
    outs = float_outputs(fn(*[_leaf(a) for a in arrays]))
    return float(sum(np.sum(o.detach().numpy().astype(np.float64) * w) for o, w in zip(outs, ws)))
