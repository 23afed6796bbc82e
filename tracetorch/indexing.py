"""`t[key]` and `t[key] = v` with numpy/PyTorch semantics.

Basic indices (ints, slices, None, ...) become one strided `slice` view and a
`reshape`; advanced indices (integer tensors, lists, bool masks) become the
`index` gather (`index_put` for assignment) on the dims they address.
"""
from __future__ import annotations

import numpy as np

from . import dtypes as D
from .ops import REGISTRY as R
from .ops.dispatch import apply
from .tensor import Tensor


def _is_advanced(k) -> bool:
    return isinstance(k, (Tensor, list, np.ndarray)) and not isinstance(k, bool) or (
        isinstance(k, bool))


def _constant_index(arr: np.ndarray, dtype) -> Tensor:
    """An index tensor made from Python data or a mask's positions: a constant when traced (like
    `tt.tensor`), not a captured input that outlives the call in autograd's saved tensors."""
    return apply(R["constant"], value=arr, dtype=dtype)


def _as_index_array(k):
    """An advanced index entry as an int64/bool numpy array."""
    if isinstance(k, Tensor):
        if k._dtype.category == 2:
            raise IndexError(f"tensors used as indices must be long, int, byte or bool tensors, got "
                             f"{k._dtype.name}")
        return k
    arr = np.asarray(k)
    if arr.dtype == np.bool_:
        return _constant_index(arr, D.bool_)
    if arr.size == 0:
        arr = arr.astype(np.int64)
    if arr.dtype.kind not in "iu":
        raise IndexError("only integers, slices (`:`), ellipsis (`...`), None and long or byte Variables are "
                         f"valid indices (got {arr.dtype})")
    return _constant_index(arr.astype(np.int64), D.int64)


def _normalize(x, key):
    """Expand Ellipsis; return the entries and how many tensor dims they consume."""
    if not isinstance(key, tuple):
        key = (key,)
    # lists, ranges and arrays become index tensors up front, so a list of bools is a mask as in PyTorch
    key = tuple(_as_index_array(k) if isinstance(k, (list, range, np.ndarray)) else k for k in key)
    consumed = 0
    for k in key:
        if k is None or k is Ellipsis:
            continue
        if isinstance(k, Tensor) and k._dtype is D.bool_:
            consumed += max(k._data.ndim, 1) if k._data.ndim else 0
        elif isinstance(k, (bool, np.bool_)):
            continue
        else:
            consumed += 1
    ndim = x._data.ndim
    if consumed > ndim:
        raise IndexError(f"too many indices for tensor of dimension {ndim}")
    n_ell = sum(1 for k in key if k is Ellipsis)
    if n_ell > 1:
        raise IndexError("an index can only have a single ellipsis ('...')")
    if n_ell:
        i = next(j for j, k in enumerate(key) if k is Ellipsis)
        key = key[:i] + (slice(None),) * (ndim - consumed) + key[i + 1:]
    else:
        key = key + (slice(None),) * (ndim - consumed)
    return key


def _basic(x, key):
    """Apply slices and None; return the view, the remaining advanced entries by dim,
    and the dims that integer indices remove (when there is no advanced index)."""
    shape = x._data.shape
    starts, stops, steps = [], [], []
    new_shape = []
    advanced = []           # (dim in the result of the basic step, entry)
    d = 0
    for k in key:
        if k is None:
            new_shape.append(1)
            continue
        if isinstance(k, (bool, np.bool_)):
            # x[True] adds a dim of size 1; x[False] a dim of size 0
            new_shape.append(1)
            advanced.append((len(new_shape) - 1, _constant_index(np.zeros(1 if k else 0, np.int64), D.int64)))
            continue
        if isinstance(k, Tensor) and k._dtype is D.bool_:
            kd = k._data.ndim
            if kd and k._data.shape != shape[d:d + kd]:
                raise IndexError(f"The shape of the mask {list(k._data.shape)} at index {d} does not match the "
                                 f"shape of the indexed tensor {list(shape[d:d + kd])}")
            from .ops.dispatch import STATE
            if STATE.tracer is not None:            # the result's shape depends on the mask's values
                STATE.tracer.on_value(k, "mask", None)
            if kd == 0:
                new_shape.append(1)
                advanced.append((len(new_shape) - 1,
                                 _constant_index(np.zeros(1 if k._data else 0, np.int64), D.int64)))
                continue
            for j, idx in enumerate(np.nonzero(k._data)):
                starts.append(0), stops.append(shape[d]), steps.append(1)
                new_shape.append(shape[d])
                advanced.append((len(new_shape) - 1, _constant_index(idx.astype(np.int64), D.int64)))
                d += 1
            continue
        size = shape[d]
        if isinstance(k, slice):
            if k.step is not None and int(k.step) <= 0:
                raise ValueError("step must be greater than zero")
            a, b, c = k.indices(size)
            b = max(b, a)
            starts.append(a), stops.append(b), steps.append(c)
            new_shape.append(len(range(a, b, c)))
        elif isinstance(k, (Tensor, list, np.ndarray)):
            starts.append(0), stops.append(size), steps.append(1)
            new_shape.append(size)
            advanced.append((len(new_shape) - 1, _as_index_array(k)))
        else:
            try:
                i = k.__index__()
            except AttributeError:
                raise IndexError(f"only integers, slices (`:`), ellipsis (`...`), None and long or bool tensors "
                                 f"are valid indices (got {type(k).__name__})") from None
            if not -size <= i < size:
                raise IndexError(f"index {i} is out of bounds for dimension {d} with size {size}")
            i %= size
            # an int selects (drops the dim) before advanced indexing, as in PyTorch: for x of shape
            # (2, 3, 4), x[0, :, [1, 2]] has shape (3, 2) (numpy, which counts the int as advanced: (2, 3))
            starts.append(i), stops.append(i + 1), steps.append(1)
        d += 1
    y = x
    n = len(shape)
    if tuple(starts) != (0,) * n or tuple(stops) != tuple(shape) or tuple(steps) != (1,) * n:
        y = apply(R["slice"], y, starts=tuple(starts), stops=tuple(stops), steps=tuple(steps))
    if tuple(new_shape) != y._data.shape or y is x:
        y = apply(R["reshape"], y, shape=tuple(new_shape))
    return y, advanced


def _next_to_the_others(y, advanced):
    """PyTorch selects with a 0-d integer tensor as with an int, before advanced indexing, so it does not
    separate the other advanced indices: for x of shape (3, 4, 5), x[tensor(0), :, [1, 2]] has shape (4, 2),
    not (2, 4). Move the dims such indices address next to the others' (a view) and gather them all at once."""
    zero = [d for d, i in advanced if i._data.ndim == 0]
    rest = [d for d, i in advanced if i._data.ndim]
    if not zero or not rest:
        return y, advanced
    order = [d for d in range(y._data.ndim) if d not in zero]
    at = order.index(rest[0])
    order[at:at] = zero
    where = {d: order.index(d) for d, _ in advanced}
    return y.permute(order), sorted(((where[d], i) for d, i in advanced), key=lambda e: e[0])


def _scalar_tensors_as_ints(key):
    """PyTorch indexes with a 0-d integer tensor as with an int when no other index is advanced: the
    result is a view (x[t][0] = 5 and `for i in idx: x[i].zero_()` write into x). Under tt.compile the
    index's value is then guarded, like `int(t)`. (With other advanced indices the result is a copy
    anyway: `_next_to_the_others` keeps those gathers free of value guards.)"""
    def scalar(k):
        return isinstance(k, Tensor) and k._data.ndim == 0 and k._dtype.category == 1
    if not any(map(scalar, key)) or any(isinstance(k, Tensor) and not scalar(k) for k in key):
        return key
    return tuple(k.__index__() if scalar(k) else k for k in key)


def getitem(x, key):
    key = _scalar_tensors_as_ints(_normalize(x, key))
    y, advanced = _basic(x, key)
    if not advanced:
        return y
    y, advanced = _next_to_the_others(y, advanced)
    dims = tuple(d for d, _ in advanced)
    idx = [i if i._dtype is D.int64 else i.long() for _, i in advanced]
    return apply(R["index"], y, *idx, dims=dims)


def setitem(x, key, value):
    key = _normalize(x, key)
    y, advanced = _basic(x, key)
    if not isinstance(value, (Tensor, int, float, bool)):
        from .creation import tensor
        value = tensor(value, dtype=x._dtype)
    if isinstance(value, Tensor) and value._dtype is not x._dtype:
        value = value.to(x._dtype)
    if isinstance(value, Tensor) and value._data.ndim and value._data.shape[0] == 1:
        value = _strip_leading_ones(value)
    if not advanced:
        if isinstance(value, Tensor):
            y._assign(value)
        else:
            y.fill_(value)
        return
    y, advanced = _next_to_the_others(y, advanced)
    dims = tuple(d for d, _ in advanced)
    idx = [i if i._dtype is D.int64 else i.long() for _, i in advanced]
    y._assign(apply(R["index_put"], y, value, *idx, dims=dims, accumulate=False))


def _strip_leading_ones(value):
    """The value without its leading size-1 dims, as PyTorch's setitem: x[0] = ones(1, 1, 4) for x of
    shape (2, 3, 4) writes a (4,) row into (3, 4); broadcasting puts such dims back where they fit."""
    shape = value._data.shape
    k = 0
    while k < len(shape) and shape[k] == 1:
        k += 1
    return value.reshape(shape[k:])


def index_put(x, indices, values, accumulate=False):
    """Functional `x[indices] (+)= values` with integer index tensors on the leading dims."""
    dims = tuple(range(len(indices)))
    return apply(R["index_put"], x, values, *[i.long() for i in indices], dims=dims, accumulate=accumulate)


def index_select(x, dim, index):
    from .tensor import _wrap_dim
    d = _wrap_dim(dim, x._data.ndim, "index_select")
    return apply(R["index"], x, index.long().reshape(-1), dims=(d,))


def gather(x, dim, index):
    """torch.gather: out[i][j] = x[index[i][j]][j] (dim 0) etc., via advanced indexing."""
    from .creation import arange
    from .tensor import _wrap_dim
    d = _wrap_dim(dim, x._data.ndim, "gather")
    n = x._data.ndim
    idx = []
    for k in range(n):
        if k == d:
            idx.append(index.long())
        else:
            shp = [1] * n
            shp[k] = index.shape[k]
            idx.append(arange(index.shape[k]).reshape(shp))
    return apply(R["index"], x, *idx, dims=tuple(range(n)))
