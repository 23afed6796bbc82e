"""Render a `Program` of loop-level kernels to one LLVM IR module (llvmlite.ir).

The module holds, per kernel `k`:
- `k` (internal): `void (ptr noalias %buf0, ..., ptr noalias %err, i64 %start, i64 %stop)`, the
  kernel's outer loop restricted to [start, stop). `noalias` on every buffer lets the loop vectorizer
  work without runtime alias checks: the buffers of one kernel must be disjoint (or the same Buffer).
- `k.range` (exported, noinline): `void (ptr %table, ptr %err, i64 %start, i64 %stop)`, which reads
  the kernel's buffer addresses from the program's table; threads call it on slices of the outer loop.
and one entry `program(ptr %table, ptr %err)` calling every kernel over its whole range in order
(returning early once a kernel with checks has set the error flag),
so that running a small program is a single foreign call. Kernels equal up to their buffers (the same
layer repeated) share one kernel function (`canonical_kernel`): it is compiled once.

Numerics: no fast-math on elementwise arithmetic (results match numpy up to the
rounding of the transcendental approximations in `llvm_math`). Float add/mul
*reductions* carry `reassoc`: the vectorizer then keeps several partial sums,
which changes the summation order (like numpy's pairwise sums, unlike a
sequential loop). float16/bfloat16 are computed in float32 and rounded after
every op, as eager rounds each op's result.

Bounds: every kernel passes `codegen.verify.verify_bounds` first (static
indices provably inside their buffers), and range entries clamp [start, stop)
to the outer loop.

Errors: checks (data-dependent indices out of range, integer division by
zero, negative integer powers) store their 1-based id into the int32 error
flag `err[0]`; `RenderedProgram.checks` maps ids to exception types and
messages for the runtime to raise after the call.
"""
from __future__ import annotations

import math
from dataclasses import dataclass

from llvmlite import ir

from tracetorch.dtypes import DType, bfloat16, bool_, float16, float32, float64, int64, uint8

from . import llvm_math
from .memo import ScopedMemo
from .rendered import GEMM_TABLE, Check, RenderedProgram, unique_symbol
from .scalar import RANDOM_BITS, RNG_GOLDEN, RNG_MIX1, RNG_MIX2
from .verify import verify_bounds
from .kernel import (Accumulator, Arg, Assign, Buffer, CheckedIndex, Const, Expr, Kernel, Let, Load, Loop,
                     MatmulKernel, Op, Program, Reduce, Stmt, Store, Var, walk_exprs, walk_stmts)
from .llvm_gemm import gemm_table, render_matmul

VOID, PTR = ir.VoidType(), ir.PointerType()
I1, I8, I32, I64 = ir.IntType(1), ir.IntType(8), ir.IntType(32), ir.IntType(64)
F16, F32, F64 = ir.HalfType(), ir.FloatType(), ir.DoubleType()
ENTRY = "program"
SEGMENT = "program_segment"


def storage_type(dt: DType) -> ir.Type:
    if dt is bool_:
        return I8
    if dt is float16:
        return F16
    if dt in (bfloat16, float32):
        return F32
    if dt is float64:
        return F64
    return ir.IntType(8 * dt.itemsize)


def compute_type(dt: DType) -> ir.Type:
    if dt is bool_:
        return I1
    if dt in (float16, bfloat16):
        return F32
    return storage_type(dt)


MODULE_WEIGHT = 300    # estimated code size (`kernel_weight`) per module from which a program is several modules,
                       # which the engine compiles at once in forked children (runtime.compile_jobs): on the 2-core
                       # Zen 3 host, W3's step (weight 682) 0.32 -> 0.22 s of LLVM time as 2 modules, W5's (4565)
                       # 1.83 -> 0.82 s as 8; compiled one after the other, 15 modules took as long as one
MAX_MODULES = 8


CHECK_STRIDE = 1 << 16   # module m's checks have ids m * CHECK_STRIDE + 1, + 2, ... (each module renders alone)


@dataclass(frozen=True)
class ModulePlan:
    """Which module each kernel goes into, and the symbols every module needs to know: made before
    any module is rendered, so that each can be rendered (and compiled) apart, in any process."""
    keys: tuple                           # per kernel: its shared-function key (`canonical_kernel`)
    home: dict                            # shared-function key -> module number
    symbols: tuple                        # per kernel: its function's base name (its range entry: + ".range")
    weights: tuple                        # per module: its estimated size (`kernel_weight`)

    @property
    def count(self) -> int:
        return len(self.weights)


def plan_modules(program: Program) -> ModulePlan:
    """Check every kernel's bounds (`verify_bounds`) and place it in a module (`module_of`)."""
    kernels = program.kernels
    keys = []
    for kernel in kernels:
        if isinstance(kernel, MatmulKernel):
            keys.append(_matmul_key(kernel))
        else:
            verify_bounds(kernel)
            keys.append(canonical_kernel(kernel))
    home, weights = module_of(kernels, keys)
    names: set = set()
    symbols = tuple(unique_symbol(f"k{n}_{kernel.name}", names) for n, kernel in enumerate(kernels))
    return ModulePlan(tuple(keys), home, symbols, tuple(weights))


def render_program(program: Program) -> RenderedProgram:
    """The program's code: one module, or for a big program several (`module_of`), which the engine
    compiles at once and links together (`render_module` each, then `rendered_program`)."""
    plan = plan_modules(program)
    parts = [render_module(program, plan, m) for m in range(plan.count)]
    return rendered_program(program, plan, [checks for _, checks in parts], tuple(text for text, _ in parts))


def rendered_program(program: Program, plan: ModulePlan, checks: list, modules: tuple = ()) -> RenderedProgram:
    """The RenderedProgram of modules rendered apart (`checks`: each module's, from `render_module`)."""
    merged = {cid: check for module_checks in checks for cid, check in module_checks}
    return RenderedProgram(modules, ENTRY, tuple(f"{symbol}.range" for symbol in plan.symbols), merged,
                           program.gemm_lanes, SEGMENT)


def render_module(program: Program, plan: ModulePlan, m: int) -> tuple[str, tuple]:
    """(IR text, ((check id, Check), ...)) of module `m`: each of its kernels' function (once per
    shared key) and range entry, with every helper they call (internal: each module has its own
    copy). Module 0 also holds the entries `program` and `program_segment`, which declare the other
    modules' range entries, and defines the GEMM table that their matmuls declare."""
    module = ir.Module(name="tracetorch")
    slots = {b: i for i, b in enumerate(program.buffers)}
    checks: list[Check] = []
    shared: dict = {}                     # kernels equal up to their buffers share one function
    entries = {}
    for n, (kernel, key) in enumerate(zip(program.kernels, plan.keys)):
        if plan.home[key] != m:
            continue
        base = plan.symbols[n]
        hit = shared.get(key)
        if hit is None:
            if isinstance(kernel, MatmulKernel):
                hit = (render_matmul(module, kernel, base), False)
            else:
                wide = wide_vectors(kernel)
                hit = (_KernelRenderer(module, kernel, base, checks, wide, m * CHECK_STRIDE).fn, wide)
            shared[key] = hit
        entries[n] = _range_entry(module, hit[0], kernel, slots, base + ".range", hit[1])
    assert len(checks) < CHECK_STRIDE, f"module {m}: {len(checks)} checks"
    if m == 0:
        ranges = [entries.get(n) or ir.Function(module, RANGE_ENTRY, name=f"{symbol}.range")
                  for n, symbol in enumerate(plan.symbols)]
        _program_entry(module, program, ranges)
        _segment_entry(module, program, ranges)
        if program.gemm_lanes:
            gemm_table(module)
    elif GEMM_TABLE in module.globals:
        module.globals[GEMM_TABLE].initializer = None     # `external global`: module 0's
    return str(module), tuple((m * CHECK_STRIDE + i + 1, check) for i, check in enumerate(checks))


def _program_entry(module: ir.Module, program: Program, ranges: list) -> None:
    """void program(table, err): every kernel over its whole range, in order, returning early once
    one has set the error flag (later kernels may write inputs in place)."""
    entry = ir.Function(module, ir.FunctionType(VOID, [PTR, PTR]), name=ENTRY)
    entry.attributes.add("nounwind")
    b = ir.IRBuilder(entry.append_basic_block("entry"))
    for n, (kernel, fn) in enumerate(zip(program.kernels, ranges)):
        if kernel.extent > 0:
            _call_kernel(b, fn, entry.args[0], entry.args[1], kernel, n + 1 < len(ranges))
    b.ret_void()


def module_of(kernels, keys) -> tuple[dict, list]:
    """(shared-function key -> the module its kernels go into, each module's weight): one module unless the program weighs
    more than MODULE_WEIGHT, else up to MAX_MODULES balanced by weight (largest first, each into the
    lightest module so far), so that compiling them in parallel takes about the longest's time."""
    weight: dict = {}
    for kernel, key in zip(kernels, keys):
        if key not in weight:
            weight[key] = kernel_weight(kernel)
    count = min(MAX_MODULES, len(weight), sum(weight.values()) // MODULE_WEIGHT) or 1
    loads = [0] * count
    home = {}
    for key in sorted(weight, key=lambda k: -weight[k]):        # (stable: ties in program order)
        i = loads.index(min(loads))
        home[key] = i
        loads[i] += weight[key]
    return home, loads


def kernel_weight(kernel) -> int:
    """A kernel's code size estimate: its distinct expressions and statements, a transcendental's
    polynomial (inlined at each use) as 25."""
    if isinstance(kernel, MatmulKernel):
        return 4                          # a call of the GEMM library
    exprs = sum(25 if isinstance(e, Op) and e.op in _HEAVY_OPS else 1 for e in walk_exprs(kernel.outer))
    return exprs + sum(1 for _ in walk_stmts(kernel.outer))


def _segment_entry(module: ir.Module, program: Program, entries: list) -> None:
    """void program_segment(table, err, first, last): kernels first..last-1 (program.kernels order) in
    order, stopping at the first failure, as `program` runs them all. Why: a program with parallel
    kernels runs step by step from Python, and one foreign call per run of serial kernels instead of
    one per kernel saves ~1 us a kernel (W5: ~70 serial kernels a step)."""
    fn = ir.Function(module, ir.FunctionType(VOID, [PTR, PTR, I64, I64]), name=SEGMENT)
    fn.attributes.add("nounwind")
    table, err, first, last = fn.args
    b = ir.IRBuilder(fn.append_basic_block("entry"))
    for n, (kernel, entry) in enumerate(zip(program.kernels, entries)):
        if kernel.extent == 0:
            continue
        number = ir.Constant(I64, n)
        inside = b.and_(b.icmp_signed("<=", first, number), b.icmp_signed("<", number, last))
        with b.if_then(inside):
            _call_kernel(b, entry, table, err, kernel, True)
    b.ret_void()


def _call_kernel(b: ir.IRBuilder, entry, table, err, kernel, checked: bool) -> None:
    """Call a kernel's range entry over its whole outer loop; when `checked`, return from the calling
    function if the kernel set the error flag (after every kernel: whether one has checks is known
    only once its module is rendered, and a load and branch a kernel cost nothing)."""
    b.call(entry, [table, err, ir.Constant(I64, 0), ir.Constant(I64, kernel.extent)])
    if checked:
        failed = b.icmp_signed("!=", b.load(err, typ=I32, align=4), ir.Constant(I32, 0))
        with b.if_then(failed, likely=False):
            b.ret_void()


def canonical_kernel(kernel: Kernel):
    """The kernel with its buffers renamed by position (b0, b1, ... in `kernel.buffers` order) and no
    name: two kernels with the same canonical form (the same layer repeated) compile to one function,
    called with each kernel's own buffers."""
    names = {b: Buffer(f"b{i}", b.dtype, b.shape) for i, b in enumerate(kernel.buffers)}
    done: dict = {}

    def expr(e):
        hit = done.get(id(e))
        if hit is not None:
            return hit[1]
        if isinstance(e, Load):
            out = Load(names[e.buffer], expr(e.index))
        elif isinstance(e, Op):
            out = Op(e.op, tuple(expr(a) for a in e.args), e.dtype)
        elif isinstance(e, CheckedIndex):
            out = CheckedIndex(expr(e.index), e.size, e.what)
        else:
            out = e
        done[id(e)] = (e, out)
        return out

    def stmt(st):
        if isinstance(st, Loop):
            return Loop(st.var, st.extent, tuple(stmt(x) for x in st.body))
        if isinstance(st, Store):
            return Store(names[st.buffer], expr(st.index), expr(st.value))
        if isinstance(st, Accumulator):
            return Accumulator(st.name, expr(st.init))
        return type(st)(**{**st.__dict__, "value": expr(st.value)})

    return stmt(kernel.outer)


def _matmul_key(kernel: MatmulKernel):
    """Matmul kernels equal up to their buffers and name share one function (like `canonical_kernel`)."""
    names = {buf: i for i, buf in enumerate(kernel.buffers)}
    return ("matmul", names[kernel.a], names[kernel.b], kernel.batch, kernel.m, kernel.n, kernel.k,
            kernel.a_map, kernel.b_map)


# Transcendentals: their polynomials make an elementwise kernel compute-bound.
_HEAVY_OPS = frozenset({"exp", "log", "log1p", "expm1", "tanh", "sigmoid", "sin", "cos", "pow"})
WIDE_VECTORS = '"prefer-vector-width"="512"'


WIDE_MIN_ROW = 32   # innermost loop length from which a reduction's loops go wide (two 16-lane vectors)


def wide_vectors(kernel: Kernel) -> bool:
    """Whether the kernel asks LLVM for 512-bit vectors: a kernel computing a transcendental, which
    16 float lanes run twice as fast as LLVM's 256-bit default for Intel cores (W6's exact GELU 0.26
    -> 0.17 ms on the 2-core Xeon; lanes are independent, so its results are the same bits). That
    holds for reductions too when their rows are long (W6's attention softmax over rows of 64 0.127
    -> 0.098 ms, its cross-entropy over 256 classes 0.156 -> 0.130; their partial sums then differ in
    rounding), but not over short rows (W3's cross-entropy over 10 classes 0.098 -> 0.129 ms: every
    row is a scalar remainder) nor for reductions without one: layer norm rows went 7.0 -> 9.3 ms at
    512 bits. Hosts without AVX-512 ignore the preference."""
    if not any(isinstance(e, Op) and e.op in _HEAVY_OPS for e in walk_exprs(kernel.outer)):
        return False
    if not any(isinstance(st, (Accumulator, Reduce)) for st in walk_stmts(kernel.outer)):
        return True
    innermost = [st.extent for st in walk_stmts(kernel.outer)
                 if isinstance(st, Loop) and not any(isinstance(b, Loop) for b in st.body)]
    return min(innermost, default=0) >= WIDE_MIN_ROW


def _prefer_wide_vectors(fn: ir.Function) -> None:
    set.add(fn.attributes, WIDE_VECTORS)      # a string attribute: llvmlite's set admits only keywords


RANGE_ENTRY = ir.FunctionType(VOID, [PTR, PTR, I64, I64])     # void (ptr table, ptr err, i64 start, i64 stop)


def _range_entry(module, kernel_fn, kernel: Kernel, slots: dict, name: str, wide: bool) -> ir.Function:
    fn = ir.Function(module, RANGE_ENTRY, name=name)
    fn.attributes.add("noinline")
    fn.attributes.add("nounwind")
    if wide:                                  # it inlines the kernel: the preference must be on both
        _prefer_wide_vectors(fn)
    table, err, start, stop = fn.args
    b = ir.IRBuilder(fn.append_basic_block("entry"))
    ptrs = [b.load(b.gep(table, [ir.Constant(I64, slots[buf])], inbounds=True, source_etype=PTR), typ=PTR)
            for buf in kernel.buffers]
    b.call(kernel_fn, ptrs + [err, start, stop])
    b.ret_void()
    return fn


class _KernelRenderer:
    """Emit one kernel function; expressions are memoized per scope (they are DAGs)."""

    def __init__(self, module: ir.Module, kernel: Kernel, name: str, checks: list[Check], wide: bool = False,
                 check_base: int = 0):
        self.kernel, self.checks, self.check_base = kernel, checks, check_base
        self.buffers = kernel.buffers
        args = [PTR] * len(self.buffers) + [PTR, I64, I64]
        fn = ir.Function(module, ir.FunctionType(VOID, args), name=name)
        fn.linkage = "internal"
        fn.attributes.add("nounwind")
        if wide:
            _prefer_wide_vectors(fn)
        for a in fn.args[:len(self.buffers) + 1]:
            a.add_attribute("noalias")
        self.fn = fn
        self.ptr = dict(zip(self.buffers, fn.args))
        self.err = fn.args[len(self.buffers)]
        entry = fn.append_basic_block("entry")
        self.b = ir.IRBuilder(entry)
        self.accs: dict[str, tuple] = {}
        for stmt in walk_stmts(kernel.outer):
            if isinstance(stmt, Accumulator) and stmt.name not in self.accs:
                dt = stmt.init.dtype
                self.accs[stmt.name] = (self.b.alloca(compute_type(dt), name=stmt.name), dt)
        self.scopes: list[dict] = [{}]       # name -> ir.Value for loop variables and Lets
        self.memo = ScopedMemo()
        self._entry = entry
        self._failed: list = []              # (check id, i8 flag alloca) per check of this kernel
        start, stop = fn.args[-2], fn.args[-1]
        b = self.b
        zero, extent = ir.Constant(I64, 0), ir.Constant(I64, kernel.outer.extent)
        start = b.select(b.icmp_signed("<", start, zero), zero, start)      # a range never leaves the loop
        stop = b.select(b.icmp_signed(">", stop, extent), extent, stop)
        self.loop(kernel.outer, start, stop, guard=True)
        self.report_failures()
        self.b.ret_void()

    # ------------------------------------------------------------ statements
    def loop(self, loop: Loop, lo: ir.Value, hi: ir.Value, guard: bool = False) -> None:
        if not guard and loop.extent <= 0:
            return
        b = self.b
        header = self.fn.append_basic_block(f"{loop.var}.body")
        done = self.fn.append_basic_block(f"{loop.var}.done")
        before = b.block
        if guard:
            b.cbranch(b.icmp_signed("<", lo, hi), header, done)
        else:
            b.branch(header)
        b.position_at_end(header)
        i = b.phi(I64, name=loop.var)
        i.add_incoming(lo, before)
        self.scopes.append({loop.var: i})
        self.memo.push()
        for stmt in loop.body:
            self.stmt(stmt)
        self.scopes.pop()
        self.memo.pop()
        nxt = b.add(i, ir.Constant(I64, 1), flags=["nuw", "nsw"])
        i.add_incoming(nxt, b.block)
        b.cbranch(b.icmp_signed("<", nxt, hi), header, done)
        b.position_at_end(done)

    def stmt(self, stmt: Stmt) -> None:
        b = self.b
        if isinstance(stmt, Loop):
            self.loop(stmt, ir.Constant(I64, 0), ir.Constant(I64, stmt.extent))
        elif isinstance(stmt, Let):
            self.scopes[-1][stmt.name] = self.expr(stmt.value)
        elif isinstance(stmt, Accumulator):
            ptr, dt = self.accs[stmt.name]
            b.store(self.convert(self.expr(stmt.init), stmt.init.dtype, dt), ptr)
            self.forget_state()
        elif isinstance(stmt, Assign):
            ptr, dt = self.accs[stmt.name]
            b.store(self.convert(self.expr(stmt.value), stmt.value.dtype, dt), ptr)
            self.forget_state()
        elif isinstance(stmt, Reduce):
            ptr, dt = self.accs[stmt.name]
            value = self.convert(self.expr(stmt.value), stmt.value.dtype, dt)
            acc = b.load(ptr, typ=compute_type(dt))
            b.store(self.combine(stmt.combine, acc, value, dt), ptr)
            self.forget_state()
        elif isinstance(stmt, Store):
            index = self.expr(stmt.index, index=True)
            value = self.convert(self.expr(stmt.value), stmt.value.dtype, stmt.buffer.dtype)
            dt = stmt.buffer.dtype
            st = storage_type(dt)
            addr = b.gep(self.ptr[stmt.buffer], [index], inbounds=True, source_etype=st)
            b.store(self.to_storage(value, dt), addr, align=dt.np.itemsize)
            self.forget_state()
        else:
            raise TypeError(f"kernel {self.kernel.name!r}: not a statement: {stmt!r}")

    def combine(self, combine: str, acc, value, dt: DType):
        b = self.b
        if dt.is_floating_point:
            if combine == "add":
                return b.fadd(acc, value, flags=["reassoc"])
            if combine == "mul":
                return b.fmul(acc, value, flags=["reassoc"])
            if combine in ("max", "min"):
                # freeze (a no-op on any value that is not poison) keeps InstCombine from folding a masked
                # value `where(m, x, -inf)` into a conditional `select(m, max(acc, x), acc)`, which the loop
                # vectorizer does not take as a max reduction (a causal softmax's max ran scalar, ~3x slower)
                frozen = ir.instructions.Instruction(b.block, value.type, "freeze", [value])
                b._insert(frozen)
                value = frozen
        return self.binary(combine, acc, value, dt)

    def forget_state(self) -> None:
        """After a write, memoized values that read memory or accumulators are stale."""
        self.memo.forget_state()

    # ------------------------------------------------------------ expressions
    def expr(self, e: Expr, index: bool = False) -> ir.Value:
        return self.expr_state(e, index)[0]

    def expr_state(self, e: Expr, index: bool = False) -> tuple:
        """(value, reads_state): reads_state when it depends on memory or accumulators."""
        return self.memo.get((e, index), lambda: self._emit(e, index))

    def _emit(self, e: Expr, index: bool):
        b = self.b
        if isinstance(e, Const):
            return self.constant(e.value, e.dtype), False
        if isinstance(e, Var):
            if e.name in self.accs:
                ptr, dt = self.accs[e.name]
                return b.load(ptr, typ=compute_type(dt)), True
            for scope in reversed(self.scopes):
                if e.name in scope:
                    return scope[e.name], False
            raise NameError(f"kernel {self.kernel.name!r}: unbound variable {e.name!r}")
        if isinstance(e, Load):
            idx = self.expr(e.index, index=True)
            dt = e.buffer.dtype
            st = storage_type(dt)
            addr = b.gep(self.ptr[e.buffer], [idx], inbounds=True, source_etype=st)
            return self.from_storage(b.load(addr, typ=st, align=dt.np.itemsize), dt), True
        if isinstance(e, CheckedIndex):
            return self.checked_index(e), self.expr_state(e.index, True)[1]
        if isinstance(e, Op):
            done = [self.expr_state(a, index) for a in e.args]
            return self.op(e, [v for v, _ in done], index), any(s for _, s in done)
        if isinstance(e, Arg):
            raise ValueError(f"kernel {self.kernel.name!r}: unbound placeholder {e} (substitute inputs first)")
        raise TypeError(f"kernel {self.kernel.name!r}: not an expression: {e!r}")

    def constant(self, value, dt: DType) -> ir.Constant:
        ty = compute_type(dt)
        if dt is bool_:
            return ir.Constant(I1, int(bool(value)))
        if dt.is_floating_point:
            return ir.Constant(ty, float(value))
        bits = 8 * dt.itemsize
        return ir.Constant(ty, int(value) & ((1 << bits) - 1))

    def from_storage(self, v, dt: DType):
        if dt is bool_:
            return self.b.icmp_unsigned("!=", v, ir.Constant(I8, 0))
        if dt is float16:
            return self.b.fpext(v, F32)
        return v

    def to_storage(self, v, dt: DType):
        if dt is bool_:
            return self.b.zext(v, I8)
        if dt is float16:
            return self.b.fptrunc(v, F16)
        if dt is bfloat16:
            return self.round_bfloat16(v)
        return v

    def round_bfloat16(self, v):
        """Round a float to the nearest bfloat16 (ties to even), kept as float; NaN stays NaN."""
        b = self.b
        bits = b.bitcast(v, I32)
        lsb = b.and_(b.lshr(bits, ir.Constant(I32, 16)), ir.Constant(I32, 1))
        rounded = b.and_(b.add(bits, b.add(lsb, ir.Constant(I32, 0x7FFF))), ir.Constant(I32, 0xFFFF0000))
        return b.select(b.fcmp_unordered("uno", v, v), v, b.bitcast(rounded, F32))

    def fail_if(self, bad, check: Check) -> None:
        """If `bad`, the check's id goes into the error flag when the kernel returns (execution goes on
        with safe values). Inside the loops the check only ORs into a local flag, without a branch or a
        store to memory, so the loop still vectorizes (a gather in a reduction loop ran scalar)."""
        self.checks.append(check)
        cid = self.check_base + len(self.checks)
        at_entry = ir.IRBuilder(self._entry)
        at_entry.position_at_start(self._entry)        # allocas in the entry block: promoted to registers
        flag = at_entry.alloca(I8, name=f"failed{cid}")
        at_entry.store(ir.Constant(I8, 0), flag)
        self._failed.append((cid, flag))
        b = self.b
        b.store(b.or_(b.load(flag, typ=I8), b.zext(bad, I8)), flag)

    def report_failures(self) -> None:
        """Store the id of each failed check into the error flag (racing threads store ids; any one is
        reported)."""
        b = self.b
        for cid, flag in self._failed:
            fail = self.fn.append_basic_block("check.fail")
            cont = self.fn.append_basic_block("check.ok")
            b.cbranch(b.icmp_unsigned("!=", b.load(flag, typ=I8), ir.Constant(I8, 0)), fail, cont)
            b.position_at_end(fail)
            b.store(ir.Constant(I32, cid), self.err, align=4)
            b.branch(cont)
            b.position_at_end(cont)

    def checked_index(self, e: CheckedIndex):
        b = self.b
        v = self.convert(self.expr(e.index, index=True), e.index.dtype, int64)
        size = ir.Constant(I64, e.size)
        wrapped = b.select(b.icmp_signed("<", v, ir.Constant(I64, 0)), b.add(v, size), v)
        ok = b.icmp_unsigned("<", wrapped, size)
        self.fail_if(b.not_(ok), Check(IndexError, f"kernel {self.kernel.name!r}: {e.what} out of range for "
                                                   f"a dimension of size {e.size}", self.kernel.name))
        return b.select(ok, wrapped, ir.Constant(I64, 0))

    # ------------------------------------------------------------ scalar ops
    def op(self, e: Op, args: list, index: bool):
        name, dt = e.op, e.dtype
        in_dt = e.args[0].dtype if e.args else dt
        b = self.b
        if name == "cast":
            return self.convert(args[0], in_dt, dt)
        if name == "where":
            return b.select(args[0], args[1], args[2])
        if name in ("eq", "ne", "lt", "le", "gt", "ge"):
            return self.compare(name, args[0], args[1], in_dt)
        if name == "random":
            return self.random(args[0], args[1], dt)
        if len(args) == 2:
            return self.round_half(self.binary(name, args[0], args[1], in_dt, index), dt)
        return self.round_half(self.unary(name, args[0], in_dt), dt)

    def round_half(self, v, dt: DType):
        """A float16/bfloat16 value computed in float, rounded to its dtype: every op's result is, as in
        eager (and PyTorch), not only a fused chain's stored end (x * 1.1 + 0.3 differed in the last bit)."""
        if dt is float16:
            return self.b.fpext(self.b.fptrunc(v, F16), F32)
        if dt is bfloat16:
            return self.round_bfloat16(v)
        return v

    def random(self, counter, seed, dt: DType):
        """codegen.scalar.random: 64-bit wrapping multiplies, xors and logical shifts (AVX-512 vectorizes
        them; the key of the seed is loop-invariant and hoisted)."""
        b = self.b
        golden = ir.Constant(I64, RNG_GOLDEN)

        def mix64(z):
            for shift, factor in ((30, RNG_MIX1), (27, RNG_MIX2)):
                z = b.mul(b.xor(z, b.lshr(z, ir.Constant(I64, shift))), ir.Constant(I64, factor))
            return b.xor(z, b.lshr(z, ir.Constant(I64, 31)))

        key = mix64(b.add(b.mul(seed, golden), golden))
        bits = RANDOM_BITS[dt]
        top = b.lshr(mix64(b.add(b.mul(counter, golden), key)), ir.Constant(I64, 64 - bits))
        ty = compute_type(dt)
        if bits < 32:
            top = b.trunc(top, I32)             # int32 -> float converts in one vector instruction
        return b.fmul(b.sitofp(top, ty), ir.Constant(ty, 2.0 ** -bits))

    def compare(self, name, x, y, dt: DType):
        sym = {"eq": "==", "ne": "!=", "lt": "<", "le": "<=", "gt": ">", "ge": ">="}[name]
        b = self.b
        if dt.is_floating_point:
            return b.fcmp_unordered(sym, x, y) if name == "ne" else b.fcmp_ordered(sym, x, y)
        if dt in (bool_, uint8):
            return b.icmp_unsigned(sym, x, y)
        return b.icmp_signed(sym, x, y)

    def binary(self, name, x, y, dt: DType, index: bool = False):
        b = self.b
        flt = dt.is_floating_point
        unsigned = dt in (bool_, uint8)
        if name in ("and", "or", "xor"):
            return {"and": b.and_, "or": b.or_, "xor": b.xor}[name](x, y)
        if name in ("max", "min"):
            if flt:
                return llvm_math.call_intrinsic(b, "maximum" if name == "max" else "minimum", x, y)
            if dt is bool_:
                return b.or_(x, y) if name == "max" else b.and_(x, y)
            prefix = "u" if unsigned else "s"
            return llvm_math.call_intrinsic(b, prefix + name, x, y)
        if dt is bool_:
            raise TypeError(f"kernel {self.kernel.name!r}: {name} is not defined on bool")
        if flt:
            if name == "pow":
                return self.float_pow(x, y)
            if name == "floordiv":
                return self.float_divmod(x, y)[0]
            if name == "mod":
                return self.float_divmod(x, y)[1]
            ops = {"add": b.fadd, "sub": b.fsub, "mul": b.fmul, "div": b.fdiv}
            # contract: LLVM may fuse a multiply and an add into one FMA (one rounding, not two), as nvcc
            # does for the CUDA renderer: long polynomials (exact GELU) run ~15% faster
            return ops[name](x, y, flags=["contract"])
        flags = ["nsw"] if index and dt is int64 else []
        if name in ("add", "sub", "mul"):
            return {"add": b.add, "sub": b.sub, "mul": b.mul}[name](x, y, flags=flags)
        if name in ("floordiv", "mod"):
            return self.int_divmod(name, x, y, dt)
        if name == "pow":
            return self.int_pow(x, y, dt)
        raise TypeError(f"kernel {self.kernel.name!r}: {name} on {dt.name} is not supported")

    def unary(self, name, x, dt: DType):
        b = self.b
        flt = dt.is_floating_point
        if name in llvm_math.UNARY:
            return llvm_math.unary(b, name, x)
        if name == "neg":
            return b.fneg(x) if flt else b.neg(x)
        if name == "not" or (name == "invert" and dt is bool_):
            return b.xor(x, ir.Constant(I1, 1))
        if name == "invert":
            return b.xor(x, ir.Constant(x.type, -1))
        if name == "sqrt":
            return llvm_math.call_intrinsic(b, "sqrt", x)
        if name == "rsqrt":
            return b.fdiv(ir.Constant(x.type, 1.0), llvm_math.call_intrinsic(b, "sqrt", x))
        if name in ("floor", "ceil", "rint"):
            return llvm_math.call_intrinsic(b, name, x) if flt else x
        if name == "abs":
            if flt:
                return llvm_math.call_intrinsic(b, "fabs", x)
            if dt in (bool_, uint8):
                return x
            return llvm_math.call_intrinsic(b, "abs", x, ir.Constant(I1, 0))
        if name == "sign":
            if flt:
                one = ir.Constant(x.type, 1.0)
                zero = ir.Constant(x.type, 0.0)
                s = b.select(b.fcmp_ordered("<", x, zero), ir.Constant(x.type, -1.0), x)
                s = b.select(b.fcmp_ordered("==", x, zero), zero, s)
                return b.select(b.fcmp_ordered(">", x, zero), one, s)
            zero = ir.Constant(x.type, 0)
            pos = b.zext(b.icmp_signed(">", x, zero) if dt is not uint8 else b.icmp_unsigned("!=", x, zero),
                         x.type)
            if dt is uint8:
                return pos
            return b.sub(pos, b.zext(b.icmp_signed("<", x, zero), x.type))
        if name == "isnan":
            return b.fcmp_unordered("uno", x, x) if flt else ir.Constant(I1, 0)
        if name == "isfinite":
            if not flt:
                return ir.Constant(I1, 1)
            return b.fcmp_ordered("<", llvm_math.call_intrinsic(b, "fabs", x), ir.Constant(x.type, math.inf))
        raise TypeError(f"kernel {self.kernel.name!r}: {name} on {dt.name} is not supported")

    def float_pow(self, x, y):
        """x ** y: small constant exponents as multiplications (vectorizable), else libm pow. x ** 0.5
        is sqrt, as numpy's and PyTorch's scalar-exponent kernels compute it (-inf ** 0.5 is NaN, not
        pow's +inf; -0.0 ** 0.5 is -0.0)."""
        if isinstance(y, ir.Constant) and isinstance(y.constant, float):
            k = y.constant
            b = self.b
            if k == 0.5:
                return llvm_math.call_intrinsic(b, "sqrt", x)
            if k == 1.0:
                return x
            if k == 2.0:
                return b.fmul(x, x)
            if k == 3.0:
                return b.fmul(b.fmul(x, x), x)
            if k == -1.0:
                return b.fdiv(ir.Constant(x.type, 1.0), x)
        return llvm_math.power(self.b, x, y)

    def float_divmod(self, a, d):
        """numpy's floor_divide and remainder for floats (npy_divmod): Python semantics, exact zeros."""
        b = self.b
        ty = a.type
        zero = ir.Constant(ty, 0.0)
        mod = b.frem(a, d)
        div = b.fdiv(b.fsub(a, mod), d)
        fix = b.and_(b.fcmp_ordered("!=", mod, zero),
                     b.icmp_unsigned("!=", b.fcmp_ordered("<", d, zero), b.fcmp_ordered("<", mod, zero)))
        mod = b.select(fix, b.fadd(mod, d), mod)
        div = b.select(fix, b.fsub(div, ir.Constant(ty, 1.0)), div)
        mod = b.select(b.fcmp_ordered("==", mod, zero), llvm_math.call_intrinsic(b, "copysign", zero, d), mod)
        floordiv = llvm_math.call_intrinsic(b, "floor", div)
        floordiv = b.select(b.fcmp_ordered(">", b.fsub(div, floordiv), ir.Constant(ty, 0.5)),
                            b.fadd(floordiv, ir.Constant(ty, 1.0)), floordiv)
        quotient = b.fdiv(a, d)
        floordiv = b.select(b.fcmp_ordered("==", div, zero),
                            llvm_math.call_intrinsic(b, "copysign", zero, quotient), floordiv)
        by_zero = b.fcmp_ordered("==", d, zero)
        floordiv = b.select(by_zero, quotient, floordiv)
        mod = b.select(by_zero, b.frem(a, d), mod)
        return floordiv, mod

    def int_divmod(self, name, a, d, dt: DType):
        """Python-style floor division / modulus. x // 0 and x % 0 are a ZeroDivisionError (like eager
        and PyTorch). INT_MIN // -1 wraps instead of trapping."""
        b = self.b
        ty = a.type
        zero, one, minus1 = ir.Constant(ty, 0), ir.Constant(ty, 1), ir.Constant(ty, -1)
        is_zero = b.icmp_unsigned("==", d, zero)
        self.fail_if(is_zero, Check(ZeroDivisionError, f"kernel {self.kernel.name!r}: integer division by zero",
                                    self.kernel.name))
        if dt is uint8:
            safe = b.select(is_zero, one, d)
            out = b.udiv(a, safe) if name == "floordiv" else b.urem(a, safe)
            return b.select(is_zero, zero, out)
        unsafe = b.or_(is_zero, b.icmp_signed("==", d, minus1))
        safe = b.select(unsafe, one, d)
        q, r = b.sdiv(a, safe), b.srem(a, safe)
        adjust = b.and_(b.icmp_signed("!=", r, zero),
                        b.icmp_unsigned("!=", b.icmp_signed("<", r, zero), b.icmp_signed("<", safe, zero)))
        if name == "floordiv":
            q = b.select(adjust, b.sub(q, one), q)
            return b.select(b.icmp_signed("==", d, minus1), b.neg(a), b.select(is_zero, zero, q))
        r = b.select(adjust, b.add(r, safe), r)
        return b.select(unsafe, zero, r)

    def int_pow(self, x, y, dt: DType):
        b = self.b
        if dt is uint8:
            wide = _int_pow_function(b.module, I32)
            return b.trunc(b.call(wide, [b.zext(x, I32), b.zext(y, I32)]), x.type)
        self.fail_if(b.icmp_signed("<", y, ir.Constant(y.type, 0)),
                     Check(ValueError, f"kernel {self.kernel.name!r}: Integers to negative integer powers "
                                       f"are not allowed.", self.kernel.name))
        return b.call(_int_pow_function(b.module, x.type), [x, y])

    # ------------------------------------------------------------ conversions
    def convert(self, v, src: DType, dst: DType):
        """Convert a computed value between dtypes (compute types: bool i1, float16/bfloat16 as float)."""
        if src is dst:
            return v
        b = self.b
        st, dt_ = compute_type(src), compute_type(dst)
        if dst is bool_:
            if src.is_floating_point:
                return b.fcmp_unordered("!=", v, ir.Constant(st, 0.0))
            return b.icmp_unsigned("!=", v, ir.Constant(st, 0))
        if dst.is_floating_point:
            if src.is_floating_point:
                out = v if st == dt_ else (b.fpext(v, dt_) if st == F32 else b.fptrunc(v, dt_))
            elif src in (bool_, uint8):
                out = b.uitofp(v, dt_)
            else:
                out = b.sitofp(v, dt_)
            return self.round_half(out, dst)
        # integer destination
        if src.is_floating_point:
            # NaN and values out of range give the "integer indefinite" INT_MIN, as eager (numpy) and PyTorch do
            # on x86 (cvttss2si); the saturating intrinsic made inf INT_MAX and NaN 0. Below the range it
            # saturates to INT_MIN already; narrower integers truncate the int32 result, as numpy does
            wide = I64 if dst.itemsize == 8 else I32
            fn = llvm_math.intrinsic(b.module, f"llvm.fptosi.sat.{llvm_math.type_suffix(wide)}."
                                               f"{llvm_math.type_suffix(st)}", wide, [st])
            beyond = b.fcmp_unordered(">=", v, ir.Constant(st, 2.0 ** (wide.width - 1)))
            out = b.select(beyond, ir.Constant(wide, 1 << (wide.width - 1)), b.call(fn, [v]))
            return out if wide == dt_ else b.trunc(out, dt_)
        if st.width == dt_.width:
            return v
        if st.width > dt_.width:
            return b.trunc(v, dt_)
        return b.zext(v, dt_) if src in (bool_, uint8) else b.sext(v, dt_)


def _int_pow_function(module: ir.Module, ty: ir.IntType) -> ir.Function:
    """base ** exp by squaring (wrapping like numpy); exp < 0 gives 0 (the caller flags it)."""
    name = f"tt.ipow.i{ty.width}"
    fn = module.globals.get(name)
    if fn is not None:
        return fn
    fn = ir.Function(module, ir.FunctionType(ty, [ty, ty]), name=name)
    fn.linkage = "internal"
    fn.attributes.add("nounwind")
    base, exp = fn.args
    entry, head, body, done = (fn.append_basic_block(n) for n in ("entry", "head", "body", "done"))
    b = ir.IRBuilder(entry)
    zero, one = ir.Constant(ty, 0), ir.Constant(ty, 1)
    b.branch(head)
    b.position_at_end(head)
    result = b.phi(ty)
    cur = b.phi(ty)
    e = b.phi(ty)
    result.add_incoming(one, entry)
    cur.add_incoming(base, entry)
    e.add_incoming(exp, entry)
    b.cbranch(b.icmp_signed(">", e, zero), body, done)
    b.position_at_end(body)
    odd = b.icmp_unsigned("!=", b.and_(e, one), zero)
    result.add_incoming(b.select(odd, b.mul(result, cur), result), body)
    cur.add_incoming(b.mul(cur, cur), body)
    e.add_incoming(b.ashr(e, one), body)
    b.branch(head)
    b.position_at_end(done)
    b.ret(b.select(b.icmp_signed("<", exp, zero), zero, result))
    return fn
