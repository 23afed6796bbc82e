"""Device code for the extern ops the fused kernels do not cover (the CUDA backend's `device_steps`).

- `RandSpec`: a program step (like `cuda_matmul.MatmulSpec`) drawing `ops/random.py`'s standard normal
  numbers in CUDA C: Box-Muller in float64 of the uniform draws i and n + i of the generator (the prelude's
  `tt_random_double`, bit for bit the CPU's), so a device draw has the CPU's bits up to libm's last-bit
  differences in log1p/cos. Seed and offset are read from device memory, so one compiled kernel serves
  every call. (Uniform draws need no step: they are the `random` op of the fused kernels.)
- `copy_kernel`: a loop-level kernel `dst[dst_map(i)] = src[src_map(i)]` over a shape, rendered by the
  ordinary renderers: writes into strided device views, and the pieces of `cat` and `slice_scatter`.
- (index_put: `codegen.cuda_index`; the device sort and randperm: `codegen.cuda_sort`.)
- `cumsum_kernel`: a running sum along one dim, one row per team, added in order (numpy's rounding;
  float16/bfloat16 add in float32 and round at the store, as eager computes them).
- `arg_kernel`: argmax/argmin as two reductions per row: the max (NaN-propagating), then the first
  position holding it (or holding a NaN), numpy's first-occurrence rule.
- `int_matmul_kernel`: integer and bool matmuls (any batch dims) as a reduction per output element in
  int64, wrapped to the output dtype: what the CPU computes (numpy in int64, then `astype`).
"""
from __future__ import annotations

import math
from dataclasses import dataclass

from tracetorch.dtypes import DType, bfloat16, bool_, float16, float32, float64, int64

from .cuda_c import FLAT_THREADS, Launch, storage_ctype
from .kernel import Accumulator, Assign, Buffer, Const, IndexMap, Kernel, Load, Loop, Op, Reduce, Store, Var
from .templates import identity
from .rendered import Check


@dataclass(frozen=True)
class RandSpec:
    """out[i] = standard normal draw i of the stream (seed[seed_at], offset[offset_at])."""
    name: str
    seed: Buffer
    offset: Buffer
    out: Buffer
    seed_at: int = 0
    offset_at: int = 0

    def __post_init__(self):
        for buf, at in ((self.seed, self.seed_at), (self.offset, self.offset_at)):
            if buf.dtype is not int64 or not 0 <= at < buf.size:
                raise TypeError(f"rand {self.name!r}: generator state {buf!r} must be int64 holding element {at}")
        if not self.out.dtype.is_floating_point:
            raise TypeError(f"rand {self.name!r}: output {self.out!r} must be floating point")

    @property
    def inputs(self) -> tuple[Buffer, ...]:
        return tuple(dict.fromkeys((self.seed, self.offset)))

    @property
    def outputs(self) -> tuple[Buffer, ...]:
        return (self.out,)

    @property
    def cuda_dtypes(self) -> tuple[DType, ...]:
        return (self.out.dtype,)

    def render_cuda(self, symbol: str, checks: list[Check]) -> tuple[str, Launch]:
        buffers = self.inputs + (self.out,)
        names = {buf: f"p{i}" for i, buf in enumerate(buffers)}
        params = [f"{'' if buf is self.out else 'const '}{storage_ctype(buf.dtype)}* __restrict__ {names[buf]}"
                  for buf in buffers] + ["int* __restrict__ tt_err"]
        n = self.out.size
        lines = [f"// rand {self.name!r}: {n} normal {self.out.dtype.name}",
                 f'extern "C" __global__ void __launch_bounds__({FLAT_THREADS}) {symbol}({", ".join(params)}) {{',
                 f"    const long long seed = {names[self.seed]}[{self.seed_at}];",
                 f"    const long long base = {names[self.offset]}[{self.offset_at}];",
                 f"    for (long long i = (long long)blockIdx.x * blockDim.x + threadIdx.x; i < {n}LL; "
                 "i += (long long)gridDim.x * blockDim.x) {",
                 f"        {names[self.out]}[i] = {self._value()};",
                 "    }", "}", ""]
        return "\n".join(lines), Launch(symbol, buffers, FLAT_THREADS, n, FLAT_THREADS, "flat")

    def _value(self) -> str:
        dt, n = self.out.dtype, self.out.size
        u1 = "tt_random_double(tt_wrap_add<long long>(base, i), seed)"
        u2 = f"tt_random_double(tt_wrap_add<long long>(base, i + {n}LL), seed)"
        x = f"(sqrt(-2.0 * log1p(-{u1})) * cos(6.283185307179586 * {u2}))"
        return {float64: x, float32: f"(float){x}", float16: f"__double2half({x})",
                bfloat16: f"__bfloat162float(__float2bfloat16_rn((float){x}))"}[dt]


# ---------------------------------------------------------------- strided copies
def copy_kernel(name: str, shape, dst: Buffer, dst_map: IndexMap, src, src_map: IndexMap | None = None) -> Kernel:
    """dst[dst_map(i)] = src[src_map(i)] (cast to dst's dtype) for every i in `shape`; `src` is a Buffer or a
    Python number. Elements of dst outside the map are left as they are."""
    shape = tuple(shape) or (1,)
    dst_map = _pad(dst_map, shape)
    at = [Var(f"i{k}") for k in range(len(shape))]
    if isinstance(src, Buffer):
        value = Load(src, _pad(src_map, shape).index(at))
        if src.dtype is not dst.dtype:
            value = Op("cast", (value,), dst.dtype)
    else:
        value = Const(src, dst.dtype)
    body = (Store(dst, dst_map.index(at), value),)
    for k in range(len(shape) - 1, -1, -1):
        body = (Loop(f"i{k}", shape[k], body),)
    return Kernel(name, body[0])


def cumsum_kernel(name: str, out: Buffer, dim: int, x: Buffer, x_map: IndexMap) -> Kernel:
    """out = cumsum(x, dim) (x read through `x_map` over out's shape, cast to out's dtype); out contiguous."""
    shape, dt = out.shape, out.dtype
    strides = row_major(shape).strides
    others = [d for d in range(len(shape)) if d != dim]
    at = [Var(f"i{d}") for d in range(len(shape))]
    value = Load(x, x_map.index(at))
    if x.dtype is not dt:
        value = Op("cast", (value,), dt)
    acc = float32 if dt in (float16, bfloat16) else dt     # (the renderers round every half op's result)
    if acc is not dt:
        value = Op("cast", (value,), acc)
    total = Var("total", acc)
    stored = total if acc is dt else Op("cast", (total,), dt)
    body = (Assign("total", Op("add", (total, value), acc)),
            Store(out, IndexMap(strides, 0).index(at), stored))
    row = (Accumulator("total", Const(0, acc)), Loop(f"i{dim}", shape[dim], body))
    return Kernel(name, _rows(shape, others, row))


def arg_kernel(name: str, combine: str, out: Buffer, x: Buffer, x_map: IndexMap, shape, dims) -> Kernel:
    """out[kept] = first position along `dims` (row-major over them) of the max (combine "max") or min of x,
    x read through `x_map` over `shape`; out holds the kept dims' elements in order (int64)."""
    shape, dims = tuple(shape), tuple(dims)
    kept = [d for d in range(len(shape)) if d not in dims]
    at = [Var(f"i{d}") for d in range(len(shape))]
    dt = x.dtype
    v = Load(x, x_map.index(at))
    pos = row_major([shape[d] for d in dims]).index([at[d] for d in dims])
    count = Const(math.prod(shape[d] for d in dims), int64)
    best = Var("best", dt)
    hit = Op("eq", (v, best), bool_)
    if dt.is_floating_point:
        hit = Op("or", (hit, Op("ne", (v, v), bool_)), bool_)
    first = Op("where", (hit, pos, count), int64)

    def scan(stmt):
        for d in reversed(dims):
            stmt = Loop(f"i{d}", shape[d], (stmt,))
        return stmt
    row = (Accumulator("best", identity(combine, dt)), scan(Reduce("best", combine, v)),
           Accumulator("first", Const(int(count.value), int64)), scan(Reduce("first", "min", first)),
           Store(out, row_major([shape[d] for d in kept]).index([at[d] for d in kept]),
                 Var("first", int64)))
    return Kernel(name, _rows(shape, kept, row))


def int_matmul_kernel(name: str, out: Buffer, a: Buffer, a_map: IndexMap, b: Buffer, b_map: IndexMap, k: int
                      ) -> Kernel:
    """out[..., i, j] = sum_k a[..., i, k] * b[..., k, j] in int64 (wrapping), cast to out's dtype (bool:
    nonzero). `a_map` / `b_map` are over (*batch, m, k) / (*batch, k, n), broadcast dims with stride 0."""
    shape = out.shape
    at = [Var(f"i{d}") for d in range(len(shape))]
    kv = Var("kk")

    def wide(buf, m, idx):
        x = Load(buf, m.index(idx))
        return x if buf.dtype is int64 else Op("cast", (x,), int64)
    product = Op("mul", (wide(a, a_map, at[:-1] + [kv]), wide(b, b_map, at[:-2] + [kv, at[-1]])), int64)
    total = Var("total", int64)
    value = total if out.dtype is int64 else Op("cast", (total,), out.dtype)
    row = (Accumulator("total", Const(0, int64)), Loop("kk", k, (Reduce("total", "add", product),)),
           Store(out, row_major(shape).index(at), value))
    return Kernel(name, _rows(shape, list(range(len(shape))), row))


def _rows(shape, outer_dims, row) -> Loop:
    """Loops over `outer_dims` around the statements of one row (a one-iteration loop when there are none)."""
    if not outer_dims:
        return Loop("row", 1, row)
    body = row
    for d in reversed(outer_dims):
        body = (Loop(f"i{d}", shape[d], body),)
    return body[0]


def row_major(shape) -> IndexMap:
    """The map of a contiguous array of `shape` (size-1 dims keep their stride, unlike IndexMap.contiguous)."""
    strides, step = [], 1
    for s in reversed(shape):
        strides.append(step)
        step *= max(s, 1)
    return IndexMap(tuple(reversed(strides)), 0)


def _pad(m: IndexMap, shape: tuple) -> IndexMap:
    """A map over `shape` (a 0-d map becomes a map over (1,))."""
    if len(m.strides) == len(shape):
        return m
    if not m.strides and shape == (1,):
        return IndexMap((0,), m.offset)
    raise ValueError(f"index map {m} does not fit shape {shape}")


def strided_map(shape, element_strides, offset: int) -> IndexMap:
    """The IndexMap of a strided view (element strides; dims of size 1 read stride 0)."""
    return IndexMap(tuple(0 if s == 1 else st for s, st in zip(shape, element_strides)), offset)


def span(shape, m: IndexMap) -> int:
    """Elements a buffer needs to hold every index of `m` over `shape` (strides are never negative)."""
    if 0 in tuple(shape):
        return 0
    return m.offset + sum(st * (s - 1) for s, st in zip(shape, m.strides)) + 1


__all__ = ["RandSpec", "copy_kernel", "cumsum_kernel", "arg_kernel", "int_matmul_kernel", "row_major", "strided_map",
           "span"]
