"""`Parameter`: a tensor that a Module registers as learnable when assigned
as an attribute. It shares the storage of the tensor it wraps."""
from __future__ import annotations

import numpy as np

from .. import dtypes as D
from ..tensor import Tensor


class Parameter(Tensor):
    """A leaf tensor that requires grad by default and is found by `Module.parameters()`."""

    _is_param = True

    def __init__(self, data: Tensor | None = None, requires_grad: bool = True):
        if data is None:
            data = Tensor._make(np.zeros((0,), D.get_default_dtype().np), D.get_default_dtype())
        if not isinstance(data, Tensor):
            raise TypeError(f"Parameter: expected a Tensor as data, got {type(data).__name__}")
        self._data = data._data
        self._dtype = data._dtype
        self._version = data._version
        if requires_grad:
            self.requires_grad_(True)

    def __repr__(self) -> str:
        return "Parameter containing:\n" + super().__repr__()

    __str__ = __repr__

    def __reduce_ex__(self, protocol):
        return (_rebuild_parameter, (np.array(self._data), self._dtype.name, self.requires_grad))


def _rebuild_parameter(data, dtype_name, requires_grad):
    return Parameter(Tensor._make(data, D.as_dtype(dtype_name)), requires_grad)
