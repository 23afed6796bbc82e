"""Autograd through in-place writes.

Writing `new` into tensor `t` makes `t` the output of `new`'s computation. If
`t` is a view, its base becomes the functional "base with the view region
replaced" (slice_scatter for a strided slice, index_put through the flat
index map otherwise), and `t` a fresh view of that new base.
"""
from __future__ import annotations

import numpy as np

from .. import dtypes as D
from ..ops import REGISTRY as R
from ..ops.dispatch import STATE, apply


def replay_view(base, view_ops):
    """Apply a view's chain of movement ops to `base` (recorded for autograd)."""
    out = base
    for op, attrs in view_ops:
        out = apply(op, out, **attrs)
    return out


def scatter_into_view(base, view_ops, value):
    """Functional form of `view_of(base).copy_(value)`: returns the new base."""
    from ..tensor import Tensor
    if len(view_ops) == 1 and view_ops[0][0] is R["slice"]:
        return apply(R["slice_scatter"], base, value, **view_ops[0][1])
    flat = Tensor._make(np.arange(base._data.size, dtype=np.int64).reshape(base._data.shape), D.int64)
    prev = STATE.grad_enabled
    STATE.grad_enabled = False
    try:
        positions = replay_view(flat, view_ops).reshape(-1).contiguous()
    finally:
        STATE.grad_enabled = prev
    updated = apply(R["index_put"], base.reshape(-1), value.reshape(-1), positions, dims=(0,), accumulate=False)
    return updated.reshape(base._data.shape)


def rebase_history(t, new) -> None:
    """Make `t` (already holding new's values) carry new's autograd history."""
    from ..tensor import Tensor
    base = t._base
    if base is None:
        if new.requires_grad and new._grad_fn is None:
            new = new.clone()       # copying from a leaf: t becomes its (non-leaf) copy
        t._grad_fn = new._grad_fn
        t.requires_grad = new.requires_grad
        return
    # the scatter ops save no values, so `old` needs only the base's former autograd identity
    old = Tensor._make(base._data, base._dtype)
    old._grad_fn = base._grad_fn
    old.requires_grad = base.requires_grad
    new_base = scatter_into_view(old, t._view_ops, new)
    base._grad_fn = new_base._grad_fn
    base.requires_grad = True
    t._grad_fn = replay_view(base, t._view_ops)._grad_fn
    t.requires_grad = True

