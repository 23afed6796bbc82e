"""Loop nests for the kernel kinds fusion produces: elementwise, and reductions with
their prologue, epilogue and row-wise multi-stage forms (softmax, layer norm).

Expressions given to the templates are written over `Arg(name)` placeholders
(one per input) and, after a stage, `Var(stage name)`; the templates replace
each `Arg` with a load through the input's index map. Dims are coalesced
where every access allows it, so a contiguous (or uniformly broadcast)
tensor becomes one flat loop the vectorizer handles best.

Reductions (`reduction_kernel`) run the kept dims as the kernel's outer
loops and the reduced dims inside, except when the innermost dim is kept
(a sum over the rows of a matrix): then the output row itself accumulates,
updated elementwise row after row, so the loads stay contiguous.

Each stage is one pass over the reduced elements; `SoftmaxStats` and `Moments` compute two statistics in one pass
over memory, in blocks that stay in L1 (block max then block sum of exp,
merged online; block mean then block squared deviations, merged with Chan's
formula), so a softmax or layer norm reads its input twice at most: once
for the statistics, once for the elementwise outputs.
"""
from __future__ import annotations

import functools
import math
from dataclasses import dataclass
from typing import Callable, Sequence, Union

import numpy as np

from tracetorch.dtypes import DType, bfloat16, bool_, float16, float32, float64, int64

from .kernel import (Accumulator, Arg, Assign, Buffer, CheckedIndex, Const, Expr, IndexMap, Kernel, Let, Load, Loop,
                     Op, Reduce, Stmt, Store, Var, substitute, walk_exprs)
from .scalar import const, op

# An input is read through an affine map over the iteration space, or through a function of
# the loop variables that builds the index (data-dependent gathers: use CheckedIndex there).
Access = tuple[Buffer, Union[IndexMap, Callable[[Sequence[Expr]], Expr]]]
Output = tuple[Buffer, Expr]

# The flat (C-order) index of the current element of the iteration space, usable in any expression
# given to the templates (arange, counter-based random numbers, masks built from positions).
FLAT_INDEX = Arg("@flat_index", int64)

BLOCK = 512  # elements per block of the one-pass row statistics (2 KiB of float32: stays in L1)
SUM_BLOCK = 1024  # elements per block of a long float sum (`_blocked_sum`)
COLUMN_MIN = 8  # a contiguous kept dim at least this long makes a reduction over outer dims column-wise


# ---------------------------------------------------------------- stages of a reduction
@dataclass(frozen=True)
class Reduction:
    """name = combine over the reduced elements of `value` (from the combine's identity)."""
    name: str
    combine: str
    value: Expr


@dataclass(frozen=True)
class SoftmaxStats:
    """max_name = max(value), sum_name = sum(exp(value - max)) in one pass."""
    max_name: str
    sum_name: str
    value: Expr


@dataclass(frozen=True)
class Moments:
    """mean_name = mean(value), var_name = biased variance of value, in one pass."""
    mean_name: str
    var_name: str
    value: Expr


Stage = Union[Reduction, SoftmaxStats, Moments]


def identity(combine: str, dtype: DType) -> Const:
    """The identity of a combine in `dtype` (max starts at -inf, or the lowest integer)."""
    if combine in ("add", "or"):
        return const(0, dtype)
    if combine in ("mul", "and"):
        return const(1, dtype)
    if dtype is bool_:
        return const(combine == "min", dtype)
    if dtype.is_floating_point:
        return const(-math.inf if combine == "max" else math.inf, dtype)
    info = _iinfo(dtype)
    return const(info[0] if combine == "max" else info[1], dtype)


def _iinfo(dtype: DType) -> tuple[int, int]:
    i = np.iinfo(dtype.np)
    return int(i.min), int(i.max)


# ---------------------------------------------------------------- elementwise
def elementwise_kernel(name: str, shape: Sequence[int], inputs: dict[str, Access],
                       outputs: Sequence[Output]) -> Kernel:
    """out_k[i] = expr_k(inputs at i) for every i in `shape`; outputs are contiguous over `shape`.

    An input whose buffer is also an output's (computed in place: read only at the element written,
    the caller's rule) is loaded before any store of the element, so every output sees its old
    value whatever their order (Adam with L2 weight decay: the moments read the parameter, the
    parameter reads the moments, all three updated in place)."""
    shape = tuple(shape)
    _check_outputs(name, shape, outputs)
    _check_inputs(name, shape, inputs)
    maps = [m for _, m in inputs.values()] + [IndexMap.contiguous(shape)]
    if all(isinstance(m, IndexMap) for m in maps):
        dims = _coalesce(shape, list(range(len(shape))), maps)
    else:
        dims = [[d] for d in range(len(shape)) if shape[d] != 1]
    loop_vars, loops = _loop_vars(shape, dims, "i")
    at = _point(shape, dims, loop_vars)
    stored = {buf for buf, _ in outputs}
    used = {node.name for _, expr in outputs for node in walk_exprs(expr) if isinstance(node, Arg)}
    old = {arg: Var(f"old_{arg}", buf.dtype) for arg, (buf, _) in inputs.items() if buf in stored and arg in used}
    first: list[Stmt] = [Let(v.name, _bind(Arg(arg, v.dtype), inputs, at, shape)) for arg, v in old.items()]
    body = first + [Store(buf, IndexMap.contiguous(shape).index(at), _bind(substitute(expr, old), inputs, at, shape))
                    for buf, expr in outputs]
    return Kernel(name, _nest(loops, body))


# ---------------------------------------------------------------- reductions
def reduction_kernel(name: str, shape: Sequence[int], reduce_dims: Sequence[int], inputs: dict[str, Access],
                     stages: Sequence[Stage], row_outputs: Sequence[Output] = (),
                     elem_outputs: Sequence[Output] = (), scratch: Callable | None = None, sum_block: int = 0):
    """Reduce over `reduce_dims` of the iteration space `shape`.

    Stages run in order, each may use the results (Vars) of earlier ones.
    `row_outputs` are stored once per kept index (contiguous over the kept
    dims, i.e. the keepdim layout); their affine inputs must be broadcast
    (stride 0) along the reduced dims, and index functions see the reduced
    dims' indices as 0. `elem_outputs` are stored at every point of
    `shape` (contiguous) after the stages: the elementwise epilogue of a row
    kernel (softmax's exp(x - max) / sum).

    `scratch(shape, dtype) -> Buffer`, when given, lets a column-wise reduction over many rows with
    no kept outer dim (a bias gradient) split its rows into chunks (`_row_chunks`): then the result is
    two kernels, (partial sums per chunk, their combination), else one kernel.

    `sum_block` (> 0): a float sum over more elements adds them in blocks of that many, each block's sum
    folded into a float64 total (`_blocked_sum`), rather than in one running float32 sum per vector lane
    (x.sum() of 2^24 floats was 4e-3 off); the CUDA renderer, which parallelizes plain sums, passes 0.
    """
    shape = tuple(shape)
    rdims = sorted(set(reduce_dims))
    kdims = [d for d in range(len(shape)) if d not in rdims]
    kept_shape = tuple(shape[d] for d in kdims)
    _check_outputs(name, kept_shape, row_outputs)
    _check_outputs(name, shape, elem_outputs)
    _check_inputs(name, shape, inputs)
    affine = all(isinstance(m, IndexMap) for _, m in inputs.values())
    full_out = IndexMap.contiguous(shape)
    row_map = IndexMap.contiguous(kept_shape)
    kept_map = IndexMap(tuple(row_map.strides[kdims.index(d)] if d in kdims else 0
                              for d in range(len(shape))))
    maps = [m for _, m in inputs.values()] + [full_out, kept_map] if affine else None
    kgroups = _coalesce(shape, kdims, maps) if affine else [[d] for d in kdims if shape[d] != 1]
    rgroups = _coalesce(shape, rdims, maps) if affine else [[d] for d in rdims if shape[d] != 1]
    kvars, kloops = _loop_vars(shape, kgroups, "k")
    rvars, rloops = _loop_vars(shape, rgroups, "r")
    zero = Const(0, int64)

    def at(rv):
        return _point(shape, kgroups + rgroups, list(kvars) + list(rv))

    def values(expr, rv):
        return _bind(expr, inputs, at(rv), shape)

    for _, expr in row_outputs:
        _check_row_expr(name, expr, inputs, rdims)
    column = _column_form(stages, elem_outputs, row_outputs, kgroups, rgroups, shape)
    if column is not None:
        return _column_kernel(name, column, stages[0], row_outputs, kloops, rloops, kvars, rvars, at, values,
                              row_map, kdims, scratch)
    if scratch is not None and _columns_form(kgroups, rgroups, shape):
        return _columns_kernel(name, stages, row_outputs, elem_outputs, kloops, rloops, rvars, at, values, row_map,
                               kdims, full_out, scratch)

    body: list[Stmt] = []
    for stage in stages:
        body += _stage(stage, rgroups, rloops, rvars, shape, values, sum_block)
    for buf, expr in row_outputs:
        body.append(Store(buf, row_map.index([at([zero] * len(rvars))[d] for d in kdims]),
                          values(expr, [zero] * len(rvars))))
    if elem_outputs:
        stores = [Store(buf, full_out.index(at(rvars)), values(expr, rvars)) for buf, expr in elem_outputs]
        body.append(_nest(rloops, stores))
    if not kloops:
        kloops = [("k0", 1)]
    return Kernel(name, _nest(kloops, body))


def _column_form(stages, elem_outputs, row_outputs, kgroups, rgroups, shape):
    """The row output that can hold the accumulators when the reduction should run column-wise.

    Column-wise: the innermost dim is kept (reducing over rows of a matrix, e.g. a bias gradient):
    the accumulators are a whole output row, updated elementwise row after row (vectorized over the
    contiguous kept dim) instead of one strided reduction per output element.
    """
    if len(stages) != 1 or not isinstance(stages[0], Reduction) or elem_outputs or not kgroups or not rgroups:
        return None
    if stages[0].value.dtype in (float16, bfloat16):      # its output row would accumulate in the half dtype,
        return None                                        # rounding at every row (eager sums in float32)
    if kgroups[-1][-1] < rgroups[-1][-1] or math.prod(shape[d] for d in kgroups[-1]) < COLUMN_MIN:
        return None
    for buf, _ in row_outputs:
        if buf.dtype is stages[0].value.dtype:
            return buf
    return None


def _column_kernel(name, acc_buf, stage, row_outputs, kloops, rloops, kvars, rvars, at, values, row_map, kdims,
                   scratch=None):
    zero = Const(0, int64)
    dt = stage.value.dtype

    def row_index(rv):
        point = at(rv)
        return row_map.index([point[d] for d in kdims])

    slot = row_index([zero] * len(rvars))
    acc = Load(acc_buf, slot)
    inner_var, inner_extent = kloops[-1]
    init = Loop(inner_var, inner_extent, (Store(acc_buf, slot, identity(stage.combine, dt)),))
    chunks = _row_chunks(rloops, inner_extent * dt.itemsize) if scratch is not None and not kloops[:-1] else None
    partial_kernel = None
    if chunks is None:
        update = Store(acc_buf, slot, op(stage.combine, acc, values(stage.value, rvars)))
        accumulate = _nest(rloops, [Loop(inner_var, inner_extent, (update,))])
    else:
        partials = scratch((chunks, inner_extent), dt)
        chunk = Var("c")
        at_chunk = IndexMap((inner_extent, 1)).index([chunk, Var(inner_var)])     # partials[chunk, inner_var]
        partial_kernel = _partial_kernel(name, partials, chunk, at_chunk, stage, rloops, inner_var, inner_extent,
                                         rvars, values)
        update = Store(acc_buf, slot, op(stage.combine, acc, Load(partials, at_chunk)))
        accumulate = Loop(chunk.name, chunks, (Loop(inner_var, inner_extent, (update,)),))
    finals = [Store(buf, slot, values(substitute(expr, {stage.name: acc}), [zero] * len(rvars)))
              for buf, expr in row_outputs if buf is not acc_buf]
    own = next(expr for buf, expr in row_outputs if buf is acc_buf)
    finals.append(Store(acc_buf, slot, values(substitute(own, {stage.name: acc}), [zero] * len(rvars))))
    finish = Loop(inner_var, inner_extent, tuple(finals))
    outer = kloops[:-1] or [("k_all", 1)]
    kernel = Kernel(name, _nest(outer, [init, accumulate, finish]))
    return kernel if partial_kernel is None else (partial_kernel, kernel)


def _columns_form(kgroups, rgroups, shape) -> bool:
    """Whether a reduction over the rows of one matrix (its contiguous innermost dim kept, no kept outer
    dim) with several stages or elementwise outputs runs column-wise (`_columns_kernel`): a batch norm's
    statistics over a batch."""
    if len(kgroups) != 1 or not rgroups or kgroups[-1][-1] < rgroups[-1][-1]:
        return False
    return math.prod(shape[d] for d in kgroups[-1]) >= COLUMN_MIN


def _column_blocks(extent: int, rows: int, itemsize: int) -> int:
    """Column blocks of a column-wise kernel, what threads share out: one when the matrix is small
    (below PARTIAL_MIN_BYTES), else the most blocks of at least 64 columns (whole cache lines per
    thread and row) that divide the columns, at most PARTIAL_CHUNKS."""
    if rows * extent * itemsize < PARTIAL_MIN_BYTES:
        return 1
    return max([n for n in range(1, PARTIAL_CHUNKS + 1) if extent % n == 0 and extent // n >= 64], default=1)


def _columns_kernel(name, stages, row_outputs, elem_outputs, kloops, rloops, rvars, at, values, row_map, kdims,
                    full_out, scratch) -> Kernel:
    """Stages, row outputs and elementwise outputs of a reduction over the rows of a matrix, column by
    column at once: each stage's values are a row of scratch memory, updated row after row (vectorized
    over the contiguous columns), where the general form runs one strided scalar reduction per column
    (W5's batch norms over [100, 100]: ~22 us each; a batch norm step over [1024, 512]: 8.3 ms). A large
    matrix is cut into blocks of columns (`_column_blocks`), what threads share out. Statistics are
    two-pass (`_two_pass`)."""
    zero = Const(0, int64)
    column, extent = kloops[-1]
    rows = math.prod(e for _, e in rloops)
    itemsize = max([s.value.dtype.itemsize for s in stages] + [e.dtype.itemsize for _, e in elem_outputs])
    blocks = _column_blocks(extent, rows, itemsize)
    width = extent // blocks
    block, inner = f"{column}_block", (column if blocks == 1 else f"{column}_in")
    c = Var(column) if blocks == 1 else op("add", op("mul", Var(block), Const(width, int64)), Var(inner))

    def at_column(e):                   # the kept loop variable is column `c` of block `block`
        return e if blocks == 1 else substitute(e, {column: c})

    point = at([zero] * len(rvars))
    slot = at_column(row_map.index([point[d] for d in kdims]))
    known: dict = {}                    # stage name -> its value at column c (a load of its scratch row)
    body: list[Stmt] = []
    hoist = _ColumnInvariants({v.name for v in rvars}, scratch, inner, width, c, extent)

    def over_rows(expr):                # its costly parts that do not vary along the rows: once per column
        bound = hoist(at_column(values(substitute(expr, known), rvars)))
        body.extend(hoist.take())
        return bound

    def per_column(*stores):
        return Loop(inner, width, tuple(stores))

    for stage in [sub for st in stages for sub in ([st] if isinstance(st, (Reduction, _Named)) else
                                                     _two_pass(st, rows))]:
        dt = stage.value.dtype
        wide = float32 if dt in (float16, bfloat16) and not isinstance(stage, _Named) else dt   # half sums in float32,
        row = scratch((extent,), wide)                                                          # rounded once, as eager
        value = substitute(stage.value, known)
        if isinstance(stage, _Named):
            body.append(per_column(Store(row, c, at_column(values(value, [zero] * len(rvars))))))
        else:
            v = over_rows(stage.value)
            update = Store(row, c, op(stage.combine, Load(row, c), v if wide is dt else op("cast", v, dtype=wide)))
            body += [per_column(Store(row, c, identity(stage.combine, wide))), _nest(rloops, [per_column(update)])]
        known[stage.name] = Load(row, c) if wide is dt else op("cast", Load(row, c), dtype=dt)
    if row_outputs:
        body.append(per_column(*(Store(buf, slot, at_column(values(substitute(expr, known), [zero] * len(rvars))))
                                 for buf, expr in row_outputs)))
    if elem_outputs:
        stores = [Store(buf, at_column(full_out.index(at(rvars))), over_rows(expr)) for buf, expr in elem_outputs]
        body.append(_nest(rloops, [per_column(*stores)]))
    return Kernel(name, Loop(block, blocks, tuple(body)))


_COSTLY = frozenset({"div", "sqrt", "rsqrt", "pow", "exp", "log", "log1p", "expm1", "tanh", "sigmoid", "sin", "cos"})


class _ColumnInvariants:
    """Rewrites expressions of a column-wise kernel's row loops: each costly operation (`_COSTLY`) whose
    operands do not vary along the rows (batch norm's rsqrt(var + eps) ** 3) becomes a load of a scratch
    row computed once per column, before the loop (`take`); equal ones share a row. In the per-column
    form LLVM hoisted them out of the row loop itself."""

    def __init__(self, row_vars: set, scratch, column: str, width: int, at: Expr, extent: int):
        """Rows of `extent` elements, computed by loops over `column` (`width` of them) at element `at`."""
        self.row_vars, self.scratch, self.column, self.width = row_vars, scratch, column, width
        self.at, self.extent = at, extent
        self.rows: dict = {}             # expression -> the load of its row
        self.pending: list = []
        self.varies: dict = {}           # expression -> whether it depends on a row variable

    def _varies(self, e: Expr) -> bool:
        if e not in self.varies:          # by value (structural): trees of earlier calls may be freed
            self.varies[e] = ((isinstance(e, Var) and e.name in self.row_vars)
                              or any(self._varies(x) for x in e.children()))
        return self.varies[e]

    def __call__(self, e: Expr, done=None) -> Expr:
        done = {} if done is None else done
        if id(e) in done:
            return done[id(e)]
        out = e
        if isinstance(e, Op):
            args = tuple(self(a, done) for a in e.args)
            out = e if all(a is b for a, b in zip(args, e.args)) else Op(e.op, args, e.dtype)
            if e.op in _COSTLY and not self._varies(e):
                if out not in self.rows:
                    row = self.scratch((self.extent,), e.dtype)
                    self.pending.append(Loop(self.column, self.width, (Store(row, self.at, out),)))
                    self.rows[out] = Load(row, self.at)
                out = self.rows[out]
        done[id(e)] = out
        return out

    def take(self) -> list:
        taken, self.pending = self.pending, []
        return taken


PARTIAL_CHUNKS = 8           # row chunks of a split column reduction: what threads share out
PARTIAL_MIN_BYTES = 1 << 19  # rows x kept row bytes from which a column reduction is split


def _row_chunks(rloops, row_bytes: int) -> int | None:
    """Chunks of the outermost reduced loop for partial sums, or None to keep one serial pass. Why:
    with no kept outer dim the column form is one iteration, so one core ran W3 B=1024's bias
    gradients ([1024, 512] summed over rows, 0.15 ms each) while the other waited."""
    rows = math.prod(extent for _, extent in rloops)
    if rows * row_bytes < PARTIAL_MIN_BYTES or rloops[0][1] % PARTIAL_CHUNKS:
        return None
    return PARTIAL_CHUNKS


def _partial_kernel(name, partials, chunk, at, stage, rloops, inner_var, inner_extent, rvars, values) -> Kernel:
    """partials[chunk, :] (element `at`) = the reduction over `chunk` of the outermost reduced loop, in row
    order."""
    (first, extent), rest = rloops[0], rloops[1:]
    rows = extent // PARTIAL_CHUNKS
    within = Var(f"{first}_in")
    row = IndexMap((rows, 1)).index([chunk, within])
    init = Loop(inner_var, inner_extent, (Store(partials, at, identity(stage.combine, stage.value.dtype)),))
    value = values(stage.value, [row] + list(rvars[1:]))
    update = Store(partials, at, op(stage.combine, Load(partials, at), value))
    body = _nest([(within.name, rows)] + list(rest), [Loop(inner_var, inner_extent, (update,))])
    return Kernel(name + "_partials", Loop(chunk.name, PARTIAL_CHUNKS, (init, body)))


def _stage(stage: Stage, rgroups, rloops, rvars, shape, values, sum_block: int = 0) -> list[Stmt]:
    if isinstance(stage, _Named):
        return [Let(stage.name, values(stage.value, rvars))]
    extent = math.prod(shape[d] for g in rgroups for d in g)
    if isinstance(stage, Reduction):
        dt = stage.value.dtype
        if sum_block and stage.combine == "add" and dt.is_floating_point and len(rgroups) == 1 \
                and extent > sum_block:
            return _blocked_sum(stage, extent, sum_block, values)
        if dt in (float16, bfloat16):     # summed in float32 and rounded once, as eager: ops reading the
            wide = "wide_" + stage.name     # accumulator itself would see it unrounded
            return [Accumulator(wide, identity(stage.combine, float32)),
                    _nest(rloops, [Reduce(wide, stage.combine, op("cast", values(stage.value, rvars), dtype=float32))]),
                    Let(stage.name, op("cast", Var(wide, float32), dtype=dt))]
        return [Accumulator(stage.name, identity(stage.combine, dt)),
                _nest(rloops, [Reduce(stage.name, stage.combine, values(stage.value, rvars))])]
    if len(rgroups) != 1:
        return [s for sub in _two_pass(stage, extent) for s in _stage(sub, rgroups, rloops, rvars, shape, values,
                                                                      sum_block)]
    value = stage.value
    dt = value.dtype
    if isinstance(stage, SoftmaxStats):
        first, second, first_init, blocked = stage.max_name, stage.sum_name, identity("max", dt), _softmax_block
    else:
        first, second, first_init, blocked = stage.mean_name, "_m2_" + stage.mean_name, const(0, dt), _moments_block
    wide = isinstance(stage, Moments) and sum_block and extent > sum_block
    if wide:        # the blocks' statistics merged in float64, as _blocked_sum's totals
        first, second, first_init = "wide_" + first, "wide" + second, const(0, float64)
        blocked = functools.partial(_moments_block, merged=float64)
    out: list[Stmt] = [Accumulator(first, first_init), Accumulator(second, const(0, first_init.dtype))]
    out += _in_blocks(extent, BLOCK, first, lambda base, n, tag: blocked(first, second, value, base, n, values, tag))
    if wide:
        out += [Let(stage.mean_name, op("cast", Var(first, float64), dtype=dt)),
                Let(stage.var_name, op("cast", op("div", Var(second, float64), const(extent, float64)), dtype=dt))]
    elif isinstance(stage, Moments):
        out.append(Let(stage.var_name, op("div", Var(second, dt), const(extent, dt))))
    return out


def _blocked_sum(stage: Reduction, extent: int, size: int, values) -> list[Stmt]:
    """stage.name = the sum of `extent` elements, `size` at a time: each block summed in the value's
    dtype (vectorized), the blocks' sums added into a float64 total, so the rounding error grows with
    the block, not with the whole extent."""
    dt = stage.value.dtype
    total = f"wide_{stage.name}"

    def block(base, n, tag) -> list[Stmt]:
        j, part = Var(f"j_{stage.name}_{tag}", int64), f"part_{stage.name}_{tag}"
        return [Accumulator(part, const(0, dt)),
                Loop(j.name, n, (Reduce(part, "add", values(stage.value, [Op("add", (base, j), int64)])),)),
                Assign(total, op("add", Var(total, float64), op("cast", Var(part, dt), dtype=float64)))]
    return ([Accumulator(total, const(0, float64))] + _in_blocks(extent, size, stage.name, block)
            + [Let(stage.name, op("cast", Var(total, float64), dtype=dt))])


def _in_blocks(extent: int, size: int, name: str, block) -> list[Stmt]:
    """`block(base, n, tag)`'s statements over `extent` elements, `size` at a time: one loop over the full
    blocks (variable `blk_<name>`), then the tail block (the shape cuda_c's online stages match)."""
    full, tail = divmod(extent, size)
    out: list[Stmt] = []
    if full:
        blk = Var(f"blk_{name}", int64)
        out.append(Loop(blk.name, full, tuple(block(Op("mul", (blk, Const(size, int64)), int64), size, "b"))))
    if tail:
        out += block(Const(full * size, int64), tail, "t")
    return out


def _two_pass(stage: Stage, extent: int) -> list:
    """The same statistics as plain reductions (two passes), for reductions over several dims."""
    v, dt = stage.value, stage.value.dtype
    if isinstance(stage, SoftmaxStats):
        m = Var(stage.max_name, dt)
        return [Reduction(stage.max_name, "max", v),
                Reduction(stage.sum_name, "add", op("exp", op("sub", v, _finite_or_zero(m))))]
    total, m2 = "_sum_" + stage.mean_name, "_m2_" + stage.mean_name
    mean = Var(stage.mean_name, dt)
    dev = op("sub", v, mean)
    return [Reduction(total, "add", v), _Named(stage.mean_name, op("div", Var(total, dt), const(extent, dt))),
            Reduction(m2, "add", op("mul", dev, dev)),
            _Named(stage.var_name, op("div", Var(m2, dt), const(extent, dt)))]


@dataclass(frozen=True)
class _Named:
    """A stage that only names a value computed from earlier stages (the two-pass fallback)."""
    name: str
    value: Expr


def _finite_or_zero(m: Expr) -> Expr:
    """The shift of a block whose max is -inf is 0: its elements are all -inf and add exp(-inf) = 0."""
    return op("where", op("eq", m, -math.inf), 0.0, m)


def _rescale(a: Expr, to: Expr) -> Expr:
    """exp(a - to), and 1 where a == to (also when both are -inf)."""
    return op("where", op("eq", a, to), 1.0, op("exp", op("sub", a, to)))


def _softmax_block(m: str, s: str, value, base, size, values, tag) -> list[Stmt]:
    dt = value.dtype
    j = Var(f"j_{m}_{tag}", int64)
    r = Op("add", (base, j), int64)
    v = values(value, [r])
    bm, bs, shift = f"bmax_{m}_{tag}", f"bsum_{m}_{tag}", f"shift_{m}_{tag}"
    new_m = f"newmax_{m}_{tag}"
    return [
        Accumulator(bm, identity("max", dt)),
        Loop(j.name, size, (Reduce(bm, "max", v),)),
        Let(shift, _finite_or_zero(Var(bm, dt))),
        Accumulator(bs, const(0, dt)),
        Loop(j.name, size, (Reduce(bs, "add", op("exp", op("sub", v, Var(shift, dt)))),)),
        Let(new_m, op("max", Var(m, dt), Var(bm, dt))),
        Assign(s, op("add", op("mul", Var(s, dt), _rescale(Var(m, dt), Var(new_m, dt))),
                     op("mul", Var(bs, dt), _rescale(Var(bm, dt), Var(new_m, dt))))),
        Assign(m, Var(new_m, dt)),
    ]


def _moments_block(mean: str, m2: str, value, base, size, values, tag, merged: DType | None = None) -> list[Stmt]:
    """One block's mean and squared deviations (in the value's dtype), merged into the running `mean`
    and `m2` (of dtype `merged`, default the value's) by Chan's formula."""
    dt = value.dtype
    wt = merged or dt
    j = Var(f"j_{mean}_{tag}", int64)
    v = values(value, [Op("add", (base, j), int64)])
    bsum, bmean, bm2 = f"bsum_{mean}_{tag}", f"bmean_{mean}_{tag}", f"bm2_{mean}_{tag}"
    na, delta, frac = f"na_{mean}_{tag}", f"delta_{mean}_{tag}", f"frac_{mean}_{tag}"
    dev = op("sub", v, Var(bmean, dt))

    def wide(name):
        return op("cast", Var(name, dt), dtype=wt)
    return [
        Accumulator(bsum, const(0, dt)),
        Loop(j.name, size, (Reduce(bsum, "add", v),)),
        Let(bmean, op("div", Var(bsum, dt), const(size, dt))),
        Accumulator(bm2, const(0, dt)),
        Loop(j.name, size, (Reduce(bm2, "add", op("mul", dev, dev)),)),
        Let(na, Op("cast", (base,), wt)),
        Let(delta, op("sub", wide(bmean), Var(mean, wt))),
        Let(frac, op("div", const(size, wt), op("add", Var(na, wt), const(size, wt)))),
        Assign(m2, op("add", op("add", Var(m2, wt), wide(bm2)),
                      op("mul", op("mul", op("mul", Var(delta, wt), Var(delta, wt)), Var(na, wt)), Var(frac, wt)))),
        Assign(mean, op("add", Var(mean, wt), op("mul", Var(delta, wt), Var(frac, wt)))),
    ]


# ---------------------------------------------------------------- scatter
def scatter_kernel(name: str, out: Buffer, x: Access, index: Access, values: Access, dim: int,
                   shapes: tuple, accumulate: bool) -> Kernel:
    """out = x with out[..., index[j], ...] = (or +=) values[..., j, ...] along `dim`, in index order.

    `shapes` = (x, index, values) shapes; each access map is over its own shape, and values broadcast
    to the region x.shape[:dim] + index.shape + x.shape[dim+1:]. One serial pass (outer extent 1: a
    repeated index makes the updates depend on each other): copy x, then walk the region; the rows of
    a leading-dim scatter (an embedding's gradient) are contiguous inner loops that vectorize. Indices
    are bounds-checked (negatives wrap once, like PyTorch); a bad one raises IndexError after the call.
    """
    x_shape, i_shape, v_shape = (tuple(s) for s in shapes)
    (x_buf, x_map), (i_buf, i_map), (v_buf, v_map) = x, index, values
    region = x_shape[:dim] + i_shape + x_shape[dim + 1:]
    strides = _strides(x_shape)                 # nonzero for unit dims too: the checked index is kept
    copy_vars, copy_loops = _loop_vars(x_shape, [[d] for d in range(len(x_shape))], "c")
    copy = Store(out, _dot(strides, copy_vars), Load(x_buf, x_map.index(copy_vars)))
    r, loops = _loop_vars(region, [[d] for d in range(len(region))], "s")
    nb = len(i_shape)
    at = Load(i_buf, i_map.index(r[dim:dim + nb]))
    if at.dtype is not int64:
        at = Op("cast", (at,), int64)
    checked = CheckedIndex(at, x_shape[dim], f"index out of bounds for dimension {dim} with size {x_shape[dim]} "
                                             f"(index_put on a tensor of shape {list(x_shape)}):")
    target = _dot(strides, list(r[:dim]) + [checked] + list(r[dim + nb:]))
    lead = len(region) - len(v_shape)
    value = Load(v_buf, v_map.index([Const(0, int64) if n == 1 else r[lead + j] for j, n in enumerate(v_shape)]))
    new = op("add", Load(out, target), value) if accumulate else value
    update = Store(out, target, new)
    return Kernel(name, Loop("scatter", 1, (_nest(copy_loops, [copy]), _nest(loops, [update]))))


def cat_kernel(name: str, out: Buffer, pieces: Sequence[tuple[Buffer, IndexMap, tuple]], dim: int) -> Kernel:
    """out = the pieces concatenated along `dim`: each piece is (buffer, map over its shape, its shape).

    Why a kernel, not numpy's concatenate: an extern step is a Python call that sends the CPU threads
    to sleep (W6's two concatenations of q, k, v gradients took ~0.09 ms each). The outer loop, what
    threads split, runs over the first dim other than `dim` longer than 1 (a cat along dim 0 of
    matrices splits their columns; of vectors, one serial iteration); inside it, one loop nest per
    piece copies its slab, innermost dims coalesced where both sides walk them flat."""
    shape = tuple(out.shape)
    out_strides = _strides(shape)
    lead = next((d for d in range(len(shape)) if d != dim and shape[d] > 1), None)
    outer_var = Var("o")
    body: list[Stmt] = []
    start = 0
    for n, (buf, imap, piece_shape) in enumerate(pieces):
        piece_shape = tuple(piece_shape)
        if piece_shape[:dim] + piece_shape[dim + 1:] != shape[:dim] + shape[dim + 1:]:
            raise ValueError(f"cat kernel {name!r}: piece {n} of shape {list(piece_shape)} does not fit output "
                             f"{list(shape)} along dim {dim}")
        if piece_shape[dim] == 0:
            continue
        dst = IndexMap(tuple(out_strides), start * out_strides[dim])
        groups = _coalesce(piece_shape, [d for d in range(len(shape)) if d != lead], [imap, dst])
        loop_vars, loops = _loop_vars(piece_shape, groups, f"p{n}_")
        at = _point(piece_shape, groups, loop_vars)
        if lead is not None:
            at[lead] = outer_var
        body.append(_nest(loops or [(f"p{n}_0", 1)], [Store(out, dst.index(at), Load(buf, imap.index(at)))]))
        start += piece_shape[dim]
    if start != shape[dim]:
        raise ValueError(f"cat kernel {name!r}: pieces cover {start} of the output's {shape[dim]} along dim {dim}")
    return Kernel(name, Loop(outer_var.name, shape[lead] if lead is not None else 1, tuple(body)))


def _strides(shape: tuple) -> list[int]:
    out, step = [], 1
    for size in reversed(shape):
        out.append(step)
        step *= size
    return out[::-1]


def _dot(strides: Sequence[int], at: Sequence[Expr]) -> Expr:
    terms = [a if s == 1 else Op("mul", (a, Const(s, int64)), int64) for s, a in zip(strides, at)]
    total: Expr = terms[0] if terms else Const(0, int64)
    for t in terms[1:]:
        total = Op("add", (total, t), int64)
    return total


# ---------------------------------------------------------------- helpers
def _check_outputs(name: str, shape: tuple, outputs: Sequence[Output]) -> None:
    for buf, expr in outputs:
        if buf.size != math.prod(shape):
            raise ValueError(f"kernel {name!r}: output {buf!r} has {buf.size} elements, the iteration space "
                             f"{shape} has {math.prod(shape)}")
        if expr.dtype is not buf.dtype:
            raise TypeError(f"kernel {name!r}: output {buf!r} gets a {expr.dtype.name} expression")


def _check_inputs(name: str, shape: tuple, inputs: dict[str, Access]) -> None:
    for arg, (buf, index) in inputs.items():
        if isinstance(index, IndexMap):
            if len(index.strides) != len(shape):
                raise ValueError(f"kernel {name!r}: input {arg} ({buf!r}) has an index map of "
                                 f"{len(index.strides)} dims for an iteration space of {len(shape)}")
            index.check(shape, buf)


def _check_row_expr(name: str, expr: Expr, inputs: dict[str, Access], rdims: list[int]) -> None:
    for node in walk_exprs(expr):
        if isinstance(node, Arg) and node.name in inputs:
            index = inputs[node.name][1]
            if isinstance(index, IndexMap) and any(index.strides[d] for d in rdims):
                raise ValueError(f"kernel {name!r}: row output reads input {node.name} which varies along "
                                 f"the reduced dims {rdims}")


def _coalesce(shape: tuple, dims: list[int], maps: list[IndexMap]) -> list[list[int]]:
    """Group `dims` that every map walks as one flat dim; drop size-1 dims."""
    groups: list[list[int]] = []
    for d in dims:
        if shape[d] == 1:
            continue
        if groups:
            prev = groups[-1][-1]
            between_unit = all(shape[e] == 1 for e in range(prev + 1, d))
            if between_unit and all(m.strides[prev] == m.strides[d] * shape[d] for m in maps):
                groups[-1].append(d)
                continue
        groups.append([d])
    return groups


def _loop_vars(shape: tuple, groups: list[list[int]], prefix: str):
    loops = [(f"{prefix}{n}", math.prod(shape[d] for d in g)) for n, g in enumerate(groups)]
    return [Var(v) for v, _ in loops], loops


def _point(shape: tuple, groups: list[list[int]], loop_vars: Sequence[Expr]) -> list[Expr]:
    """Per-dim index expressions of `shape` from the (coalesced) loop variables."""
    at: list[Expr] = [Const(0, int64)] * len(shape)
    for g, var in zip(groups, loop_vars):
        if len(g) == 1:
            at[g[0]] = var
            continue
        # A coalesced group: only used through maps that walk it flat, so the innermost dim
        # carries the flat index and the others are 0 (strides[d] == strides[last] * extent).
        at[g[-1]] = var
    return at


def _bind(expr: Expr, inputs: dict[str, Access], at: list[Expr], shape: tuple) -> Expr:
    mapping = {}
    for node in walk_exprs(expr):
        if node == FLAT_INDEX:
            mapping[node.name] = IndexMap.contiguous(shape).index(at)
        elif isinstance(node, Arg) and node.name in inputs and node.name not in mapping:
            buf, index = inputs[node.name]
            idx = index.index(at) if isinstance(index, IndexMap) else index(at)
            if node.dtype is not buf.dtype:
                raise TypeError(f"input {node.name} is {buf.dtype.name} but used as {node.dtype.name}")
            mapping[node.name] = Load(buf, idx)
    return substitute(expr, mapping)


def _nest(loops: list[tuple[str, int]], body: list[Stmt]) -> Loop:
    if not loops:
        loops = [("i0", 1)]
    stmt: Stmt = Loop(loops[-1][0], loops[-1][1], tuple(body))
    for var, extent in reversed(loops[:-1]):
        stmt = Loop(var, extent, (stmt,))
    return stmt
