"""Tensor creation: tensor/as_tensor/from_numpy and the factory functions."""
from __future__ import annotations

import numpy as np

from . import dtypes as D
from .device import as_device
from .ops import REGISTRY as R
from .ops.dispatch import STATE, apply
from .tensor import Tensor

FULL, ARANGE, CONSTANT = R["full"], R["arange"], R["constant"]


def _sizes(size):
    if len(size) == 1 and isinstance(size[0], (tuple, list)):
        size = size[0]
    out = []
    for s in size:
        s = int(s)
        if s < 0:
            raise RuntimeError(f"Trying to create tensor with negative dimension {s}: {list(size)}")
        out.append(s)
    return tuple(out)


def _finish(t, requires_grad, device=None):
    if device is not None and as_device(device).type == "cuda":
        as_device(device).check_available()
        t = t.to(device)                       # made on the host, copied over (no kernel to compile)
    if requires_grad:
        t.requires_grad_(True)
    return t


def _infer_dtype(arr: np.ndarray, data) -> D.DType:
    kind = arr.dtype.kind
    if isinstance(data, np.ndarray) or isinstance(data, np.generic):
        if kind == "f" or kind in "biu":
            return D.from_numpy_dtype(arr.dtype)
    if kind == "f":
        return D.get_default_dtype()
    if kind in "iu":
        return D.int64
    if kind == "b":
        return D.bool_
    raise TypeError(f"can't convert data of numpy kind {arr.dtype} to a tensor")


def _to_array(data, floating: bool = False):
    """`data` as an array and its inferred dtype; `floating`: a floating-point dtype was asked for."""
    if isinstance(data, Tensor):
        return data._data, data._dtype
    typed = _elements_dtype(data) if isinstance(data, (list, tuple)) else None
    if typed is not None and any(isinstance(d, Tensor) for d in _flat(data)):
        data = _lists_of_tensors(data)
    try:
        arr = np.asarray(data)
    except ValueError as e:
        raise ValueError(f"tensor(): could not build a tensor from ragged nested sequences: {e}") from None
    if _beyond_int64(arr, data):
        if floating:
            return np.asarray(data, dtype=np.float64), D.float64
        raise ValueError("Overflow when unpacking long long")     # PyTorch's words; numpy would wrap or widen
    if arr.dtype == object:
        raise TypeError(f"tensor(): could not infer dtype of {type(data).__name__} elements")
    return arr, typed or _infer_dtype(arr, data)


def _elements_dtype(seq):
    """PyTorch's dtype for a sequence holding numpy scalars, arrays or tensors: the promotion of every
    element's dtype, Python numbers counting as theirs (tensor([np.float64(1.5), 2]) is float64,
    [np.int32(1)] int32, a list of 0-d float64 tensors float64); None for plain Python numbers."""
    if not any(isinstance(d, _TYPED) for d in _flat(seq)):
        return None
    dts = {d._dtype if isinstance(d, Tensor) else D.from_numpy_dtype(d.dtype) if isinstance(d, _TYPED)
           else D.scalar_dtype(d) for d in _flat(seq)}
    out = dts.pop()
    for dt in dts:
        out = D.promote_types(out, dt)
    return out


_TYPED = (Tensor, np.generic, np.ndarray)


def _beyond_int64(arr: np.ndarray, data) -> bool:
    """Whether Python data of ints (and bools) only holds one outside int64, which numpy turns into a
    uint64, float64 or object array. Data with a Python float is floating point, as in PyTorch."""
    if isinstance(data, (np.ndarray, np.generic)) or arr.dtype.kind not in "ufO" or not arr.size:
        return False
    if arr.dtype.kind == "f" and not np.abs(arr).max() >= 2.0 ** 63:
        return False
    values = list(_flat(data)) if isinstance(data, (list, tuple)) else [data]
    return (all(type(v) in (int, bool) for v in values)
            and any(type(v) is int and not -2 ** 63 <= v < 2 ** 63 for v in values))


def _flat(seq):
    for d in seq:
        if isinstance(d, (list, tuple)):
            yield from _flat(d)
        else:
            yield d


def _lists_of_tensors(seq):
    return [(_lists_of_tensors(d) if isinstance(d, (list, tuple)) else d._data if isinstance(d, Tensor) else d)
            for d in seq]


def tensor(data, dtype=None, device=None, requires_grad=False) -> Tensor:
    """A new tensor with a copy of `data`; inside a traced region it is a constant."""
    arr, dt = _to_array(data, dtype is not None and D.as_dtype(dtype).is_floating_point)
    if type(arr) is not np.ndarray:             # tt.tensor(a cuda tensor): its values
        arr = arr.get()
    if dtype is not None:
        dt = D.as_dtype(dtype)
        if dt.category == 1 and dt is not D.uint8 and not isinstance(data, (np.ndarray, np.generic, Tensor)):
            _check_fits(arr, dt)
    t = apply(CONSTANT, value=arr, dtype=dt)
    return _finish(t, requires_grad, device)


def _check_fits(arr: np.ndarray, dt) -> None:
    """Python numbers an integer dtype can't hold (or NaN) raise, as in PyTorch; numpy's cast wraps them
    (tensor([2**40], dtype=int32) was 0). PyTorch wraps uint8 (tensor([-1], dtype=uint8) is 255)."""
    if arr.size and arr.dtype.kind in "iuf":
        info, cast = np.iinfo(dt.np), float if arr.dtype.kind == "f" else int    # floats compared as PyTorch does
        lo, hi = arr.min().item(), arr.max().item()
        if not (cast(info.min) <= lo and hi <= cast(info.max)):
            raise RuntimeError(f"value cannot be converted to type {dt.name} without overflow")


def as_tensor(data, dtype=None, device=None) -> Tensor:
    """`data` as a tensor of `dtype` on `device`, sharing its memory where it can (a tensor, or an array of
    that dtype, already there), as torch.as_tensor."""
    if isinstance(data, Tensor):
        out = data if dtype is None else data.to(dtype)
        return out if device is None else out.to(device)
    if isinstance(data, np.ndarray) and (dtype is None or D.as_dtype(dtype).np == data.dtype):
        out = from_numpy(data)
        return out if device is None else out.to(device)
    return tensor(data, dtype=dtype, device=device)


def from_numpy(arr: np.ndarray) -> Tensor:
    """A tensor sharing memory with `arr` (no copy)."""
    if not isinstance(arr, np.ndarray):
        raise TypeError(f"expected np.ndarray (got {type(arr).__name__})")
    return Tensor._make(arr, D.from_numpy_dtype(arr.dtype))


def full(size, fill_value, *, dtype=None, device=None, requires_grad=False) -> Tensor:
    size = _sizes((size,) if isinstance(size, int) else (size,))
    if isinstance(fill_value, Tensor):
        fill_value = fill_value.item()
    if dtype is None:
        dtype = D.scalar_dtype(fill_value)
    t = apply(FULL, shape=size, value=fill_value, dtype=D.as_dtype(dtype))
    return _finish(t, requires_grad, device)


def zeros(*size, dtype=None, device=None, requires_grad=False) -> Tensor:
    dt = D.as_dtype(dtype) if dtype is not None else D.get_default_dtype()
    return _zeros(_sizes(size), dt, requires_grad, device)


def _zeros(shape, dt, requires_grad, device) -> Tensor:
    """On the device (outside tt.compile): one memset, no host array to upload (the zero base of an
    embedding's gradient is as big as its table)."""
    if device is not None and as_device(device).type == "cuda" and STATE.tracer is None:
        as_device(device).check_available()
        from .device_array import DeviceArray
        t = Tensor._make(DeviceArray.zeros(shape, dt.np), dt)
        return t.requires_grad_(True) if requires_grad else t
    return _finish(apply(FULL, shape=shape, value=0, dtype=dt), requires_grad, device)


def ones(*size, dtype=None, device=None, requires_grad=False) -> Tensor:
    dt = D.as_dtype(dtype) if dtype is not None else D.get_default_dtype()
    return _finish(apply(FULL, shape=_sizes(size), value=1, dtype=dt), requires_grad, device)


empty = zeros


def _like(x, dtype):
    return D.as_dtype(dtype) if dtype is not None else x._dtype


def _like_device(x, device):
    """`*_like` functions make their result on x's device unless told otherwise (as PyTorch's do)."""
    return device if device is not None or type(x._data) is np.ndarray else x.device


def zeros_like(x, *, dtype=None, device=None, requires_grad=False) -> Tensor:
    return _zeros(x._data.shape, _like(x, dtype), requires_grad, _like_device(x, device))


def ones_like(x, *, dtype=None, device=None, requires_grad=False) -> Tensor:
    return _finish(apply(FULL, shape=x._data.shape, value=1, dtype=_like(x, dtype)), requires_grad,
                   _like_device(x, device))


empty_like = zeros_like


def full_like(x, fill_value, *, dtype=None, device=None, requires_grad=False) -> Tensor:
    return _finish(apply(FULL, shape=x._data.shape, value=fill_value, dtype=_like(x, dtype)), requires_grad,
                   _like_device(x, device))


def arange(start, end=None, step=1, *, dtype=None, device=None, requires_grad=False) -> Tensor:
    if end is None:
        start, end = 0, start
    vals = [v.item() if isinstance(v, Tensor) else v for v in (start, end, step)]
    if vals[2] == 0:
        raise RuntimeError("arange: step must be nonzero")
    if (vals[1] - vals[0]) * vals[2] < 0:
        raise RuntimeError(f"arange: upper bound and larger bound inconsistent with step sign "
                           f"(start={vals[0]}, end={vals[1]}, step={vals[2]})")
    if dtype is None:
        dtype = D.get_default_dtype() if any(isinstance(v, float) for v in vals) else D.int64
    t = apply(ARANGE, start=vals[0], end=vals[1], step=vals[2], dtype=D.as_dtype(dtype))
    return _finish(t, requires_grad, device)


def linspace(start, end, steps, *, dtype=None, device=None, requires_grad=False) -> Tensor:
    if steps < 0:
        raise RuntimeError("linspace: number of steps must be non-negative")
    dt = D.as_dtype(dtype) if dtype is not None else D.get_default_dtype()
    arr = np.linspace(float(start), float(end), int(steps), dtype=np.float64)
    return _finish(apply(CONSTANT, value=arr, dtype=dt), requires_grad, device)


def eye(n, m=None, *, dtype=None, device=None, requires_grad=False) -> Tensor:
    m = n if m is None else m
    dt = D.as_dtype(dtype) if dtype is not None else D.get_default_dtype()
    r = apply(ARANGE, start=0, end=n, step=1, dtype=D.int64).reshape(n, 1)
    c = apply(ARANGE, start=0, end=m, step=1, dtype=D.int64).reshape(1, m)
    return _finish((r == c).to(dt), requires_grad, device)


def scalar_tensor(v, dtype=None) -> Tensor:
    return full((), v, dtype=dtype if dtype is not None else D.get_default_dtype())


def is_tensor(x) -> bool:
    return isinstance(x, Tensor)


def numel(x) -> int:
    return x.numel()


def is_grad_tracing() -> bool:
    return STATE.tracer is not None


__all__ = [n for n, v in list(globals().items())
           if not n.startswith("_") and getattr(v, "__module__", None) == __name__]
