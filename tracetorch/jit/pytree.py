"""Flatten nested tuples/lists/dicts of arguments and results into leaves and a spec.

A spec is a hashable description of the structure in which every leaf that
is not a tensor is part of the spec itself: comparing specs is the guard on
the structure and on Python constants passed as arguments (a changed `int`
argument is a changed spec, hence a new trace). Tensor leaves are the
positions the program reads or fills.
"""
from __future__ import annotations

from ..tensor import Tensor

TENSOR = ("tensor",)
_CONST_TYPES = (int, float, bool, str, bytes, complex, type(None), type(Ellipsis))


def flatten(obj, leaf_types=(Tensor,)) -> tuple[list, tuple]:
    """(leaves in order, spec): leaves are the tensors (instances of `leaf_types`)."""
    leaves: list = []
    return leaves, _flatten(obj, leaves, leaf_types)


def _flatten(obj, leaves, leaf_types):
    if isinstance(obj, leaf_types):
        leaves.append(obj)
        return TENSOR
    cls = type(obj)
    if cls in _CONST_TYPES:
        return ("const", cls, obj)
    if cls is tuple or cls is list:
        return (cls.__name__, tuple(_flatten(x, leaves, leaf_types) for x in obj))
    if isinstance(obj, tuple) and hasattr(obj, "_fields"):
        return ("namedtuple", cls, tuple(_flatten(x, leaves, leaf_types) for x in obj))
    if isinstance(obj, dict):
        keys = tuple(obj.keys())
        return ("dict", cls, keys, tuple(_flatten(obj[k], leaves, leaf_types) for k in keys))
    if isinstance(obj, (int, float)):        # numpy scalars, IntEnum, ...: constants by value
        return ("const", cls, obj)
    return ("object", id(obj), _Ref(obj))


def held_by_identity(obj) -> bool:
    """Whether a spec holds `obj` by identity (an "object" leaf: compared with `is`), not by value or
    structure."""
    return _flatten(obj, [], (Tensor,))[0] == "object"


class _Ref:
    """An opaque argument: compared by identity (and kept alive so its id is not reused)."""

    __slots__ = ("obj",)

    def __init__(self, obj):
        self.obj = obj

    def __eq__(self, other):
        return isinstance(other, _Ref) and other.obj is self.obj

    def __hash__(self):
        return id(self.obj)

    def __repr__(self):
        return f"<{type(self.obj).__name__} object>"


def unflatten(spec, leaves):
    """Rebuild a structure from a spec whose tensor positions take successive `leaves`."""
    if spec[0] == "tensor":             # a lone tensor (the common compiled result)
        return leaves[0]
    it = iter(leaves)
    return _unflatten(spec, it)


def _unflatten(spec, it):
    tag = spec[0]
    if tag == "tensor":
        return next(it)
    if tag == "const":
        return spec[2]
    if tag == "tuple":
        return tuple(_unflatten(s, it) for s in spec[1])
    if tag == "list":
        return [_unflatten(s, it) for s in spec[1]]
    if tag == "namedtuple":
        return spec[1](*[_unflatten(s, it) for s in spec[2]])
    if tag == "dict":
        values = [_unflatten(s, it) for s in spec[3]]
        out = spec[1]() if spec[1] is not dict else {}
        for k, v in zip(spec[2], values):
            out[k] = v
        return out
    if tag == "object":
        return spec[2].obj
    raise ValueError(f"bad spec {spec!r}")


def leaf_names(spec, prefix: str) -> list[str]:
    """Readable names of the tensor leaves: `x`, `batch[0]`, `inputs['img']`."""
    out: list[str] = []
    _names(spec, prefix, out)
    return out


def _names(spec, prefix, out):
    tag = spec[0]
    if tag == "tensor":
        out.append(prefix)
    elif tag in ("tuple", "list"):
        for i, s in enumerate(spec[1]):
            _names(s, f"{prefix}[{i}]", out)
    elif tag == "namedtuple":
        for f, s in zip(spec[1]._fields, spec[2]):
            _names(s, f"{prefix}.{f}", out)
    elif tag == "dict":
        for k, s in zip(spec[2], spec[3]):
            _names(s, f"{prefix}[{k!r}]", out)


def format_spec(spec) -> str:
    """A spec as Python-like text: tensors as `T`, constants by value."""
    tag = spec[0]
    if tag == "tensor":
        return "T"
    if tag == "const":
        return repr(spec[2])
    if tag in ("tuple", "list", "namedtuple"):
        items = spec[1] if tag != "namedtuple" else spec[2]
        inner = ", ".join(format_spec(s) for s in items)
        return f"[{inner}]" if tag == "list" else f"({inner}{',' if len(items) == 1 else ''})"
    if tag == "dict":
        return "{" + ", ".join(f"{k!r}: {format_spec(s)}" for k, s in zip(spec[2], spec[3])) + "}"
    return repr(spec[2])
