"""Reductions over a tuple of dims (sum, amax, amin, prod), arg-reductions and cumsum.

`dims` is always a sorted tuple of non-negative dims; the composite layer
normalizes what users pass. `lowering` is (combine, identity).
"""
from __future__ import annotations

import numpy as np

from ..dtypes import bool_, int64
from .dispatch import apply
from .registry import REDUCE, SCAN, Aval, register

import tracetorch as tt


def _reduced_shape(shape, dims, keepdim):
    if keepdim:
        return tuple(1 if i in dims else s for i, s in enumerate(shape))
    return tuple(s for i, s in enumerate(shape) if i not in dims)


def _check_dims(shape, dims):
    for d in dims:
        if not 0 <= d < max(len(shape), 1):
            raise IndexError(f"Dimension out of range (expected to be in range of "
                             f"[{-max(len(shape), 1)}, {max(len(shape), 1) - 1}], but got {d})")


def _infer_reduce(x, dims, keepdim):
    _check_dims(x.shape, dims)
    dt = int64 if x.dtype.category < 2 else x.dtype
    return Aval(_reduced_shape(x.shape, dims, keepdim), dt)


def _infer_minmax(x, dims, keepdim):
    _check_dims(x.shape, dims)
    for d in dims:
        if x.shape[d] == 0:
            raise IndexError(f"max/min over an empty dimension {d} of shape {tuple(x.shape)}: "
                             "the operation has no identity")
    return Aval(_reduced_shape(x.shape, dims, keepdim), x.dtype)


def _expand_back(g, node, keepdim_shape):
    """Reshape a reduced gradient to keepdim form and broadcast it to the input's shape."""
    return g.reshape(keepdim_shape).expand(node.shape(0))


def _keep_shape(node):
    dims, shape = node.attrs["dims"], node.shape(0)
    return tuple(1 if i in dims else s for i, s in enumerate(shape))


def _sum_vjp(n, g):
    return (_expand_back(g, n, _keep_shape(n)),)


def _minmax_vjp(n, g):
    ks = _keep_shape(n)
    x = n.x(0)
    out = n.out.reshape(ks)
    mask = (x == out).to(g.dtype)
    count = mask.sum(dim=n.attrs["dims"], keepdim=True) if n.attrs["dims"] else mask
    return (mask * (g.reshape(ks) / count),)


def _prod_vjp(n, g):
    """g times the product of the others, as PyTorch: out / x in a slice without zeros; where the slice
    has zeros, written so that no 0/0 arises and the second derivative stays exact (a zero's product of
    the others holds the other zero when there are two; with three or more every gradient is 0)."""
    dims, x = n.attrs["dims"], n.x(0)
    zero = x == 0
    zeros = apply(SUM, zero, dims=dims, keepdim=True)
    nonzero = tt.where(zero, 1, x)
    rest = apply(PROD, nonzero, dims=dims, keepdim=True)
    zprod = apply(PROD, tt.where(zero, x, 1), dims=dims, keepdim=True)     # 1 without zeros
    zsum = apply(SUM, tt.where(zero, x, 0), dims=dims, keepdim=True)
    other_zeros = tt.where(zeros == 1, 1, tt.where(zeros == 2, zsum - x, 0))
    scale = tt.where(zero, rest * other_zeros, rest * zprod / nonzero)
    return (g.reshape(_keep_shape(n)) * scale,)


def _sum(x, dims, keepdim):
    if x.dtype.kind in "biu":
        return np.sum(x, axis=dims, keepdims=keepdim, dtype=np.int64)
    return np.sum(x, axis=dims, keepdims=keepdim)


def _prod(x, dims, keepdim):
    if x.dtype.kind in "biu":
        return np.prod(x, axis=dims, keepdims=keepdim, dtype=np.int64)
    return np.prod(x, axis=dims, keepdims=keepdim)


SUM = register("sum", REDUCE, eager=_sum, infer=_infer_reduce, vjp=_sum_vjp, lowering=("add", 0))
PROD = register("prod", REDUCE, eager=_prod, infer=_infer_reduce, vjp=_prod_vjp, saves=(0,),
                lowering=("mul", 1))
AMAX = register("amax", REDUCE, eager=lambda x, dims, keepdim: np.max(x, axis=dims, keepdims=keepdim),
                infer=_infer_minmax, vjp=_minmax_vjp, saves=(0, "out"), lowering=("max", "-inf"),
                doc="ties share the gradient evenly, like torch.amax")
AMIN = register("amin", REDUCE, eager=lambda x, dims, keepdim: np.min(x, axis=dims, keepdims=keepdim),
                infer=_infer_minmax, vjp=_minmax_vjp, saves=(0, "out"), lowering=("min", "inf"))


def _infer_arg(x, dim, keepdim):
    if dim is None:
        if any(s == 0 for s in x.shape):
            raise IndexError("argmax/argmin of an empty tensor")
        return Aval((1,) * len(x.shape) if keepdim else (), int64)
    _check_dims(x.shape, (dim,))
    if x.shape and x.shape[dim] == 0:
        raise IndexError(f"Expected reduction dim {dim} to have non-zero size")
    return Aval(_reduced_shape(x.shape, (dim,), keepdim), int64)


def _arg(fn):
    def kernel(x, dim, keepdim):
        if x.dtype == np.bool_:
            x = x.astype(np.uint8)
        if dim is None:
            r = fn(x.reshape(-1))
            return np.asarray(r, dtype=np.int64).reshape((1,) * x.ndim if keepdim else ())
        if x.ndim == 0:
            return np.zeros((), np.int64)
        return fn(x, axis=dim, keepdims=keepdim).astype(np.int64)
    return kernel


ARGMAX = register("argmax", REDUCE, eager=_arg(np.argmax), infer=_infer_arg, lowering=("argmax", None),
                  doc="first index of the maximum")
ARGMIN = register("argmin", REDUCE, eager=_arg(np.argmin), infer=_infer_arg, lowering=("argmin", None))


def _infer_cumsum(x, dim):
    _check_dims(x.shape, (dim,))
    dt = int64 if x.dtype.category < 2 else x.dtype
    return Aval(tuple(x.shape), dt)


def _cumsum(x, dim):
    if x.ndim == 0:
        return x.astype(np.int64) if x.dtype.kind in "biu" else x.copy()
    if x.dtype.kind in "biu":
        return np.cumsum(x, axis=dim, dtype=np.int64)
    return np.cumsum(x, axis=dim)


def _cumsum_vjp(n, g):
    d = n.attrs["dim"]
    if g.dim() == 0:
        return (g,)
    return (g.sum(dim=d, keepdim=True) - g.cumsum(d) + g,)


CUMSUM = register("cumsum", SCAN, eager=_cumsum, infer=_infer_cumsum, vjp=_cumsum_vjp, lowering=("add", 0))

__all__ = ["SUM", "PROD", "AMAX", "AMIN", "ARGMAX", "ARGMIN", "CUMSUM", "bool_"]
