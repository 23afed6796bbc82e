"""Device steps of `index_put` with any number of index tensors, with and without accumulate.

`IndexRegion` is the geometry of `index_put(x, v, *idx, dims)` (ops/indexing.py): the index tensors
broadcast to one index shape B; the region the values broadcast to is B in place of the indexed dims
when those are consecutive, else B followed by the other dims (numpy's advanced-indexing rule). An
index position b in B addresses the "slot" sum_d idx_d[b] * stride_d of x's contiguous layout; the
other ("rest") dims add their own offsets.

- Without accumulate: `index_scatter_kernel`, one loop-level kernel, a team per index position writing
  its row. Duplicate positions write in an unspecified order, as in PyTorch on CUDA.
- With accumulate (`x[idx] += v` with repeats, embedding gradients): deterministic, without atomics.
  `index_keys_kernel` writes (slot, b) per position; the stable device merge sort (`cuda_sort`) groups
  equal slots in order of b; `SegmentSumSpec` then has one thread per (group, rest element) add the
  group's values in order of b onto x's element. That is numpy's `np.add.at` order, so results equal
  the CPU's bit for bit (float16 rounds after each add, as numpy does; bfloat16, stored as float32,
  rounds once at the store, as eager rounds the float32 result). Cost: the sort, O(n log^2 n) for n
  index positions, plus one pass over the values; a slot hit by many positions is summed by one thread
  per element (serial in the group size).

Indices are bounds-checked in `index_keys_kernel` / `index_scatter_kernel` (negatives wrap once); a bad
index raises IndexError after the program, which then returns nothing, so nothing is committed.
"""
from __future__ import annotations

import math
from dataclasses import dataclass
from types import SimpleNamespace
from typing import Optional

from tracetorch.dtypes import bool_, float16, int64

from .cuda_c import FLAT_THREADS, Launch, _Emitter, ctype, literal, storage_ctype
from .kernel import Buffer, CheckedIndex, Const, Expr, IndexMap, Kernel, Let, Load, Loop, Op, Store, Var
from .rendered import Check


def row_strides(shape) -> tuple[int, ...]:
    strides, step = [], 1
    for s in reversed(shape):
        strides.append(step)
        step *= max(s, 1)
    return tuple(reversed(strides))


def broadcast_map(m: IndexMap, shape, rank: int) -> IndexMap:
    """`m` (a map over its tensor's own `shape`) read over a space of `rank` dims that `shape` broadcasts to."""
    lead = rank - len(shape)
    return IndexMap((0,) * lead + tuple(0 if s == 1 else st for s, st in zip(shape, m.strides)), m.offset)


@dataclass(frozen=True)
class IndexRegion:
    shape: tuple                  # x's shape (the output is x's contiguous copy)
    dims: tuple                   # the indexed dims, sorted
    index_shape: tuple            # B: the index tensors' broadcast shape

    @property
    def rest(self) -> tuple:
        return tuple(d for d in range(len(self.shape)) if d not in self.dims)

    @property
    def consecutive(self) -> bool:
        return list(self.dims) == list(range(self.dims[0], self.dims[0] + len(self.dims)))

    def region_sources(self) -> list[tuple[str, int]]:
        """Per region dim: ("b", k) (dim k of B) or ("r", j) (j-th rest dim)."""
        bs = [("b", k) for k in range(len(self.index_shape))]
        rest = list(self.rest)
        if not self.consecutive:
            return bs + [("r", j) for j in range(len(rest))]
        before = [j for j, d in enumerate(rest) if d < self.dims[0]]
        return [("r", j) for j in before] + bs + [("r", j) for j in range(len(before), len(rest))]

    @property
    def region(self) -> tuple:
        return tuple(self.index_shape[k] if kind == "b" else self.shape[self.rest[k]]
                     for kind, k in self.region_sources())

    @property
    def positions(self) -> int:
        return math.prod(self.index_shape)

    @property
    def rest_shape(self) -> tuple:
        return tuple(self.shape[d] for d in self.rest)

    def slot(self, b: Expr, indices) -> Expr:
        """The checked slot of flat index position `b`: sum_d idx_d[b] * stride_d (`indices`: per indexed
        dim, (Buffer, IndexMap over B))."""
        coords = _coords(b, self.index_shape)
        strides = row_strides(self.shape)
        total: Optional[Expr] = None
        for d, (buf, m) in zip(self.dims, indices):
            at: Expr = Load(buf, m.index(coords) if coords else Const(m.offset, int64))
            if at.dtype is not int64:
                at = Op("cast", (at,), int64)
            what = f"index_put index for dimension {d} (tensor of shape {list(self.shape)})"
            term: Expr = CheckedIndex(at, self.shape[d], what)
            if strides[d] != 1:
                term = Op("mul", (term, Const(strides[d], int64)), int64)
            total = term if total is None else Op("add", (total, term), int64)
        return total


def _coords(flat: Expr, shape) -> list[Expr]:
    """Row-major coordinates of the flat position `flat` over `shape`."""
    out, inner = [], 1
    strides = row_strides(shape)
    for k, (size, stride) in enumerate(zip(shape, strides)):
        if size == 1:
            out.append(Const(0, int64))
            continue
        c = flat if stride == 1 else Op("floordiv", (flat, Const(stride, int64)), int64)
        if k > 0:
            c = Op("mod", (c, Const(size, int64)), int64)
        out.append(c)
    return out


def index_scatter_kernel(name: str, out: Buffer, region: IndexRegion, indices, v, v_map: IndexMap | None = None
                         ) -> Kernel:
    """out[slot(b) + rest] = v[region position of (b, rest)] for every index position b (out contiguous,
    already holding x). `v`: a Buffer read through `v_map` over the region (broadcast dims: stride 0), or
    a Python number."""
    b = Var("b")
    bcoords = _coords(b, region.index_shape)
    rvars = [Var(f"r{j}") for j in range(len(region.rest))]
    strides = row_strides(region.shape)
    target: Expr = Var("slot")
    for j, d in enumerate(region.rest):
        term = rvars[j] if strides[d] == 1 else Op("mul", (rvars[j], Const(strides[d], int64)), int64)
        target = Op("add", (target, term), int64)
    if isinstance(v, Buffer):
        at = [bcoords[k] if kind == "b" else rvars[k] for kind, k in region.region_sources()]
        value: Expr = Load(v, v_map.index(at) if at else Const(v_map.offset, int64))
        if v.dtype is not out.dtype:
            value = Op("cast", (value,), out.dtype)
    else:
        value = Const(v, out.dtype)
    body: tuple = (Store(out, target, value),)
    for j in reversed(range(len(region.rest))):
        body = (Loop(f"r{j}", region.rest_shape[j], body),)
    return Kernel(name, Loop("b", region.positions, (Let("slot", region.slot(b, indices)),) + body))


def index_keys_kernel(name: str, region: IndexRegion, indices, keys: Buffer, vals: Buffer) -> Kernel:
    """keys[b] = slot(b) (bounds-checked), vals[b] = b: the pairs the accumulate path sorts."""
    b = Var("b")
    return Kernel(name, Loop("b", region.positions, (Store(keys, b, region.slot(b, indices)), Store(vals, b, b))))


@dataclass(frozen=True)
class SegmentSumSpec:
    """out[key + rest] += v[(val, rest)] over the sorted (key, val) pairs, one thread per group of equal
    keys and rest element, adding the group's values in order (see the module docstring). `v` is a
    Buffer read through `v_map` over the region, or a Python number."""
    name: str
    region: IndexRegion
    keys: Buffer
    vals: Buffer
    out: Buffer
    v: object
    v_map: Optional[IndexMap] = None

    @property
    def inputs(self) -> tuple[Buffer, ...]:
        return (self.keys, self.vals) + ((self.v,) if isinstance(self.v, Buffer) else ())

    @property
    def outputs(self) -> tuple[Buffer, ...]:
        return (self.out,)

    @property
    def cuda_dtypes(self) -> tuple:
        return tuple({b.dtype for b in self.inputs + self.outputs})

    def render_cuda(self, symbol: str, checks: list[Check]) -> tuple[str, Launch]:
        region, out, dt = self.region, self.out, self.out.dtype
        names = {self.keys: "keys", self.vals: "vals", out: "out"}
        if isinstance(self.v, Buffer):
            names[self.v] = "v"
        em = _Emitter(SimpleNamespace(name=self.name), names, checks)       # (conversions and adds only)
        n, rows = region.positions, math.prod(region.rest_shape)
        params = [f"{'' if b is out else 'const '}{storage_ctype(b.dtype)}* __restrict__ {names[b]}"
                  for b in self.inputs + self.outputs]
        rest_sizes, rest_inner = region.rest_shape, row_strides(region.rest_shape)
        rcoord = [_coord_text("r", size, inner, j == 0) for j, (size, inner) in enumerate(zip(rest_sizes, rest_inner))]
        strides = row_strides(region.shape)
        target = " + ".join(["key"] + [f"{c} * {strides[d]}LL" for c, d in zip(rcoord, region.rest)])
        c = ctype(dt)
        if isinstance(self.v, Buffer):
            b_sizes, b_inner = region.index_shape, row_strides(region.index_shape)
            bcoord = [_coord_text("b", size, inner, k == 0) for k, (size, inner) in enumerate(zip(b_sizes, b_inner))]
            terms = [str(self.v_map.offset)] if self.v_map.offset else []
            for (kind, k), stride in zip(region.region_sources(), self.v_map.strides):
                if stride:
                    terms.append(f"{bcoord[k] if kind == 'b' else rcoord[k]} * {stride}LL")
            raw = f"v[{' + '.join(terms) or '0'}]"
            value = em.convert(em.from_storage(raw, self.v.dtype), self.v.dtype, dt)
            fetch = ["const long long b = vals[q];", f"const {c} value = {value};"]
        else:
            fetch = [f"const {c} value = {literal(self.v, dt)};"]
        added = em.combine("add", "acc", "value", dt) if dt is not bool_ else "(acc | value)"
        if dt is float16:                              # numpy adds float16 in float16: round every sum
            added = f"__half2float(__float2half_rn({added}))"
        body = [f"const long long p = f / {rows}LL, r = f % {rows}LL;",
                "const long long key = keys[p];",
                "if (p > 0 && keys[p - 1] == key) continue;           // not the first of its group",
                f"const long long t = {target};",
                f"{c} acc = {em.from_storage('out[t]', dt)};",
                "long long q = p;",
                "do {", *("    " + line for line in fetch), f"    acc = {added};", "    ++q;",
                f"}} while (q < {n}LL && keys[q] == key);",
                f"out[t] = {em.to_storage('acc', dt)};"]
        total = n * rows
        text = "\n".join([f"// index_put accumulate {self.name!r}: {n} positions x {rows} elements",
                          f'extern "C" __global__ void __launch_bounds__({FLAT_THREADS}) {symbol}'
                          f'({", ".join(params + ["int* __restrict__ tt_err"])}) {{',
                          f"    for (long long f = (long long)blockIdx.x * blockDim.x + threadIdx.x; f < {total}LL; "
                          "f += (long long)gridDim.x * blockDim.x) {",
                          *("        " + line for line in body), "    }", "}", ""])
        return text, Launch(symbol, self.inputs + self.outputs, FLAT_THREADS, total, FLAT_THREADS, "flat")


def _coord_text(var: str, size: int, inner: int, outermost: bool) -> str:
    if size == 1:
        return "0LL"
    c = var if inner == 1 else f"({var} / {inner}LL)"
    return c if outermost else f"({c} % {size}LL)"


__all__ = ["IndexRegion", "broadcast_map", "index_scatter_kernel", "index_keys_kernel", "SegmentSumSpec"]
