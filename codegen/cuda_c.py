"""Render a `Program` of loop-level kernels to ONE CUDA C++ source module (nvcc / pycuda `SourceModule`).

One lowering, two renderers: this file reads the same `codegen.kernel` IR as `codegen.llvm_ir` and
keeps its numerics (numpy semantics for integer wrapping, floor division, remainder, casts and NaN-
propagating max/min; float16/bfloat16 computed in float and rounded after every op (as eager); no fused
multiply-adds in elementwise arithmetic). Each `Kernel` becomes an `extern "C" __global__` function
`void k(T0* buf0, ..., int* err)` over its buffers (`Kernel.buffers` order) and the error flag.

How a kernel's loops map to the GPU (`plan_kernel`):
- flat: the outer loop, and the perfect nest below it when its iterations provably touch disjoint
  memory, is flattened into one index `f` walked by a grid-stride loop, one element per thread.
  Accesses contiguous over the flattened space read `buf[f]`; float32/int32 ones are read and
  written as `float4`/`int4` (four elements per thread) when the buffers start 16-byte aligned, which
  the engine guarantees (device allocations are 256-byte aligned, arena slots 64-byte).
- rows: a kernel whose body has loops (reductions, row-wise softmax / layer norm) runs one *team* per
  iteration of the outer loop(s): a warp (several rows per block) or a whole block. Statements outside
  loops run redundantly on every thread of the team (their values are the same everywhere); stores
  outside loops are made by the team's first thread. Loops of `Reduce`s are split across the team
  (per-thread partials, then `tt_team_reduce`: `__shfl_down_sync` plus shared memory across warps);
  loops of independent stores are split across the team; any other loop runs in step on every
  thread. The blocked `SoftmaxStats` / `Moments` stages of `codegen.templates` are recognized and run
  as one block-parallel pass (online softmax, Welford/Chan). Barriers are placed where a thread may
  read or overwrite memory another thread of the team wrote or read since the last barrier.
- rows whose inner loops are tiny (at most `SERIAL_MAX` iterations) run one row per thread instead.

Bounds and errors: kernels pass `verify_bounds` first. A failed check (data-dependent index out of
range, integer division by zero, negative integer power) stores its 1-based id into `err[0]` with
`atomicCAS` (the first failure wins); `RenderedCuda.checks` maps ids to exceptions, as on the CPU.
"""
from __future__ import annotations

import math
import re
from dataclasses import dataclass
from typing import Optional, Sequence

import numpy as np

from tracetorch.dtypes import DType, bfloat16, bool_, float16, float32, float64, int8, int16, int32, int64, uint8

from .cuda_prelude import PRELUDE
from .kernel import (Accumulator, Arg, Assign, Buffer, CheckedIndex, Const, ExternCall, Expr, Kernel, Let, Load, Loop,
                     Op, Program, Reduce, Stmt, Store, Var, stmt_exprs, walk_exprs, walk_stmts)
from .rendered import Check, unique_symbol
from .scalar import RANDOM_BITS
from .templates import identity
from .memo import ScopedMemo
from .verify import verify_bounds

ARCH = "sm_90"
NVCC_OPTIONS = ("-std=c++17",)
FLAT_THREADS = 256          # threads per block of flat kernels
WARP = 32
WARP_ROWS_PER_BLOCK = 4     # rows (warps) per block when a warp handles a row
BLOCKS_PER_SM = 32          # grid-stride kernels launch at most this many blocks per multiprocessor
TARGET_SMS = 132            # H100: only used to decide how many threads a row gets
SERIAL_MAX = 8              # rows whose loops have at most this many iterations run one row per thread
VECTOR_MAX_NODES = 300      # flat kernels with bigger bodies stay scalar (4 copies of the body)

_CTYPE = {bool_: "bool", int8: "signed char", int16: "short", int32: "int", int64: "long long", uint8: "unsigned char",
          float16: "float", bfloat16: "float", float32: "float", float64: "double"}
_STORAGE = {**_CTYPE, bool_: "unsigned char", float16: "__half"}
_VECTOR = {float32: "float4", bfloat16: "float4", int32: "int4"}   # 4-byte storage read 16 bytes at a time
_F32_MATH = {"exp": "expf", "log": "logf", "sqrt": "sqrtf", "sin": "sinf", "cos": "cosf", "tanh": "tanhf",
             "log1p": "log1pf", "expm1": "expm1f", "floor": "floorf", "ceil": "ceilf", "rint": "rintf",
             "abs": "fabsf", "erf": "erff"}
_F64_MATH = {k: v[:-1] for k, v in _F32_MATH.items()}
_COMPARE = {"eq": "==", "ne": "!=", "lt": "<", "le": "<=", "gt": ">", "ge": ">="}


def ctype(dt: DType) -> str:
    """The C type a value of `dt` is computed in (float16/bfloat16: float; bool: bool)."""
    return _CTYPE[dt]


def storage_ctype(dt: DType) -> str:
    """The C element type of a buffer of `dt` (bool: a byte; bfloat16 is stored as float32, like numpy here)."""
    return _STORAGE[dt]


def literal(value, dt: DType) -> str:
    """A C literal of `value` in `dt`, exact (float32 constants are rounded to float32 first, as numpy does)."""
    if dt is bool_:
        return "true" if value else "false"
    if dt.is_floating_point:
        v = float(value)
        single = dt is not float64
        if single:
            with np.errstate(over="ignore"):
                v = float(np.float32(v))
        if math.isnan(v):
            return "NAN" if single else "((double)NAN)"
        if math.isinf(v):
            text = "INFINITY" if single else "((double)INFINITY)"
            return text if v > 0 else f"(-{text})"
        text = repr(v) + ("f" if single else "")
        return f"({text})" if text.startswith("-") else text
    bits = 8 * dt.itemsize
    v = int(value) & ((1 << bits) - 1)
    if dt is not uint8 and v >= 1 << (bits - 1):
        v -= 1 << bits
    if dt is int64:
        return "(-9223372036854775807LL - 1)" if v == -2 ** 63 else (f"({v}LL)" if v < 0 else f"{v}LL")
    if dt is int32:
        return "(-2147483647 - 1)" if v == -2 ** 31 else (f"({v})" if v < 0 else str(v))
    return f"(({ctype(dt)}){v})"


# ---------------------------------------------------------------- the rendered module
@dataclass(frozen=True)
class Launch:
    """How to launch one generated kernel: `symbol(*buffers, err)` with `block` threads per block.

    Grid-stride kernels cover `work` units (elements, rows), `per_block` per block and step; their grid
    is capped by the device's multiprocessor count. Kernels with a fixed grid (matmul tiles) give it.
    """
    symbol: str
    buffers: tuple[Buffer, ...]
    block: int
    work: int
    per_block: int
    plan: str                                    # "flat", "rows", "matmul": for reports and tests
    fixed_grid: Optional[tuple[int, int, int]] = None

    def grid(self, sm_count: int) -> tuple[int, int, int]:
        if self.fixed_grid is not None:
            return self.fixed_grid
        blocks = -(-self.work // self.per_block)
        return (max(1, min(blocks, sm_count * BLOCKS_PER_SM)), 1, 1)


@dataclass(frozen=True)
class RenderedCuda:
    source: str                                  # the whole module, every function extern "C"
    launches: tuple[Optional[Launch], ...]       # per program step: None for an ExternCall (run on the host)
    checks: tuple[Check, ...]                    # error flag value i+1 -> checks[i]

    @property
    def symbols(self) -> tuple[str, ...]:
        return tuple(l.symbol for l in self.launches if l is not None)


def render_program(program: Program) -> RenderedCuda:
    """The CUDA module of `program`: one `__global__` function per kernel (and per device step such as a
    `cuda_matmul.MatmulSpec`); ExternCall steps are left to the host."""
    checks: list[Check] = []
    taken: set[str] = set()
    parts, launches = [], []
    for n, step in enumerate(program.steps):
        if isinstance(step, ExternCall):
            launches.append(None)
            continue
        symbol = unique_symbol(f"k{n}_{step.name}", taken)
        if isinstance(step, Kernel):
            text, launch = render_kernel(step, symbol, checks)
        elif hasattr(step, "render_cuda"):
            text, launch = step.render_cuda(symbol, checks)
        else:
            raise TypeError(f"program {program.name!r}: step {step!r} cannot run on CUDA")
        parts.append(text)
        launches.append(launch)
    headers = _headers(program)
    source = "\n".join([f"// tracetorch program {program.name!r}", *headers, PRELUDE, *parts])
    return RenderedCuda(source, tuple(launches), tuple(checks))


def _headers(program: Program) -> list[str]:
    used: set = set()
    for step in program.steps:
        if isinstance(step, Kernel):
            used.update(b.dtype for b in step.buffers)
            used.update(e.dtype for e in walk_exprs(step.outer))
        elif not isinstance(step, ExternCall):
            used.update(getattr(step, "cuda_dtypes", ()))
    out = ["#include <cuda_fp16.h>"] if float16 in used else []
    if bfloat16 in used:
        out.append("#include <cuda_bf16.h>")
    for step in program.steps:
        out += [h for h in getattr(step, "cuda_headers", ()) if h not in out]
    return out


# ---------------------------------------------------------------- index analysis
def _affine(e: Expr, varying: frozenset, local: frozenset):
    """(coefficients of the `varying` loop variables, constant, uses other names) of an int index, or None.

    Names in `local` (Lets and accumulators that change between iterations) make it non-affine; any
    other name is an outer value, the same for every iteration."""
    if isinstance(e, Const) and not e.dtype.is_floating_point:
        return {}, int(e.value), False
    if isinstance(e, Var):
        if e.name in varying:
            return {e.name: 1}, 0, False
        return None if e.name in local else ({}, 0, True)
    if not isinstance(e, Op) or e.dtype.is_floating_point:
        return None
    if e.op == "cast" and not e.args[0].dtype.is_floating_point and e.args[0].dtype is not bool_:
        return _affine(e.args[0], varying, local)
    forms = [_affine(a, varying, local) for a in e.args]
    if any(f is None for f in forms):
        return None
    if e.op in ("add", "sub"):
        (ca, ka, sa), (cb, kb, sb) = forms
        sign = 1 if e.op == "add" else -1
        coeffs = dict(ca)
        for v, c in cb.items():
            coeffs[v] = coeffs.get(v, 0) + sign * c
        return coeffs, ka + sign * kb, sa or sb
    if e.op == "neg":
        (c, k, s), = forms
        return {v: -x for v, x in c.items()}, -k, s
    if e.op == "mul":
        (ca, ka, sa), (cb, kb, sb) = forms
        if not ca and not sa:
            return {v: ka * x for v, x in cb.items()}, ka * kb, sb
        if not cb and not sb:
            return {v: kb * x for v, x in ca.items()}, ka * kb, sa
    return None


def _injective(coeffs: dict, loops: Sequence[tuple[str, int]]) -> bool:
    """Whether sum(coeffs[v] * v) takes distinct values over the box of `loops` (a mixed-radix test)."""
    terms = []
    for var, extent in loops:
        if extent <= 1:
            continue
        c = abs(coeffs.get(var, 0))
        if c == 0:
            return False
        terms.append((c, extent))
    span = 0
    for c, extent in sorted(terms):
        if c <= span:
            return False
        span += c * (extent - 1)
    return True


def _locals(stmts: Sequence[Stmt]) -> frozenset:
    names = set()
    for root in stmts:
        for s in walk_stmts(root):
            if isinstance(s, (Let, Accumulator)):
                names.add(s.name)
    return frozenset(names)


def _disjoint(stmts: Sequence[Stmt], dist: Sequence[tuple[str, int]]) -> bool:
    """Whether the iterations of loops `dist` over `stmts` touch disjoint memory, so threads may run them
    in any order: each buffer stored to has one store index, affine and injective over all loops
    enclosing its stores, and is loaded only at that index (an in-place update of the same element)."""
    local = _locals(stmts)
    stores: dict[Buffer, Expr] = {}

    def visit(s: Stmt, loops: list) -> bool:
        if isinstance(s, Loop):
            return all(visit(b, loops + [(s.var, s.extent)]) for b in s.body)
        if isinstance(s, Store):
            if stores.setdefault(s.buffer, s.index) != s.index:
                return False
            form = _affine(s.index, frozenset(v for v, _ in loops), local)
            return form is not None and _injective(form[0], loops)
        return True

    if not all(visit(s, list(dist)) for s in stmts):
        return False
    for root in stmts:
        for node in walk_exprs(root):
            if isinstance(node, Load) and node.buffer in stores and node.index != stores[node.buffer]:
                return False
    return True


def _perfect_nest(loop: Loop) -> tuple[list[tuple[str, int]], tuple[Stmt, ...]]:
    """The loops of a perfect nest starting at `loop` (each body a single loop) and the innermost body."""
    dist, body = [(loop.var, loop.extent)], loop.body
    while len(body) == 1 and isinstance(body[0], Loop):
        dist.append((body[0].var, body[0].extent))
        body = body[0].body
    return dist, body


def _has_loop(stmts: Sequence[Stmt]) -> bool:
    return any(isinstance(s, Loop) for s in stmts)


def _max_extent(stmts: Sequence[Stmt]) -> int:
    """The largest flattened extent of any loop nest inside `stmts` (how much work a row can split)."""
    best = 0
    for s in stmts:
        if isinstance(s, Loop):
            dist, body = _perfect_nest(s)
            best = max(best, math.prod(e for _, e in dist), _max_extent(body))
    return best


def _loop_kind(loop: Loop) -> str:
    """"reduce" (only Reduces into outer accumulators), "store" (independent stores) or "uniform"."""
    kinds = {type(s) for s in walk_stmts(loop)}
    if kinds <= {Loop, Let, Reduce} and Reduce in kinds:
        reduced = {s.name for s in walk_stmts(loop) if isinstance(s, Reduce)}
        read = {e.name for e in walk_exprs(loop) if isinstance(e, Var)}
        if not reduced & read:
            return "reduce"
    if kinds <= {Loop, Let, Store} and Store in kinds:
        dist, body = _perfect_nest(loop)
        if _disjoint(body, dist):
            return "store"
    return "uniform"


# ---------------------------------------------------------------- planning
@dataclass(frozen=True)
class KernelPlan:
    """How a kernel maps onto the GPU (see the module docstring)."""
    kind: str                                  # "flat" or "rows"
    dist: tuple[tuple[str, int], ...]          # the loops flattened into one index (elements or rows)
    body: tuple[Stmt, ...]                     # what each element / row runs
    threads: int                               # threads per block
    team: int = 1                              # rows: threads per row (32: a warp, else the whole block)

    @property
    def work(self) -> int:
        return math.prod(e for _, e in self.dist)


def plan_kernel(kernel: Kernel) -> KernelPlan:
    dist, body = _perfect_nest(kernel.outer)
    if not _disjoint(body, dist):                      # only the outer loop is known to be independent
        dist, body = [(kernel.outer.var, kernel.outer.extent)], kernel.outer.body
    work = math.prod(e for _, e in dist)
    if not _has_loop(body):
        return KernelPlan("flat", tuple(dist), tuple(body), FLAT_THREADS)
    inner = _max_extent(body)
    if inner <= SERIAL_MAX:
        return KernelPlan("flat", tuple(dist), tuple(body), FLAT_THREADS)
    threads = _pow2_at_least(-(-inner // 8))
    if work < 2 * TARGET_SMS:                           # few rows: give each more threads
        threads = _pow2_at_least(inner)
    threads = min(max(threads, WARP), 1024)
    if threads == WARP:
        return KernelPlan("rows", tuple(dist), tuple(body), WARP * WARP_ROWS_PER_BLOCK, WARP)
    return KernelPlan("rows", tuple(dist), tuple(body), threads, threads)


def _pow2_at_least(n: int) -> int:
    return 1 << max(0, (n - 1).bit_length())


# ---------------------------------------------------------------- kernels
def render_kernel(kernel: Kernel, symbol: str, checks: list[Check]) -> tuple[str, Launch]:
    """The `__global__` function of one kernel (appending its checks to `checks`) and its launch."""
    verify_bounds(kernel)
    plan = plan_kernel(kernel)
    buffers = kernel.buffers
    written = set(kernel.written)
    params = [f"{'' if b in written else 'const '}{storage_ctype(b.dtype)}* __restrict__ p{k}_{_ident(b.name)}"
              for k, b in enumerate(buffers)]
    names = {b: f"p{k}_{_ident(b.name)}" for k, b in enumerate(buffers)}
    em = _Emitter(kernel, names, checks)
    header = (f'extern "C" __global__ void __launch_bounds__({plan.threads}) '
              f'{symbol}({", ".join(params + ["int* __restrict__ tt_err"])})')
    em.declare_accumulators(kernel.outer)
    if plan.kind == "flat":
        flat = _FlatRenderer(em, plan)
        flat.render()
        per_thread = 4 if flat.vector else 1
        launch = Launch(symbol, buffers, plan.threads, plan.work, plan.threads * per_thread, "flat")
    else:
        _RowRenderer(em, plan).render()
        rows_per_block = plan.threads // plan.team
        launch = Launch(symbol, buffers, plan.threads, plan.work, rows_per_block, "rows")
    em.drop_unused_accumulators()
    text = "\n".join([f"// kernel {kernel.name!r}: {plan.kind}, {plan.work} "
                      f"{'elements' if plan.kind == 'flat' else 'rows'}", header + " {", *em.lines, "}", ""])
    return text, launch


def _ident(name: str) -> str:
    return re.sub(r"[^A-Za-z0-9_]", "_", name)


class _Emitter:
    """Emits C statements for expressions and sequential statements, one temporary per expression node.

    Expressions are DAGs: a node is emitted once per C block and reused (memo scopes mirror the C blocks).
    After a write to memory or to an accumulator, memoized values that read memory or accumulators are
    dropped (the LLVM renderer does the same)."""

    def __init__(self, kernel: Kernel, params: dict[Buffer, str], checks: list[Check]):
        self.kernel, self.params, self.checks = kernel, params, checks
        self.lines: list[str] = []
        self.depth = 1
        self.scopes: list[dict] = [{}]           # IR name -> C expression (loop variables and Lets)
        self.memo = ScopedMemo()
        self.accs: dict[str, tuple[str, DType]] = {}
        self.reduce_into: dict[str, str] = {}    # accumulator -> per-thread partial inside a split reduction
        self.aliases: dict[Expr, str] = {}       # index expressions known to equal a C expression
        self.lane_loads: dict[Load, str] = {}    # loads replaced by a component of a vector load
        self.counter = 0

    # ------------------------------------------------------------ output
    def emit(self, line: str) -> None:
        self.lines.append("    " * self.depth + line)

    def open(self, header: str) -> None:
        self.emit(f"{header} {{" if header else "{")
        self.depth += 1
        self.scopes.append({})
        self.memo.push()

    def close(self) -> None:
        self.depth -= 1
        self.emit("}")
        self.scopes.pop()
        self.memo.pop()

    def fresh(self, prefix: str) -> str:
        self.counter += 1
        return f"{prefix}{self.counter}"

    def temp(self, dt: DType, value: str, prefix: str = "t") -> str:
        name = self.fresh(prefix)
        self.emit(f"const {ctype(dt)} {name} = {value};")
        return name

    def bind(self, ir_name: str, c_expr: str) -> None:
        self.scopes[-1][ir_name] = c_expr

    def declare_accumulators(self, root: Stmt) -> None:
        for s in walk_stmts(root):
            if isinstance(s, Accumulator) and s.name not in self.accs:
                c = self.fresh(f"a_{_ident(s.name)}_")
                self.accs[s.name] = (c, s.init.dtype)
                self.emit(f"{ctype(s.init.dtype)} {c};")

    def drop_unused_accumulators(self) -> None:
        """Remove declarations of accumulators the rendered code never uses (e.g. replaced by an online stage)."""
        text = "\n".join(self.lines)
        for c, dt in self.accs.values():
            if len(re.findall(rf"\b{c}\b", text)) == 1:
                self.lines.remove("    " + f"{ctype(dt)} {c};")

    def forget_state(self) -> None:
        self.memo.forget_state()

    # ------------------------------------------------------------ statements (one thread, in order)
    def stmt(self, s: Stmt) -> None:
        if isinstance(s, Loop):
            if s.extent <= 0:
                return
            v = self.fresh(f"i_{_ident(s.var)}_")
            self.open(f"for (long long {v} = 0; {v} < {s.extent}LL; ++{v})")
            self.bind(s.var, v)
            for b in s.body:
                self.stmt(b)
            self.close()
        elif isinstance(s, Let):
            self.bind(s.name, self.expr(s.value))
        elif isinstance(s, (Accumulator, Assign)):
            c, dt = self.accs[s.name]
            value = s.init if isinstance(s, Accumulator) else s.value
            self.emit(f"{c} = {self.convert(self.expr(value), value.dtype, dt)};")
            self.forget_state()
        elif isinstance(s, Reduce):
            c, dt = self.accs[s.name]
            target = self.reduce_into.get(s.name, c)
            value = self.convert(self.expr(s.value), s.value.dtype, dt)
            self.emit(f"{target} = {self.combine(s.combine, target, value, dt)};")
            self.forget_state()
        elif isinstance(s, Store):
            self.emit(self.store_text(s) + ";")
            self.forget_state()
        else:
            raise TypeError(f"kernel {self.kernel.name!r}: not a statement: {s!r}")

    def store_text(self, s: Store) -> str:
        index = self.expr(s.index, index=True)
        value = self.convert(self.expr(s.value), s.value.dtype, s.buffer.dtype)
        return f"{self.params[s.buffer]}[{index}] = {self.to_storage(value, s.buffer.dtype)}"

    def combine(self, combine: str, acc: str, value: str, dt: DType) -> str:
        if combine in ("add", "mul", "max", "min") and dt is not bool_:
            return f"tt_{combine}({acc}, {value})"
        if combine in ("and", "min"):
            return f"({acc} & {value})" if dt is bool_ else f"({ctype(dt)})({acc} & {value})"
        return f"({acc} | {value})" if dt is bool_ else f"({ctype(dt)})({acc} | {value})"

    # ------------------------------------------------------------ expressions
    def expr(self, e: Expr, index: bool = False) -> str:
        return self.expr_state(e, index)[0]

    def expr_state(self, e: Expr, index: bool = False) -> tuple[str, bool]:
        if e in self.aliases:
            return self.aliases[e], False
        return self.memo.get((e, index), lambda: self._emit(e, index))

    def _emit(self, e: Expr, index: bool) -> tuple[str, bool]:
        if isinstance(e, Const):
            return literal(e.value, e.dtype), False
        if isinstance(e, Var):
            if e.name in self.accs:
                c, dt = self.accs[e.name]
                return self.temp(dt, c), True             # a snapshot: the accumulator changes later
            for scope in reversed(self.scopes):
                if e.name in scope:
                    return scope[e.name], False
            raise NameError(f"kernel {self.kernel.name!r}: unbound variable {e.name!r}")
        if isinstance(e, Load):
            if e in self.lane_loads:
                return self.temp(e.dtype, self.from_storage(self.lane_loads[e], e.dtype)), True
            idx = self.expr(e.index, index=True)
            raw = f"{self.params[e.buffer]}[{idx}]"
            return self.temp(e.dtype, self.from_storage(raw, e.dtype)), True
        if isinstance(e, CheckedIndex):
            inner, stateful = self.expr_state(e.index, index=True)
            return self.checked_index(e, inner), stateful
        if isinstance(e, Op):
            done = [self.expr_state(a, index) for a in e.args]
            text = self.op(e, [v for v, _ in done], index)
            return self.temp(e.dtype, text), any(s for _, s in done)
        if isinstance(e, Arg):
            raise ValueError(f"kernel {self.kernel.name!r}: unbound placeholder {e} (substitute inputs first)")
        raise TypeError(f"kernel {self.kernel.name!r}: not an expression: {e!r}")

    def from_storage(self, raw: str, dt: DType) -> str:
        if dt is bool_:
            return f"({raw} != 0)"
        if dt is float16:
            return f"__half2float({raw})"
        return raw

    def to_storage(self, v: str, dt: DType) -> str:
        if dt is bool_:
            return f"(unsigned char){v}"
        if dt is float16:
            return f"__float2half_rn({v})"
        if dt is bfloat16:
            return f"__bfloat162float(__float2bfloat16_rn({v}))"
        return v

    def fail_if(self, condition: str, check: Check) -> None:
        """If `condition`, report the check through the error flag (execution goes on with safe values)."""
        self.checks.append(check)
        self.emit(f"if ({condition}) tt_fail(tt_err, {len(self.checks)});")

    def checked_index(self, e: CheckedIndex, inner: str) -> str:
        v = self.temp(int64, self.convert(inner, e.index.dtype, int64))
        wrapped = self.temp(int64, f"{v} < 0 ? {v} + {e.size}LL : {v}")
        ok = self.temp(bool_, f"(unsigned long long){wrapped} < {e.size}ULL")
        self.fail_if(f"!{ok}", Check(IndexError, f"kernel {self.kernel.name!r}: {e.what} out of range for "
                                                 f"a dimension of size {e.size}", self.kernel.name))
        return self.temp(int64, f"{ok} ? {wrapped} : 0LL")

    # ------------------------------------------------------------ scalar ops
    def op(self, e: Op, args: list[str], index: bool) -> str:
        name, dt = e.op, e.dtype
        in_dt = e.args[0].dtype
        if name == "cast":
            return self.convert(args[0], in_dt, dt)
        if name == "where":
            return f"{args[0]} ? {args[1]} : {args[2]}"
        if name in _COMPARE:
            return f"{args[0]} {_COMPARE[name]} {args[1]}"
        if name == "random":
            if dt is float64:
                return f"tt_random_double({args[0]}, {args[1]})"
            return f"tt_random_float<{RANDOM_BITS[dt]}>({args[0]}, {args[1]})"
        if len(args) == 2:
            return self.round_half(self.binary(name, e.args, args, in_dt, index), dt)
        return self.round_half(self.unary(name, args[0], in_dt), dt)

    def round_half(self, v: str, dt: DType) -> str:
        """A float16/bfloat16 op's value, computed in float, rounded to its dtype as eager rounds every op."""
        if dt is float16:
            return f"__half2float(__float2half_rn({v}))"
        if dt is bfloat16:
            return f"__bfloat162float(__float2bfloat16_rn({v}))"
        return v

    def binary(self, name: str, exprs, args: list[str], dt: DType, index: bool) -> str:
        x, y = args
        c = ctype(dt)
        if name in ("and", "or", "xor"):
            sym = {"and": "&", "or": "|", "xor": "^"}[name]
            return f"{x} {sym} {y}" if dt is bool_ else f"({c})({x} {sym} {y})"
        if name in ("max", "min"):
            if dt is bool_:
                return f"{x} | {y}" if name == "max" else f"{x} & {y}"
            if dt.is_floating_point:
                return f"tt_f{name}({x}, {y})"
            return f"{x} {'>' if name == 'max' else '<'} {y} ? {x} : {y}"
        if dt is bool_:
            raise TypeError(f"kernel {self.kernel.name!r}: {name} is not defined on bool")
        if dt.is_floating_point:
            d = "d" if dt is float64 else "f"
            if name in ("add", "sub", "mul", "div"):
                return f"__{d}{name}_rn({x}, {y})"
            if name == "pow":
                return self.float_pow(x, exprs[1], y, dt)
            if name in ("floordiv", "mod"):
                return f"tt_{name}_float<{c}>({x}, {y})"
        else:
            if name in ("add", "sub", "mul"):
                if index and dt is int64:          # index arithmetic never wraps (the LLVM renderer says nsw)
                    return f"{x} {'+' if name == 'add' else '-' if name == 'sub' else '*'} {y}"
                return f"tt_wrap_{name}<{c}>({x}, {y})"
            if name in ("floordiv", "mod"):             # x // 0 and x % 0 raise, like eager and PyTorch
                self.fail_if(f"{y} == 0", Check(ZeroDivisionError,
                                                f"kernel {self.kernel.name!r}: integer division by zero",
                                                self.kernel.name))
                return f"tt_{name}_int<{c}>({x}, {y})"
            if name == "pow":
                if dt is not uint8:
                    self.fail_if(f"{y} < 0", Check(ValueError, f"kernel {self.kernel.name!r}: Integers to "
                                                               f"negative integer powers are not allowed.",
                                                   self.kernel.name))
                return f"tt_pow_int<{c}>({x}, {y})"
        raise TypeError(f"kernel {self.kernel.name!r}: {name} on {dt.name} is not supported")

    def float_pow(self, x: str, y_expr: Expr, y: str, dt: DType) -> str:
        """x ** y: small constant exponents as multiplications and x ** 0.5 as sqrt (numpy's and PyTorch's
        scalar-exponent kernels: -inf ** 0.5 is NaN, -0.0 ** 0.5 is -0.0), like the LLVM renderer; else pow."""
        d = "d" if dt is float64 else "f"
        if isinstance(y_expr, Const):
            k = float(y_expr.value)
            if k == 0.5:
                return f"{'sqrt' if dt is float64 else 'sqrtf'}({x})"
            if k == 1.0:
                return x
            if k == 2.0:
                return f"__{d}mul_rn({x}, {x})"
            if k == 3.0:
                return f"__{d}mul_rn(__{d}mul_rn({x}, {x}), {x})"
            if k == -1.0:
                return f"__{d}div_rn({literal(1.0, dt)}, {x})"
        return f"pow{'' if dt is float64 else 'f'}({x}, {y})"

    def unary(self, name: str, x: str, dt: DType) -> str:
        c = ctype(dt)
        flt = dt.is_floating_point
        table = _F64_MATH if dt is float64 else _F32_MATH
        if flt and name in table:
            return f"{table[name]}({x})"
        if name == "sigmoid":
            return f"tt_sigmoid({x})"
        if name == "rsqrt":
            d = "d" if dt is float64 else "f"
            return f"__{d}div_rn({literal(1.0, dt)}, {table['sqrt']}({x}))"
        if name == "neg":
            return f"-{x}" if flt else f"tt_wrap_neg<{c}>({x})"
        if name == "not" or (name == "invert" and dt is bool_):
            return f"!{x}"
        if name == "invert":
            return f"({c})(~{x})"
        if name in ("floor", "ceil", "rint"):
            return x
        if name == "abs":
            return x if dt in (bool_, uint8) else f"tt_wrap_abs<{c}>({x})"
        if name == "sign":
            if flt:
                return f"tt_sign({x})"
            return f"({c})({x} != 0)" if dt is uint8 else f"({c})(({x} > 0) - ({x} < 0))"
        if name == "isnan":
            return f"{x} != {x}" if flt else "false"
        if name == "isfinite":
            return f"{table['abs']}({x}) < {literal(math.inf, dt)}" if flt else "true"
        raise TypeError(f"kernel {self.kernel.name!r}: {name} on {dt.name} is not supported")

    # ------------------------------------------------------------ conversions
    def convert(self, v: str, src: DType, dst: DType) -> str:
        """A computed value converted between dtypes, with the LLVM renderer's (numpy's) semantics."""
        if src is dst:
            return v
        if dst is bool_:
            return f"({v} != {literal(0, src)})"
        if dst.is_floating_point:
            if dst is float16:                      # through float32, as eager and PyTorch (c10::Half(float))
                return f"__half2float(__float2half_rn({self._to_float(v, src, float32)}))"
            if dst is bfloat16:                     # through float32, as eager does (round_bfloat16)
                return f"__bfloat162float(__float2bfloat16_rn({self._to_float(v, src, float32)}))"
            return self._to_float(v, src, dst)
        if src.is_floating_point:                     # saturating, NaN -> 0 (like llvm.fptosi.sat)
            wide = "ll" if dst.itemsize == 8 else "int"
            fn = f"__{'double' if src is float64 else 'float'}2{wide}_rz({v})"
            return fn if dst in (int32, int64) else f"({ctype(dst)}){fn}"
        return f"({ctype(dst)}){v}"

    def _to_float(self, v: str, src: DType, dst: DType) -> str:
        if src is bool_:
            return f"({ctype(dst)})({v} ? 1 : 0)"
        if ctype(src) == ctype(dst):
            return v
        return f"({ctype(dst)}){v}"


# ---------------------------------------------------------------- flat kernels
class _FlatRenderer:
    """A grid-stride loop over the flattened loops; float4/int4 accesses where the body allows."""

    def __init__(self, em: _Emitter, plan: KernelPlan):
        self.em, self.plan = em, plan
        self.n = plan.work
        self.contiguous = self._contiguous_indices()
        self.vector = self._vector_buffers()

    def _contiguous_indices(self) -> set:
        """Index expressions equal to the flat C-order position over the flattened loops."""
        dist = self.plan.dist
        strides, step = {}, 1
        for var, extent in reversed(dist):
            strides[var] = step if extent > 1 else 0
            step *= extent
        varying = frozenset(v for v, _ in dist)
        local = _locals(self.plan.body)
        found = set()
        for root in self.plan.body:
            for s in walk_stmts(root):
                indices = [n.index for n in _stmt_loads(s)] + ([s.index] if isinstance(s, Store) else [])
                for e in indices:
                    form = _affine(e, varying, local)
                    if form is not None and form[1] == 0 and not form[2] and \
                            all(form[0].get(v, 0) == strides[v] for v, extent in dist if extent > 1):
                        found.add(e)
        return found

    def render(self) -> None:
        em, n = self.em, self.n
        if n <= 0:
            return
        em.emit("const long long tt_stride = (long long)gridDim.x * blockDim.x;")
        em.emit("const long long tt_first = (long long)blockIdx.x * blockDim.x + threadIdx.x;")
        start = "tt_first"
        if self.vector:
            groups = n // 4
            g = em.fresh("g")
            em.open(f"for (long long {g} = tt_first; {g} < {groups}LL; {g} += tt_stride)")
            self._vector_body(g)
            em.close()
            if n % 4 == 0:
                return
            start = f"{groups * 4}LL + tt_first"
        f = em.fresh("f")
        em.open(f"for (long long {f} = {start}; {f} < {n}LL; {f} += tt_stride)")
        self._element(f)
        em.close()

    def _element(self, f: str, lane_loads: Optional[dict] = None, lane_outputs: Optional[dict] = None) -> None:
        """The body at flat position `f` (a C expression). Stores to buffers in `lane_outputs` assign the
        named variables instead (the vector store follows the four lanes)."""
        em = self.em
        for e in self.contiguous:
            em.aliases[e] = f
        _bind_flat_vars(em, f, self.plan.dist, self.plan.body, self.n)
        em.lane_loads = lane_loads or {}
        for s in self.plan.body:
            if lane_outputs and isinstance(s, Store) and s.buffer in lane_outputs:
                value = em.convert(em.expr(s.value), s.value.dtype, s.buffer.dtype)
                em.emit(f"{lane_outputs[s.buffer]} = {em.to_storage(value, s.buffer.dtype)};")
                em.forget_state()
            else:
                em.stmt(s)
        em.lane_loads = {}
        em.aliases.clear()

    # ------------------------------------------------------------ vectors
    def _vector_buffers(self) -> list[Buffer]:
        """Buffers whose every access is at the flat position, with 4-byte storage: read/written 4 at a time."""
        body = self.plan.body
        if self.n < 4 or any(not isinstance(s, (Store, Let)) for s in body):
            return []
        if sum(1 for root in body for _ in walk_exprs(root)) > VECTOR_MAX_NODES:
            return []
        stored: set[Buffer] = set()
        for s in body:                       # vector stores happen after the body: nothing may read them back
            if any(n.buffer in stored for n in _stmt_loads(s)):
                return []
            if isinstance(s, Store):
                stored.add(s.buffer)
        ok: dict[Buffer, bool] = {}
        for s in body:
            accesses = [(n.buffer, n.index) for n in _stmt_loads(s)]
            if isinstance(s, Store):
                accesses.append((s.buffer, s.index))
            for buf, idx in accesses:
                good = buf.dtype in _VECTOR and idx in self.contiguous and buf.size >= self.n
                ok[buf] = ok.get(buf, True) and good
        return [b for b, good in ok.items() if good]

    def _vector_body(self, g: str) -> None:
        """Four elements per thread: 16-byte loads into register arrays, the body once in an unrolled
        loop over the lanes, 16-byte stores."""
        em = self.em
        loaded = {n.buffer for s in self.plan.body for n in _stmt_loads(s)}
        stored = list(dict.fromkeys(s.buffer for s in self.plan.body if isinstance(s, Store)))
        lanes, outs = {}, {}
        for b in self.vector:
            if b in loaded:
                vec, v = _VECTOR[b.dtype], em.fresh("v")
                lanes[b] = em.fresh("l")
                em.emit(f"const {vec} {v} = reinterpret_cast<const {vec}*>({em.params[b]})[{g}];")
                em.emit(f"const {storage_ctype(b.dtype)} {lanes[b]}[4] = {{{v}.x, {v}.y, {v}.z, {v}.w}};")
        for b in self.vector:
            if b in stored:
                outs[b] = em.fresh("o")
                em.emit(f"{storage_ctype(b.dtype)} {outs[b]}[4];")
        em.emit("#pragma unroll")
        em.open("for (int tt_lane = 0; tt_lane < 4; ++tt_lane)")
        lane_loads = {n: f"{lanes[n.buffer]}[tt_lane]" for s in self.plan.body for n in _stmt_loads(s)
                      if n.buffer in lanes}
        self._element(f"({g} * 4 + tt_lane)", lane_loads, {b: f"{o}[tt_lane]" for b, o in outs.items()})
        em.close()
        em.forget_state()
        for b, o in outs.items():
            vec = _VECTOR[b.dtype]
            em.emit(f"reinterpret_cast<{vec}*>({em.params[b]})[{g}] = make_{vec}({o}[0], {o}[1], {o}[2], {o}[3]);")


def _stmt_loads(s: Stmt) -> list[Load]:
    return [n for e in stmt_exprs(s) for n in walk_exprs(e) if isinstance(n, Load)]


def _used_vars(body: Sequence[Stmt], known: dict) -> set[str]:
    """Names of the variables `body` reads, not looking inside expressions in `known` (rendered as is)."""
    used, seen = set(), set()
    stack = [e for root in body for s in walk_stmts(root) for e in stmt_exprs(s)]
    while stack:
        e = stack.pop()
        if id(e) in seen or e in known:
            continue
        seen.add(id(e))
        if isinstance(e, Var):
            used.add(e.name)
        stack.extend(e.children())
    return used


def _bind_flat_vars(em: _Emitter, f: str, dist, body, total: int) -> None:
    """Bind the flattened loops' variables that `body` uses to their values at flat position `f`."""
    used = _used_vars(body, em.aliases)
    if not any(v in used for v, _ in dist):
        return
    if len(dist) == 1:
        em.bind(dist[0][0], f)
        return
    if total < 2 ** 31:                     # 32-bit division by constants is much cheaper on the GPU
        flat, suffix = em.fresh("u"), "u"
        em.emit(f"const unsigned {flat} = (unsigned)({f});")
    else:
        flat, suffix = f"({f})", "LL"
    stride = 1
    for k in range(len(dist) - 1, -1, -1):
        var, extent = dist[k]
        if var in used:
            value = flat if stride == 1 else f"{flat} / {stride}{suffix}"
            if k > 0:
                value = f"({value}) % {extent}{suffix}"
            em.bind(var, em.temp(int64, f"(long long)({value})", "i"))
        stride *= extent


# ---------------------------------------------------------------- row kernels
@dataclass(frozen=True)
class _Access:
    buffer: Buffer
    write: bool
    owner: tuple          # ("all",) every thread; ("leader",); ("own", distribution, index) one thread per index


def _conflict(a: _Access, b: _Access) -> bool:
    if a.buffer != b.buffer or not (a.write or b.write):
        return False
    return not (a.owner == b.owner and a.owner[0] in ("own", "leader"))


@dataclass(frozen=True)
class _OnlineStage:
    """A blocked SoftmaxStats / Moments stage of `codegen.templates`, recognized in the loop IR."""
    kind: str                                 # "softmax" or "moments"
    first: str                                # max / mean accumulator
    second: str                               # sum of exp / sum of squared deviations accumulator
    blocks: tuple                             # (outer loop or None, block Loop of the first reduction)
    consumed: int
    value_dtype: DType


class _RowRenderer:
    """One team (a warp or a block) per row: see the module docstring."""

    def __init__(self, em: _Emitter, plan: KernelPlan):
        self.em, self.plan = em, plan
        self.team = plan.team
        self.block_team = plan.team > WARP
        self.since_sync: list[_Access] = []
        self.recording: list[list[_Access]] = []      # accesses of the uniform loops being rendered

    def render(self) -> None:
        em, plan = self.em, self.plan
        if plan.work <= 0:
            return
        if self.block_team:
            em.emit("__shared__ __align__(16) unsigned char tt_scratch[32 * 32];")
            em.emit("const int tt_tid = threadIdx.x;")
            row = em.fresh("row")
            em.open(f"for (long long {row} = blockIdx.x; {row} < {plan.work}LL; {row} += gridDim.x)")
        else:
            per_block = plan.threads // WARP
            em.emit("const int tt_tid = threadIdx.x & 31;")
            row = em.fresh("row")
            em.open(f"for (long long {row} = (long long)blockIdx.x * {per_block} + (threadIdx.x >> 5); "
                    f"{row} < {plan.work}LL; {row} += (long long)gridDim.x * {per_block})")
        _bind_flat_vars(em, row, plan.dist, plan.body, plan.work)
        self.uniform(plan.body)
        em.close()

    # ------------------------------------------------------------ synchronization
    def sync(self) -> None:
        self.em.emit("__syncthreads();" if self.block_team else "__syncwarp();")
        self.since_sync = []

    def touch(self, accesses: list[_Access]) -> None:
        """Record a phase's accesses, with a barrier first if one conflicts with what came since the last one."""
        if any(_conflict(a, b) for a in accesses for b in self.since_sync):
            self.sync()
        self.since_sync += accesses
        for record in self.recording:
            record += accesses

    def accesses(self, stmts, owner) -> list[_Access]:
        out = []
        for root in stmts:
            for s in walk_stmts(root):
                for n in _stmt_loads(s):
                    out.append(_Access(n.buffer, False, owner(n.index)))
                if isinstance(s, Store):
                    out.append(_Access(s.buffer, True, owner(s.index)))
        return out

    def reduced(self) -> None:
        """After a team reduction: a block team's reduction is a barrier."""
        if self.block_team:
            self.since_sync = []

    # ------------------------------------------------------------ uniform statements
    def uniform(self, stmts: Sequence[Stmt]) -> None:
        em = self.em
        i = 0
        while i < len(stmts):
            stage = _match_online_stage(stmts, i)
            if stage is not None:
                self.online_stage(stage)
                i += stage.consumed
                continue
            s = stmts[i]
            i += 1
            if isinstance(s, Loop):
                if s.extent <= 0:
                    continue
                kind = _loop_kind(s)
                if kind == "reduce":
                    self.split_reduce(s)
                elif kind == "store":
                    self.split_stores(s)
                else:
                    self.uniform_loop(s)
            elif isinstance(s, Store):
                self.touch(self.accesses([s], lambda idx: ("all",))[:-1] + [_Access(s.buffer, True, ("leader",))])
                text = em.store_text(s)
                em.emit(f"if (tt_tid == 0) {text};")
                em.forget_state()
            else:
                self.touch(self.accesses([s], lambda idx: ("all",)))
                em.stmt(s)

    def uniform_loop(self, loop: Loop) -> None:
        em = self.em
        v = em.fresh(f"i_{_ident(loop.var)}_")
        em.open(f"for (long long {v} = 0; {v} < {loop.extent}LL; ++{v})")
        em.bind(loop.var, v)
        self.recording.append([])
        self.uniform(loop.body)
        body = self.recording.pop()
        if any(_conflict(a, b) for a in self.since_sync for b in body):
            self.sync()                                      # before the next iteration
        em.close()

    def distribute(self, dist, body) -> str:
        """Open a loop of this thread's share of the flattened `dist` loops; bind their variables."""
        em = self.em
        total = math.prod(e for _, e in dist)
        q = em.fresh("q")
        em.open(f"for (long long {q} = tt_tid; {q} < {total}LL; {q} += {self.team})")
        _bind_flat_vars(em, q, dist, body, total)
        return q

    def split_stores(self, loop: Loop) -> None:
        em = self.em
        dist, body = _perfect_nest(loop)
        key = tuple(dist)
        self.touch(self.accesses([loop], lambda idx: ("own", key, idx)))
        self.distribute(dist, body)
        for s in body:
            em.stmt(s)
        em.close()

    def split_reduce(self, loop: Loop) -> None:
        em = self.em
        dist, body = _perfect_nest(loop)
        key = tuple(dist)
        self.touch(self.accesses([loop], lambda idx: ("own", key, idx)))
        order = list(dict.fromkeys(s.name for s in walk_stmts(loop) if isinstance(s, Reduce)))
        combines = {s.name: s.combine for s in walk_stmts(loop) if isinstance(s, Reduce)}
        partials = {}
        for name in order:
            c, dt = em.accs[name]
            partials[name] = em.fresh("r")
            em.emit(f"{ctype(dt)} {partials[name]} = {literal(identity(combines[name], dt).value, dt)};")
        saved = dict(em.reduce_into)
        em.reduce_into.update(partials)
        self.distribute(dist, body)
        for s in body:
            em.stmt(s)
        em.close()
        em.reduce_into = saved
        for name in order:
            c, dt = em.accs[name]
            p = partials[name]
            em.emit(f"{p} = tt_team_reduce<{self.team}>({p}, tt_op_{combines[name]}(), {self._scratch()});")
            em.emit(f"{c} = {em.combine(combines[name], c, p, dt)};")
            self.reduced()
        em.forget_state()

    def _scratch(self) -> str:
        return "tt_scratch" if self.block_team else "nullptr"

    def online_stage(self, stage: _OnlineStage) -> None:
        """The block-parallel form of a blocked SoftmaxStats / Moments stage: per-thread running states
        over this thread's elements (same blocks, same per-block index expressions), merged once."""
        em = self.em
        c = ctype(stage.value_dtype)
        st = em.fresh("st")
        em.emit(f"tt_{stage.kind}_state<{c}> {st} = tt_{stage.kind}_start<{c}>();")
        key = ("stage", st)
        for outer, block in stage.blocks:
            self.touch(self.accesses([block], lambda idx: ("own", key, idx)))
            if outer is not None:
                b = em.fresh(f"i_{_ident(outer.var)}_")
                em.open(f"for (long long {b} = 0; {b} < {outer.extent}LL; ++{b})")
                em.bind(outer.var, b)
            j = em.fresh(f"i_{_ident(block.var)}_")
            em.open(f"for (long long {j} = tt_tid; {j} < {block.extent}LL; {j} += {self.team})")
            em.bind(block.var, j)
            value = block.body[0].value
            em.emit(f"tt_{stage.kind}_push({st}, {em.convert(em.expr(value), value.dtype, stage.value_dtype)});")
            em.close()
            if outer is not None:
                em.close()
        em.emit(f"{st} = tt_team_reduce<{self.team}>({st}, tt_{stage.kind}_merge(), {self._scratch()});")
        self.reduced()
        first, _ = em.accs[stage.first]
        second, _ = em.accs[stage.second]
        if stage.kind == "softmax":
            em.emit(f"{first} = {st}.m;")
            em.emit(f"{second} = {st}.s;")
        else:
            em.emit(f"{first} = {st}.mean;")
            em.emit(f"{second} = {st}.m2;")
        em.forget_state()


# ---------------------------------------------------------------- recognizing the templates' online stages
def _match_online_stage(stmts: Sequence[Stmt], i: int) -> Optional[_OnlineStage]:
    """Match `Accumulator(a), Accumulator(b)` followed by the blocked passes `templates._stage` emits for a
    SoftmaxStats or Moments stage: a loop over full blocks and/or one tail block, each the exact statement
    pattern of `_softmax_block` / `_moments_block`. Anything else returns None (and is rendered as written)."""
    if i + 2 >= len(stmts) or not all(isinstance(s, Accumulator) for s in stmts[i:i + 2]):
        return None
    a, b = stmts[i], stmts[i + 1]
    j = i + 2
    blocks, kinds = [], set()
    if isinstance(stmts[j], Loop):
        parsed = _block_pattern(stmts[j].body, a.name, b.name)
        if parsed is not None and len(stmts[j].body) == parsed[1]:
            kinds.add(parsed[0])
            blocks.append((stmts[j], stmts[j].body[1]))
            j += 1
    if j < len(stmts):
        parsed = _block_pattern(stmts[j:], a.name, b.name)
        if parsed is not None:
            kinds.add(parsed[0])
            blocks.append((None, stmts[j + 1]))
            j += parsed[1]
    if not blocks or len(kinds) != 1:
        return None
    kind = kinds.pop()
    dt = a.init.dtype
    start_first = identity("max", dt) if kind == "softmax" else Const(0.0, dt)
    if not dt.is_floating_point or b.init.dtype is not dt or a.init != start_first or b.init != Const(0.0, dt):
        return None
    return _OnlineStage(kind, a.name, b.name, tuple(blocks), j - i, dt)


def _block_pattern(stmts: Sequence[Stmt], first: str, second: str) -> Optional[tuple[str, int]]:
    """("softmax", 8) or ("moments", 10) if `stmts` starts with one block of that stage updating the
    accumulators `first` and `second`."""
    def reduce_loop(s, combine):
        if isinstance(s, Loop) and len(s.body) == 1 and isinstance(s.body[0], Reduce) and \
                s.body[0].combine == combine:
            return s.body[0]
        return None

    if len(stmts) >= 8:
        s = stmts[:8]
        r1, r2 = reduce_loop(s[1], "max"), reduce_loop(s[4], "add")
        if (isinstance(s[0], Accumulator) and r1 and r1.name == s[0].name and isinstance(s[2], Let)
                and isinstance(s[3], Accumulator) and r2 and r2.name == s[3].name and s[1].var == s[4].var
                and s[1].extent == s[4].extent and isinstance(s[5], Let)
                and isinstance(s[6], Assign) and s[6].name == second and isinstance(s[7], Assign)
                and s[7].name == first and s[7].value == Var(s[5].name, s[7].value.dtype)):
            v = r2.value
            if isinstance(v, Op) and v.op == "exp" and isinstance(v.args[0], Op) and v.args[0].op == "sub" \
                    and v.args[0].args[0] == r1.value and v.args[0].args[1] == Var(s[2].name, r1.value.dtype):
                return "softmax", 8
    if len(stmts) >= 10:
        s = stmts[:10]
        r1, r2 = reduce_loop(s[1], "add"), reduce_loop(s[4], "add")
        if (isinstance(s[0], Accumulator) and r1 and r1.name == s[0].name and isinstance(s[2], Let)
                and isinstance(s[3], Accumulator) and r2 and r2.name == s[3].name and s[1].var == s[4].var
                and s[1].extent == s[4].extent and all(isinstance(x, Let) for x in s[5:8])
                and isinstance(s[8], Assign) and s[8].name == second and isinstance(s[9], Assign)
                and s[9].name == first):
            v = r2.value
            dev = Op("sub", (r1.value, Var(s[2].name, r1.value.dtype)), r1.value.dtype)
            if isinstance(v, Op) and v.op == "mul" and v.args[0] == dev and v.args[1] == dev:
                return "moments", 10
    return None
