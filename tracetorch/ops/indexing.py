"""Data-dependent index maps: gather by integer index tensors and scatter back.

`index(x, *idx, dims)` is numpy/PyTorch advanced indexing with integer index
tensors at the (sorted) `dims` and full slices elsewhere. `index_put` writes
(or, with accumulate, adds) values at those positions. Indices are
bounds-checked: out-of-range is an IndexError, never a wild read.
"""
from __future__ import annotations

import numpy as np

from .dispatch import apply
from .registry import INDEX as INDEX_KIND, Aval, register

import tracetorch as tt


def _key(ndim, idx, dims):
    key = [slice(None)] * ndim
    for d, i in zip(dims, idx):
        key[d] = i
    return tuple(key)


def _check_bounds(shape, idx, dims):
    for d, i in zip(dims, idx):
        if i.dtype.kind not in "iu":
            raise IndexError(f"tensors used as indices must be long, int or bool tensors, got {i.dtype}")
        if i.size:
            lo, hi = int(i.min()), int(i.max())
            if lo < -shape[d] or hi >= shape[d]:
                bad = hi if hi >= shape[d] else lo
                raise IndexError(f"index {bad} is out of bounds for dimension {d} with size {shape[d]}")


def _result_shape(shape, idx_shapes, dims):
    b = tuple(np.broadcast_shapes(*idx_shapes)) if idx_shapes else ()
    consecutive = list(dims) == list(range(dims[0], dims[0] + len(dims)))
    rest_before = shape[:dims[0]]
    if consecutive:
        return tuple(rest_before) + b + tuple(shape[dims[-1] + 1:])
    return b + tuple(s for i, s in enumerate(shape) if i not in dims)


def _index(x, *idx, dims):
    _check_bounds(x.shape, idx, dims)
    return x[_key(x.ndim, idx, dims)]


def _infer_index(x, *idx, dims):
    if len(idx) != len(dims) or not dims or max(dims) >= len(x.shape):
        raise IndexError(f"too many indices for tensor of dimension {len(x.shape)}")
    return Aval(_result_shape(x.shape, [i.shape for i in idx], dims), x.dtype)


def _index_vjp(n, g):
    idx = [n.x(i + 1) for i in range(len(n.attrs["dims"]))]
    zeros = tt.zeros(n.shape(0), dtype=g.dtype, device=g.device)
    return (apply(INDEX_PUT, zeros, g, *idx, dims=n.attrs["dims"], accumulate=True),) + (None,) * len(idx)


INDEX = register("index", INDEX_KIND, eager=_index, infer=_infer_index, vjp=_index_vjp,
                 saves=tuple(range(1, 9)), lowering="gather")


def _index_put(x, v, *idx, dims, accumulate):
    _check_bounds(x.shape, idx, dims)
    out = np.array(x, copy=True)
    key = _key(x.ndim, idx, dims)
    if accumulate:
        np.add.at(out, key, v)
    else:
        out[key] = v
    return out


def _infer_index_put(x, v, *idx, dims, accumulate):
    region = _infer_index(x, *idx, dims=dims)
    vshape = v.shape if isinstance(v, Aval) else ()
    try:
        np.broadcast_shapes(vshape, region.shape)
    except ValueError:
        raise RuntimeError(f"shape mismatch: value tensor of shape {list(vshape)} cannot be broadcast to "
                           f"indexing result of shape {list(region.shape)}") from None
    return Aval(tuple(x.shape), x.dtype)


def _index_put_vjp(n, g):
    dims = n.attrs["dims"]
    idx = [n.x(i + 2) for i in range(len(dims))]
    gx = gv = None
    if n.edges[0] is not None:
        gx = g if n.attrs["accumulate"] else apply(INDEX_PUT, g, tt.zeros((), dtype=g.dtype), *idx, dims=dims,
                                                    accumulate=False)
    if n.edges[1] is not None:
        gv = tt.sum_to_shape(apply(INDEX, g, *idx, dims=dims), n.shape(1))
    return (gx, gv) + (None,) * len(idx)


INDEX_PUT = register("index_put", INDEX_KIND, eager=_index_put, infer=_infer_index_put, vjp=_index_put_vjp,
                     saves=tuple(range(2, 10)), lowering="scatter",
                     doc="x with values written (or added, accumulate=True) at the indexed positions; "
                         "duplicate indices accumulate")
