"""The generated float32 GEMM of a `MatmulKernel`, in LLVM IR, for hosts with AVX-512.

Why: on the 2-core Xeon numpy's OpenBLAS ran W3's matmuls at 190-240 GFLOP/s and PyTorch's MKL at
300-330; this code runs them at 285-330. As a kernel of the program it also runs on the native
team, so no OpenBLAS threads are left spinning into the next kernel (they slowed it ~35%).

Scheme (BLIS's loop order, sizes for a 48 KB L1 and a 2 MB L2 per core):
- The kernel's outer loop, what threads split, runs over the 32-column panels of C in every
  batch. A slice of panels is done in groups of `GROUP` panels of one batch.
- For each `KC`-deep block of K, the group's B panels are packed k-major (32 contiguous floats
  per k; a transposed B through 16x16 register transposes), zero past the right edge.
- For each `MC`-row block of A: a transposed A (columns contiguous) is packed `MR` rows at a time,
  k-major; rows-contiguous A is read in place. Then per panel, per `MR` rows, the micro-kernel
  keeps the MR x 32 tile of C in 2*MR zmm accumulators (one fma per 16 products, A broadcast
  from memory) and stores it (first K block) or adds it to C (later ones), masked at the right edge.

Bounds: the operands' maps are checked over their whole shapes (`MatmulKernel.__post_init__`); rows
past M are never read, columns past N only through masked loads and stores (masked-off lanes do not
touch memory). Scratch (packed panels, ~200 KB) is on the calling thread's stack.

Numerics: each C element is a sum over k in order within a K block, blocks added in order, with
fused multiply-adds: the rounding differs from a BLAS (as BLASes differ from each other).
"""
from __future__ import annotations

from llvmlite import ir

from .kernel import MatmulKernel, unit_strides

NR = MatmulKernel.PANEL      # C columns per panel: two 16-float vectors
MR = MatmulKernel.ROW_BLOCK  # C rows per micro-kernel call: 28 accumulators of the 32 zmm registers
KC = 256                     # K per packed block: a 32 KB B panel stays in L1 across the rows of A
MC = 5 * MR                  # rows of A per block (a packed transposed A: 70 KB)
GROUP = 16                   # panels packed together (512 KB, in L2), each reused across all of A's blocks

VOID, PTR = ir.VoidType(), ir.PointerType()
I1, I32, I64, F32 = ir.IntType(1), ir.IntType(32), ir.IntType(64), ir.FloatType()
VEC, MASK = ir.VectorType(F32, 16), ir.VectorType(I1, 16)
V_I32, V_I64 = ir.VectorType(I32, 16), ir.VectorType(I64, 16)
ZERO = ir.Constant(VEC, [0.0] * 16)
SPLAT = ir.Constant(V_I32, [0] * 16)
LANES = ir.Constant(V_I64, list(range(16)))
ALIGN4 = ir.Constant(I32, 4)


def c64(x) -> ir.Value:
    return x if isinstance(x, ir.Value) else ir.Constant(I64, x)


def _intrinsic(module: ir.Module, name: str, fnty: ir.FunctionType) -> ir.Function:
    found = module.globals.get(name)
    return found if found is not None else ir.Function(module, fnty, name)


def render_matmul(module: ir.Module, kernel: MatmulKernel, name: str) -> ir.Function:
    """The kernel's function: void (ptr noalias <kernel.buffers>..., ptr err, i64 start, i64 stop)
    over panels [start, stop) (the signature every kernel has, so `llvm_ir` gives it a range entry)."""
    return _Gemm(module, kernel, name).fn


class _Gemm:
    def __init__(self, module: ir.Module, kernel: MatmulKernel, name: str):
        self.module, self.kernel, self.name = module, kernel, name
        m, n, k = kernel.m, kernel.n, kernel.k
        self.m, self.n, self.k = m, n, k
        self.sa = unit_strides(kernel.a_map.strides[-2:], (m, k))
        self.sb = unit_strides(kernel.b_map.strides[-2:], (k, n))
        self.pack_a_rows = self.sa[1] != 1          # A's columns contiguous: pack MR rows per k
        self.fma = _intrinsic(module, "llvm.fma.v16f32", ir.FunctionType(VEC, [VEC, VEC, VEC]))
        self.load_masked = _intrinsic(module, "llvm.masked.load.v16f32.p0",
                                      ir.FunctionType(VEC, [PTR, I32, MASK, VEC]))
        self.store_masked = _intrinsic(module, "llvm.masked.store.v16f32.p0",
                                       ir.FunctionType(VOID, [VEC, PTR, I32, MASK]))
        self.fn = self._main()

    # ------------------------------------------------------------ helpers
    def _function(self, suffix: str, args: list) -> tuple[ir.Function, ir.IRBuilder]:
        fn = ir.Function(self.module, ir.FunctionType(VOID, args), name=f"{self.name}.{suffix}")
        fn.linkage = "internal"
        fn.attributes.add("nounwind")
        return fn, ir.IRBuilder(fn.append_basic_block("entry"))

    @staticmethod
    def at(b: ir.IRBuilder, base, offset) -> ir.Value:
        return b.gep(base, [c64(offset)], inbounds=True, source_etype=F32)

    @staticmethod
    def lanes_below(b: ir.IRBuilder, count) -> ir.Value:
        """The mask of lanes < count (an i64; any value)."""
        splat = b.shuffle_vector(b.insert_element(ir.Constant(V_I64, ir.Undefined), c64(count), c64(0)),
                                 ir.Constant(V_I64, ir.Undefined), SPLAT)
        return b.icmp_signed("<", LANES, splat)

    @staticmethod
    def minimum(b: ir.IRBuilder, x, y) -> ir.Value:
        x, y = c64(x), c64(y)
        return b.select(b.icmp_signed("<", x, y), x, y)

    class _Loop:
        """for i in range(start, stop, step) (nothing when empty): `with loop as i:` builds the body."""

        def __init__(self, b: ir.IRBuilder, start, stop, step: int, name: str):
            self.b, self.start, self.stop, self.step, self.name = b, c64(start), c64(stop), step, name

        def __enter__(self) -> ir.Value:
            b = self.b
            fn = b.function
            self.body = fn.append_basic_block(self.name)
            self.done = fn.append_basic_block(self.name + ".done")
            pre = b.block
            b.cbranch(b.icmp_signed("<", self.start, self.stop), self.body, self.done)
            b.position_at_end(self.body)
            self.var = b.phi(I64, name=self.name)
            self.var.add_incoming(self.start, pre)
            return self.var

        def __exit__(self, *exc) -> None:
            if exc[0] is not None:
                return
            b = self.b
            nxt = b.add(self.var, c64(self.step))
            self.var.add_incoming(nxt, b.block)
            b.cbranch(b.icmp_signed("<", nxt, self.stop), self.body, self.done)
            b.position_at_end(self.done)

    def panel_width(self, b: ir.IRBuilder, j) -> ir.Value:
        return self.minimum(b, b.sub(c64(self.n), j), NR)

    # ------------------------------------------------------------ packing
    def _pack_b(self) -> ir.Function:
        """pack_b(B, Bp, k0, kb, j, width): Bp[k*32 + c] = B[k0 + k, j + c] (zero for c >= width)."""
        fn, b = self._function("pack_b", [PTR, PTR, I64, I64, I64, I64])
        src, dst, k0, kb, j, width = fn.args
        sb0, sb1 = self.sb
        if sb1 == 1:                                   # rows contiguous: two masked copies per k
            low, high = self.lanes_below(b, width), self.lanes_below(b, b.sub(width, c64(16)))
            with self._Loop(b, 0, kb, 1, "k") as k:
                row = self.at(b, src, b.add(b.mul(b.add(k0, k), c64(sb0)), j))
                out = self.at(b, dst, b.mul(k, c64(NR)))
                for h, mask in enumerate((low, high)):
                    v = b.call(self.load_masked, [self.at(b, row, 16 * h), ALIGN4, mask, ZERO])
                    b.store(v, self.at(b, out, 16 * h), align=64)
        else:                                          # columns contiguous: 16x16 transposes
            with self._Loop(b, 0, kb, 16, "kk") as kk:
                depth = self.lanes_below(b, b.sub(kb, kk))
                for h in range(2):
                    rows = []
                    for r in range(16):
                        col = 16 * h + r
                        live = b.icmp_signed("<", c64(col), width)
                        mask = b.select(live, depth, ir.Constant(MASK, [0] * 16))
                        p = self.at(b, src, b.add(b.mul(b.add(j, c64(col)), c64(sb1)), b.add(k0, kk)))
                        rows.append(b.call(self.load_masked, [p, ALIGN4, mask, ZERO]))
                    cols = _transpose16(b, rows)       # cols[c]: B[k0 + kk + c, j + 16h .. j + 16h + 15]
                    for c in range(16):                # rows kb.. of the scratch (< KC) are never read
                        b.store(cols[c], self.at(b, dst, b.add(b.mul(b.add(kk, c64(c)), c64(NR)), c64(16 * h))),
                                align=64)
        b.ret_void()
        return fn

    def _pack_a(self) -> ir.Function:
        """pack_a(A, Ap, i0, mb, k0, kb): Ap[(i / MR) * MR * KC + k * MR + r] = A[i0 + i + r, k0 + k] for
        rows i + r < mb (A's columns contiguous: one masked load per k and MR rows)."""
        fn, b = self._function("pack_a", [PTR, PTR, I64, I64, I64, I64])
        src, dst, i0, mb, k0, kb = fn.args
        keep = ir.Constant(MASK, [1] * MR + [0] * (16 - MR))
        with self._Loop(b, 0, mb, MR, "blk") as blk:
            rows = b.and_(self.lanes_below(b, b.sub(mb, blk)), keep)
            with self._Loop(b, 0, kb, 1, "k") as k:
                p = self.at(b, src, b.add(b.add(i0, blk), b.mul(b.add(k0, k), c64(self.sa[1]))))
                v = b.call(self.load_masked, [p, ALIGN4, rows, ZERO])
                q = self.at(b, dst, b.add(b.mul(blk, c64(KC)), b.mul(k, c64(MR))))
                b.call(self.store_masked, [v, q, ALIGN4, keep])
        b.ret_void()
        return fn

    # ------------------------------------------------------------ the micro-kernel
    def _micro(self, rows: int, halves: int) -> ir.Function:
        """micro(A, Bp, C, kb, width, add): C[r, c] (+)= sum_k A(r, k) * Bp[k*32 + c] for r < rows,
        c < width (<= 16 * halves); A(r, k) at r*ra + k*ka (packed: ra=1, ka=MR; in place: A's strides)."""
        ra, ka = (1, MR) if self.pack_a_rows else (self.sa[0], 1)
        fn, b = self._function(f"micro{rows}x{16 * halves}", [PTR, PTR, PTR, I64, I64, I1])
        a, bp, c, kb, width, add = fn.args
        for arg in (a, bp, c):
            arg.add_attribute("noalias")
        pre = b.block
        loop = fn.append_basic_block("k")
        b.branch(loop)
        b.position_at_end(loop)
        k = b.phi(I64, name="k")
        k.add_incoming(c64(0), pre)
        acc = [b.phi(VEC) for _ in range(halves * rows)]
        for p in acc:
            p.add_incoming(ZERO, pre)
        row = self.at(b, bp, b.mul(k, c64(NR)))
        bs = [b.load(self.at(b, row, 16 * h), typ=VEC, align=64) for h in range(halves)]
        col = self.at(b, a, b.mul(k, c64(ka)))
        new = []
        for r in range(rows):
            x = b.load(self.at(b, col, r * ra), typ=F32, align=4)
            x = b.shuffle_vector(b.insert_element(ir.Constant(VEC, ir.Undefined), x, c64(0)),
                                 ir.Constant(VEC, ir.Undefined), SPLAT)
            new += [b.call(self.fma, [x, bs[h], acc[halves * r + h]]) for h in range(halves)]
        for p, v in zip(acc, new):
            p.add_incoming(v, loop)
        k1 = b.add(k, c64(1))
        k.add_incoming(k1, loop)
        store = fn.append_basic_block("store")
        b.cbranch(b.icmp_signed("<", k1, kb), loop, store)
        b.position_at_end(store)
        masks = [self.lanes_below(b, b.sub(width, c64(16 * h))) for h in range(halves)]
        with b.if_else(add) as (adding, first):          # the first K block does not read C
            with adding:
                for r in range(rows):
                    for h, mask in enumerate(masks):
                        p = self.at(b, c, r * self.n + 16 * h)
                        old = b.call(self.load_masked, [p, ALIGN4, mask, ZERO])
                        b.call(self.store_masked, [b.fadd(new[halves * r + h], old), p, ALIGN4, mask])
            with first:
                for r in range(rows):
                    for h, mask in enumerate(masks):
                        b.call(self.store_masked, [new[halves * r + h], self.at(b, c, r * self.n + 16 * h), ALIGN4,
                                                   mask])
        b.ret_void()
        return fn

    def _rows(self, b, rows: int, narrow, args) -> None:
        """Call the micro-kernel of `rows` rows: its 16-column form for a panel of <= 16 columns
        (`narrow`, where N leaves one) else its 32-column form."""
        wide = self._micro_fns[rows, 2]
        slim = self._micro_fns.get((rows, 1))
        if slim is None:
            b.call(wide, args)
            return
        with b.if_else(narrow) as (one, two):
            with one:
                b.call(slim, args)
            with two:
                b.call(wide, args)

    # ------------------------------------------------------------ the kernel
    def _main(self) -> ir.Function:
        kern, m, n, k = self.kernel, self.m, self.n, self.k
        pack_b = self._pack_b()
        pack_a = self._pack_a() if self.pack_a_rows else None
        tail = m % MR
        sizes = [r for r in (MR if m >= MR else 0, tail) if r]
        halves = (2, 1) if 0 < n % NR <= 16 else (2,)
        self._micro_fns = {(r, h): self._micro(r, h) for r in sizes for h in halves}
        buffers = kern.buffers
        fn = ir.Function(self.module, ir.FunctionType(VOID, [PTR] * len(buffers) + [PTR, I64, I64]), name=self.name)
        fn.linkage = "internal"
        fn.attributes.add("nounwind")
        for arg in fn.args[:len(buffers)]:
            arg.add_attribute("noalias")
        ptr = dict(zip(buffers, fn.args))
        start, stop = fn.args[-2:]
        b = ir.IRBuilder(fn.append_basic_block("entry"))
        packed_b = b.alloca(ir.ArrayType(F32, GROUP * KC * NR))
        packed_b.align = 64
        packed_a = None
        if pack_a is not None:
            packed_a = b.alloca(ir.ArrayType(F32, MC * KC))
            packed_a.align = 64
        panels, slices, slice_rows = kern.panels, kern.row_slices, kern.slice_rows
        units = _Gemm._WhileLoop(b, start, stop)
        with units as u:                    # unit = (batch, row slice, panel), panels fastest
            batch = b.udiv(u, c64(slices * panels))
            rest = b.sub(u, b.mul(batch, c64(slices * panels)))
            row_slice = b.udiv(rest, c64(panels))
            p0 = b.sub(rest, b.mul(row_slice, c64(panels)))
            end = self.minimum(b, self.minimum(b, stop, b.add(u, c64(GROUP))), b.add(b.sub(u, p0), c64(panels)))
            count = b.sub(end, u)
            m0 = b.mul(row_slice, c64(slice_rows))
            m1 = self.minimum(b, b.add(m0, c64(slice_rows)), m)
            a = self.at(b, ptr[kern.a], self.batch_offset(b, batch, kern.a_map))
            bm = self.at(b, ptr[kern.b], self.batch_offset(b, batch, kern.b_map))
            c = self.at(b, ptr[kern.out], b.mul(batch, c64(m * n)))
            with self._Loop(b, 0, k, KC, "kc") as kc:
                kb = self.minimum(b, b.sub(c64(k), kc), KC)
                add = b.icmp_signed("!=", kc, c64(0))
                with self._Loop(b, 0, count, 1, "pack") as q:
                    j = b.mul(b.add(p0, q), c64(NR))
                    b.call(pack_b, [bm, self.at(b, packed_b, b.mul(q, c64(KC * NR))), kc, kb, j, self.panel_width(b, j)])
                with self._Loop(b, m0, m1, MC, "ic") as ic:
                    mb = self.minimum(b, b.sub(m1, ic), MC)
                    whole = b.sub(mb, b.urem(mb, c64(MR)))
                    if pack_a is not None:
                        b.call(pack_a, [a, packed_a, ic, mb, kc, kb])
                    with self._Loop(b, 0, count, 1, "panel") as q:
                        j = b.mul(b.add(p0, q), c64(NR))
                        width = self.panel_width(b, j)
                        narrow = b.icmp_signed("<=", width, c64(16))
                        bq = self.at(b, packed_b, b.mul(q, c64(KC * NR)))
                        if m >= MR:
                            with self._Loop(b, 0, whole, MR, "rows") as i:
                                self._rows(b, MR, narrow, [self.a_block(b, a, packed_a, ic, i, kc), bq,
                                                           self.at(b, c, b.add(b.mul(b.add(ic, i), c64(n)), j)), kb,
                                                           width, add])
                        if tail:
                            with b.if_then(b.icmp_signed("!=", whole, mb)):
                                self._rows(b, tail, narrow, [self.a_block(b, a, packed_a, ic, whole, kc), bq,
                                                             self.at(b, c, b.add(b.mul(b.add(ic, whole), c64(n)), j)),
                                                             kb, width, add])
            units.next(end)
        b.ret_void()
        return fn

    def a_block(self, b, a, packed_a, ic, i, kc) -> ir.Value:
        """Where the micro-kernel reads rows ic + i.. of A at k = kc: the packed block, or A in place."""
        if packed_a is not None:
            return self.at(b, packed_a, b.mul(i, c64(KC)))
        return self.at(b, a, b.add(b.mul(b.add(ic, i), c64(self.sa[0])), kc))

    def batch_offset(self, b: ir.IRBuilder, batch, imap) -> ir.Value:
        """The map's offset plus batch index `batch` (flat over the kernel's batch dims) times its strides."""
        offset = c64(imap.offset)
        rest = batch
        for size, stride in zip(reversed(self.kernel.batch), reversed(imap.strides[:-2])):
            index = b.urem(rest, c64(size))
            rest = b.udiv(rest, c64(size))
            if stride:
                offset = b.add(offset, b.mul(index, c64(stride)))
        return offset

    class _WhileLoop:
        """u = start; while u < stop: body; u = next: `with loop as u:` ... `loop.next(value)`."""

        def __init__(self, b: ir.IRBuilder, start, stop):
            self.b, self.start, self.stop = b, start, stop

        def __enter__(self) -> ir.Value:
            b = self.b
            self.body = b.function.append_basic_block("unit")
            self.done = b.function.append_basic_block("unit.done")
            pre = b.block
            b.cbranch(b.icmp_signed("<", self.start, self.stop), self.body, self.done)
            b.position_at_end(self.body)
            self.var = b.phi(I64, name="u")
            self.var.add_incoming(self.start, pre)
            return self.var

        def next(self, value) -> None:
            b = self.b
            self.var.add_incoming(value, b.block)
            b.cbranch(b.icmp_signed("<", value, self.stop), self.body, self.done)
            b.position_at_end(self.done)

        def __exit__(self, *exc) -> None:
            pass


def _transpose16(b: ir.IRBuilder, rows: list) -> list:
    """The 16x16 transpose of 16 vectors: swap the off-diagonal d x d blocks for d = 8, 4, 2, 1."""
    for d in (8, 4, 2, 1):
        out = list(rows)
        for r in range(16):
            if r & d:
                continue
            x, y = rows[r], rows[r + d]
            out[r] = b.shuffle_vector(x, y, ir.Constant(V_I32, [c if not c & d else 16 + c - d for c in range(16)]))
            out[r + d] = b.shuffle_vector(x, y, ir.Constant(V_I32, [c + d if not c & d else 16 + c for c in range(16)]))
        rows = out
    return rows
