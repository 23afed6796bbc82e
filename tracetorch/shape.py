"""Shape composites: view/reshape with -1, squeeze/unsqueeze, transpose, repeat,
cat/stack/split/chunk, narrow, tril/triu — all from the movement primitives."""
from __future__ import annotations

import math

import numpy as np

from . import dtypes as D
from .ops import REGISTRY as R
from .ops.dispatch import apply
from .tensor import Tensor, _wrap_dim

RESHAPE, PERMUTE, EXPAND, SLICE = R["reshape"], R["permute"], R["expand"], R["slice"]


def _sizes(args, named=None):
    """Sizes given as varargs, one sequence, or PyTorch's keyword (x.reshape(shape=...), x.permute(dims=...))."""
    if named is not None:
        if args:
            raise TypeError("sizes given both positionally and by keyword")
        args = (named,)
    if len(args) == 1 and isinstance(args[0], (tuple, list)):
        args = args[0]
    return tuple(int(a) for a in args)


def _infer_minus_one(shape, numel, what="view"):
    shape = list(shape)
    neg = [i for i, s in enumerate(shape) if s == -1]
    if len(neg) > 1:
        raise RuntimeError("only one dimension can be inferred")
    known = math.prod(s for s in shape if s != -1)
    if neg:
        if known == 0 or numel % known:
            raise RuntimeError(f"shape '{shape}' is invalid for input of size {numel}")
        shape[neg[0]] = numel // known
    elif known != numel:
        raise RuntimeError(f"shape '{shape}' is invalid for input of size {numel}")
    return tuple(shape)


def reshape(x, *sizes, shape=None):
    shape = _infer_minus_one(_sizes(sizes, shape), x._data.size, "reshape")
    return apply(RESHAPE, x, shape=shape)


def view(x, *shape, size=None):
    if len(shape) == 1 and isinstance(shape[0], D.DType):
        raise NotImplementedError("view(dtype) is not supported")
    shape = _infer_minus_one(_sizes(shape, size), x._data.size)
    probe = x._data.view()
    try:
        probe.shape = shape
    except AttributeError:
        raise RuntimeError("view size is not compatible with input tensor's size and stride (at least one "
                           "dimension spans across two contiguous subspaces). Use .reshape(...) instead.") from None
    return apply(RESHAPE, x, shape=shape)


def view_as(x, other):
    return view(x, other.shape)


def reshape_as(x, other):
    return reshape(x, other.shape)


def _wrap_dim_1d(x, dim, what, error=RuntimeError):
    """A dim of x for an op that cuts along it: PyTorch refuses a 0-d x (where reductions take its dims
    -1 and 0), rather than indexing the empty shape."""
    if x._data.ndim == 0:
        raise error(f"{what} expects at least a 1-dimensional tensor")
    return _wrap_dim(dim, x._data.ndim, what)


def flatten(x, start_dim=0, end_dim=-1):
    n = x._data.ndim
    s, e = _wrap_dim(start_dim, n, "flatten"), _wrap_dim(end_dim, n, "flatten")    # a 0-d x takes dims -1 and 0
    if n == 0:
        return reshape(x, 1)
    if s > e:
        raise RuntimeError("flatten() has invalid args: start_dim cannot come after end_dim")
    shp = x._data.shape
    return reshape(x, shp[:s] + (math.prod(shp[s:e + 1]),) + shp[e + 1:])


def unflatten(x, dim, sizes):
    d = _wrap_dim_1d(x, dim, "unflatten")
    shp = x._data.shape
    sizes = _infer_minus_one(tuple(sizes), shp[d])
    return reshape(x, shp[:d] + sizes + shp[d + 1:])


def squeeze(x, dim=None):
    shp = x._data.shape
    if dim is None:
        dims = {i for i, s in enumerate(shp) if s == 1}
    else:
        ds = dim if isinstance(dim, (tuple, list)) else (dim,)
        dims = {_wrap_dim(d, len(shp), "squeeze") for d in ds}
        dims = {d for d in dims if len(shp) and shp[d] == 1}
    return apply(RESHAPE, x, shape=tuple(s for i, s in enumerate(shp) if i not in dims))


def unsqueeze(x, dim):
    shp = x._data.shape
    d = _wrap_dim(dim, len(shp) + 1, "unsqueeze")
    return apply(RESHAPE, x, shape=shp[:d] + (1,) + shp[d:])


def permute(x, *order, dims=None):
    dims = _sizes(order, dims)
    n = x._data.ndim
    if len(dims) != n:
        raise RuntimeError(f"permute(): number of dims don't match: the tensor has {n} dims, got {len(dims)}")
    wrapped = tuple(_wrap_dim(d, n, "permute") for d in dims)
    if len(set(wrapped)) != n:
        raise RuntimeError(f"permute(): duplicate dims are not allowed, got {list(dims)}")
    return apply(PERMUTE, x, dims=wrapped)


def transpose(x, dim0, dim1):
    n = x._data.ndim
    if n == 0:
        return apply(RESHAPE, x, shape=())
    a, b = _wrap_dim(dim0, n, "transpose"), _wrap_dim(dim1, n, "transpose")
    dims = list(range(n))
    dims[a], dims[b] = dims[b], dims[a]
    return apply(PERMUTE, x, dims=tuple(dims))


swapaxes = swapdims = transpose


def t(x):
    if x._data.ndim > 2:
        raise RuntimeError(f"t() expects a tensor with <= 2 dimensions, but self is {x._data.ndim}D")
    return transpose(x, 0, 1) if x._data.ndim == 2 else apply(RESHAPE, x, shape=x._data.shape)


def movedim(x, source, destination):
    n = x._data.ndim
    s, d = _wrap_dim(source, n, "movedim"), _wrap_dim(destination, n, "movedim")
    order = [i for i in range(n) if i != s]
    order.insert(d, s)
    return apply(PERMUTE, x, dims=tuple(order))


def expand(x, *sizes, size=None):
    sizes = _sizes(sizes, size)
    shp = x._data.shape
    lead = len(sizes) - len(shp)
    if lead < 0:
        raise RuntimeError(f"expand: the number of sizes provided ({len(sizes)}) must be greater or equal to the "
                           f"number of dimensions in the tensor ({len(shp)})")
    target = tuple(shp[i - lead] if s == -1 and i >= lead else s for i, s in enumerate(sizes))
    if any(s < 0 for s in target):
        raise RuntimeError(f"expand: -1 is not allowed in a leading, non-existing dimension: {list(sizes)}")
    if target == shp:
        return apply(RESHAPE, x, shape=shp)
    return apply(EXPAND, x, shape=target)


def expand_as(x, other):
    return expand(x, other.shape)


def broadcast_to(x, size):
    return expand(x, tuple(size))


def broadcast_tensors(*tensors):
    shape = np.broadcast_shapes(*(t._data.shape for t in tensors))
    return tuple(expand(t, shape) for t in tensors)


def broadcast_shapes(*shapes):
    from .tensor import Size
    return Size(np.broadcast_shapes(*shapes))


def repeat(x, *sizes, repeats=None):
    sizes = _sizes(sizes, repeats)
    shp = x._data.shape
    if len(sizes) < len(shp):
        raise RuntimeError("Number of dimensions of repeat dims can not be smaller than number of dimensions of "
                           "tensor")
    shp = (1,) * (len(sizes) - len(shp)) + shp
    # interleave a size-r axis before each dim, broadcast, then merge: a copy like torch.repeat
    y = apply(RESHAPE, x, shape=tuple(v for s in shp for v in (1, s)))
    y = apply(EXPAND, y, shape=tuple(v for r, s in zip(sizes, shp) for v in (r, s)))
    return reshape(y, tuple(r * s for r, s in zip(sizes, shp))).contiguous()


def narrow(x, dim, start, length):
    n = x._data.ndim
    d = _wrap_dim_1d(x, dim, "narrow")
    size = x._data.shape[d]
    if start < 0:
        start += size
    if not (0 <= start and start + length <= size and length >= 0):
        raise RuntimeError(f"narrow(): start ({start}) + length ({length}) exceeds dimension size ({size}).")
    starts = [0] * n
    stops = list(x._data.shape)
    starts[d], stops[d] = start, start + length
    return apply(SLICE, x, starts=tuple(starts), stops=tuple(stops), steps=(1,) * n)


def select(x, dim, index):
    d = _wrap_dim_1d(x, dim, "select", IndexError)
    size = x._data.shape[d]
    if not -size <= index < size:
        raise IndexError(f"select(): index {index} out of range for tensor of size {list(x._data.shape)} at "
                         f"dimension {d}")
    return squeeze(narrow(x, d, index % size, 1), d)


def cat(tensors, dim=0):
    tensors = list(tensors)
    if not tensors:
        raise RuntimeError("torch.cat(): expected a non-empty list of Tensors")
    for i, t in enumerate(tensors):
        if not isinstance(t, Tensor):
            raise TypeError(f"cat(): expected a sequence of Tensors, got an element of type {type(t).__name__}")
        if t._data.ndim == 0:
            raise RuntimeError(f"zero-dimensional tensor (at position {i}) cannot be concatenated")
    # legacy: 1-D empty tensors are skipped
    kept = [t for t in tensors if not (t._data.ndim == 1 and t._data.shape[0] == 0)] or tensors[:1]
    dt = D.result_type(*kept) if len({t._dtype for t in kept}) > 1 else kept[0]._dtype
    kept = [t if t._dtype is dt else t.to(dt) for t in kept]
    d = _wrap_dim(dim, kept[0]._data.ndim, "cat")
    if len(kept) == 1:
        return kept[0].clone()
    return apply(R["cat"], *kept, dim=d)


concat = concatenate = cat


def stack(tensors, dim=0):
    tensors = list(tensors)
    if not tensors:
        raise RuntimeError("stack expects a non-empty TensorList")
    shp = tensors[0]._data.shape
    for t in tensors:
        if t._data.shape != shp:
            raise RuntimeError(f"stack expects each tensor to be equal size, but got {list(shp)} and "
                               f"{list(t._data.shape)}")
    d = _wrap_dim(dim, len(shp) + 1, "stack")
    return cat([unsqueeze(t, d) for t in tensors], d)


def split(x, split_size_or_sections=None, dim=0, *, split_size=None):
    """tt.split(x, split_size_or_sections) and x.split(split_size): PyTorch's two keyword names."""
    if split_size is not None:
        split_size_or_sections = split_size
    d = _wrap_dim_1d(x, dim, "split")
    size = x._data.shape[d]
    if isinstance(split_size_or_sections, int):
        step = split_size_or_sections
        if step <= 0 and size:
            raise RuntimeError(f"split expects split_size be positive, got {step}")
        sections = [min(step, size - i) for i in range(0, size, step)] if size else [0]
    else:
        sections = list(split_size_or_sections)
        if sum(sections) != size:
            raise RuntimeError(f"split_with_sizes expects split_sizes to sum exactly to {size} (input tensor's "
                               f"size at dimension {d}), but got split_sizes={sections}")
    out, start = [], 0
    for s in sections:
        out.append(narrow(x, d, start, s))
        start += s
    return tuple(out)


def chunk(x, chunks, dim=0):
    if chunks <= 0:
        raise RuntimeError(f"chunk expects `chunks` to be greater than 0, got: {chunks}")
    d = _wrap_dim_1d(x, dim, "chunk")
    size = x._data.shape[d]
    if not size:                    # PyTorch gives `chunks` empty pieces of an empty dim, not one
        return split(x, [0] * chunks, d)
    return split(x, -(-size // chunks), d)


def unbind(x, dim=0):
    d = _wrap_dim_1d(x, dim, "unbind", IndexError)
    return tuple(select(x, d, i) for i in range(x._data.shape[d]))


def _tri_mask(x, diagonal, upper):
    from .creation import arange
    rows, cols = x._data.shape[-2:]
    r = arange(rows, device=x.device).reshape(-1, 1)
    c = arange(cols, device=x.device).reshape(1, -1)
    return (c - r >= diagonal) if upper else (c - r <= diagonal)


def tril(x, diagonal=0):
    if x._data.ndim < 2:
        raise RuntimeError("tril: input tensor must have at least 2 dimensions")
    from .math import where
    return where(_tri_mask(x, diagonal, False), x, _zero(x))


def triu(x, diagonal=0):
    if x._data.ndim < 2:
        raise RuntimeError("triu: input tensor must have at least 2 dimensions")
    from .math import where
    return where(_tri_mask(x, diagonal, True), x, _zero(x))


def _zero(x):
    """A zero that keeps x's dtype in `where` (a bare 0 would promote a bool tensor to int64)."""
    return False if x._dtype is D.bool_ else 0


def flip(x, dims):
    from .indexing import getitem
    n = x._data.ndim
    ds = {_wrap_dim(d, n, "flip") for d in (dims if isinstance(dims, (list, tuple)) else (dims,))}
    from .creation import arange
    out = x
    for d in sorted(ds):
        size = x._data.shape[d]
        idx = arange(size - 1, -1, -1)
        out = getitem(out, (slice(None),) * d + (idx,))
    return out


__all__ = [n for n, v in list(globals().items())
           if not n.startswith("_") and getattr(v, "__module__", None) == __name__]
