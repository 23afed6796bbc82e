"""dtypes and PyTorch's type-promotion rules.

A `DType` names a numpy storage type. bfloat16 has no numpy type: it is
stored as float32 and every result is rounded to bfloat16's 8-bit mantissa.
"""
from __future__ import annotations

import numpy as np


class DType:
    __slots__ = ("name", "np", "is_floating_point", "is_signed", "itemsize", "category", "rank")

    def __init__(self, name: str, np_type, category: int, rank: int, itemsize: int):
        self.name = name
        self.np = np.dtype(np_type)
        self.category = category          # 0 bool, 1 integer, 2 floating
        self.rank = rank                  # order inside the category
        self.is_floating_point = category == 2
        self.is_signed = name not in ("bool", "uint8")
        self.itemsize = itemsize

    def __repr__(self) -> str:
        return f"tracetorch.{self.name}"

    def __reduce__(self):
        return (dtype_named, (self.name,))      # pickled by name: unpickling gives the one instance

    def to_real(self):
        return self


bool_ = DType("bool", np.bool_, 0, 0, 1)
uint8 = DType("uint8", np.uint8, 1, 0, 1)
int8 = DType("int8", np.int8, 1, 1, 1)
int16 = DType("int16", np.int16, 1, 2, 2)
int32 = DType("int32", np.int32, 1, 3, 4)
int64 = DType("int64", np.int64, 1, 4, 8)
float16 = DType("float16", np.float16, 2, 0, 2)
bfloat16 = DType("bfloat16", np.float32, 2, 0, 2)
float32 = DType("float32", np.float32, 2, 1, 4)
float64 = DType("float64", np.float64, 2, 2, 8)

ALL_DTYPES = (bool_, uint8, int8, int16, int32, int64, float16, bfloat16, float32, float64)
_BY_NAME = {d.name: d for d in ALL_DTYPES}


def dtype_named(name: str) -> DType:
    """The dtype called `name` ("float32", "bool", ...)."""
    return _BY_NAME[name]
FLOAT_DTYPES = (float16, bfloat16, float32, float64)

# numpy scalar type -> DType (bfloat16 is never inferred from storage).
NP_TO_DTYPE = {d.np.type: d for d in ALL_DTYPES if d is not bfloat16}

_default_dtype = [float32]


def get_default_dtype() -> DType:
    return _default_dtype[0]


def set_default_dtype(d: DType) -> None:
    if not isinstance(d, DType) or d not in (float32, float64, float16, bfloat16):
        raise TypeError(f"set_default_dtype: only floating-point types are supported as the default type, got {d}")
    _default_dtype[0] = d


def from_numpy_dtype(npd) -> DType:
    try:
        return NP_TO_DTYPE[np.dtype(npd).type]
    except KeyError:
        raise TypeError(f"can't convert numpy dtype {np.dtype(npd)} to a tracetorch dtype; "
                        f"supported: {', '.join(d.name for d in ALL_DTYPES)}") from None


def as_dtype(d) -> DType:
    """Accept a DType, a numpy dtype, a Python type or a dtype name."""
    if isinstance(d, DType):
        return d
    if d is float:
        return float64
    if d is int:
        return int64
    if d is bool:
        return bool_
    if isinstance(d, str):
        alias = _ALIASES.get(d, d)
        for cand in ALL_DTYPES:
            if cand.name == alias:
                return cand
        raise TypeError(f"unknown dtype name {d!r}")
    return from_numpy_dtype(d)


_ALIASES = {"float": "float32", "double": "float64", "half": "float16", "long": "int64", "int": "int32",
            "short": "int16", "bool_": "bool"}


def promote_types(a: DType, b: DType) -> DType:
    """Smallest dtype holding both (torch.promote_types)."""
    if a is b:
        return a
    if a.category != b.category:
        return a if a.category > b.category else b
    if a.category == 2:
        if {a, b} == {float16, bfloat16}:
            return float32
        return a if a.rank > b.rank else b
    if a.category == 1:
        if uint8 in (a, b):
            other = b if a is uint8 else a
            return int16 if other is int8 else other
        return a if a.rank > b.rank else b
    return a


def scalar_dtype(v) -> DType:
    """dtype a Python scalar gets on its own (tt.tensor(3.0) -> default float)."""
    if isinstance(v, bool):
        return bool_
    if isinstance(v, int):
        return int64
    if isinstance(v, float):
        return get_default_dtype()
    if isinstance(v, complex):
        raise TypeError("complex numbers are not supported")
    raise TypeError(f"expected a Python scalar, got {type(v).__name__}")


def result_type(*operands) -> DType:
    """PyTorch's promotion: dimensioned tensors > zero-dim tensors > Python scalars.

    A lower-priority operand only matters when its category (bool < int < float)
    is higher than every higher-priority operand's.
    """
    dim_t = zero_t = sc = None
    for o in operands:
        dt = getattr(o, "_dtype", None)
        if dt is not None:
            if o._data.ndim:
                dim_t = dt if dim_t is None else promote_types(dim_t, dt)
            else:
                zero_t = dt if zero_t is None else promote_types(zero_t, dt)
        else:
            s = _scalar_kind(o)
            sc = s if sc is None else promote_types(sc, s)
    if dim_t is None and zero_t is None and sc is not None:
        return _scalar_in_category(sc)      # scalars alone: tt.tensor(1.5) is the default float dtype
    result = None
    for group in (dim_t, zero_t, sc):
        if group is None:
            continue
        if result is None:
            result = group
        elif group.category > result.category:
            result = group if group is not sc else _scalar_in_category(group)
    return result


def _scalar_kind(v) -> DType:
    if isinstance(v, bool):
        return bool_
    if isinstance(v, int):
        return int64
    if isinstance(v, float):
        return float64
    if isinstance(v, (np.generic,)):
        return from_numpy_dtype(v.dtype)
    raise TypeError(f"unsupported operand type {type(v).__name__}")


def _scalar_in_category(d: DType) -> DType:
    if d.category == 2:
        return get_default_dtype()
    if d.category == 1:
        return int64
    return bool_


def round_bfloat16(a: np.ndarray) -> np.ndarray:
    """Round float32 values to the nearest bfloat16 (ties to even), kept as float32."""
    a = np.asarray(a, dtype=np.float32)
    bits = a.view(np.uint32)
    rounding = ((bits >> 16) & 1) + np.uint32(0x7FFF)
    out = ((bits + rounding) & np.uint32(0xFFFF0000)).view(np.float32)
    return np.where(np.isnan(a), a, out)
