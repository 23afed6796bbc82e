"""Eager ops on `device="cuda"` tensors: one generated, cached program per op signature.

No second code generator: an op call on device tensors becomes a small IR `Graph` (the op, with its
operands' layouts expressed as movement ops) compiled by the CUDA backend (fusion folds the layout into
the kernel's loads, so a transposed or sliced operand costs no copy), cached by its signature (op,
attributes, per operand: dtype, shape, strides and misalignment, or the scalar), and run on device
addresses (`CUDAExecutable.call_device`). Python-number operands of elementwise ops are 0-d device
inputs, not literals, so `x * lr` does not compile a kernel per value of `lr`.

View ops (reshape, permute, expand, slice) never launch anything: `DeviceArray.view_by`.
`apply_on_device` is what `ops.dispatch.apply` calls when an operand is a DeviceArray.
"""
from __future__ import annotations

import hashlib
import math
import threading

import numpy as np

from .. import dtypes as D
from ..device_array import DeviceArray, device_runtime
from ..ops import REGISTRY
from ..ops.dispatch import _BOUND, STATE, _op_error, describe, finish
from ..ops.registry import ELEMENTWISE, INDEX, Aval
from .ir import Graph, Node, Value

ALIGN = 16                  # program buffers start 16-byte aligned (the renderer's float4/int4 accesses)
_RESHAPE, _PERMUTE, _EXPAND, _SLICE, _CLONE = (REGISTRY[n] for n in ("reshape", "permute", "expand", "slice",
                                                                     "clone"))
_VIEW_OPS = {"reshape", "permute", "expand", "slice"}
_HALF = (D.float16, D.bfloat16)


class _Cache:
    def __init__(self):
        self.programs: dict = {}
        self.lock = threading.Lock()
        self.hits = 0
        self.compiles = 0


CACHE = _Cache()


def stats() -> dict:
    return {"programs": len(CACHE.programs), "compiles": CACHE.compiles, "hits": CACHE.hits}


def clear_cache() -> None:
    with CACHE.lock:
        CACHE.programs.clear()


# ---------------------------------------------------------------- dispatch entry
def apply_on_device(op, inputs, args, attrs):
    """`apply` for an op with device operands: check devices, run the op's cached program (or make the view),
    then record autograd and the tracer exactly as the CPU path does."""
    Tensor = _BOUND.Tensor
    args = _same_device(op, inputs, args)
    try:
        if op.name in _VIEW_OPS:
            src = args[0]
            data = src.reshape(attrs["shape"]) if op.name == "reshape" else src.view_by(lambda p: op.eager(p, **attrs))
            dtype = inputs[0]._dtype
        else:
            data, dtype = run_op(op, inputs, args, attrs)
    except (IndexError, ValueError, TypeError, RuntimeError, MemoryError, ArithmeticError) as e:
        raise _op_error(op, inputs, attrs, e) from e
    return finish(op, inputs, attrs, Tensor._make(data, dtype), op.view and data.block is args[0].block)


def _same_device(op, inputs, args) -> list:
    """PyTorch's rule: operands share one device, except 0-d CPU tensors (scalars) and CPU index tensors,
    which are copied over."""
    out = list(args)
    for k, a in enumerate(args):
        if type(a) is np.ndarray:
            if a.ndim == 0 or (op.kind == INDEX and k >= (1 if op.name == "index" else 2)):
                out[k] = DeviceArray.from_host(a)
            else:
                shown = ", ".join(f"{describe(x)} on {x.device}" if isinstance(x, _BOUND.Tensor) else describe(x)
                                  for x in inputs)
                raise RuntimeError(f"Expected all tensors to be on the same device, but found at least two devices, "
                                   f"cuda:0 and cpu! (when checking the arguments of {op.name}({shown}))")
    return out


# ---------------------------------------------------------------- one op
def run_op(op, inputs, args, attrs):
    """(result DeviceArray, its DType) of `op` on device operands `args` (Tensors' arrays or Python numbers)."""
    Tensor = _BOUND.Tensor
    scalar_dtype = _scalar_dtype(op, inputs) if op.kind == ELEMENTWISE else None
    operands, keys = [], []
    for x, a in zip(inputs, args):
        if type(a) is DeviceArray:
            dt = x._dtype if isinstance(x, Tensor) else D.from_numpy_dtype(a.dtype)
            keys.append(("t", dt.name, layout_key(a)))
            operands.append((a, dt))
        elif isinstance(a, (bool, int, float)) and scalar_dtype is not None and scalar_dtype not in _HALF:
            v = _plain(a)
            keys.append(("s", scalar_dtype.name))
            operands.append((_scalar_array(v, scalar_dtype), scalar_dtype))
        else:
            v = _plain(a)
            keys.append(("c", _freeze(v)))
            operands.append((v, None))
    key = (op.name, _freeze(attrs), tuple(keys))
    program = _program(key, lambda: _build(op, attrs, operands, key))
    arrays = [a for a, dt in operands if dt is not None]
    (result,) = program.call_device(arrays, [input_address(a) for a in arrays])
    return result, program.graph.outputs[0].dtype


def _program(key, build):
    program = CACHE.programs.get(key)
    if program is not None:
        CACHE.hits += 1
        return program
    with CACHE.lock:
        program = CACHE.programs.get(key)
        if program is None:
            program = CACHE.programs[key] = build()
            CACHE.compiles += 1
    return program


def _build(op, attrs, operands, key):
    graph_inputs, nodes, ins = [], [], []
    for a, dt in operands:
        if dt is None:
            ins.append(a)
            continue
        v, more = layout_nodes(a, dt)
        graph_inputs.append(v)
        nodes += more
        ins.append(more[-1].out if more else v)
    avals = [Aval(tuple(x.shape), x.dtype) if isinstance(x, Value) else x for x in ins]
    out = op.infer(*avals, **attrs)
    result = Value(tuple(out.shape), out.dtype)
    nodes.append(Node(op, tuple(ins), (result,), dict(attrs)))
    return _compile(Graph(tuple(graph_inputs), tuple(nodes), (result,), name=_name(op.name, key)))


def _compile(graph):
    from .cuda_backend import BACKEND
    return BACKEND.compile(graph)


def _name(op_name: str, key) -> str:
    return f"eager_{op_name}_{hashlib.sha1(repr(key).encode()).hexdigest()[:12]}"


# ---------------------------------------------------------------- operand layouts
def layout_key(a: DeviceArray) -> tuple:
    """What a program needs to know of an operand's layout: shape, element strides, and how many elements
    past a 16-byte boundary it starts (the program reads from that boundary)."""
    lead = (a.ptr % ALIGN) // a.itemsize
    if lead == 0 and a.is_contiguous():
        return (a.shape,)
    return (a.shape, a.element_strides(), lead)


def input_address(a: DeviceArray) -> int:
    return a.ptr - a.ptr % ALIGN


def layout_nodes(a: DeviceArray, dt) -> tuple:
    """(the program input Value for `a`'s memory, the movement nodes that give `a`'s elements in order)."""
    key = layout_key(a)
    if len(key) == 1:
        return Value(a.shape, dt), []
    shape, strides, lead = key
    plan = movement_plan(shape, strides, lead)
    if plan is None:
        raise NotImplementedError(f"device layout shape={shape} strides={strides} is not expressible with "
                                  "movement ops")
    total, steps = plan
    v = Value((total,), dt)
    nodes, cur = [], v
    for op, attrs in steps:
        out = Value(tuple(op.infer(Aval(cur.shape, dt), **attrs).shape), dt)
        nodes.append(Node(op, (cur,), (out,), attrs, aliases=True))
        cur = out
    return v, nodes


def movement_plan(shape, strides, lead):
    """(flat length, [(view op, attrs)]) reading elements `lead + sum(i_k * strides_k)` of a flat buffer
    in the order of `shape`, or None for overlapping layouts (which view ops never make).

    The strided dims, sorted by stride, become a row-major grid whose unit strides are the running gcds of
    the strides (so each dim's stride is a whole number of its units: the slice step), sliced, then
    permuted back; broadcast dims (stride 0) are expanded."""
    ndim = len(shape)
    dims = [d for d in range(ndim) if shape[d] != 1 and strides[d] != 0]
    order = sorted(dims, key=lambda d: -strides[d])
    units, u = [], 0
    for d in order:
        u = math.gcd(strides[d], u)
        units.append(u)
    sizes = [shape[d] for d in order]
    steps_ = [strides[d] // unit for d, unit in zip(order, units)]
    needs = [(s - 1) * st + 1 for s, st in zip(sizes, steps_)]
    extents = []
    for j in range(len(order)):
        extent = needs[0] if j == 0 else units[j - 1] // units[j]
        if extent < needs[j]:
            return None
        extents.append(extent)
    unit = units[-1] if units else 1
    if unit > 1:                         # the innermost unit is several elements: a last grid dim, taken at 0
        extents, needs, steps_ = extents + [unit], needs + [1], steps_ + [1]
    block = extents[0] * (units[0] if units else 1) if order else 1
    plan = []
    if lead:
        plan.append((_SLICE, dict(starts=(lead,), stops=(lead + block,), steps=(1,))))
    if len(extents) > 1:
        plan.append((_RESHAPE, dict(shape=tuple(extents))))
    if extents and (extents != needs or any(st != 1 for st in steps_)):
        plan.append((_SLICE, dict(starts=(0,) * len(extents), stops=tuple(needs), steps=tuple(steps_))))
    if unit > 1:
        plan.append((_RESHAPE, dict(shape=tuple(sizes))))
    perm = tuple(order.index(d) for d in dims)
    if perm != tuple(range(len(perm))):
        plan.append((_PERMUTE, dict(dims=perm)))
    kept = tuple(shape[d] if d in dims else 1 for d in range(ndim))
    if kept != tuple(shape[d] for d in dims):
        plan.append((_RESHAPE, dict(shape=kept)))
    if kept != tuple(shape):
        plan.append((_EXPAND, dict(shape=tuple(shape))))
    return lead + block, plan


def materialize(a: DeviceArray, dt=None) -> DeviceArray:
    """A contiguous device copy of any layout (one cached copy program per layout)."""
    dt = dt or D.from_numpy_dtype(a.dtype)
    key = ("materialize", dt.name, layout_key(a))

    def build():
        v, nodes = layout_nodes(a, dt)
        src = nodes[-1].out if nodes else v
        out = Value(tuple(a.shape), dt)
        nodes = nodes + [Node(_CLONE, (src,), (out,), {})]
        return _compile(Graph((v,), tuple(nodes), (out,), name=_name("copy", key)))

    (result,) = _program(key, build).call_device([a], [input_address(a)])
    return result


def copy_into(dst: DeviceArray, src: DeviceArray, dt) -> None:
    """dst[...] = src (same shape and dtype): the device half of `Tensor._assign`."""
    if dst.size == 0:
        return
    if src.block is dst.block and _overlap(src, dst):       # e.g. x.T.copy_(x): read everything first
        src = materialize(src, dt)
    if dst.is_contiguous():
        if not src.is_contiguous():
            src = materialize(src, dt)
        device_runtime().driver.memcpy_dtod(dst.ptr, src.ptr, dst.nbytes)
        return
    strided_write(dst, src, dt)


def _overlap(a: DeviceArray, b: DeviceArray) -> bool:
    return a.ptr < b.ptr + b.span_bytes() and b.ptr < a.ptr + a.span_bytes()


def strided_write(dst: DeviceArray, src: DeviceArray, dt) -> None:
    """Write `src` (any layout, broadcasts included) into the strided view `dst` with one generated copy
    kernel (cached per pair of layouts); the elements of dst's memory outside the view are untouched."""
    key = ("write", dt.name, _strided_key(dst), layout_key(src))

    def build():
        from codegen.cuda_steps import copy_kernel
        from codegen.kernel import Program
        dst_buf, dst_map = _strided_buffer("dst", dst, dt)
        src_buf, src_map = _strided_buffer("src", src, dt)
        kernel = copy_kernel("write", dst.shape, dst_buf, dst_map, src_buf, src_map)
        from .cuda_backend import BACKEND
        return _Direct(BACKEND.engine.compile(Program(_name("write", key), (kernel,), (src_buf,), (dst_buf,))))

    _program(key, build).run(src, dst)


class _Direct:
    """A compiled program run on caller-owned device memory (inputs and outputs at given addresses)."""

    def __init__(self, compiled):
        self.compiled = compiled

    def run(self, src: DeviceArray, dst: DeviceArray) -> None:
        self.compiled.run_device([input_address(src)], [input_address(dst)])


def _strided_key(a: DeviceArray) -> tuple:
    return (a.shape, a.element_strides(), (a.ptr % ALIGN) // a.itemsize)


def _strided_buffer(name: str, a: DeviceArray, dt):
    """(Buffer from a's 16-byte boundary to its last element, IndexMap of a's elements in that buffer)."""
    from codegen.cuda_steps import span, strided_map
    from codegen.kernel import Buffer
    lead = (a.ptr % ALIGN) // a.itemsize
    m = strided_map(a.shape, a.element_strides(), lead)
    return Buffer(name, dt, (max(span(a.shape, m), 1),)), m


# ---------------------------------------------------------------- helpers
def _scalar_dtype(op, inputs):
    skip_first = op.name == "where"
    for i, x in enumerate(inputs):
        if isinstance(x, _BOUND.Tensor) and not (skip_first and i == 0):
            return x._dtype
    return None


def _scalar_array(v, dt) -> DeviceArray:
    rt = device_runtime()
    key = (type(v), v, dt.name)
    a = rt.scalars.get(key)
    if a is None:
        if len(rt.scalars) > 4096:
            rt.scalars.clear()
        a = rt.scalars[key] = DeviceArray.from_host(np.array(v, dtype=dt.np))
    return a


def _plain(v):
    if type(v) in (int, float, bool):
        return v
    from .scalars import _plain as plain
    return plain(v)


def _freeze(v):
    if isinstance(v, dict):
        return tuple((k, _freeze(x)) for k, x in sorted(v.items()))
    if isinstance(v, (tuple, list)):
        return (type(v).__name__,) + tuple(_freeze(x) for x in v)
    if isinstance(v, np.ndarray):
        return ("array", v.shape, v.dtype.str, v.tobytes())
    if isinstance(v, D.DType):
        return ("dtype", v.name)
    if isinstance(v, float) and v != v:
        return ("nan",)
    if isinstance(v, (bool, int, float)):
        return (type(v).__name__, _plain(v))
    return v


__all__ = ["apply_on_device", "run_op", "materialize", "copy_into", "strided_write", "movement_plan", "stats",
           "clear_cache"]
