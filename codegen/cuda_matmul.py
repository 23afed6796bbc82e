"""A tiled CUDA matmul kernel with a fused epilogue: `out = epilogue(a @ b)` for float32 (and float64), as a
program step.

`MatmulSpec` is a step of a `Program` for the CUDA backend (like a Kernel, it names the buffers it reads
and writes; `codegen.cuda_c.render_program` calls its `render_cuda`). Two kernels:

- float32 on the CUDA cores: a block computes a BM x BN tile of the output, staging BK-deep slices of A
  (transposed) and B in shared memory; each of its 256 threads accumulates a TM x TN register block with
  FMAs. The tile shape shrinks (128, 64, 32) until the grid has enough blocks to fill the GPU. float64
  runs the same kernel in double precision; float16 and bfloat16 run it in float32 (loads widened,
  the sum rounded once at the store), as PyTorch and the CPU path (numpy's float16 matmul) accumulate.
- TF32 on the tensor cores (`tf32=True`, opt-in: inputs rounded to 10-bit mantissas, like PyTorch's
  `allow_tf32`): `nvcuda::wmma` 16x16x8 fragments, a 64 x 64 block tile of four warps, the accumulator
  staged through shared memory for the epilogue.

Any shapes: tile loads outside the matrices read zeros, stores outside are skipped. Operands may be
transposed, strided (a leading dimension and an offset: slices of a bigger buffer) and batched (a batch
stride of 0 broadcasts; batch dims that do not fold into one stride, e.g. (B, 1, ..) @ (H, ..), are
given per dim in `batch_dims`); they are read through their strides, never copied.
The epilogue is an expression over `Arg("acc", float32)` (the dot product) and the Args of
`epilogue_inputs`, read through index maps over the output's iteration space ((m, n), or (batch, m, n)
when batched): a bias row and an activation cost no extra pass over memory.
"""
from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Optional

from tracetorch.dtypes import bfloat16, float16, float32, float64

from .cuda_c import TARGET_SMS, Launch, _Emitter, storage_ctype
from .kernel import Arg, Buffer, Expr, IndexMap, Load, Var, substitute, walk_exprs
from .rendered import Check

ACC = Arg("acc", float32)
THREADS = 256
# (BM, BN, BK, TM, TN): 256 threads, each a TM x TN block of outputs
TILES = ((128, 128, 8, 8, 8), (64, 64, 8, 4, 4), (32, 32, 8, 2, 2))
TF32_TILE, TF32_THREADS = 64, 128


@dataclass(frozen=True)
class MatmulSpec:
    """out[b, i, j] = epilogue(sum_k A[b, i, k] * B[b, k, j]) for b < batch, i < m, j < n.

    A is stored (m, k) row-major, or (k, m) when `trans_a`, with rows `lda` elements apart (default: packed)
    from element `a_offset` of its buffer; B likewise, (k, n) or (n, k) when `trans_b`. `a_strides` /
    `b_strides` (element strides of the (m, k) / (k, n) matrix, 0 for a broadcast) replace trans/ld for the
    addresses, and `trans_*` then only picks the coalesced tile-loading order. Batch strides default to one
    matrix (a buffer holding a single matrix is broadcast: stride 0); `batch_dims`, when given, replaces
    them: per batch dim, outermost first, (size, A's stride, B's stride), and `batch` is their product.
    `out` is contiguous (batch, m, n); a, b and out share one dtype: float32, float64, or float16 /
    bfloat16 (computed in float32)."""
    name: str
    a: Buffer
    b: Buffer
    out: Buffer
    m: int
    n: int
    k: int
    batch: int = 1
    trans_a: bool = False
    trans_b: bool = False
    epilogue: Optional[Expr] = None
    epilogue_inputs: tuple[tuple[str, Buffer, IndexMap], ...] = ()
    tf32: bool = False
    a_batch_stride: Optional[int] = None
    b_batch_stride: Optional[int] = None
    a_offset: int = 0
    b_offset: int = 0
    lda: Optional[int] = None
    ldb: Optional[int] = None
    a_strides: Optional[tuple[int, int]] = None
    b_strides: Optional[tuple[int, int]] = None
    batch_dims: tuple[tuple[int, int, int], ...] = ()

    def __post_init__(self):
        dt = self.out.dtype
        for buf in (self.a, self.b, self.out):
            if buf.dtype is not dt or dt not in (float32, float64, float16, bfloat16):
                raise TypeError(f"matmul {self.name!r}: {buf!r} must be float32 or float64 (or float16, bfloat16), "
                                "like the output")
        if self.batch_dims and math.prod(size for size, _, _ in self.batch_dims) != self.batch:
            raise ValueError(f"matmul {self.name!r}: batch dims {self.batch_dims} do not make batch {self.batch}")
        if self.tf32 and dt is not float32:
            raise TypeError(f"matmul {self.name!r}: tf32 needs float32 operands")
        if self.out.size != self.batch * self.m * self.n:
            raise ValueError(f"matmul {self.name!r}: output {self.out!r} must hold {self.batch}x{self.m}x{self.n}")
        for j, (buf, stride, offset, shape, strides) in enumerate(
                ((self.a, self.stride_a, self.a_offset, (self.m, self.k), self.strides_a),
                 (self.b, self.stride_b, self.b_offset, (self.k, self.n), self.strides_b))):
            reach = sum((s[0] - 1) * s[1 + j] for s in self.batch_dims) if self.batch_dims \
                else stride * (self.batch - 1)
            if min(strides) < 0 or stride < 0 or offset < 0 or any(s[1 + j] < 0 for s in self.batch_dims):
                raise ValueError(f"matmul {self.name!r}: {buf!r} read with strides {strides}, batch stride "
                                 f"{stride}, offset {offset}")
            need = offset + reach + sum((s - 1) * st for s, st in zip(shape, strides)) + 1
            if need > buf.size:
                raise IndexError(f"matmul {self.name!r}: {buf!r} holds {buf.size} elements, batch {self.batch} of "
                                 f"{shape[0]}x{shape[1]} (strides {strides}) with stride {stride} from {offset} "
                                 f"needs {need}")
        space = self.space
        for name, buf, index in self.epilogue_inputs:
            if len(index.strides) != len(space):
                raise ValueError(f"matmul {self.name!r}: epilogue input {name} needs an index map over {space}")
            index.check(space, buf)
        if self.epilogue is not None and self.epilogue.dtype is not dt:
            raise TypeError(f"matmul {self.name!r}: the epilogue must be {dt.name}, got {self.epilogue.dtype.name}")

    @property
    def _a_stored(self) -> tuple[int, int]:
        return (self.k, self.m) if self.trans_a else (self.m, self.k)

    @property
    def _b_stored(self) -> tuple[int, int]:
        return (self.n, self.k) if self.trans_b else (self.k, self.n)

    @property
    def strides_a(self) -> tuple[int, int]:
        """Element strides of A's rows and columns."""
        if self.a_strides is not None:
            return tuple(self.a_strides)
        ld = self.lda if self.lda is not None else self._a_stored[1]
        return (1, ld) if self.trans_a else (ld, 1)

    @property
    def strides_b(self) -> tuple[int, int]:
        if self.b_strides is not None:
            return tuple(self.b_strides)
        ld = self.ldb if self.ldb is not None else self._b_stored[1]
        return (1, ld) if self.trans_b else (ld, 1)

    @property
    def stride_a(self) -> int:
        if self.a_batch_stride is not None:
            return self.a_batch_stride
        return 0 if self.a.size == self.m * self.k else self.m * self.k

    @property
    def stride_b(self) -> int:
        if self.b_batch_stride is not None:
            return self.b_batch_stride
        return 0 if self.b.size == self.k * self.n else self.k * self.n

    @property
    def space(self) -> tuple[int, ...]:
        """The iteration space epilogue index maps are written over."""
        return (self.batch, self.m, self.n) if self.batch > 1 else (self.m, self.n)

    @property
    def inputs(self) -> tuple[Buffer, ...]:
        return tuple(dict.fromkeys((self.a, self.b) + tuple(buf for _, buf, _ in self.epilogue_inputs)))

    @property
    def outputs(self) -> tuple[Buffer, ...]:
        return (self.out,)

    @property
    def cuda_headers(self) -> tuple[str, ...]:
        return ("#include <mma.h>",) if self.tf32 else ()

    @property
    def cuda_dtypes(self) -> tuple:
        return tuple({b.dtype for b in self.inputs} | {e.dtype for e in self._epilogue_nodes()})

    def _epilogue_nodes(self):
        return walk_exprs(self.epilogue) if self.epilogue is not None else ()

    def tiles(self) -> tuple[int, int, int, int, int]:
        """The largest block tile that still gives every multiprocessor a block."""
        for tile in TILES:
            bm, bn = tile[0], tile[1]
            if math.ceil(self.m / bm) * math.ceil(self.n / bn) * self.batch >= TARGET_SMS:
                return tile
        return TILES[-1]

    # ------------------------------------------------------------ rendering
    def render_cuda(self, symbol: str, checks: list[Check]) -> tuple[str, Launch]:
        buffers = self.inputs + (self.out,)
        names = {buf: f"p{i}_{''.join(c if c.isalnum() else '_' for c in buf.name)}" for i, buf in enumerate(buffers)}
        params = [f"{'' if buf is self.out else 'const '}{storage_ctype(buf.dtype)}* __restrict__ {names[buf]}"
                  for buf in buffers] + ["int* __restrict__ tt_err"]
        em = _Emitter(_Named(self.name), names, checks)
        if self.tf32:
            threads, bm, bn = TF32_THREADS, TF32_TILE, TF32_TILE
            self._tf32_body(em, names)
        else:
            bm, bn, bk, tm, tn = self.tiles()
            threads = THREADS
            self._fp32_body(em, names, bm, bn, bk, tm, tn)
        grid = (math.ceil(self.n / bn), math.ceil(self.m / bm), self.batch)
        text = "\n".join([f"// matmul {self.name!r}: {self.batch}x{self.m}x{self.n}x{self.k}"
                          f"{' tf32' if self.tf32 else ''}",
                          f'extern "C" __global__ void __launch_bounds__({threads}) {symbol}({", ".join(params)}) {{',
                          *em.lines, "}", ""])
        work = self.batch * self.m * self.n
        return text, Launch(symbol, buffers, threads, work, bm * bn, "matmul", grid if work else (0, 0, 0))

    def _a(self, names, row: str, col: str) -> str:
        """A[row, col] of this block's batch (row < m, col < k), as float (or double)."""
        return self._widen(f"{names[self.a]}[tt_a_base + {_strided(row, col, self.strides_a)}]")

    def _b(self, names, row: str, col: str) -> str:
        """B[row, col] of this block's batch (row < k, col < n)."""
        return self._widen(f"{names[self.b]}[tt_b_base + {_strided(row, col, self.strides_b)}]")

    def _widen(self, raw: str) -> str:
        return f"__half2float({raw})" if self.out.dtype is float16 else raw

    def _prologue(self, em: _Emitter) -> None:
        em.emit("const long long tt_batch = blockIdx.z;")
        if not self.batch_dims:
            em.emit(f"const long long tt_a_base = tt_batch * {self.stride_a}LL + {self.a_offset}LL;")
            em.emit(f"const long long tt_b_base = tt_batch * {self.stride_b}LL + {self.b_offset}LL;")
            return
        bases = [[str(self.a_offset)], [str(self.b_offset)]]
        inner = self.batch
        for k, (size, sa, sb) in enumerate(self.batch_dims):
            inner //= size
            coord = f"tt_batch / {inner}LL" if inner > 1 else "tt_batch"
            em.emit(f"const long long tt_z{k} = {coord if k == 0 else f'({coord}) % {size}LL'};")
            for base, stride in zip(bases, (sa, sb)):
                if stride:
                    base.append(f"tt_z{k} * {stride}LL")
        em.emit(f"const long long tt_a_base = {' + '.join(bases[0])};")
        em.emit(f"const long long tt_b_base = {' + '.join(bases[1])};")

    def _load_tiles(self, em: _Emitter, names, threads: int, bm: int, bn: int, bk: int, a_tile, b_tile) -> None:
        """Stage A[row0.., k0..] and B[k0.., col0..] in shared memory (zeros outside), coalesced reads:
        consecutive threads take consecutive elements along each operand's contiguous dim."""
        em.emit("#pragma unroll")
        em.open(f"for (int tt_l = 0; tt_l < {bm * bk // threads}; ++tt_l)")
        em.emit(f"const int tt_e = threadIdx.x + tt_l * {threads};")
        if self.trans_a:
            em.emit(f"const int tt_mm = tt_e % {bm}, tt_kk = tt_e / {bm};")
        else:
            em.emit(f"const int tt_kk = tt_e % {bk}, tt_mm = tt_e / {bk};")
        em.emit("const int tt_r = tt_row0 + tt_mm, tt_c = tt_k0 + tt_kk;")
        em.emit(f"{a_tile('tt_mm', 'tt_kk')} = (tt_r < {self.m} && tt_c < {self.k}) ? "
                f"{self._a(names, 'tt_r', 'tt_c')} : {self._zero};")
        em.close()
        em.emit("#pragma unroll")
        em.open(f"for (int tt_l = 0; tt_l < {bk * bn // threads}; ++tt_l)")
        em.emit(f"const int tt_e = threadIdx.x + tt_l * {threads};")
        if self.trans_b:
            em.emit(f"const int tt_kk = tt_e % {bk}, tt_nn = tt_e / {bk};")
        else:
            em.emit(f"const int tt_nn = tt_e % {bn}, tt_kk = tt_e / {bn};")
        em.emit("const int tt_r = tt_k0 + tt_kk, tt_c = tt_col0 + tt_nn;")
        em.emit(f"{b_tile('tt_kk', 'tt_nn')} = (tt_r < {self.k} && tt_c < {self.n}) ? "
                f"{self._b(names, 'tt_r', 'tt_c')} : {self._zero};")
        em.close()

    @property
    def _ctype(self) -> str:
        return "double" if self.out.dtype is float64 else "float"

    @property
    def _zero(self) -> str:
        return "0.0" if self.out.dtype is float64 else "0.0f"

    def _fp32_body(self, em: _Emitter, names, bm, bn, bk, tm, tn) -> None:
        """The CUDA-core kernel (float32, or float64 with the same tiles)."""
        c, fma = self._ctype, "fma" if self.out.dtype is float64 else "fmaf"
        em.emit(f"__shared__ __align__(16) {c} tt_as[{bk}][{bm + 4}];     // A tile, transposed")
        em.emit(f"__shared__ __align__(16) {c} tt_bs[{bk}][{bn + 4}];")
        em.emit(f"const int tt_tx = threadIdx.x % {bn // tn}, tt_ty = threadIdx.x / {bn // tn};")
        em.emit(f"const int tt_row0 = blockIdx.y * {bm}, tt_col0 = blockIdx.x * {bn};")
        self._prologue(em)
        em.emit(f"{c} tt_acc[{tm}][{tn}];")
        em.emit("#pragma unroll")
        em.emit(f"for (int i = 0; i < {tm}; ++i)")
        em.emit("#pragma unroll")
        em.emit(f"    for (int j = 0; j < {tn}; ++j) tt_acc[i][j] = {self._zero};")
        em.open(f"for (int tt_k0 = 0; tt_k0 < {self.k}; tt_k0 += {bk})")
        self._load_tiles(em, names, THREADS, bm, bn, bk, lambda m, k: f"tt_as[{k}][{m}]",
                         lambda k, n: f"tt_bs[{k}][{n}]")
        em.emit("__syncthreads();")
        em.emit("#pragma unroll")
        em.open(f"for (int tt_kk = 0; tt_kk < {bk}; ++tt_kk)")
        em.emit(f"{c} tt_a[{tm}], tt_b[{tn}];")
        em.emit("#pragma unroll")
        em.emit(f"for (int i = 0; i < {tm}; ++i) tt_a[i] = tt_as[tt_kk][tt_ty * {tm} + i];")
        em.emit("#pragma unroll")
        em.emit(f"for (int j = 0; j < {tn}; ++j) tt_b[j] = tt_bs[tt_kk][tt_tx * {tn} + j];")
        em.emit("#pragma unroll")
        em.emit(f"for (int i = 0; i < {tm}; ++i)")
        em.emit("#pragma unroll")
        em.emit(f"    for (int j = 0; j < {tn}; ++j) tt_acc[i][j] = {fma}(tt_a[i], tt_b[j], tt_acc[i][j]);")
        em.close()
        em.emit("__syncthreads();")
        em.close()
        em.emit("#pragma unroll")
        em.open(f"for (int i = 0; i < {tm}; ++i)")
        em.emit("#pragma unroll")
        em.open(f"for (int j = 0; j < {tn}; ++j)")
        em.emit(f"const int tt_r = tt_row0 + tt_ty * {tm} + i, tt_c = tt_col0 + tt_tx * {tn} + j;")
        self._store(em, names, "tt_acc[i][j]")
        em.close()
        em.close()

    def _tf32_body(self, em: _Emitter, names) -> None:
        t, bk = TF32_TILE, 16
        em.emit("using namespace nvcuda;")
        em.emit(f"__shared__ __align__(128) float tt_as[{t}][{bk + 8}];")
        em.emit(f"__shared__ __align__(128) float tt_bs[{bk}][{t + 8}];")
        em.emit(f"__shared__ __align__(128) float tt_cs[{t}][{t + 8}];")
        em.emit("const int tt_warp = threadIdx.x / 32, tt_wm = tt_warp / 2, tt_wn = tt_warp % 2;")
        em.emit(f"const int tt_row0 = blockIdx.y * {t}, tt_col0 = blockIdx.x * {t};")
        self._prologue(em)
        em.emit("wmma::fragment<wmma::accumulator, 16, 16, 8, float> tt_c[2][2];")
        em.emit("#pragma unroll")
        em.emit("for (int i = 0; i < 2; ++i)")
        em.emit("#pragma unroll")
        em.emit("    for (int j = 0; j < 2; ++j) wmma::fill_fragment(tt_c[i][j], 0.0f);")
        em.open(f"for (int tt_k0 = 0; tt_k0 < {self.k}; tt_k0 += {bk})")
        self._load_tiles(em, names, TF32_THREADS, t, t, bk, lambda m, k: f"tt_as[{m}][{k}]",
                         lambda k, n: f"tt_bs[{k}][{n}]")
        em.emit("__syncthreads();")
        em.emit("#pragma unroll")
        em.open(f"for (int tt_kk = 0; tt_kk < {bk}; tt_kk += 8)")
        em.emit("wmma::fragment<wmma::matrix_a, 16, 16, 8, wmma::precision::tf32, wmma::row_major> tt_fa[2];")
        em.emit("wmma::fragment<wmma::matrix_b, 16, 16, 8, wmma::precision::tf32, wmma::row_major> tt_fb[2];")
        em.emit("#pragma unroll")
        em.open("for (int i = 0; i < 2; ++i)")
        em.emit(f"wmma::load_matrix_sync(tt_fa[i], &tt_as[tt_wm * 32 + i * 16][tt_kk], {bk + 8});")
        em.emit(f"wmma::load_matrix_sync(tt_fb[i], &tt_bs[tt_kk][tt_wn * 32 + i * 16], {t + 8});")
        em.emit("#pragma unroll")
        em.emit("for (int e = 0; e < tt_fa[i].num_elements; ++e) tt_fa[i].x[e] = wmma::__float_to_tf32(tt_fa[i].x[e]);")
        em.emit("#pragma unroll")
        em.emit("for (int e = 0; e < tt_fb[i].num_elements; ++e) tt_fb[i].x[e] = wmma::__float_to_tf32(tt_fb[i].x[e]);")
        em.close()
        em.emit("#pragma unroll")
        em.emit("for (int i = 0; i < 2; ++i)")
        em.emit("#pragma unroll")
        em.emit("    for (int j = 0; j < 2; ++j) wmma::mma_sync(tt_c[i][j], tt_fa[i], tt_fb[j], tt_c[i][j]);")
        em.close()
        em.emit("__syncthreads();")
        em.close()
        em.emit("#pragma unroll")
        em.emit("for (int i = 0; i < 2; ++i)")
        em.emit("#pragma unroll")
        em.emit("    for (int j = 0; j < 2; ++j)")
        em.emit("        wmma::store_matrix_sync(&tt_cs[tt_wm * 32 + i * 16][tt_wn * 32 + j * 16], tt_c[i][j], "
                f"{t + 8}, wmma::mem_row_major);")
        em.emit("__syncthreads();")
        em.open(f"for (int tt_e = threadIdx.x; tt_e < {t * t}; tt_e += {TF32_THREADS})")
        em.emit(f"const int tt_r = tt_row0 + tt_e / {t}, tt_c = tt_col0 + tt_e % {t};")
        self._store(em, names, f"tt_cs[tt_e / {t}][tt_e % {t}]")
        em.close()

    def _store(self, em: _Emitter, names, acc: str) -> None:
        """out[batch, tt_r, tt_c] = epilogue(acc), inside the matrix only."""
        em.open(f"if (tt_r < {self.m} && tt_c < {self.n})")
        value = acc
        if self.epilogue is not None:
            em.bind("@acc", acc)
            em.bind("@b", "tt_batch")
            em.bind("@m", "(long long)tt_r")
            em.bind("@n", "(long long)tt_c")
            at = [Var("@b"), Var("@m"), Var("@n")][-len(self.space):]
            mapping = {"acc": Var("@acc", self.out.dtype)}
            for name, buf, index in self.epilogue_inputs:
                mapping[name] = Load(buf, index.index(at))
            value = em.expr(substitute(self.epilogue, mapping))
        value = em.to_storage(value, self.out.dtype)             # float16 / bfloat16: rounded once, here
        em.emit(f"{names[self.out]}[tt_batch * {self.m * self.n}LL + (long long)tt_r * {self.n} + tt_c] = {value};")
        em.forget_state()
        em.close()


def _strided(row: str, col: str, strides: tuple[int, int]) -> str:
    terms = [f"(long long){v}" if st == 1 else f"(long long){v} * {st}" for v, st in zip((row, col), strides) if st]
    return " + ".join(terms) or "0"


@dataclass(frozen=True)
class _Named:
    name: str


def matmul_flops(spec: MatmulSpec) -> int:
    return 2 * spec.batch * spec.m * spec.n * spec.k

