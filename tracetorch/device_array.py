"""`DeviceArray`: the storage of a `device="cuda"` tensor (what a numpy array is for a CPU tensor).

A DeviceArray is a `Block` of device memory (from the caching allocator, runtime/cuda_memory.py) plus
a layout: shape, numpy dtype, byte strides and byte offset. Views (reshape, permute, expand, slice,
select, transpose, detach) share the block and differ only in layout, so they cost no device work:
`view_by` runs the view op's own numpy kernel on a *layout proxy* (a numpy array with the same strides
over a one-element anchor, never read) and keeps the strides and offset numpy computed, so device views
follow exactly the CPU rules (a reshape that needs a copy is detected by `copy=False`).

It offers the part of ndarray's interface the core reads (shape, ndim, size, dtype, itemsize, strides,
flags, base, item, tolist, reshape, copy) and `__array__` (a copy to the host), so tensor code that only
looks at metadata works on both. Kernels: tracetorch/jit/cuda_eager.py. Everything here is lazy:
pycuda is imported when the first block is allocated.
"""
from __future__ import annotations

import math
from typing import NamedTuple

import numpy as np


class _Flags(NamedTuple):
    c_contiguous: bool
    writeable: bool
    owndata: bool


_RUNTIME = None


class DeviceRuntime:
    """The process-wide device state: driver (pycuda.driver with a context) and the caching allocator."""

    def __init__(self):
        from runtime.cuda_engine import _driver
        from runtime.cuda_memory import CachingAllocator
        self.driver = _driver()
        self.allocator = CachingAllocator(self.driver)
        self.scalars: dict = {}          # (value, dtype) -> 0-d DeviceArray (Python scalars used as operands)

    def engine(self):
        from runtime.cuda_engine import default_engine
        return default_engine()


def device_runtime() -> DeviceRuntime:
    global _RUNTIME
    if _RUNTIME is None:
        from . import cuda
        if not cuda.is_available():
            raise RuntimeError("CUDA device requested but tracetorch found no usable CUDA device (install the "
                               "'cuda' extra, pycuda, on a machine with an NVIDIA GPU)")
        _RUNTIME = DeviceRuntime()
        _activate()
    return _RUNTIME


def _activate() -> None:
    """Tell the dispatcher that device arrays may exist from now on (until then it checks nothing)."""
    from .ops import dispatch
    from .jit.cuda_eager import apply_on_device
    dispatch.DEVICE.array = DeviceArray
    dispatch.DEVICE.apply = apply_on_device


def contiguous_strides(shape, itemsize: int) -> tuple:
    strides, step = [], itemsize
    for s in reversed(shape):
        strides.append(step)
        step *= max(s, 1)
    return tuple(reversed(strides))


_ANCHORS: dict = {}


class DeviceArray:
    __slots__ = ("block", "shape", "dtype", "strides", "offset", "base", "writeable", "__weakref__")

    def __init__(self, block, shape, dtype, strides=None, offset: int = 0, base=None, writeable: bool = True):
        self.block = block
        self.shape = tuple(int(s) for s in shape)
        self.dtype = np.dtype(dtype)
        self.strides = tuple(strides) if strides is not None else contiguous_strides(self.shape, self.dtype.itemsize)
        self.offset = offset
        self.base = base
        self.writeable = writeable

    @staticmethod
    def empty(shape, dtype) -> "DeviceArray":
        shape = tuple(int(s) for s in shape)
        dtype = np.dtype(dtype)
        block = device_runtime().allocator.allocate(math.prod(shape) * dtype.itemsize)
        return DeviceArray(block, shape, dtype)

    @staticmethod
    def zeros(shape, dtype) -> "DeviceArray":
        """All-zero bits (0, 0.0, False in every dtype): a memset on the device."""
        out = DeviceArray.empty(shape, dtype)
        if out.nbytes:
            device_runtime().driver.memset_d8(out.ptr, 0, out.nbytes)
        return out

    @staticmethod
    def from_host(arr) -> "DeviceArray":
        arr = np.asarray(arr)
        if not arr.flags.c_contiguous:
            arr = arr.copy(order="C")           # (np.ascontiguousarray would make a 0-d array 1-d)
        out = DeviceArray.empty(arr.shape, arr.dtype)
        if arr.nbytes:
            device_runtime().driver.memcpy_htod(out.ptr, arr)
        return out

    # ------------------------------------------------------------ ndarray-like metadata
    @property
    def ndim(self) -> int:
        return len(self.shape)

    @property
    def size(self) -> int:
        return math.prod(self.shape)

    @property
    def itemsize(self) -> int:
        return self.dtype.itemsize

    @property
    def nbytes(self) -> int:
        return self.size * self.dtype.itemsize

    @property
    def ptr(self) -> int:
        return self.block.ptr + self.offset

    @property
    def flags(self) -> _Flags:
        return _Flags(self.is_contiguous(), self.writeable, self.base is None)

    def is_contiguous(self) -> bool:
        if self.size <= 1:
            return True
        step = self.itemsize
        for s, st in zip(reversed(self.shape), reversed(self.strides)):
            if s != 1:
                if st != step:
                    return False
                step *= s
        return True

    def element_strides(self) -> tuple:
        return tuple(s // self.itemsize for s in self.strides)

    def __len__(self) -> int:
        if not self.shape:
            raise TypeError("len() of unsized object")
        return self.shape[0]

    def __repr__(self) -> str:
        return f"DeviceArray(shape={self.shape}, dtype={self.dtype}, strides={self.strides}, offset={self.offset})"

    # ------------------------------------------------------------ views (metadata only)
    def view(self) -> np.ndarray:
        """The layout proxy: a numpy array with this shape and these strides whose memory is never read
        (what `tt.view` probes for a compatible shape)."""
        anchor = _ANCHORS.get(self.dtype)
        if anchor is None:
            anchor = _ANCHORS[self.dtype] = np.zeros(1, self.dtype)
        return np.lib.stride_tricks.as_strided(anchor, self.shape, self.strides)

    def view_by(self, fn) -> "DeviceArray":
        """The view `fn(layout proxy)` of this array (fn: a numpy view function, e.g. a view op's kernel)."""
        anchor = _ANCHORS.get(self.dtype)
        if anchor is None:
            anchor = _ANCHORS[self.dtype] = np.zeros(1, self.dtype)
        proxy = np.lib.stride_tricks.as_strided(anchor, self.shape, self.strides)
        r = fn(proxy)
        if type(r) is not np.ndarray or r.dtype != self.dtype:
            raise ValueError(f"{fn!r} did not return a view")
        moved = r.__array_interface__["data"][0] - anchor.__array_interface__["data"][0]
        root = self if self.base is None else self.base
        writeable = self.writeable and r.flags.writeable          # np.broadcast_to views are read-only
        return DeviceArray(self.block, r.shape, self.dtype, r.strides, self.offset + moved, root, writeable)

    def reshape(self, *shape) -> "DeviceArray":
        if len(shape) == 1 and isinstance(shape[0], (tuple, list)):
            shape = shape[0]
        shape = tuple(shape)
        try:
            return self.view_by(lambda p: np.reshape(p, shape, copy=False))
        except ValueError:
            return self.copy().view_by(lambda p: np.reshape(p, shape, copy=False))

    # ------------------------------------------------------------ copies
    def span_bytes(self) -> int:
        """Bytes from `ptr` to the end of the last element (strides are never negative)."""
        if self.size == 0:
            return 0
        return sum((s - 1) * st for s, st in zip(self.shape, self.strides)) + self.itemsize

    def get(self) -> np.ndarray:
        """A C-contiguous host copy."""
        out = np.empty(self.shape, self.dtype)
        if self.size == 0:
            return out
        drv = device_runtime().driver
        if self.is_contiguous():
            drv.memcpy_dtoh(out, self.ptr)
            return out
        raw = np.empty(self.span_bytes(), np.uint8)
        drv.memcpy_dtoh(raw, self.ptr)
        np.copyto(out, np.ndarray(self.shape, self.dtype, buffer=raw, strides=self.strides))
        return out

    def __array__(self, dtype=None, copy=None):
        a = self.get()
        return a if dtype is None else a.astype(dtype)

    def item(self):
        if self.size != 1:
            raise ValueError("can only convert an array of size 1 to a Python scalar")
        return self.get().reshape(()).item()

    def tolist(self):
        return self.get().tolist()

    def copy(self) -> "DeviceArray":
        """A contiguous copy in a fresh block (device to device)."""
        if self.is_contiguous():
            out = DeviceArray.empty(self.shape, self.dtype)
            if self.size:
                device_runtime().driver.memcpy_dtod(out.ptr, self.ptr, self.nbytes)
            return out
        from .jit.cuda_eager import materialize
        return materialize(self)


__all__ = ["DeviceArray", "DeviceRuntime", "device_runtime", "contiguous_strides"]


# ---------------------------------------------------------------- tensors between devices
def transfer(t, to_cuda: bool):
    """`t.to("cuda")` / `t.cpu()`: a copy on the other device. Differentiable (the gradient goes back to
    the source's device); inside tt.compile, a copy to the device is an identity of the (device-agnostic)
    IR, so a compiled function may create tensors with `device="cuda"`."""
    from .ops.dispatch import STATE
    tracer = STATE.tracer
    if tracer is not None:
        if not to_cuda:
            raise NotImplementedError("tt.compile: copying a cuda tensor to the CPU inside a compiled function is "
                                      "not supported; return the cuda tensor and call .cpu() outside")
        if t.requires_grad and STATE.grad_enabled:
            raise NotImplementedError("tt.compile: moving a tensor that requires grad to the device inside a "
                                      "compiled function is not supported; move it before the call")
        from .ops import REGISTRY
        out = _moved(t, True)
        tracer.record(REGISTRY["clone"], (t,), {}, out)
        tracer.made_device_tensors = True
        return out
    if STATE.grad_enabled and t.requires_grad:
        return _Transfer.apply(t, to_cuda)
    return _moved(t, to_cuda)


def _moved(t, to_cuda: bool):
    from .tensor import Tensor
    data = DeviceArray.from_host(t._data) if to_cuda else t._data.get()
    return Tensor._make(data, t._dtype)


def _make_transfer():
    from .autograd.function import Function

    class Transfer(Function):
        @staticmethod
        def forward(ctx, x, to_cuda):
            ctx.to_cuda = to_cuda
            ctx.set_materialize_grads(False)
            return _moved(x, to_cuda)

        @staticmethod
        def backward(ctx, g):
            return (None if g is None else transfer(g, not ctx.to_cuda)), None

    return Transfer


class _LazyTransfer:
    fn = None

    def apply(self, *args):
        if _LazyTransfer.fn is None:
            _LazyTransfer.fn = _make_transfer()
        return _LazyTransfer.fn.apply(*args)


_Transfer = _LazyTransfer()


def assign(t, new) -> None:
    """The storage write of `Tensor._assign` when a device is involved (shapes and dtypes already match)."""
    dst, src = t._data, new._data
    if type(dst) is np.ndarray:                 # copy_ from the device: PyTorch allows it across devices
        np.copyto(dst, src.get())
        return
    if type(src) is np.ndarray:
        src = DeviceArray.from_host(src)
    from .jit.cuda_eager import copy_into
    copy_into(dst, src, t._dtype)


def add_into(t, g) -> None:
    """t += g in t's storage without autograd (gradient accumulation)."""
    from .ops import REGISTRY
    from .ops.dispatch import apply
    from .tensor import Tensor
    s = apply(REGISTRY["add"], Tensor._make(t._data, t._dtype), Tensor._make(g._data, g._dtype))
    assign(t, s)
