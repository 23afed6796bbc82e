"""Creation primitives: tensors made from attributes alone (no tensor inputs).

Recorded like any op so that a tracer sees a constant, not a captured input.
"""
from __future__ import annotations

import numpy as np

from ..dtypes import as_dtype
from .registry import CREATION, Aval, register


def _full(shape, value, dtype):
    return np.full(shape, value, dtype=dtype.np)


FULL = register("full", CREATION, eager=_full, infer=lambda shape, value, dtype: Aval(tuple(shape), as_dtype(dtype)),
                lowering="full")


def _arange(start, end, step, dtype):
    n = max(0, int(np.ceil((end - start) / step)))
    if dtype.is_floating_point:
        return (start + np.arange(n, dtype=np.float64) * step).astype(dtype.np)
    return (start + np.arange(n, dtype=np.int64) * step).astype(dtype.np)


def _infer_arange(start, end, step, dtype):
    n = max(0, int(np.ceil((end - start) / step)))
    return Aval((n,), as_dtype(dtype))


ARANGE = register("arange", CREATION, eager=_arange, infer=_infer_arange, lowering="arange")


def _constant(value, dtype):
    return np.array(value, dtype=dtype.np, copy=True)


CONSTANT = register("constant", CREATION, eager=_constant,
                    infer=lambda value, dtype: Aval(tuple(np.shape(value)), as_dtype(dtype)), lowering="constant",
                    doc="a tensor built from Python/numpy data (tt.tensor) inside a traced region")
