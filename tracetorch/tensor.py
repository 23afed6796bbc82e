"""`Tensor`: a numpy buffer plus dtype, autograd identity and view bookkeeping.

Views share the numpy buffer (and the version counter) of their base; an
in-place op writes into the buffer and, when autograd is recording, re-points
the base's grad_fn at the functional form of the write, so gradients flow
through in-place updates of views as in PyTorch.
"""
from __future__ import annotations

import numbers

import numpy as np

from . import dtypes as D
from .device import CPU, CUDA, as_device
from .ops import registry as R
from .ops.dispatch import STATE, _BOUND, apply, describe
from .autograd import graph as _graph  # noqa: F401  (binds Node for dispatch)


class Size(tuple):
    """A shape: a tuple that prints like torch.Size and knows its numel."""

    def numel(self) -> int:
        n = 1
        for s in self:
            n *= s
        return n

    def __repr__(self) -> str:
        return f"tracetorch.Size({list(self)})"

    def __getitem__(self, k):
        r = tuple.__getitem__(self, k)
        return Size(r) if isinstance(k, slice) else r


class Tensor:
    # Defaults live on the class, so making a tensor sets three attributes only.
    requires_grad = False
    _grad = None
    _grad_fn_raw = None
    _history_version = 0
    _base = None
    _view_ops = ()
    _hooks = None
    _retains_grad = False
    _is_param = False

    def __new__(cls, *args, **kwargs):
        return object.__new__(cls)

    def __init__(self, *args, dtype=None, device=None, requires_grad=False):
        """`tt.Tensor(data)` (default float dtype) or `tt.Tensor(*sizes)` (uninitialized)."""
        if len(args) == 1 and not isinstance(args[0], int):
            data = args[0]
            if isinstance(data, Tensor):
                data = data._data
            dt = D.as_dtype(dtype) if dtype is not None else D.get_default_dtype()
            arr = np.array(data, dtype=dt.np)
        else:
            dt = D.as_dtype(dtype) if dtype is not None else D.get_default_dtype()
            arr = np.zeros(tuple(args), dtype=dt.np)
        if dt is D.bfloat16:
            arr = D.round_bfloat16(arr)
        self._data = arr
        self._dtype = dt
        self._version = [0]
        if device is not None and as_device(device).type == "cuda":
            self._data = self.to(device)._data
        if requires_grad:
            self.requires_grad_(True)

    @staticmethod
    def _make(data: np.ndarray, dtype) -> "Tensor":
        t = object.__new__(Tensor)
        t._data = data
        t._dtype = dtype
        t._version = [0]
        return t

    # ------------------------------------------------------------ attributes
    @property
    def shape(self) -> Size:
        return Size(self._data.shape)

    def size(self, dim=None):
        if dim is None:
            return Size(self._data.shape)
        return self._data.shape[_wrap_dim(dim, self._data.ndim, "size")]

    def dim(self) -> int:
        return self._data.ndim

    ndim = property(dim)

    def numel(self) -> int:
        return self._data.size

    nelement = numel

    @property
    def dtype(self):
        return self._dtype

    @property
    def device(self):
        return CPU if type(self._data) is np.ndarray else CUDA

    @property
    def is_cuda(self) -> bool:
        return type(self._data) is not np.ndarray

    @property
    def grad_fn(self):
        return self._grad_fn

    @property
    def grad(self):
        """The accumulated gradient. A property so a tracer sees `.grad` reads and writes as state."""
        if STATE.tracer is not None:
            STATE.tracer.on_grad_read(self, self._grad)
        return self._grad

    @grad.setter
    def grad(self, value):
        if STATE.tracer is not None:
            STATE.tracer.on_grad_write(self, value)
        self._grad = value

    @property
    def _grad_fn(self):
        """The autograd node; a view whose storage was written since (through its base or another view)
        gets a fresh one, a view of the base's current history, as PyTorch regenerates it."""
        base = self._base
        if (base is not None and self._history_version != self._version[0]
                and (self.requires_grad or base.requires_grad)):
            self._regenerate_view_history()
        return self._grad_fn_raw

    @_grad_fn.setter
    def _grad_fn(self, node):
        self._grad_fn_raw = node
        self._history_version = self._version[0]
        if self._retains_grad and node is not None:     # an in-place write: .grad is its latest value's, as PyTorch
            self._retain_on(node)

    def _regenerate_view_history(self):
        from .autograd.inplace import replay_view
        prev, tracer = STATE.grad_enabled, STATE.tracer
        STATE.grad_enabled, STATE.tracer = True, None
        try:
            view = replay_view(self._base, self._view_ops)
            self._grad_fn = view._grad_fn_raw
        finally:
            STATE.grad_enabled, STATE.tracer = prev, tracer
        self.requires_grad = view.requires_grad     # as its base now: not a leaf that requires grad

    @property
    def is_leaf(self) -> bool:
        return self._grad_fn is None

    @property
    def data(self) -> "Tensor":
        return self.detach()

    @data.setter
    def data(self, value: "Tensor"):
        self._data = value._data
        self._dtype = value._dtype
        self._version = value._version

    def element_size(self) -> int:
        return self._dtype.itemsize

    def stride(self, dim=None):
        st = tuple(s // self._data.itemsize for s in self._data.strides)
        return st if dim is None else st[_wrap_dim(dim, self._data.ndim, "stride")]

    def is_contiguous(self) -> bool:
        return self._data.flags.c_contiguous

    def is_floating_point(self) -> bool:
        return self._dtype.is_floating_point

    @property
    def T(self) -> "Tensor":
        return self.permute(*reversed(range(self._data.ndim)))

    @property
    def mT(self) -> "Tensor":
        if self._data.ndim < 2:
            raise RuntimeError(f"tensor.mT is only supported on matrices or batches of matrices. "
                               f"Got {self._data.ndim}-D tensor.")
        return self.transpose(-2, -1)

    # ------------------------------------------------------------ autograd
    def requires_grad_(self, requires_grad: bool = True) -> "Tensor":
        if self._grad_fn is not None and not requires_grad:
            raise RuntimeError("you can only change requires_grad flags of leaf variables. If you want to use a "
                               "computed variable in a subgraph that doesn't require differentiation use "
                               "var_no_grad = var.detach().")
        if requires_grad and not self._dtype.is_floating_point:
            raise RuntimeError(f"only Tensors of floating point dtype can require gradients, got {self._dtype.name}")
        self.requires_grad = bool(requires_grad)
        return self

    def retain_grad(self) -> None:
        if not self.requires_grad:
            raise RuntimeError("can't retain_grad on Tensor that has requires_grad=False")
        if self._grad_fn is None or self._retains_grad:
            return
        self._retain_on(self._grad_fn)
        self._retains_grad = True

    def _retain_on(self, node) -> None:
        """Have the backward walk store this tensor's gradient when it reaches `node` (its grad_fn)."""
        import weakref
        if not any(ref() is self for ref in node.retained or ()):
            node.retained = (node.retained or []) + [weakref.ref(self)]

    @property
    def retains_grad(self) -> bool:
        return self._retains_grad

    def register_hook(self, hook):
        """Call hook(grad) when this tensor's gradient is computed; a returned tensor replaces it."""
        if not self.requires_grad:
            raise RuntimeError("cannot register a hook on a tensor that doesn't require gradient")
        if self._grad_fn is not None:
            self._grad_fn.hooks = (self._grad_fn.hooks or []) + [hook]
        else:
            self._hooks = (self._hooks or []) + [hook]
        return hook

    def detach(self) -> "Tensor":
        t = Tensor._make(self._data, self._dtype)
        t._version = self._version
        if STATE.tracer is not None:
            STATE.tracer.record_alias(self, t)
        return t

    def detach_(self) -> "Tensor":
        if self._base is not None:
            raise RuntimeError("Can't detach views in-place. Use detach() instead.")
        self._grad_fn = None
        self.requires_grad = False
        return self

    def backward(self, gradient=None, retain_graph=None, create_graph=False, inputs=None) -> None:
        from .autograd import backward
        backward(self, gradient, retain_graph, create_graph, inputs=inputs)

    # ------------------------------------------------------------ conversion
    def numpy(self, *, force: bool = False) -> np.ndarray:
        if self.requires_grad and not force:
            raise RuntimeError("Can't call numpy() on Tensor that requires grad. Use tensor.detach().numpy() "
                               "instead.")
        self._guard_value("numpy")
        if type(self._data) is not np.ndarray:
            raise TypeError(_NUMPY_ON_DEVICE)
        return self._data

    def __array__(self, dtype=None, copy=None):
        self._guard_value("numpy")
        if type(self._data) is not np.ndarray:
            raise TypeError(_NUMPY_ON_DEVICE)
        return self._data if dtype is None else self._data.astype(dtype)

    def item(self):
        if self._data.size != 1:
            raise RuntimeError(f"a Tensor with {self._data.size} elements cannot be converted to Scalar")
        v = self._data.reshape(()).item()
        if STATE.tracer is not None:
            v = STATE.tracer.on_value(self, "item", v)
        return v

    def tolist(self):
        v = self._data.tolist()
        if STATE.tracer is not None:
            v = STATE.tracer.on_value(self, "tolist", v)
        return v

    def _scalar(self, kind, convert):
        if self._data.size != 1:
            raise RuntimeError(f"{kind}: a Tensor with {self._data.size} elements cannot be converted to Scalar")
        v = convert(self._data.reshape(()).item())
        if STATE.tracer is not None:
            v = STATE.tracer.on_value(self, kind, v)
        return v

    def __bool__(self):
        if self._data.size != 1:
            raise RuntimeError(f"Boolean value of Tensor with more than one value is ambiguous "
                               f"(it has {self._data.size} values)")
        return self._scalar("bool", bool)

    def __int__(self):
        return self._scalar("int", int)

    def __float__(self):
        return self._scalar("float", float)

    def __index__(self):
        if self._dtype.category != 1 or self._data.size != 1:
            raise TypeError("only integer tensors of a single element can be converted to an index")
        return self._scalar("index", int)

    def _guard_value(self, kind):
        if STATE.tracer is not None:
            STATE.tracer.on_value(self, kind, None)

    def to(self, *args, **kwargs) -> "Tensor":
        dtype, device, copy = parse_to_args(args, kwargs)
        out = self
        if device is not None and as_device(device).type != self.device.type:
            from .device_array import transfer
            out, copy = transfer(self, as_device(device).type == "cuda"), False
        if dtype is not None and D.as_dtype(dtype) is not out._dtype:
            out = apply(_op("cast"), out, dtype=D.as_dtype(dtype))
        elif copy:
            out = out.clone()
        return out

    def cpu(self) -> "Tensor":
        return self if type(self._data) is np.ndarray else self.to("cpu")

    def cuda(self, device=None) -> "Tensor":
        return self.to(device or "cuda")

    def type(self, dtype=None):
        if dtype is None:
            return f"tracetorch.{self._dtype.name}"
        return self.to(D.as_dtype(dtype))

    def float(self):
        return self.to(D.float32)

    def double(self):
        return self.to(D.float64)

    def half(self):
        return self.to(D.float16)

    def bfloat16(self):
        return self.to(D.bfloat16)

    def long(self):
        return self.to(D.int64)

    def int(self):
        return self.to(D.int32)

    def bool(self):
        return self.to(D.bool_)

    def type_as(self, other):
        return self.to(other._dtype)

    def clone(self, memory_format=None) -> "Tensor":
        return apply(_op("clone"), self)

    def contiguous(self, memory_format=None) -> "Tensor":
        return self if self._data.flags.c_contiguous else self.clone()

    # ------------------------------------------------------------ in place
    def _check_inplace(self):
        if STATE.grad_enabled:
            if self.requires_grad and self._grad_fn is None:
                raise RuntimeError("a leaf Variable that requires grad is being used in an in-place operation.")
            base = self._base
            if base is not None and base.requires_grad and base._grad_fn is None:
                raise RuntimeError("a view of a leaf Variable that requires grad is being used in an in-place "
                                   "operation.")

    def _assign(self, new: "Tensor") -> "Tensor":
        """Write `new` into this tensor's storage: the core of every in-place op."""
        self._check_inplace()
        shape = self._data.shape
        if new._data.shape != shape:
            try:
                bshape = np.broadcast_shapes(new._data.shape, shape)
            except ValueError:
                bshape = None
            if bshape != shape:
                raise RuntimeError(f"output with shape {list(shape)} doesn't match the broadcast shape "
                                   f"{list(bshape) if bshape else list(new._data.shape)}")
            new = new.expand(*shape)
        if new._dtype is not self._dtype:
            new = new.to(self._dtype)
        if not self._data.flags.writeable:
            raise RuntimeError("unsupported operation: more than one element of the written-to tensor refers to "
                               "a single memory location. Please clone() the tensor before performing the "
                               "operation.")
        if type(self._data) is np.ndarray and type(new._data) is np.ndarray:
            np.copyto(self._data, new._data)
        else:
            from .device_array import assign
            assign(self, new)
        self._version[0] += 1
        if STATE.grad_enabled and (new.requires_grad or self.requires_grad or
                                   (self._base is not None and self._base.requires_grad)):
            from .autograd.inplace import rebase_history
            tracer, STATE.tracer = STATE.tracer, None     # autograd bookkeeping, not part of a trace
            try:
                rebase_history(self, new)
            finally:
                STATE.tracer = tracer
        if STATE.tracer is not None:
            STATE.tracer.record_mutation(self, new)
        return self

    def _inplace(self, op, other) -> "Tensor":
        """self <op>= other, promoting like PyTorch and refusing a lossy cast of the result."""
        from . import math as M
        if op is _SUB:
            M.check_bool_sub(self, other)
        if (type(other) is Tensor and other._dtype is self._dtype and not STATE.grad_enabled
                and self._dtype is not D.bfloat16       # stored as float32: the ufunc alone would not round
                and type(self._data) is np.ndarray and type(other._data) is np.ndarray
                and STATE.tracer is None and isinstance(op.eager, np.ufunc) and self._data.flags.writeable
                and np.broadcast_shapes(other._data.shape, self._data.shape) == self._data.shape):
            op.eager(self._data, other._data, out=self._data)
            self._version[0] += 1
            return self
        result = M.binary(op, self._as_operand() if 0 in op.saves else self, other)
        return self._assign_result(result)

    def _as_operand(self) -> "Tensor":
        """self as an input of its own in-place update: a copy while autograd records, because the
        write would overwrite a value the backward pass saved (PyTorch keeps `original_self` too)."""
        if STATE.grad_enabled and self.requires_grad:
            return apply(_op("clone"), self)
        return self

    def _assign_result(self, result: "Tensor") -> "Tensor":
        """Write an in-place op's result, refusing a lossy cast (int_t += 1.5) as PyTorch does."""
        if result._dtype is not self._dtype and not _can_cast(result._dtype, self._dtype):
            raise RuntimeError(f"result type {result._dtype.name} can't be cast to the desired output type "
                               f"{self._dtype.name}")
        return self._assign(result)

    def add_(self, other, *, alpha=1):
        return self._inplace(_op("add"), other if alpha == 1 else other * alpha)

    def sub_(self, other, *, alpha=1):
        return self._inplace(_op("sub"), other if alpha == 1 else other * alpha)

    def mul_(self, other):
        return self._inplace(_op("mul"), other)

    def div_(self, other, *, rounding_mode=None):
        from . import math as M
        return self._assign_result(M.div(self._as_operand(), other, rounding_mode=rounding_mode))

    def pow_(self, other):
        from . import math as M
        return self._assign_result(M.pow(self._as_operand(), other))

    def zero_(self):
        return self._assign(_full_like(self, 0))

    def fill_(self, value):
        if isinstance(value, Tensor):
            return self._assign(value.expand_as(self) if value.dim() == 0 else value)
        return self._assign(_full_like(self, value))

    def copy_(self, src, non_blocking=False):
        if not isinstance(src, Tensor):
            from .creation import tensor
            src = tensor(src)
        return self._assign(src)

    def clamp_(self, min=None, max=None):
        from . import math as M
        return self._assign_result(M.clamp(self, min, max))

    clip_ = clamp_

    def masked_fill_(self, mask, value):
        from . import math as M
        return self._assign(M.masked_fill(self, mask, value))

    def uniform_(self, a=0.0, b=1.0, *, generator=None):
        from . import random as Rnd
        return self._assign(Rnd.rand(*self.shape, dtype=self._dtype, generator=generator) * (b - a) + a)

    def normal_(self, mean=0.0, std=1.0, *, generator=None):
        from . import random as Rnd
        return self._assign(Rnd.randn(*self.shape, dtype=self._dtype, generator=generator) * std + mean)

    def __iadd__(self, other):
        return self._inplace(_op("add"), other)

    def __isub__(self, other):
        return self._inplace(_op("sub"), other)

    def __imul__(self, other):
        return self._inplace(_op("mul"), other)

    def __itruediv__(self, other):
        return self.div_(other)

    def __ifloordiv__(self, other):
        return self._inplace(_op("floor_divide"), other)

    def __imod__(self, other):
        return self._inplace(_op("remainder"), other)

    def __ipow__(self, other):
        from . import math as M
        return self._assign_result(M.pow(self._as_operand(), other))

    def __iand__(self, other):
        return self._inplace(_op("bitwise_and"), other)

    def __ior__(self, other):
        return self._inplace(_op("bitwise_or"), other)

    def __ixor__(self, other):
        return self._inplace(_op("bitwise_xor"), other)

    # ------------------------------------------------------------ operators
    def __add__(self, other):
        return _M.binary(_ADD, self, other)

    def __radd__(self, other):
        return _M.binary(_ADD, other, self)

    def __sub__(self, other):
        _M.check_bool_sub(self, other)
        return _M.binary(_SUB, self, other)

    def __rsub__(self, other):
        _M.check_bool_sub(other, self)
        return _M.binary(_SUB, other, self)

    def __mul__(self, other):
        return _M.binary(_MUL, self, other)

    def __rmul__(self, other):
        return _M.binary(_MUL, other, self)

    def __truediv__(self, other):
        return _M.div(self, other)

    def __rtruediv__(self, other):
        return _M.div(other, self)

    def __floordiv__(self, other):
        return _M.floor_divide(self, other)

    def __rfloordiv__(self, other):
        return _M.floor_divide(other, self)

    def __mod__(self, other):
        return _M.remainder(self, other)

    def __rmod__(self, other):
        return _M.remainder(other, self)

    def __pow__(self, other):
        return _M.pow(self, other)

    def __rpow__(self, other):
        return _M.pow(other, self)

    def __matmul__(self, other):
        return _M.matmul(self, other)

    def __rmatmul__(self, other):
        return _M.matmul(other, self)

    def __neg__(self):
        return _M.neg(self)

    def __pos__(self):
        return self

    def __abs__(self):
        return _M.abs(self)

    def __invert__(self):
        return _M.bitwise_not(self)

    def __and__(self, other):
        return _M.binary(_op("bitwise_and"), self, other)

    __rand__ = __and__

    def __or__(self, other):
        return _M.binary(_op("bitwise_or"), self, other)

    __ror__ = __or__

    def __xor__(self, other):
        return _M.binary(_op("bitwise_xor"), self, other)

    __rxor__ = __xor__

    def __eq__(self, other):
        if not isinstance(other, _COMPARABLE):      # a string, None, a list: not equal, as PyTorch (Python's
            return NotImplemented                   # fallback to identity), not a TypeError
        return _M.compare(_op("eq"), self, other)

    def __ne__(self, other):
        if not isinstance(other, _COMPARABLE):
            return NotImplemented
        return _M.compare(_op("ne"), self, other)

    def __lt__(self, other):
        return _M.compare(_op("lt"), self, other)

    def __le__(self, other):
        return _M.compare(_op("le"), self, other)

    def __gt__(self, other):
        return _M.compare(_op("gt"), self, other)

    def __ge__(self, other):
        return _M.compare(_op("ge"), self, other)

    __hash__ = object.__hash__

    def __len__(self):
        if self._data.ndim == 0:
            raise TypeError("len() of a 0-d tensor")
        return self._data.shape[0]

    def __iter__(self):
        if self._data.ndim == 0:
            raise TypeError("iteration over a 0-d tensor")
        return (self[i] for i in range(self._data.shape[0]))

    def __getitem__(self, key):
        from .indexing import getitem
        return getitem(self, key)

    def __setitem__(self, key, value):
        from .indexing import setitem
        setitem(self, key, value)

    def __repr__(self) -> str:
        return _format(self)

    __str__ = __repr__

    def __format__(self, spec):
        if self._data.ndim == 0 and spec:
            return format(self._data.item(), spec)
        return repr(self)

    def __reduce_ex__(self, protocol):
        return (_rebuild, (np.array(self._data), self._dtype.name, self.requires_grad))

    def __deepcopy__(self, memo):
        data = self._data
        t = Tensor._make(np.array(data, copy=True) if type(data) is np.ndarray else data.copy(), self._dtype)
        t.requires_grad = self.requires_grad
        if type(self) is not Tensor:
            t.__class__ = type(self)
            t.__dict__.update({k: v for k, v in self.__dict__.items()
                               if k not in ("_data", "_dtype", "_version", "_grad", "_grad_fn_raw",
                                            "_history_version")})
        if self.grad is not None:
            t.grad = self.grad.__deepcopy__(memo)
        memo[id(self)] = t
        return t


_NUMPY_ON_DEVICE = "can't convert cuda:0 device type tensor to numpy. Use Tensor.cpu() to copy the tensor to host memory first."


def parse_to_args(args, kwargs):
    """The (dtype, device, copy) that `to(...)` was asked for: `to(dtype)`, `to(device)`, `to(tensor)`,
    `to(device, dtype)` and the keyword forms, as Tensor.to and Module.to accept them."""
    dtype = kwargs.pop("dtype", None)
    device = kwargs.pop("device", None)
    copy = kwargs.pop("copy", False)
    kwargs.pop("non_blocking", None)
    if kwargs:
        raise TypeError(f"to() got unexpected keyword arguments {sorted(kwargs)}")
    for a in args:
        if isinstance(a, Tensor):
            dtype = a._dtype
        elif isinstance(a, D.DType):
            dtype = a
        elif a is not None:
            device = a
    return dtype, device, copy


def _rebuild(data, dtype_name, requires_grad):
    t = Tensor._make(data, D.as_dtype(dtype_name))
    t.requires_grad = requires_grad
    return t


def _op(name):
    return R.REGISTRY[name]


def _full_like(t, value):
    return apply(_op("full"), shape=t._data.shape, value=value, dtype=t._dtype)


def _can_cast(src, dst) -> bool:
    return src.category <= dst.category


def _wrap_dim(dim, ndim, what=""):
    n = max(ndim, 1)
    if not -n <= dim < n:
        raise IndexError(f"{what}: Dimension out of range (expected to be in range of [{-n}, {n - 1}], but got {dim})")
    return dim % n


def _format(t: Tensor) -> str:
    data = t._data if type(t._data) is np.ndarray else t._data.get()
    if t._dtype.is_floating_point:
        vals = np.asarray(data, dtype=np.float64)
        body = np.array2string(vals, separator=", ", precision=4, floatmode=_float_mode(vals), threshold=1000,
                               edgeitems=3, prefix="tensor(")
    else:
        body = np.array2string(data, separator=", ", threshold=1000, edgeitems=3, prefix="tensor(")
    extras = []
    if data.size == 0 and data.ndim != 1:
        extras.append(f"size={tuple(data.shape)}")
    if type(t._data) is not np.ndarray:
        extras.append(f"device='{t.device}'")
    if t._dtype not in (D.get_default_dtype(), D.int64, D.bool_):
        extras.append(f"dtype={t._dtype!r}")
    if t._grad_fn is not None:
        extras.append(f"grad_fn=<{t._grad_fn.name()}>")
    elif t.requires_grad:
        extras.append("requires_grad=True")
    return "tensor(" + body + "".join(", " + e for e in extras) + ")"


def _float_mode(vals: np.ndarray) -> str:
    """PyTorch prints whole numbers as `1.` and everything else with 4 decimals (`1.5000`, `1.0000e-05`)."""
    finite = np.abs(vals[np.isfinite(vals)])
    nonzero = finite[finite != 0]
    sci = nonzero.size and (nonzero.max() >= 1e8 or nonzero.min() < 1e-4 or nonzero.max() / nonzero.min() > 1000)
    return "maxprec_equal" if np.all(finite == np.floor(finite)) and not sci else "fixed"


_BOUND.Tensor = Tensor
_ADD, _SUB, _MUL = _op("add"), _op("sub"), _op("mul")
_COMPARABLE = (Tensor, numbers.Number, np.generic, np.ndarray)     # what == and != compare elementwise
_M = None   # tracetorch.math, bound by the package __init__ (it imports this module)
__all__ = ["Tensor", "Size", "describe"]
