"""The generated float32 GEMM of a `MatmulKernel`, in LLVM IR, for hosts with AVX-512 or AVX2.

Why: on the 2-core Xeon numpy's OpenBLAS ran W3's matmuls at 190-240 GFLOP/s and PyTorch's MKL at
340-380; this code runs them at 300-350 (alone, warm caches). As a kernel of the program it also
runs on the native team, so no OpenBLAS threads are left spinning into the next kernel (they
slowed it ~35%). On a 2-core Zen 3 (AVX2) it runs a [1024, 512] @ [512, 512] at 73-80 GFLOP/s on
one core, as OpenBLAS does, and W3 B=128 took 5.2 ms instead of 7.9 through numpy.

Scheme (BLIS's loop order, sizes for a 48 KB L1 and a 2 MB L2 per core; figures for AVX-512, where
a vector holds 16 floats; AVX2 hosts run the same code on 8-float vectors, `kernel.GEMM_SHAPES`):
- The kernel's outer loop, what threads split, runs over (batch, row slice, 32-column panel) units
  (`MatmulKernel.extent`); one matrix's units go to threads in one run each, so a C taller than
  wide (two row slices) gives each thread its rows of A and all of B to pack, a wide one its
  panels of B and all of A (W3 B=1024's 1024x512x784: 317 -> 351 GFLOP/s by rows). A run of
  panels is done in groups of up to `GROUP` panels of one batch and row slice.
- For each `KC`-deep block of K, the group's B panels are packed k-major (32 contiguous floats
  per k; a transposed B through 16x16 register transposes), zero past the right edge.
- For each `MC`-row block of A, A is packed `MR` rows at a time, k-major (rows contiguous: 16x16
  register transposes; columns contiguous: one masked copy per k), zero past the last row. Then
  per panel, per `MR` rows, the micro-kernel prefetches the MR x 32 tile of C for writing (so it
  is in L1 when the k loop ends: C in L3 took 5-15% of a [128, 512] @ [512, 512]), keeps it in
  2*MR zmm accumulators (one fma per 16 products, A broadcast from memory), and stores (first K
  block) or adds (later ones) its rows and columns inside C to C (the 14x32 kernel row by row,
  unrolled; the others through a tile on the stack, less code to compile).
- Whole vectors inside the operands and the scratch are loaded and stored plainly, only edges
  masked: AMD's cores run masked stores slowly (packing was 13% of a GEMM on the Zen 3). The
  transposing packers store all lanes, each column overwriting the last one's overrun, so packed
  blocks of A have a spare k row (`A_ROWS`).
- A unit of at most MR rows reads B in place (rows contiguous; masked loads, prefetched ahead)
  rather than packing panels it would read once.
- The dot form, for C of at most 12 columns with both operands contiguous along k (a classifier's
  x @ w.T): per unit, B is packed as 16-k chunks of its columns (zero-padded), and each C element is
  one vector accumulator of a dot product over A's rows read in place, summed across lanes at the
  end (`_lane_sums`): no lanes wasted on a half-empty panel, no packing of A.
- Compile time: the micro-kernels (14x32, 14x16 for a narrow last panel, 4x32 for a block's last
  rows), the packers (one 16x16 transpose between them) and the loop nest are one library module
  (`library_ir`), compiled once per host (without IR passes: the IR is already what the machine
  code should be) and cached on disk like any program module. A program module calls them
  through its `GEMM_TABLE` of function pointers, which the engine fills when it loads the module;
  each matmul is one call of the loop nest with its sizes, strides and the packers for its
  layouts. W3's 8 matmuls, each specialized with its own micro-kernels, took ~1 s of LLVM time;
  shared within each module, ~0.1 s a module; as a library, 0.05 s once.

Bounds: the operands' maps are checked over their whole shapes (`MatmulKernel.__post_init__`); rows
past M and columns past N are touched only through masked loads and stores (masked-off lanes do not
touch memory); plain ones only where the whole vector is inside the matrix. Scratch (packed panels,
~600 KB) is on the calling thread's stack.

Numerics: each C element is a sum over k in order within a K block, blocks added in order, with
fused multiply-adds (the dot form: 16 interleaved partial sums, added in a tree): the rounding
differs from a BLAS (as BLASes differ from each other).
"""
from __future__ import annotations

from llvmlite import ir

from .kernel import GEMM_SHAPES, MatmulKernel, unit_strides
from .llvm_math import intrinsic
from .rendered import GEMM_EXPORTS as EXPORTS, GEMM_PARTS as PARTS, GEMM_TABLE as TABLE

KC = 256                     # K per packed block: a 32 KB B panel (AVX2: 16 KB) stays in L1 across A's rows
A_ROWS = KC + 1              # k rows per packed block of A: the last is room for plain stores' overrun
GROUP = 16                   # panels packed together (512 KB, in L2), each reused across all of A's blocks
AHEAD = 16                   # rows of B ahead that a micro-kernel reading B in place prefetches

VOID, PTR = ir.VoidType(), ir.PointerType()
I1, I32, I64, F32 = ir.IntType(1), ir.IntType(32), ir.IntType(64), ir.FloatType()
ALIGN4 = ir.Constant(I32, 4)
PACK_A = ir.FunctionType(VOID, [PTR, PTR] + [I64] * 5)
PACK_B = ir.FunctionType(VOID, [PTR, PTR] + [I64] * 6)
MICRO = ir.FunctionType(VOID, [PTR, PTR, PTR, I64, I64, I64, I64, I64, I1])
DOT = ir.FunctionType(VOID, [PTR, PTR, PTR] + [I64] * 5)
DOT_COLUMNS = MatmulKernel.DOT_COLUMNS
DRIVER = ir.FunctionType(VOID, [PTR, PTR, PTR] + [I64] * 18 + [ir.PointerType(PACK_A), ir.PointerType(PACK_B),
                                                              ir.PointerType(MICRO)])


def c64(x) -> ir.Value:
    return x if isinstance(x, ir.Value) else ir.Constant(I64, x)


def render_matmul(module: ir.Module, kern: MatmulKernel, name: str) -> ir.Function:
    """The kernel's function: void (ptr noalias <kernel.buffers>..., ptr err, i64 start, i64 stop)
    over units [start, stop) (the signature every kernel has, so `llvm_ir` gives it a range entry):
    one call of the GEMM library's loop nest, through the module's `TABLE`."""
    m, n, k = kern.m, kern.n, kern.k
    lanes, panel = kern.lanes, kern.shape.panel
    sa0, sa1 = unit_strides(kern.a_map.strides[-2:], (m, k))
    sb0, sb1 = unit_strides(kern.b_map.strides[-2:], (k, n))
    table = gemm_table(module)
    buffers = kern.buffers
    fn = ir.Function(module, ir.FunctionType(VOID, [PTR] * len(buffers) + [PTR, I64, I64]), name=name)
    fn.linkage = "internal"
    fn.attributes.add("nounwind")
    ptr = dict(zip(buffers, fn.args))
    b = ir.IRBuilder(fn.append_basic_block("entry"))

    def part(name: str, ftype: ir.FunctionType) -> ir.Value:
        slot = b.gep(table, [ir.Constant(I32, 0), ir.Constant(I32, PARTS.index(name))], inbounds=True)
        return b.load(slot, typ=ir.PointerType(ftype), align=8)

    parts = [part("pack_a_rows" if sa1 == 1 else "pack_a_cols", PACK_A),
             part("pack_b_rows" if sb1 == 1 else "pack_b_cols", PACK_B),
             part("micro_slim" if 0 < n % panel <= lanes else "micro_wide", MICRO)]
    (outer, inner), (a_outer, a_inner), (b_outer, b_inner) = kern.batch_dims
    sizes = (m, n, k, sa0 if sa1 == 1 else sa1, sb0 if sb1 == 1 else sb1, kern.row_slices, kern.slice_rows,
             kern.a_map.offset, kern.b_map.offset, inner, a_outer, a_inner, b_outer, b_inner, int(kern.b_in_place),
             DOT_COLUMNS if kern.dot_form else 0)
    b.call(part("driver", DRIVER), [ptr[kern.a], ptr[kern.b], ptr[kern.out], fn.args[-2], fn.args[-1]]
           + [c64(x) for x in sizes] + parts)
    b.ret_void()
    return fn


def gemm_table(module: ir.Module) -> ir.GlobalVariable:
    """The module's `TABLE` (exported: the loader fills it with the library's `EXPORTS`)."""
    table = module.globals.get(TABLE)
    if table is None:
        table = ir.GlobalVariable(module, ir.ArrayType(PTR, len(PARTS)), name=TABLE)
        table.initializer = ir.Constant(table.value_type, None)
        table.align = 8
    return table


def library_ir(lanes: int) -> str:
    """The GEMM library for vectors of `lanes` floats: the loop nest, packers and micro-kernels every
    matmul calls, exported as `EXPORTS`. Why a library of its own, compiled (and cached on disk) once
    per host: inside each program module that has a matmul it cost ~0.1 s of LLVM time per cold compile."""
    module = ir.Module(name="tracetorch_gemm")
    lib = _Library(module, lanes)
    lib.driver()
    for rows_contiguous in (True, False):
        lib.pack_a(rows_contiguous)
        lib.pack_b(rows_contiguous)
    lib.micro(1)
    lib.micro(2)
    names = {fn.name for fn in module.functions}
    assert set(EXPORTS) <= names, (EXPORTS, names)
    return str(module)


class _Library:
    """The GEMM library's functions, each made on first use: `EXPORTS` with external linkage (other
    modules call them), the rest internal."""

    def __init__(self, module: ir.Module, lanes: int):
        self.module = module
        shape = GEMM_SHAPES[lanes]
        self.L, self.MR, self.NR, self.MC = lanes, shape.row_block, shape.panel, shape.block_rows
        self.short_rows, self.dot_rows = shape.short_rows, shape.dot_rows
        self.vec, self.mask = ir.VectorType(F32, lanes), ir.VectorType(I1, lanes)
        self.zero = ir.Constant(self.vec, None)            # zeroinitializer (short to print and parse)
        self.lane_numbers = ir.Constant(ir.VectorType(I64, lanes), list(range(lanes)))
        vec, mask = self.vec, self.mask
        self.fma = intrinsic(module, f"llvm.fma.v{lanes}f32", vec, [vec, vec, vec])
        self.load_masked = intrinsic(module, f"llvm.masked.load.v{lanes}f32.p0", vec, [PTR, I32, mask, vec])
        self.store_masked = intrinsic(module, f"llvm.masked.store.v{lanes}f32.p0", VOID, [vec, PTR, I32, mask])
        self.prefetch = intrinsic(module, "llvm.prefetch.p0", VOID, [PTR, I32, I32, I32])
        self.functions: dict = {}

    def _shared(self, key, make) -> ir.Function:
        fn = self.functions.get(key)
        if fn is None:
            fn = self.functions[key] = make()
        return fn

    def _function(self, name: str, args: list) -> tuple[ir.Function, ir.IRBuilder]:
        fn = ir.Function(self.module, ir.FunctionType(VOID, args), name=f"tt_gemm.{name}")
        if fn.name not in EXPORTS:
            fn.linkage = "internal"
        fn.attributes.add("nounwind")
        fn.attributes.add("noinline")              # compiled once, not once per caller
        return fn, ir.IRBuilder(fn.append_basic_block("entry"))

    # ------------------------------------------------------------ helpers
    @staticmethod
    def at(b: ir.IRBuilder, base, offset) -> ir.Value:
        return b.gep(base, [c64(offset)], inbounds=True, source_etype=F32)

    def lanes_below(self, b: ir.IRBuilder, count) -> ir.Value:
        """The mask of lanes < count (an i64; any value)."""
        return b.icmp_signed("<", self.lane_numbers, _splat(b, c64(count), self.lane_numbers.type))

    @staticmethod
    def minimum(b: ir.IRBuilder, x, y) -> ir.Value:
        x, y = c64(x), c64(y)
        return b.select(b.icmp_signed("<", x, y), x, y)

    def transpose(self) -> ir.Function:
        """transpose(src, stride, rows, depth, dst, dst_stride): column c < L of the L x L block whose
        row r < rows holds `depth` contiguous floats at src + r*stride (others: zero) goes to dst +
        c*dst_stride, all L lanes, in column order: a `dst_stride` < L overlaps the next column, which
        overwrites it, and the last column runs past (L - dst_stride floats the caller has room for).
        Plain stores: masked ones made packing 13% of a GEMM on a Zen 3. One function for both
        transposing packers."""
        def make():
            fn, b = self._function(f"transpose{self.L}", [PTR, I64, I64, I64, PTR, I64])
            src, stride, valid, depth, dst, dst_stride = fn.args
            depth_mask = self.lanes_below(b, depth)
            none = ir.Constant(self.mask, None)
            def plain():                    # whole rows: faster on AMD's cores
                rows = []
                for r in range(self.L):
                    inside = b.icmp_signed("<", c64(r), valid)
                    line = b.select(inside, self.at(b, src, b.mul(c64(r), stride)), src)   # row 0: in bounds
                    rows.append(b.select(inside, b.load(line, typ=self.vec, align=4), self.zero))
                return rows

            def masked():
                return [b.call(self.load_masked, [self.at(b, src, b.mul(c64(r), stride)), ALIGN4,
                                                  b.select(b.icmp_signed("<", c64(r), valid), depth_mask, none),
                                                  self.zero]) for r in range(self.L)]

            rows = _either(b, b.icmp_signed(">=", depth, c64(self.L)), plain, masked)
            for c, column in enumerate(_transpose(b, rows)):
                b.store(column, self.at(b, dst, b.mul(c64(c), dst_stride)), align=4)
            b.ret_void()
            return fn
        return self._shared("transpose", make)

    # ------------------------------------------------------------ packing
    def pack_b(self, rows_contiguous: bool) -> ir.Function:
        """pack_b(B, Bp, k0, kb, j0, count, n, step): for panels q < count (columns j = j0 + NR q..),
        Bp[q*KC*NR + k*NR + c] = B(k0 + k, j + c) for k < kb, j + c < n, zero for other c < NR;
        B(k, n) at k*step + n (rows contiguous: each row read left to right across the panels, which
        prefetches; panel by panel, its 2 KB-apart rows missed in cache: 12% of a [128, 512] @ [512,
        512]) or k + n*step (L x L transposes)."""
        L, NR = self.L, self.NR

        def make():
            fn, b = self._function(f"pack_b_{'rows' if rows_contiguous else 'cols'}", list(PACK_B.args))
            src, dst, k0, kb, j0, count, n, step = fn.args
            if rows_contiguous:               # whole panels with plain loads (faster on AMD), the last masked
                whole = self.minimum(b, count, b.sdiv(b.sub(n, j0), c64(NR)))
                with _Loop(b, 0, kb, 1, "k") as k:
                    row = self.at(b, src, b.add(b.mul(b.add(k0, k), step), j0))
                    for masked, (first, last) in ((False, (0, whole)), (True, (whole, count))):
                        with _Loop(b, first, last, 1, "q") as q:
                            width = b.sub(n, b.add(j0, b.mul(q, c64(NR))))
                            out = self.at(b, dst, b.add(b.mul(q, c64(KC * NR)), b.mul(k, c64(NR))))
                            for h in range(2):
                                p = self.at(b, row, b.add(b.mul(q, c64(NR)), c64(L * h)))
                                if masked:
                                    mask = self.lanes_below(b, b.sub(width, c64(L * h)))
                                    v = b.call(self.load_masked, [p, ALIGN4, mask, self.zero])
                                else:
                                    v = b.load(p, typ=self.vec, align=4)
                                b.store(v, self.at(b, out, L * h), align=4 * L)
            else:
                transpose = self.transpose()
                with _Loop(b, 0, count, 1, "q") as q:
                    j = b.add(j0, b.mul(q, c64(NR)))
                    width = b.sub(n, j)
                    panel = self.at(b, dst, b.mul(q, c64(KC * NR)))
                    with _Loop(b, 0, kb, L, "kk") as kk:    # rows kb.. of the scratch (< KC) are never read
                        for h in range(2):
                            start = self.at(b, src, b.add(b.mul(b.add(j, c64(L * h)), step), b.add(k0, kk)))
                            b.call(transpose, [start, step, b.sub(width, c64(L * h)), b.sub(kb, kk),
                                               self.at(b, panel, b.add(b.mul(kk, c64(NR)), c64(L * h))), c64(NR)])
            b.ret_void()
            return fn
        return self._shared(("pack_b", rows_contiguous), make)

    def pack_a(self, rows_contiguous: bool) -> ir.Function:
        """pack_a(A, Ap, i0, mb, k0, kb, step): Ap[(i / MR) * MR * A_ROWS + k * MR + r] = A(i0 + i + r, k0 +
        k) for rows i + r < mb, zero for a block's other rows; A(i, k) at i*step + k (rows contiguous:
        L x L transposes) or i + k*step (one copy per k and block, k outer so that A is read in order).
        Plain stores of L floats (masked ones are slow on AMD's cores): each runs L - MR floats into the
        next k row, written after it, or into the block's spare row."""
        L, MR = self.L, self.MR

        def make():
            fn, b = self._function(f"pack_a_{'rows' if rows_contiguous else 'cols'}", list(PACK_A.args))
            src, dst, i0, mb, k0, kb, step = fn.args
            keep = ir.Constant(self.mask, [1] * MR + [0] * (L - MR))
            if rows_contiguous:                # per block of MR rows, L x L transposes along k
                transpose = self.transpose()
                with _Loop(b, 0, mb, MR, "blk") as blk:
                    valid = self.minimum(b, b.sub(mb, blk), MR)
                    block = self.at(b, dst, b.mul(blk, c64(A_ROWS)))
                    with _Loop(b, 0, kb, L, "kk") as kk:     # k rows kb.. (< KC) are never read
                        start = self.at(b, src, b.add(b.mul(b.add(i0, blk), step), b.add(k0, kk)))
                        b.call(transpose, [start, step, valid, b.sub(kb, kk), self.at(b, block, b.mul(kk, c64(MR))),
                                           c64(MR)])
            else:                              # k outer: each of A's (column-contiguous) rows read in order
                with _Loop(b, 0, kb, 1, "k") as k:
                    line = self.at(b, src, b.add(i0, b.mul(b.add(k0, k), step)))
                    with _Loop(b, 0, mb, MR, "blk") as blk:
                        rows = b.and_(self.lanes_below(b, b.sub(mb, blk)), keep)
                        p = self.at(b, line, blk)
                        (v,) = _either(b, b.icmp_signed("<=", b.add(blk, c64(L)), mb),
                                       lambda: [b.load(p, typ=self.vec, align=4)],
                                       lambda: [b.call(self.load_masked, [p, ALIGN4, rows, self.zero])])
                        q = self.at(b, dst, b.add(b.mul(blk, c64(A_ROWS)), b.mul(k, c64(MR))))
                        b.store(v, q, align=4)
            b.ret_void()
            return fn
        return self._shared(("pack_a", rows_contiguous), make)

    # ------------------------------------------------------------ the micro-kernel
    def micro(self, halves: int, tile_rows: int = 0, in_place: bool = False) -> ir.Function:
        """micro(Ap, B, C, b_step, ldc, kb, rows, width, add): C[r*ldc + c] (+)= sum_k Ap[k*MR + r] *
        B[k*b_step + c] for r < rows (<= tile_rows, MR by default), c < width (<= L * halves), from
        tile_rows x L*halves accumulators. A and B are packed panels (B's step NR); `in_place`: B
        is the operand's own rows, loaded masked (no column past `width` is read; masked loads made
        the packed kernel 4% slower)."""
        L, MR = self.L, self.MR
        tile_rows = tile_rows or MR
        unrolled = halves == 2 and tile_rows == MR and not in_place   # the kernel of large GEMMs
        exported = {(2, MR, False): "micro_wide", (1, MR, False): "micro_slim"}  # a program's last panel picks

        def make():
            name = exported.get((halves, tile_rows, in_place)) or \
                f"micro{tile_rows}x{L * halves}" + ("_in_place" if in_place else "")
            fn, b = self._function(name, list(MICRO.args))
            a, bp, c, b_step, ldc, kb, rows, width, add = fn.args
            for arg in (a, bp, c):
                arg.add_attribute("noalias")
            with _Loop(b, 0, rows, 1, "touch") as r:       # C's tile, for writing: in L1 by the k loop's end
                for h in range(halves):
                    b.call(self.prefetch, [self.at(b, c, b.add(b.mul(r, ldc), c64(L * h))), ir.Constant(I32, 1),
                                           ir.Constant(I32, 3), ir.Constant(I32, 1)])
            masks = [self.lanes_below(b, b.sub(width, c64(L * h))) for h in range(halves)]
            pre = b.block
            loop = fn.append_basic_block("k")
            b.branch(loop)
            b.position_at_end(loop)
            k = b.phi(I64, name="k")
            k.add_incoming(c64(0), pre)
            acc = [b.phi(self.vec) for _ in range(halves * tile_rows)]
            for p in acc:
                p.add_incoming(self.zero, pre)
            row = self.at(b, bp, b.mul(k, b_step))
            if in_place:                                 # its rows are far apart: prefetched ahead
                ahead = self.at(b, row, b.mul(b_step, c64(AHEAD)))
                for h in range(halves):
                    b.call(self.prefetch, [self.at(b, ahead, L * h), ir.Constant(I32, 0), ir.Constant(I32, 3),
                                           ir.Constant(I32, 1)])
                bs = [b.call(self.load_masked, [self.at(b, row, L * h), ALIGN4, mask, self.zero])
                      for h, mask in enumerate(masks)]
            else:
                bs = [b.load(self.at(b, row, L * h), typ=self.vec, align=4 * L) for h in range(halves)]
            col = self.at(b, a, b.mul(k, c64(MR)))
            new = []
            for r in range(tile_rows):
                x = _splat(b, b.load(self.at(b, col, r), typ=F32, align=4), self.vec)
                new += [b.call(self.fma, [x, bs[h], acc[halves * r + h]]) for h in range(halves)]
            for p, v in zip(acc, new):
                p.add_incoming(v, loop)
            k1 = b.add(k, c64(1))
            k.add_incoming(k1, loop)
            done = fn.append_basic_block("tile")
            b.cbranch(b.icmp_signed("<", k1, kb), loop, done)
            b.position_at_end(done)
            adds = [b.and_(mask, _splat(b, add, self.mask)) for mask in masks]   # the first K block reads 0
            if unrolled:
                self._store_rows(b, new, c, ldc, rows, width, add, masks, adds, halves, tile_rows)
            else:
                self._store_tile(b, new, c, ldc, rows, masks, adds, halves, tile_rows)
            b.ret_void()
            return fn
        return self._shared(("micro", halves, tile_rows, in_place), make)

    def _store_rows(self, b, acc, c, ldc, rows, width, add, masks, adds, halves, tile_rows) -> None:
        """The accumulators' rows < `rows` into C (added unless `adds` masks off), unrolled: the
        main micro-kernel's way (W3 B=128 ~2% faster than through a tile). A whole tile inside C
        takes plain loads and stores (masked stores are slow on AMD's cores: 1024x512x512 on a Zen 3
        66 -> 74 GFLOP/s on one core)."""
        fn = b.function
        finished, whole, part = (fn.append_basic_block(name) for name in ("finished", "whole", "part"))
        inside = b.and_(b.icmp_signed("==", rows, c64(tile_rows)), b.icmp_signed(">=", width, c64(self.L * halves)))
        b.cbranch(inside, whole, part)
        b.position_at_end(whole)
        for r in range(tile_rows):
            out = self.at(b, c, b.mul(c64(r), ldc))
            for h in range(halves):
                p = self.at(b, out, self.L * h)
                old = b.select(add, b.load(p, typ=self.vec, align=4), self.zero)
                b.store(b.fadd(acc[halves * r + h], old), p, align=4)
        b.branch(finished)
        b.position_at_end(part)
        for r in range(tile_rows):
            out = self.at(b, c, b.mul(c64(r), ldc))
            for h, mask in enumerate(masks):
                p = self.at(b, out, self.L * h)
                old = b.call(self.load_masked, [p, ALIGN4, adds[h], self.zero])
                b.call(self.store_masked, [b.fadd(acc[halves * r + h], old), p, ALIGN4, mask])
            if r + 1 < tile_rows:
                following = fn.append_basic_block(f"row{r + 1}")
                b.cbranch(b.icmp_signed("<", c64(r + 1), rows), following, finished)
                b.position_at_end(following)
        b.branch(finished)
        b.position_at_end(finished)

    def _store_tile(self, b, acc, c, ldc, rows, masks, adds, halves, tile_rows) -> None:
        """The same through a tile on the stack and a loop over `rows`: a third less IR to compile
        for the micro-kernels of edges and small matrices."""
        tile = b.alloca(ir.ArrayType(self.vec, halves * tile_rows))
        tile.align = 4 * self.L

        def vector(index):
            return b.gep(tile, [ir.Constant(I32, 0), index], inbounds=True)

        for i, v in enumerate(acc):
            b.store(v, vector(c64(i)), align=4 * self.L)
        with _Loop(b, 0, rows, 1, "row") as r:
            out = self.at(b, c, b.mul(r, ldc))
            for h, mask in enumerate(masks):
                v = b.load(vector(b.add(b.mul(r, c64(halves)), c64(h))), align=4 * self.L)
                p = self.at(b, out, self.L * h)
                old = b.call(self.load_masked, [p, ALIGN4, adds[h], self.zero])
                b.call(self.store_masked, [b.fadd(v, old), p, ALIGN4, mask])

    # ------------------------------------------------------------ the dot form (n <= DOT_COLUMNS)
    def pack_bt(self) -> ir.Function:
        """pack_bt(B, Bp, n, k, step, cols): Bp[(c*cols + j)*L + l] = B(Lc + l, j), B(k, j) at k + j*step,
        for j < n and Lc + l < k; zero for other j < cols and l < L (whole chunks of L k)."""
        L = self.L

        def make():
            fn, b = self._function("pack_bt", [PTR, PTR] + [I64] * 4)
            src, dst, n, k, step, cols = fn.args
            with _Loop(b, 0, k, L, "kk") as kk:
                mask = self.lanes_below(b, b.sub(k, kk))
                chunk = self.at(b, dst, b.mul(kk, cols))
                with _Loop(b, 0, cols, 1, "j") as j:
                    keep = b.and_(mask, _splat(b, b.icmp_signed("<", j, n), self.mask))
                    v = b.call(self.load_masked, [self.at(b, src, b.add(b.mul(j, step), kk)), ALIGN4, keep,
                                                  self.zero])
                    b.store(v, self.at(b, chunk, b.mul(j, c64(L))), align=4 * L)
            b.ret_void()
            return fn
        return self._shared("pack_bt", make)

    def dot(self, rows_per: int, cols: int) -> ir.Function:
        """dot(A, Bp, C, rows, n, k, a_step, ldc): C[r*ldc + j] = sum_k A[r*a_step + k] * Bt(j, k) for r <
        rows, j < n (<= cols), Bt packed by `pack_bt`: `rows_per` rows at a time, one vector accumulator
        per element of C (summed across lanes at the end, L columns at a time), A read in place (its
        last chunk masked)."""
        L = self.L

        def make():
            fn, b = self._function(f"dot{rows_per}x{cols}", list(DOT.args))
            a, bp, c, rows, n, k, a_step, ldc = fn.args
            for arg in (a, bp, c):
                arg.add_attribute("noalias")
            full = b.and_(k, c64(-L))
            tail = self.lanes_below(b, b.sub(k, full))
            stores = [self.lanes_below(b, b.sub(n, c64(j))) for j in range(0, cols, L)]
            last = b.sub(rows, c64(1))
            with _Loop(b, 0, rows, rows_per, "i") as i:
                lines = [self.at(b, a, b.mul(self.minimum(b, b.add(i, c64(r)), last), a_step))  # in bounds
                         for r in range(rows_per)]

                def chunk(acc, kk, mask):
                    av = [b.call(self.load_masked, [self.at(b, line, kk), ALIGN4, mask, self.zero])
                          if mask is not None else b.load(self.at(b, line, kk), typ=self.vec, align=4)
                          for line in lines]
                    packed = self.at(b, bp, b.mul(kk, c64(cols)))
                    out = list(acc)
                    for j in range(cols):
                        bv = b.load(self.at(b, packed, L * j), typ=self.vec, align=4 * L)
                        for r in range(rows_per):
                            out[r * cols + j] = b.call(self.fma, [av[r], bv, acc[r * cols + j]])
                    return out

                acc = _accumulate(b, full, rows_per * cols, self.vec, lambda acc, kk: chunk(acc, kk, None))
                acc = chunk(acc, full, tail)            # the last k % L (zero lanes when none)
                for r in range(rows_per):
                    with b.if_then(b.icmp_signed("<", b.add(i, c64(r)), rows)):
                        line = self.at(b, c, b.mul(b.add(i, c64(r)), ldc))
                        for g, store in enumerate(stores):
                            sums = _lane_sums(b, acc[r * cols + g * L:r * cols + min(cols, (g + 1) * L)], self.zero)
                            b.call(self.store_masked, [sums, self.at(b, line, g * L), ALIGN4, store])
            b.ret_void()
            return fn
        return self._shared(("dot", rows_per, cols), make)

    # ------------------------------------------------------------ the loop nest
    def driver(self) -> ir.Function:
        return self._shared("driver", self._driver)

    def _driver(self) -> ir.Function:
        """driver(A, B, C, start, stop, m, n, k, a_step, b_step, slices, slice_rows, a_offset, b_offset,
        inner, a_outer, a_inner, b_outer, b_inner, b_in_place, dot_cols, pack_a, pack_b, edge_micro): units [start,
        stop) = (batch, row slice, panel), panels fastest; a batch index is (outer, inner) over two
        batch dims (`MatmulKernel.batch_dims`) with the operands' strides. The packers for the operands'
        layouts and the micro-kernel of a last panel of <= L columns come as arguments: one loop nest
        for every matmul (each took ~25 ms of LLVM time). `b_in_place` (`MatmulKernel.b_in_place`): the
        micro-kernels read B's rows in place, not packed panels that would be read once ([10, 1024] @
        [1024, 512]: packing B was half the time). `dot_cols` > 0: the dot form of that many columns
        instead of panels (`MatmulKernel.dot_form`)."""
        fn, b = self._function("driver", list(DRIVER.args))
        (A, B, C, start, stop, m, n, k, a_step, b_step, slices, slice_rows, a_off, b_off, inner, a_outer, a_inner,
         b_outer, b_inner, b_in_place, dot_cols, pack_a, pack_b, slim) = fn.args
        for arg in (A, B, C):
            arg.add_attribute("noalias")
        L, NR = self.L, self.NR
        dot_b = -(-MatmulKernel.DOT_K[1] // L) * L * DOT_COLUMNS        # the dot form's packed B
        packed_b = b.alloca(ir.ArrayType(F32, max(GROUP * KC * NR, dot_b)))
        packed_b.align = 64
        packed_a = b.alloca(ir.ArrayType(F32, self.MC * A_ROWS))
        packed_a.align = 64
        panels = b.udiv(b.add(n, c64(NR - 1)), c64(NR))
        per_batch = b.mul(slices, panels)
        units = _WhileLoop(b, start, stop)
        with units as u:
            index = b.udiv(u, per_batch)
            rest = b.sub(u, b.mul(index, per_batch))
            row_slice = b.udiv(rest, panels)
            p0 = b.sub(rest, b.mul(row_slice, panels))
            end = self.minimum(b, self.minimum(b, stop, b.add(u, c64(GROUP))), b.add(b.sub(u, p0), panels))
            count = b.sub(end, u)
            m0 = b.mul(row_slice, slice_rows)
            m1 = self.minimum(b, b.add(m0, slice_rows), m)
            outer, within = b.udiv(index, inner), b.urem(index, inner)
            a = self.at(b, A, b.add(a_off, b.add(b.mul(outer, a_outer), b.mul(within, a_inner))))
            bm = self.at(b, B, b.add(b_off, b.add(b.mul(outer, b_outer), b.mul(within, b_inner))))
            c = self.at(b, C, b.mul(index, b.mul(m, n)))
            with b.if_else(b.icmp_signed("!=", dot_cols, c64(0))) as (dot_form, panel_form):
                with dot_form:
                    self._dot_unit(b, a, bm, c, packed_b, m0, m1, n, k, a_step, b_step, dot_cols)
                with panel_form:
                    self._panel_unit(b, a, bm, c, packed_b, packed_a, p0, count, m0, m1, n, k, a_step, b_step,
                                     b_in_place, pack_a, pack_b, slim)
            units.next(end)
        b.ret_void()
        return fn

    def _dot_unit(self, b, a, bm, c, packed, m0, m1, n, k, a_step, b_step, cols) -> None:
        """Rows [m0, m1) of one C in the dot form of `cols` columns."""
        b.call(self.pack_bt(), [bm, packed, n, k, b_step, cols])
        b.call(self.dot(self.dot_rows, DOT_COLUMNS), [self.at(b, a, b.mul(m0, a_step)), packed,
                                                      self.at(b, c, b.mul(m0, n)), b.sub(m1, m0), n, k, a_step, n])

    def _panel_unit(self, b, a, bm, c, packed_b, packed_a, p0, count, m0, m1, n, k, a_step, b_step, b_in_place, pack_a,
                    pack_b, slim) -> None:
        """Panels p0 .. p0 + count of rows [m0, m1) of one C: BLIS's loops over K blocks, A blocks,
        panels and micro-tiles."""
        L, MR, NR, MC = self.L, self.MR, self.NR, self.MC
        wide, short = self.micro(2), self.micro(2, self.short_rows)
        in_place_micro = self.micro(2, in_place=True)    # also for <= short_rows rows: as fast as packing B
        in_place = b.icmp_signed("!=", b_in_place, c64(0))
        with _Loop(b, 0, k, KC, "kc") as kc:
            kb = self.minimum(b, b.sub(k, kc), KC)
            add = b.icmp_signed("!=", kc, c64(0))
            with b.if_then(b.not_(in_place)):
                b.call(pack_b, [bm, packed_b, kc, kb, b.mul(p0, c64(NR)), count, n, b_step])
            with _Loop(b, m0, m1, MC, "ic") as ic:
                mb = self.minimum(b, b.sub(m1, ic), MC)
                b.call(pack_a, [a, packed_a, ic, mb, kc, kb, a_step])
                with _Loop(b, 0, count, 1, "panel") as q:
                    j = b.mul(b.add(p0, q), c64(NR))
                    width = self.minimum(b, b.sub(n, j), NR)
                    bq = b.select(in_place, self.at(b, bm, b.add(b.mul(kc, b_step), j)),
                                  self.at(b, packed_b, b.mul(q, c64(KC * NR))))
                    bq_step = b.select(in_place, b_step, c64(NR))
                    edge = b.select(b.icmp_signed("<=", width, c64(L)), slim, wide)
                    with _Loop(b, 0, mb, MR, "rows") as i:
                        rows = self.minimum(b, b.sub(mb, i), MR)
                        small = b.icmp_signed("<=", rows, c64(self.short_rows))
                        micro = b.select(in_place, in_place_micro, b.select(small, short, edge))
                        b.call(micro, [self.at(b, packed_a, b.mul(i, c64(A_ROWS))), bq,
                                       self.at(b, c, b.add(b.mul(b.add(ic, i), n), j)), bq_step, n,
                                       kb, rows, width, add])


class _WhileLoop:
    """u = start; while u < stop: body; u = next: `with loop as u:` ... `loop.next(value)`."""
    name = "unit"

    def __init__(self, b: ir.IRBuilder, start, stop):
        self.b, self.start, self.stop = b, c64(start), c64(stop)

    def __enter__(self) -> ir.Value:
        b = self.b
        self.body = b.function.append_basic_block(self.name)
        self.done = b.function.append_basic_block(self.name + ".done")
        pre = b.block
        b.cbranch(b.icmp_signed("<", self.start, self.stop), self.body, self.done)
        b.position_at_end(self.body)
        self.var = b.phi(I64, name=self.name)
        self.var.add_incoming(self.start, pre)
        return self.var

    def next(self, value) -> None:
        b = self.b
        self.var.add_incoming(value, b.block)
        b.cbranch(b.icmp_signed("<", value, self.stop), self.body, self.done)
        b.position_at_end(self.done)

    def __exit__(self, *exc) -> None:
        pass


class _Loop(_WhileLoop):
    """for i in range(start, stop, step) (nothing when empty): `with _Loop(...) as i:` builds the body."""

    def __init__(self, b: ir.IRBuilder, start, stop, step: int, name: str):
        super().__init__(b, start, stop)
        self.step, self.name = step, name

    def __exit__(self, *exc) -> None:
        if exc[0] is None:
            self.next(self.b.add(self.var, c64(self.step)))


def _splat(b: ir.IRBuilder, value: ir.Value, vector: ir.VectorType) -> ir.Value:
    """`value` in every lane of a `vector`."""
    undefined = ir.Constant(vector, ir.Undefined)
    first = ir.Constant(ir.VectorType(I32, vector.count), None)
    return b.shuffle_vector(b.insert_element(undefined, value, c64(0)), undefined, first)


def _shuffle(lanes: list) -> ir.Constant:
    return ir.Constant(ir.VectorType(I32, len(lanes)), lanes)


def _halvings(n: int) -> list:
    """n/2, n/4, ..., 1: the block sizes of the transpose and lane-sum trees over n lanes."""
    return [n >> s for s in range(1, n.bit_length())]


def _either(b: ir.IRBuilder, condition, then, otherwise) -> list:
    """The values `then()` or `otherwise()` builds (lists of one length and types), each in its own
    branch on `condition`, joined by phis."""
    with b.if_else(condition) as (first, second):
        with first:
            a, a_end = then(), b.block
        with second:
            c, c_end = otherwise(), b.block
    joined = []
    for x, y in zip(a, c):
        phi = b.phi(x.type)
        phi.add_incoming(x, a_end)
        phi.add_incoming(y, c_end)
        joined.append(phi)
    return joined


def _transpose(b: ir.IRBuilder, rows: list) -> list:
    """The L x L transpose of L vectors of L lanes: swap the off-diagonal d x d blocks for d = L/2, ..., 1."""
    n = len(rows)
    for d in _halvings(n):
        out = list(rows)
        for r in range(n):
            if r & d:
                continue
            x, y = rows[r], rows[r + d]
            out[r] = b.shuffle_vector(x, y, _shuffle([c if not c & d else n + c - d for c in range(n)]))
            out[r + d] = b.shuffle_vector(x, y, _shuffle([c + d if not c & d else n + c for c in range(n)]))
        rows = out
    return rows


def _accumulate(b: ir.IRBuilder, stop, count: int, vec: ir.VectorType, body) -> list:
    """`count` accumulators of type `vec`, from zero, through `acc = body(acc, kk)` for kk in range(0,
    stop, lanes)."""
    fn, pre = b.function, b.block
    zero = ir.Constant(vec, None)
    loop, done = fn.append_basic_block("chunk"), fn.append_basic_block("chunk.done")
    b.cbranch(b.icmp_signed("<", c64(0), stop), loop, done)
    b.position_at_end(loop)
    kk = b.phi(I64, name="kk")
    kk.add_incoming(c64(0), pre)
    acc = [b.phi(vec) for _ in range(count)]
    for p in acc:
        p.add_incoming(zero, pre)
    new = body(acc, kk)
    end = b.block
    for p, v in zip(acc, new):
        p.add_incoming(v, end)
    following = b.add(kk, c64(vec.count))
    kk.add_incoming(following, end)
    b.cbranch(b.icmp_signed("<", following, stop), loop, done)
    b.position_at_end(done)
    out = [b.phi(vec) for _ in range(count)]
    for o, v in zip(out, new):
        o.add_incoming(zero, pre)
        o.add_incoming(v, end)
    return out


def _lane_sums(b: ir.IRBuilder, vectors: list, zero: ir.Constant) -> ir.Value:
    """The vector whose lane j is the sum of the lanes of vectors[j] (at most L, the lanes of `zero`,
    the vector type's zero): a tree of L - 1 two-vector steps (each adds the halves of 2d-lane blocks of
    two vectors side by side, d = L/2, ..., 1), the inputs placed so that the sums come out in order."""
    n = zero.type.count
    widths = _halvings(n)

    def step(d):
        lo = [i if i % (2 * d) < d else n + i - d for i in range(n)]
        return lo, [i + d for i in lo]

    owners = [[j] * n for j in range(n)]            # which input each lane's partial sum belongs to
    for d in widths:
        merged = []
        for x, y in zip(owners[::2], owners[1::2]):
            merged.append([(x + y)[i] for i in step(d)[0]])
        owners = merged
    position = owners[0]                            # lane L ends up with the input at position[L]
    placed = [zero] * n
    for lane, vector in enumerate(vectors):
        placed[position[lane]] = vector
    for d in widths:
        merged = []
        for x, y in zip(placed[::2], placed[1::2]):
            lo, hi = step(d)
            merged.append(b.fadd(b.shuffle_vector(x, y, _shuffle(lo)), b.shuffle_vector(x, y, _shuffle(hi))))
        placed = merged
    return placed[0]
