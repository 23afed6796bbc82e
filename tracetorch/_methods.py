"""Tensor methods that are the module-level functions with the tensor first
(`x.sum(1)` is `tt.sum(x, 1)`), installed once so each op is written once."""
from __future__ import annotations

from . import indexing, math, shape
from .tensor import Tensor

_FROM_MATH = """add sub subtract mul multiply div divide true_divide floor_divide remainder fmod pow neg negative abs
absolute sign exp log sqrt rsqrt sin cos tanh sigmoid log1p expm1 reciprocal floor ceil round trunc square isnan
isfinite isinf relu maximum minimum clamp clip masked_fill lerp sum mean var std prod amax amin max min argmax
argmin logsumexp all any cumsum norm softmax log_softmax matmul mm bmm mv dot outer logical_not logical_and
logical_or bitwise_not nonzero""".split()

_FROM_SHAPE = """view view_as reshape reshape_as flatten unflatten squeeze unsqueeze permute transpose swapaxes
swapdims t movedim expand expand_as broadcast_to repeat narrow select split chunk unbind tril triu flip""".split()

_FROM_INDEXING = "index_select gather".split()


def _where_method(self, condition, other):
    return math.where(condition, self, other)


def _new_factory(fill):
    def method(self, *size, dtype=None, device=None, requires_grad=False):
        from .creation import full
        if len(size) == 1 and isinstance(size[0], (tuple, list)):
            size = tuple(size[0])
        return full(size, fill, dtype=dtype or self._dtype, requires_grad=requires_grad)
    return method


def _new_full(self, size, fill_value, *, dtype=None, device=None, requires_grad=False):
    from .creation import full
    return full(tuple(size), fill_value, dtype=dtype or self._dtype, requires_grad=requires_grad)


def _new_tensor(self, data, *, dtype=None, device=None, requires_grad=False):
    from .creation import tensor
    return tensor(data, dtype=dtype or self._dtype, requires_grad=requires_grad)


def _sum_to_size(self, *size):
    if len(size) == 1 and isinstance(size[0], (tuple, list)):
        size = tuple(size[0])
    return math.sum_to_shape(self, size)


def _inplace_unary(fn):
    def method(self, *args, **kwargs):
        return self._assign_result(fn(self._as_operand(), *args, **kwargs))
    method.__name__ = fn.__name__ + "_"
    return method


_INPLACE_UNARY = "exp log sqrt sigmoid tanh relu neg abs floor ceil round reciprocal sign".split()


def install() -> None:
    for name in _FROM_MATH:
        setattr(Tensor, name, getattr(math, name))
    for name in _FROM_SHAPE:
        setattr(Tensor, name, getattr(shape, name))
    for name in _FROM_INDEXING:
        setattr(Tensor, name, getattr(indexing, name))
    for name in _INPLACE_UNARY:
        setattr(Tensor, name + "_", _inplace_unary(getattr(math, name)))
    Tensor.where = _where_method
    Tensor.new_zeros = _new_factory(0)
    Tensor.new_ones = _new_factory(1)
    Tensor.new_empty = _new_factory(0)
    Tensor.new_full = _new_full
    Tensor.new_tensor = _new_tensor
    Tensor.sum_to_size = _sum_to_size
