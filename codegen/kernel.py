"""The loop-level kernel IR: what lowering (DESIGN.md pass 6) produces and every renderer consumes.

One lowering, two renderers: the LLVM renderer (`codegen.llvm_ir`) and the
CUDA renderer read the same frozen dataclasses.

- A `Buffer` is a flat array with a dtype and a static shape. Kernels address
  it with one int64 element index, so views (broadcast = stride 0, permute,
  strided slice) cost nothing: they are `IndexMap`s folded into the index.
- Expressions are scalar trees (`Const`, `Var`, `Arg`, `Load`, `Op`,
  `CheckedIndex`); `Op.op` names a scalar operation from `SCALAR_OPS`.
- Statements: `Loop` (static extent), `Let` (an immutable value),
  `Accumulator` / `Assign` / `Reduce` (a mutable scalar), `Store`.
- A `Kernel` is one outer loop whose iterations are independent: it is what
  CPU threads (or a CUDA grid) split. A `Program` is an ordered list of
  kernels and Python-side `ExternCall`s over a table of buffers.

Bounds safety: static index maps are checked when built (`IndexMap.check`);
data-dependent indices go through `CheckedIndex`, which the renderer bounds-
checks, reporting failures through the program's error flag.
"""
from __future__ import annotations

import functools
import math
from dataclasses import dataclass, field
from typing import Callable, Iterator, Sequence, Union

from tracetorch.dtypes import DType, bool_, int64

# Scalar operations an `Op` may name, with their arity. Type rules live in codegen.scalar.
SCALAR_OPS: dict[str, int] = {
    **{name: 1 for name in (
        "neg", "exp", "log", "sqrt", "rsqrt", "sin", "cos", "tanh", "sigmoid", "log1p", "expm1",
        "abs", "sign", "floor", "ceil", "rint", "isnan", "isfinite", "not", "invert", "cast")},
    **{name: 2 for name in (
        "add", "sub", "mul", "div", "pow", "max", "min", "floordiv", "mod",
        "eq", "ne", "lt", "le", "gt", "ge", "and", "or", "xor",
        "random")},     # random(counter, seed): draw `counter` of stream `seed` in [0, 1) (codegen.scalar.random)
    "where": 3,
}

# Combine functions of `Reduce` and their identities ("-inf"/"inf" become the dtype's lowest/highest).
COMBINES = ("add", "mul", "max", "min", "and", "or")


# ---------------------------------------------------------------- buffers and index maps
@dataclass(frozen=True)
class Buffer:
    """A flat, contiguous array the kernels of a program read or write."""
    name: str
    dtype: DType
    shape: tuple[int, ...]

    @property
    def size(self) -> int:
        return math.prod(self.shape)

    @property
    def nbytes(self) -> int:
        return self.size * self.dtype.np.itemsize

    def __repr__(self) -> str:
        return f"{self.name}:{self.dtype.name}{list(self.shape)}"


@dataclass(frozen=True)
class IndexMap:
    """Affine element index over an iteration space: offset + sum(strides[d] * i[d]).

    Broadcasts have stride 0, permutes permute the strides, strided slices
    scale them and move the offset; none of them copies data.
    """
    strides: tuple[int, ...]
    offset: int = 0

    @staticmethod
    def contiguous(shape: Sequence[int]) -> IndexMap:
        strides, step = [], 1
        for size in reversed(shape):
            strides.append(step if size != 1 else 0)
            step *= size
        return IndexMap(tuple(reversed(strides)), 0)

    @staticmethod
    def broadcast(shape: Sequence[int], to_shape: Sequence[int]) -> IndexMap:
        """A contiguous tensor of `shape` read as `to_shape` (numpy broadcasting rules)."""
        own = IndexMap.contiguous(shape).strides
        lead = len(to_shape) - len(shape)
        if lead < 0:
            raise ValueError(f"cannot broadcast shape {tuple(shape)} to {tuple(to_shape)}")
        strides = [0] * lead
        for size, want, stride in zip(shape, to_shape[lead:], own):
            if size not in (1, want):
                raise ValueError(f"cannot broadcast shape {tuple(shape)} to {tuple(to_shape)}")
            strides.append(stride if size == want else 0)
        return IndexMap(tuple(strides), 0)

    def permute(self, dims: Sequence[int]) -> IndexMap:
        return IndexMap(tuple(self.strides[d] for d in dims), self.offset)

    def slice(self, starts: Sequence[int], steps: Sequence[int]) -> IndexMap:
        offset = self.offset + sum(s * a for s, a in zip(self.strides, starts))
        return IndexMap(tuple(s * c for s, c in zip(self.strides, steps)), offset)

    def index(self, loop_vars: Sequence[Expr]) -> Expr:
        """The int64 index expression at loop variables `loop_vars` (one per dim)."""
        if len(loop_vars) != len(self.strides):
            raise ValueError(f"index map of {len(self.strides)} dims used with {len(loop_vars)} loop variables")
        terms: list[Expr] = []
        for var, stride in zip(loop_vars, self.strides):
            if stride == 0:
                continue
            terms.append(var if stride == 1 else Op("mul", (var, Const(stride, int64)), int64))
        if self.offset or not terms:
            terms.append(Const(self.offset, int64))
        out = terms[0]
        for t in terms[1:]:
            out = Op("add", (out, t), int64)
        return out

    def check(self, shape: Sequence[int], buffer: Buffer) -> None:
        """Raise IndexError unless every index over `shape` lies inside `buffer`."""
        if any(s == 0 for s in shape):
            return
        lo = hi = self.offset
        for size, stride in zip(shape, self.strides):
            reach = stride * (size - 1)
            lo, hi = lo + min(reach, 0), hi + max(reach, 0)
        if lo < 0 or hi >= buffer.size:
            raise IndexError(f"index map {self} over shape {tuple(shape)} reaches elements [{lo}, {hi}] of "
                             f"buffer {buffer!r} with {buffer.size} elements")


# ---------------------------------------------------------------- expressions
class Expr:
    """Base of scalar expressions; every expression has a `dtype`.

    Expressions are DAGs (a value used twice is one object): every traversal
    here visits a shared node once, and hashes are cached.
    """
    dtype: DType

    def children(self) -> tuple[Expr, ...]:
        return ()


def _expr_node(cls):
    """A frozen dataclass whose hash is computed once (hashing a deep DAG again and again is exponential)."""
    cls = dataclass(frozen=True)(cls)
    generated = cls.__hash__

    def __hash__(self):
        h = self.__dict__.get("_hash")
        if h is None:
            h = generated(self)
            object.__setattr__(self, "_hash", h)
        return h

    cls.__hash__ = __hash__
    return cls


@_expr_node
class Const(Expr):
    value: Union[int, float, bool]
    dtype: DType

    def __str__(self) -> str:
        return repr(self.value) if self.dtype is not bool_ else str(bool(self.value))


@_expr_node
class Var(Expr):
    """A loop variable (int64), a `Let` value or an accumulator, by name."""
    name: str
    dtype: DType = int64

    def __str__(self) -> str:
        return self.name


@_expr_node
class Arg(Expr):
    """A placeholder for an operand (x0, x1, ... of a registry lowering); `substitute` replaces it."""
    name: str
    dtype: DType

    def __str__(self) -> str:
        return f"${self.name}"


@_expr_node
class Load(Expr):
    buffer: Buffer
    index: Expr

    @property
    def dtype(self) -> DType:
        return self.buffer.dtype

    def children(self) -> tuple[Expr, ...]:
        return (self.index,)

    def __str__(self) -> str:
        return f"{self.buffer.name}[{self.index}]"


@_expr_node
class Op(Expr):
    op: str
    args: tuple[Expr, ...]
    dtype: DType

    def __post_init__(self):
        arity = SCALAR_OPS.get(self.op)
        if arity is None:
            raise ValueError(f"unknown scalar op {self.op!r}")
        if arity != len(self.args):
            raise ValueError(f"scalar op {self.op!r} takes {arity} operands, got {len(self.args)}")

    def children(self) -> tuple[Expr, ...]:
        return self.args

    def __str__(self) -> str:
        if self.op == "cast":
            return f"{self.dtype.name}({self.args[0]})"
        return f"{self.op}({', '.join(str(a) for a in self.args)})"


@_expr_node
class CheckedIndex(Expr):
    """A data-dependent index into a dim of `size`: negatives wrap once (like PyTorch);
    anything still outside [0, size) sets the program's error flag (IndexError) and reads 0."""
    index: Expr
    size: int
    what: str = "index"

    @property
    def dtype(self) -> DType:
        return int64

    def children(self) -> tuple[Expr, ...]:
        return (self.index,)

    def __str__(self) -> str:
        return f"checked({self.index}, {self.size})"


# ---------------------------------------------------------------- statements
@dataclass(frozen=True)
class Loop:
    var: str
    extent: int
    body: tuple[Stmt, ...]


@dataclass(frozen=True)
class Let:
    name: str
    value: Expr


@dataclass(frozen=True)
class Accumulator:
    """Declare a mutable scalar, initialized to `init`; read it with Var(name, dtype)."""
    name: str
    init: Expr


@dataclass(frozen=True)
class Assign:
    name: str
    value: Expr


@dataclass(frozen=True)
class Reduce:
    """acc = combine(acc, value). Float add/mul reductions may be reassociated by the
    renderer (vectorized partial sums): the summation order is not the sequential one."""
    name: str
    combine: str
    value: Expr

    def __post_init__(self):
        if self.combine not in COMBINES:
            raise ValueError(f"unknown combine {self.combine!r}; expected one of {COMBINES}")


@dataclass(frozen=True)
class Store:
    buffer: Buffer
    index: Expr
    value: Expr


Stmt = Union[Loop, Let, Accumulator, Assign, Reduce, Store]


@dataclass(frozen=True)
class Kernel:
    """One outer loop of independent iterations (split across threads or a GPU grid)."""
    name: str
    outer: Loop

    @functools.cached_property
    def buffers(self) -> tuple[Buffer, ...]:
        """Its parameters: buffers read (in reading order), then buffers only written."""
        seen: dict[Buffer, None] = {}
        for node in walk_exprs(self.outer):
            if isinstance(node, Load):
                seen.setdefault(node.buffer)
        for stmt in walk_stmts(self.outer):
            if isinstance(stmt, Store):
                seen.setdefault(stmt.buffer)
        return tuple(seen)

    @functools.cached_property
    def written(self) -> tuple[Buffer, ...]:
        return tuple(dict.fromkeys(s.buffer for s in walk_stmts(self.outer) if isinstance(s, Store)))

    @property
    def work(self) -> int:
        """Innermost iterations of the whole kernel: a cost estimate for threading."""
        return _work(self.outer)

    @property
    def extent(self) -> int:
        """Iterations of the outer loop: what threads split."""
        return self.outer.extent

    def __str__(self) -> str:
        return format_kernel(self)


def unit_strides(strides, shape) -> tuple[int, ...]:
    """`strides` with a size-1 dim's stride set to 1 (any value addresses its one element)."""
    return tuple(1 if size == 1 else s for s, size in zip(strides, shape))


@dataclass(frozen=True)
class GemmShape:
    """The register blocking of the generated GEMM for one vector width: a micro-kernel keeps
    `row_block` x `panel` floats of C in 2 * `row_block` vector registers (AVX-512: 28 of 32 zmm;
    AVX2: 12 of 16 ymm, the other registers hold B's two vectors and A's broadcast)."""
    lanes: int              # floats per vector register
    row_block: int          # C rows per micro-kernel call (MR)
    short_rows: int         # rows of the micro-kernel for a block's last few rows (M = 128: 14 rows
                            # computed for the last 2 made 9% of the work)
    dot_rows: int           # C rows per step of the dot form: dot_rows * DOT_COLUMNS accumulators
    block_rows: int         # rows of A per packed block (MC, a multiple of row_block; in L2)

    @property
    def panel(self) -> int:
        """C columns per micro-kernel call and per unit of the outer loop: two vectors."""
        return 2 * self.lanes


GEMM_SHAPES = {16: GemmShape(16, 14, 4, 2, 70),    # AVX-512
               8: GemmShape(8, 6, 2, 1, 72)}       # AVX2 with FMA (BLIS's Haswell kernel is 6 x 16 too)


@dataclass(frozen=True)
class MatmulKernel:
    """out[*batch, m, n] = a @ b in float32 by the generated GEMM (`codegen.llvm_gemm`), not a loop nest.

    `a_map` / `b_map` address the operands in their buffers over (*batch, m, k) / (*batch, k, n): any
    strides, as long as each matrix has a unit stride along one of its two dims (rows or columns
    contiguous); `out` is contiguous. Its outer loop, what threads split, runs over the panels of C's
    row slices (`row_slices`) in every batch. `lanes`: the host's vector width (`GEMM_SHAPES`)."""
    name: str
    a: Buffer
    b: Buffer
    out: Buffer
    batch: tuple[int, ...]
    m: int
    n: int
    k: int
    a_map: IndexMap
    b_map: IndexMap
    lanes: int = 16

    DOT_COLUMNS = 12    # C of at most this many columns may take the dot form (`dot_form`)
    DOT_K = (64, 8192)  # ... with k in this range: below, the sums across lanes outweigh the products
    MIN_UNITS = 4       # C is cut into row slices too when it has fewer panels than this
    ROW_SLICES_TALL = 2  # row slices of a single C with more rows than columns

    @staticmethod
    def takes(batch, m: int, n: int, k: int, a_strides, b_strides) -> bool:
        """Whether operands with these strides over (*batch, m, k) and (*batch, k, n) fit: no empty
        dim, a unit stride along one dim of each matrix (size-1 dims count as any stride), and batch
        dims that merge into two (`merge_batch`). Skinny matmuls are taken too: W3's [128, 512] @
        [512, 10] through numpy left OpenBLAS's threads spinning into the GEMMs that followed (W3
        B=1024 15.4 -> 28.7 ms)."""
        if min(m, n, k) < 1:
            return False
        return (1 in unit_strides(a_strides[-2:], (m, k)) and 1 in unit_strides(b_strides[-2:], (k, n))
                and MatmulKernel.merge_batch(batch, a_strides, b_strides) is not None)

    def __post_init__(self):
        if not self.takes(self.batch, self.m, self.n, self.k, self.a_map.strides, self.b_map.strides):
            raise ValueError(f"matmul kernel {self.name!r}: operands {self.a_map} and {self.b_map} need a unit "
                             f"stride in each matrix, no empty dim and batch dims {self.batch} that merge into "
                             f"two ({self.m}x{self.k} @ {self.k}x{self.n})")
        if self.lanes not in GEMM_SHAPES:
            raise ValueError(f"matmul kernel {self.name!r}: no GEMM for vectors of {self.lanes} floats")
        if self.out in (self.a, self.b):
            raise ValueError(f"matmul kernel {self.name!r}: the output cannot be an operand's buffer")
        self.a_map.check(self.batch + (self.m, self.k), self.a)
        self.b_map.check(self.batch + (self.k, self.n), self.b)
        if self.out.size != math.prod(self.batch) * self.m * self.n:
            raise ValueError(f"matmul kernel {self.name!r}: output {self.out!r} does not hold "
                             f"{self.batch + (self.m, self.n)}")

    @property
    def shape(self) -> GemmShape:
        return GEMM_SHAPES[self.lanes]

    @property
    def batch_dims(self) -> tuple[tuple, tuple, tuple] | None:
        return self.merge_batch(self.batch, self.a_map.strides, self.b_map.strides)

    @staticmethod
    def merge_batch(batch, a_strides, b_strides) -> tuple[tuple, tuple, tuple] | None:
        """(sizes, a strides, b strides) of two batch dims, merged where both operands step through
        them as one (size-1 dims dropped, 1s padded in front); None when more than two remain."""
        dims = [(size, sa, sb) for size, sa, sb in zip(batch, a_strides, b_strides) if size != 1]
        merged: list = []
        for size, sa, sb in dims:
            if merged:
                psize, psa, psb = merged[-1]
                if psa == sa * size and psb == sb * size:
                    merged[-1] = (psize * size, sa, sb)
                    continue
            merged.append((size, sa, sb))
        if len(merged) > 2:
            return None
        merged = [(1, 0, 0)] * (2 - len(merged)) + merged
        return tuple(zip(*merged))

    @property
    def buffers(self) -> tuple[Buffer, ...]:
        return tuple(dict.fromkeys((self.a, self.b, self.out)))

    @property
    def written(self) -> tuple[Buffer, ...]:
        return (self.out,)

    @property
    def dot_form(self) -> bool:
        """Whether each element of C is one dot product (`codegen.llvm_gemm`'s dot form) instead of a
        panel's column: C of few columns, both operands contiguous along k (x @ w.T of a classifier).
        A panel would be at most 12/32 full, and A, packed for it, read once ([1024, 512] @ [512, 10]
        spent more time packing A than multiplying)."""
        sa1 = unit_strides(self.a_map.strides[-2:], (self.m, self.k))[1]
        sb0 = unit_strides(self.b_map.strides[-2:], (self.k, self.n))[0]
        return self.n <= self.DOT_COLUMNS and self.DOT_K[0] <= self.k <= self.DOT_K[1] and sa1 == 1 and sb0 == 1

    @property
    def b_in_place(self) -> bool:
        """Whether every unit reads B in place rather than packing its panels: units of at most
        `shape.row_block` rows (a packed panel would be read once), B's rows contiguous."""
        sb1 = unit_strides(self.b_map.strides[-2:], (self.k, self.n))[1]
        return not self.dot_form and self.slice_rows <= self.shape.row_block and sb1 == 1

    @property
    def panels(self) -> int:
        return -(-self.n // self.shape.panel)

    @property
    def row_slices(self) -> int:
        """Row slices of each batch's C: more than 1 when there are too few panels to share out (a
        [1024, 10] result is one panel), or when C is one matrix taller than wide: each thread then
        packs its rows of A and all of B, where sharing out panels would have every thread pack all
        of A (the bigger operand)."""
        units = math.prod(self.batch) * self.panels
        tall = self.ROW_SLICES_TALL if units == self.panels and self.m > self.n else 1
        few = -(-self.MIN_UNITS // units) if units < self.MIN_UNITS else 1
        return max(1, min(-(-self.m // self.shape.row_block), max(tall, few)))

    @property
    def slice_rows(self) -> int:
        rows = -(-self.m // self.row_slices)
        return -(-rows // self.shape.row_block) * self.shape.row_block

    @property
    def extent(self) -> int:
        """Units of the outer loop: (batch, row slice, panel), panels fastest."""
        return math.prod(self.batch) * self.row_slices * self.panels

    @property
    def work(self) -> int:
        return math.prod(self.batch) * self.m * self.n * self.k

    def __str__(self) -> str:
        return (f"matmul {self.name}({self.a!r} {self.a_map}, {self.b!r} {self.b_map}) -> {self.out!r}: "
                f"batch {self.batch}, {self.m}x{self.k} @ {self.k}x{self.n} (generated GEMM)")


@dataclass(frozen=True)
class ExternCall:
    """A Python-side step (e.g. matmul through numpy's BLAS): fn(*input_arrays, *output_arrays)
    fills the outputs in place. Not part of the generated module."""
    name: str
    fn: Callable = field(compare=False, hash=False)
    inputs: tuple[Buffer, ...]
    outputs: tuple[Buffer, ...]


@dataclass(frozen=True)
class Program:
    """Kernels and extern calls run in order. Inputs come from the caller, outputs are
    fresh arrays returned to it, every other buffer is a temporary placed in the arena.
    The buffer table (what the generated entry function receives) is inputs, outputs, temps.

    Aliasing contract: the buffers one kernel touches are disjoint in memory (renderers mark
    them `noalias`); an in-place update reads and writes the same `Buffer`. A memory plan may
    reuse memory only between buffers that no single kernel uses together. Kernels write inputs
    only when they are listed in `updated` (write-backs stored into the caller's array)."""
    name: str
    steps: tuple[Union[Kernel, MatmulKernel, ExternCall], ...]
    inputs: tuple[Buffer, ...]
    outputs: tuple[Buffer, ...]
    updated: tuple[Buffer, ...] = ()

    @property
    def kernels(self) -> tuple[Union[Kernel, MatmulKernel], ...]:
        """The steps in the generated module (not the extern calls), in order."""
        return tuple(s for s in self.steps if isinstance(s, (Kernel, MatmulKernel)))

    @property
    def gemm_lanes(self) -> int:
        """The vector width of the GEMM library the program's matmuls call (0: none)."""
        lanes = {k.lanes for k in self.steps if isinstance(k, MatmulKernel)}
        assert len(lanes) <= 1, f"matmuls of one program for GEMM libraries of {sorted(lanes)} lanes"
        return lanes.pop() if lanes else 0

    @property
    def temps(self) -> tuple[Buffer, ...]:
        known = set(self.inputs) | set(self.outputs)
        found: dict[Buffer, None] = {}
        for step in self.steps:
            bufs = step.buffers if isinstance(step, (Kernel, MatmulKernel)) else step.inputs + step.outputs
            for b in bufs:
                if b not in known:
                    found.setdefault(b)
        return tuple(found)

    @property
    def buffers(self) -> tuple[Buffer, ...]:
        return self.inputs + self.outputs + self.temps

    def __post_init__(self):
        names = [b.name for b in self.buffers]
        if len(set(names)) != len(names):
            raise ValueError(f"program {self.name!r}: buffer names must be unique, got {names}")
        if len(set(k.name for k in self.kernels)) != len(self.kernels):
            raise ValueError(f"program {self.name!r}: kernel names must be unique")
        inputs = set(self.inputs) - set(self.updated)
        for k in self.kernels:
            for b in k.written:
                if b in inputs:
                    raise ValueError(f"program {self.name!r}: kernel {k.name!r} writes input {b!r}")

    def __str__(self) -> str:
        lines = [f"program {self.name}(inputs: {list(self.inputs)}, outputs: {list(self.outputs)})"]
        for step in self.steps:
            if isinstance(step, Kernel):
                lines.append(format_kernel(step, indent="  "))
            elif isinstance(step, MatmulKernel):
                lines.append(f"  {step}")
            else:
                lines.append(f"  extern {step.name}({', '.join(b.name for b in step.inputs)}) -> "
                             f"{', '.join(b.name for b in step.outputs)}")
        return "\n".join(lines)


# ---------------------------------------------------------------- traversal and rewriting
def walk_stmts(stmt: Stmt) -> Iterator[Stmt]:
    yield stmt
    if isinstance(stmt, Loop):
        for s in stmt.body:
            yield from walk_stmts(s)


def stmt_exprs(stmt: Stmt) -> tuple[Expr, ...]:
    if isinstance(stmt, (Let, Assign, Reduce)):
        return (stmt.value,)
    if isinstance(stmt, Accumulator):
        return (stmt.init,)
    if isinstance(stmt, Store):
        return (stmt.index, stmt.value)
    return ()


def walk_exprs(root: Union[Stmt, Expr]) -> Iterator[Expr]:
    """Every expression node under a statement or expression, in reading order (parents first,
    operands left to right), each shared node once."""
    roots = [root] if isinstance(root, Expr) else [e for s in walk_stmts(root) for e in stmt_exprs(s)]
    seen: set[int] = set()
    for top in roots:
        stack = [top]
        while stack:
            node = stack.pop()
            if id(node) in seen:
                continue
            seen.add(id(node))
            yield node
            stack.extend(reversed(node.children()))


def substitute(expr: Expr, mapping: dict, _done: dict | None = None) -> Expr:
    """Replace `Arg`s (by name) and `Var`s (by name) in `expr` with the expressions in `mapping`."""
    done = {} if _done is None else _done
    hit = done.get(id(expr))
    if hit is not None:
        return hit[1]
    if isinstance(expr, (Arg, Var)) and expr.name in mapping:
        out = mapping[expr.name]
    elif isinstance(expr, Op):
        out = Op(expr.op, tuple(substitute(a, mapping, done) for a in expr.args), expr.dtype)
    elif isinstance(expr, Load):
        out = Load(expr.buffer, substitute(expr.index, mapping, done))
    elif isinstance(expr, CheckedIndex):
        out = CheckedIndex(substitute(expr.index, mapping, done), expr.size, expr.what)
    else:
        out = expr
    done[id(expr)] = (expr, out)   # keep expr alive so its id is not reused during the walk
    return out


def _work(stmt: Stmt) -> int:
    if not isinstance(stmt, Loop):
        return 1
    inner = sum(_work(s) for s in stmt.body if isinstance(s, Loop))
    return stmt.extent * max(inner, 1)


# ---------------------------------------------------------------- printing
def format_kernel(kernel: Kernel, indent: str = "") -> str:
    """Readable pseudo-Python, one statement a line: the debugging surface of the kernel IR."""
    params = ", ".join(repr(b) for b in kernel.buffers)
    lines = [f"{indent}kernel {kernel.name}({params}):"]
    _format_stmt(kernel.outer, indent + "  ", lines, parallel=True)
    return "\n".join(lines)


def _format_stmt(stmt: Stmt, indent: str, lines: list, parallel: bool = False) -> None:
    if isinstance(stmt, Loop):
        kind = "parallel for" if parallel else "for"
        lines.append(f"{indent}{kind} {stmt.var} in range({stmt.extent}):")
        for s in stmt.body:
            _format_stmt(s, indent + "  ", lines)
    elif isinstance(stmt, Let):
        lines.append(f"{indent}{stmt.name} = {stmt.value}")
    elif isinstance(stmt, Accumulator):
        lines.append(f"{indent}{stmt.name}: {stmt.init.dtype.name} = {stmt.init}")
    elif isinstance(stmt, Assign):
        lines.append(f"{indent}{stmt.name} = {stmt.value}")
    elif isinstance(stmt, Reduce):
        lines.append(f"{indent}{stmt.name} = {stmt.combine}({stmt.name}, {stmt.value})")
    elif isinstance(stmt, Store):
        lines.append(f"{indent}{stmt.buffer.name}[{stmt.index}] = {stmt.value}")
    else:
        raise TypeError(f"not a statement: {stmt!r}")
