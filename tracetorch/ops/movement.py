"""Movement primitives: pure index maps (reshape, permute, expand, slice) and the
ops that write regions (slice_scatter, cat).

Eagerly, reshape/permute/expand/slice return numpy views, so tensors share
storage exactly as PyTorch views do; in the compiler they cost nothing (an
index map folded into the consumer's loads).
"""
from __future__ import annotations

import math

import numpy as np

from .dispatch import apply
from .registry import MOVEMENT, Aval, register

import tracetorch as tt


# ---------------------------------------------------------------- reshape
def _infer_reshape(x, shape):
    if math.prod(x.shape) != math.prod(shape):
        raise RuntimeError(f"shape '{list(shape)}' is invalid for input of size {math.prod(x.shape)}")
    return Aval(tuple(shape), x.dtype)


RESHAPE = register("reshape", MOVEMENT, eager=lambda x, shape: x.reshape(shape), infer=_infer_reshape,
                   vjp=lambda n, g: (g.reshape(n.shape(0)),), lowering="reshape", view=True,
                   doc="a view when the strides allow it, else a copy (like torch.reshape)")


# ---------------------------------------------------------------- permute
def _infer_permute(x, dims):
    if sorted(dims) != list(range(len(x.shape))):
        raise RuntimeError(f"permute(sparse_coo): number of dims don't match in permute: "
                           f"got dims {list(dims)} for a tensor of {len(x.shape)} dims")
    return Aval(tuple(x.shape[d] for d in dims), x.dtype)


def _permute_vjp(n, g):
    inv = [0] * len(n.attrs["dims"])
    for i, d in enumerate(n.attrs["dims"]):
        inv[d] = i
    return (g.permute(*inv),)


PERMUTE = register("permute", MOVEMENT, eager=lambda x, dims: np.transpose(x, dims), infer=_infer_permute,
                   vjp=_permute_vjp, lowering="permute", view=True)


# ---------------------------------------------------------------- expand
def _infer_expand(x, shape):
    if len(shape) < len(x.shape):
        raise RuntimeError(f"expand: the number of sizes provided ({len(shape)}) must be greater or equal "
                           f"to the number of dimensions in the tensor ({len(x.shape)})")
    for have, want in zip(reversed(x.shape), reversed(shape)):
        if have != want and have != 1:
            raise RuntimeError(f"The expanded size of the tensor ({want}) must match the existing size "
                               f"({have}) at non-singleton dimension; target sizes: {list(shape)}, "
                               f"tensor sizes: {list(x.shape)}")
    return Aval(tuple(shape), x.dtype)


EXPAND = register("expand", MOVEMENT, eager=lambda x, shape: np.broadcast_to(x, shape), infer=_infer_expand,
                  vjp=lambda n, g: (tt.sum_to_shape(g, n.shape(0)),), lowering="expand", view=True,
                  doc="read-only view with stride 0 along broadcast dims")


# ---------------------------------------------------------------- slice
def _slice_len(size, start, stop, step):
    return max(0, (min(stop, size) - start + step - 1) // step) if stop > start else 0


def _infer_slice(x, starts, stops, steps):
    if not (len(starts) == len(stops) == len(steps) == len(x.shape)):
        raise RuntimeError("slice: one (start, stop, step) per dimension is required")
    shape = []
    for size, a, b, c in zip(x.shape, starts, stops, steps):
        if c <= 0:
            raise ValueError("slice step must be positive")
        if not (0 <= a <= size and a <= b <= size):
            raise IndexError(f"slice [{a}:{b}:{c}] out of range for a dimension of size {size}")
        shape.append(_slice_len(size, a, b, c))
    return Aval(tuple(shape), x.dtype)


def _slice_key(starts, stops, steps):
    return tuple(slice(a, b, c) for a, b, c in zip(starts, stops, steps))


def _slice_vjp(n, g):
    return (apply(SLICE_SCATTER, tt.zeros(n.shape(0), dtype=g.dtype, device=g.device), g, **n.attrs),)


SLICE = register("slice", MOVEMENT, eager=lambda x, starts, stops, steps: x[_slice_key(starts, stops, steps)],
                 infer=_infer_slice, vjp=_slice_vjp, lowering="slice", view=True,
                 doc="basic strided slice, one (start, stop, step) per dim, already clamped")


def _slice_scatter(base, src, starts, stops, steps):
    out = np.array(base, copy=True)
    out[_slice_key(starts, stops, steps)] = src
    return out


def _infer_slice_scatter(base, src, starts, stops, steps):
    region = _infer_slice(base, starts, stops, steps)
    src_shape = src.shape if isinstance(src, Aval) else ()
    np.broadcast_shapes(src_shape, region.shape)
    return Aval(tuple(base.shape), base.dtype)


def _slice_scatter_vjp(n, g):
    gb = apply(SLICE_SCATTER, g, tt.zeros((), dtype=g.dtype), **n.attrs) if n.edges[0] is not None else None
    gs = tt.sum_to_shape(apply(SLICE, g, **n.attrs), n.shape(1)) if n.edges[1] is not None else None
    return gb, gs


SLICE_SCATTER = register("slice_scatter", MOVEMENT, eager=_slice_scatter, infer=_infer_slice_scatter,
                         vjp=_slice_scatter_vjp, lowering="slice_scatter",
                         doc="base with a strided region replaced by src (broadcast): "
                             "the functional form of writing through a slice view, and of pad")


# ---------------------------------------------------------------- cat
def _infer_cat(*xs, dim):
    first = xs[0]
    if not 0 <= dim < len(first.shape):
        raise IndexError(f"cat: dim {dim} out of range for tensors of {len(first.shape)} dims")
    total = 0
    for x in xs:
        if len(x.shape) != len(first.shape) or any(
                a != b for i, (a, b) in enumerate(zip(x.shape, first.shape)) if i != dim):
            raise RuntimeError(f"Sizes of tensors must match except in dimension {dim}. Got shapes "
                               f"{[list(t.shape) for t in xs]}")
        if x.dtype is not first.dtype:
            raise TypeError("cat: tensors must have one dtype (the composite promotes them)")
        total += x.shape[dim]
    shape = list(first.shape)
    shape[dim] = total
    return Aval(tuple(shape), first.dtype)


def _cat_vjp(n, g):
    dim = n.attrs["dim"]
    grads, start = [], 0
    for i in range(len(n.edges)):
        size = n.shape(i)[dim]
        grads.append(g.narrow(dim, start, size) if n.edges[i] is not None else None)
        start += size
    return tuple(grads)


CAT = register("cat", MOVEMENT, eager=lambda *xs, dim: np.concatenate(xs, axis=dim), infer=_infer_cat,
               vjp=_cat_vjp, lowering="cat")
