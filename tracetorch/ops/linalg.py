"""Matrix multiply: the one extern contraction (BLAS eagerly; a library call or
generated tiles when compiled). Inputs are at least 2-D with broadcast batch
dims; the composite `tt.matmul` handles 1-D operands.
"""
from __future__ import annotations

import numpy as np

from .dispatch import STATE
from .registry import EXTERN, Aval, register

import tracetorch as tt


def _infer_matmul(a, b):
    if len(a.shape) < 2 or len(b.shape) < 2:
        raise RuntimeError("matmul primitive takes tensors of at least 2 dims")
    if a.shape[-1] != b.shape[-2]:
        raise RuntimeError(f"mat1 and mat2 shapes cannot be multiplied "
                           f"({a.shape[-2]}x{a.shape[-1]} and {b.shape[-2]}x{b.shape[-1]})")
    if a.dtype is not b.dtype:
        raise RuntimeError(f"expected both matmul operands to have the same dtype, got {a.dtype.name} "
                           f"and {b.dtype.name}")
    try:
        batch = np.broadcast_shapes(tuple(a.shape[:-2]), tuple(b.shape[:-2]))
    except ValueError:                  # PyTorch's error (numpy's ValueError names numpy's arguments)
        ba, bb = tuple(a.shape[:-2]), tuple(b.shape[:-2])
        n = max(len(ba), len(bb))
        ba, bb = (1,) * (n - len(ba)) + ba, (1,) * (n - len(bb)) + bb
        d = next(k for k in range(n) if ba[k] != bb[k] and 1 not in (ba[k], bb[k]))
        raise RuntimeError(f"The size of tensor a ({ba[d]}) must match the size of tensor b ({bb[d]}) at "
                           f"non-singleton dimension {d} (matmul batch dims {list(a.shape[:-2])} and "
                           f"{list(b.shape[:-2])})") from None
    return Aval(tuple(batch) + (a.shape[-2], b.shape[-1]), a.dtype)


def _matmul_vjp(n, g):
    a, b = n.x(0), n.x(1)
    ga = tt.sum_to_shape(g @ b.mT, n.shape(0)) if n.edges[0] is not None else None
    if n.edges[1] is None:
        gb = None
    elif _transposed_2d(b) and len(a.shape) == 2 == len(g.shape):
        gb = (g.mT @ a).mT      # a Linear's weight.t(): its gradient's transpose comes out C-contiguous
    else:
        gb = tt.sum_to_shape(a.mT @ g, n.shape(1))
    return ga, gb


def _transposed_2d(t) -> bool:
    """An eager 2-D operand laid out as the transpose of a C-contiguous array (weight.t()): the
    weight's gradient is then computed as (g^T a)^T, whose transpose (the gradient of weight.t()'s
    transpose) is C-contiguous and may become weight.grad without a copy, as PyTorch's linear
    backward lays it out. IR proxies (the autodiff pass) ask their tracer, which answers for the
    layout the reference interpreter gives the value."""
    tracer = STATE.tracer
    if tracer is not None and tracer.abstract:
        return tracer.transposed_2d(t)
    data = getattr(t, "_data", None)
    return type(data) is np.ndarray and data.ndim == 2 and data.shape[0] > 1 and data.shape[1] > 1 \
        and not data.flags.c_contiguous and data.T.flags.c_contiguous


def _matmul(a, b):
    if a.dtype.kind in "biu" and a.size and b.size:
        return np.matmul(a.astype(np.int64), b.astype(np.int64)).astype(a.dtype)
    return np.matmul(a, b)


MATMUL = register("matmul", EXTERN, eager=_matmul, infer=_infer_matmul, vjp=_matmul_vjp, saves=(0, 1),
                  lowering="matmul")
