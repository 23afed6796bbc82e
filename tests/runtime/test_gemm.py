"""The generated GEMM (`MatmulKernel`, codegen.llvm_gemm): float32 results against float64 numpy for
edge sizes, every operand layout, offsets, row pitches, batches and broadcasts; serial == threaded;
no element read outside the operands' views or written outside the output; and `tt.compile`
choosing it (compiled == eager) or numpy's BLAS."""
from __future__ import annotations

import os

import numpy as np
import pytest

import tracetorch as tt
from codegen.kernel import Arg, Buffer, IndexMap, MatmulKernel, Program
from codegen.templates import elementwise_kernel
from runtime.disk_cache import DiskCache
from runtime.host import gemm_lanes
from runtime.llvm_engine import LLVMEngine
from runtime.memory import MemoryPlan
from tracetorch.dtypes import float32

# both libraries wherever either runs: on an AVX2 host LLVM splits the AVX-512 library's 16-float vectors in
# two (slower, same results), so its logic is checked there too
HOST_LANES = [16, 8] if gemm_lanes() else []
pytestmark = pytest.mark.skipif(not HOST_LANES, reason="the generated GEMM needs AVX-512 or AVX2 with FMA (host has "
                                                       "neither)")


@pytest.fixture(params=HOST_LANES or [16], ids=lambda lanes: f"{lanes}lanes")
def lanes(request) -> int:
    """The vector width of the GEMM library under test."""
    return request.param


def _operand(rng, shape, transposed: bool, offset: int, pad: int):
    """A float32 matrix (or batch) of `shape` inside a NaN-filled buffer: at element `offset`, rows (or
    columns, when `transposed`) `pad` elements apart beyond their length. Returns (buffer array, map,
    values): any NaN read into a result shows as a NaN."""
    *batch, rows, cols = shape
    inner, outer = (rows, cols) if transposed else (cols, rows)
    pitch = inner + pad
    matrix = outer * pitch
    size = offset + int(np.prod(batch, dtype=np.int64)) * matrix + pad
    store = np.full(size, np.nan, np.float32)
    values = rng.standard_normal(shape).astype(np.float32)
    strides = [0] * len(batch)
    step = matrix
    for d in reversed(range(len(batch))):
        strides[d] = step
        step *= batch[d]
    strides += [1, pitch] if transposed else [pitch, 1]
    imap = IndexMap(tuple(strides), offset)
    for index in np.ndindex(*shape):
        store[offset + sum(i * s for i, s in zip(index, strides))] = values[index]
    return store, imap, values


def _program(name, m, n, k, batch, a_store, a_map, b_store, b_map, lanes=16):
    a = Buffer("a", float32, a_store.shape)
    b = Buffer("b", float32, b_store.shape)
    out = Buffer("out", float32, tuple(batch) + (m, n))
    kernel = MatmulKernel(name, a, b, out, tuple(batch), m, n, k, a_map, b_map, lanes)
    return Program(name, (kernel,), (a, b), (out,))


@pytest.mark.parametrize("m, n, k", [(1, 1, 1), (13, 10, 17), (14, 32, 16), (15, 33, 256), (29, 64, 257),
                                     (71, 100, 300), (150, 70, 600),
                                     (10, 70, 300), (28, 40, 300),    # units of <= 14 (6) rows: B read in place
                                     (71, 10, 300), (29, 12, 64), (3, 1, 100)])   # "nt": the dot form
@pytest.mark.parametrize("a_t, b_t", [(False, False), (False, True), (True, False), (True, True)],
                         ids=["nn", "nt", "tn", "tt"])
def test_gemm_matches_float64_for_every_layout(engine, lanes, m, n, k, a_t, b_t):
    rng = np.random.default_rng(m * 1000 + n * 10 + k)
    a_store, a_map, a = _operand(rng, (m, k), a_t, offset=3, pad=5)
    b_store, b_map, b = _operand(rng, (k, n), b_t, offset=7, pad=2)
    compiled = engine.compile(_program(f"gemm_{m}_{n}_{k}_{a_t}{b_t}", m, n, k, (), a_store, a_map, b_store, b_map,
                                       lanes))
    (got,) = compiled(a_store, b_store)
    want = a.astype(np.float64) @ b.astype(np.float64)
    bound = np.abs(a).astype(np.float64) @ np.abs(b).astype(np.float64)
    assert np.all(np.abs(got - want) <= 2e-6 * bound + 1e-30)
    (again,) = compiled.run_kernel_by_kernel(a_store, b_store)
    np.testing.assert_array_equal(again, got)


@pytest.mark.parametrize("m, n, k", [(20, 40, 35), (20, 7, 100)], ids=["panels", "dot"])
def test_batched_and_broadcast_operands(engine, lanes, m, n, k):
    """[2, 3] batches: a has its own per batch, b one matrix per first-batch index (stride 0 on the second)."""
    rng = np.random.default_rng(5)
    a_store, a_map, a = _operand(rng, (2, 3, m, k), False, offset=1, pad=3)
    b_store, b_map2, b = _operand(rng, (2, k, n), True, offset=4, pad=1)
    b_map = IndexMap((b_map2.strides[0], 0) + b_map2.strides[1:], b_map2.offset)
    compiled = engine.compile(_program("gemm_batched", m, n, k, (2, 3), a_store, a_map, b_store, b_map, lanes))
    (got,) = compiled(a_store, b_store)
    want = a.astype(np.float64) @ b.astype(np.float64)[:, None]
    np.testing.assert_allclose(got, want, rtol=1e-4, atol=1e-4)


def test_three_batch_dims_merge_into_two(engine, lanes):
    """[2, 3, 4] batches: a contiguous, b one matrix per (first, second) index read again for the
    third: the first two dims merge (both operands step them as one), two remain."""
    rng = np.random.default_rng(6)
    m, n, k = 16, 33, 20
    a_store, a_map, a = _operand(rng, (2, 3, 4, m, k), False, offset=2, pad=1)
    b_store, b_map2, b = _operand(rng, (2, 3, k, n), True, offset=3, pad=2)
    b_map = IndexMap(b_map2.strides[:2] + (0,) + b_map2.strides[2:], b_map2.offset)
    program = _program("gemm_batch3", m, n, k, (2, 3, 4), a_store, a_map, b_store, b_map, lanes)
    assert program.steps[0].batch_dims == ((6, 4), (a_map.strides[1], a_map.strides[2]), (b_map.strides[1], 0))
    (got,) = engine.compile(program)(a_store, b_store)
    want = a.astype(np.float64) @ b.astype(np.float64)[:, :, None]
    np.testing.assert_allclose(got, want, rtol=1e-4, atol=1e-4)
    assert MatmulKernel.merge_batch((2, 3, 4), (12, 0, 1), (1, 0, 7)) is None     # three remain


@pytest.mark.parametrize("m, n, k, b_t, slices", [(200, 300, 190, True, 1), (333, 100, 190, True, 2),
                                                 (2000, 10, 300, True, 4), (14, 2048, 300, False, 1)],
                         ids=["wide", "tall", "dot", "b in place"])
def test_threaded_gemm_equals_single_thread(engine, tmp_path, lanes, m, n, k, b_t, slices):
    # 2*m*n*k above PARALLEL_MIN_COST: split across the team; a tall C by row slices, a wide one by panels
    rng = np.random.default_rng(9)
    a_store, a_map, a = _operand(rng, (m, k), False, 0, 0)
    b_store, b_map, b = _operand(rng, (k, n), b_t, 0, 0)
    program = _program("gemm_threads", m, n, k, (), a_store, a_map, b_store, b_map, lanes)
    assert program.steps[0].row_slices == slices
    threaded = engine.compile(program)
    assert engine.threads > 1 or pytest.skip("one CPU")
    assert [s[0] for s in threaded._steps] == ["parallel"]
    single = LLVMEngine(cache=DiskCache(tmp_path), threads=1).compile(program)
    got = threaded(a_store, b_store)[0]
    np.testing.assert_array_equal(got, single(a_store, b_store)[0])
    np.testing.assert_allclose(got, a.astype(np.float64) @ b.astype(np.float64), rtol=1e-4, atol=1e-4)


def test_row_slices_follow_the_shape():
    rng = np.random.default_rng(5)

    def slices(m, n, batch=()):
        a_store, a_map, _ = _operand(rng, tuple(batch) + (m, 8), False, 0, 0)
        b_store, b_map, _ = _operand(rng, tuple(batch) + (8, n), False, 0, 0)
        return _program("s", m, n, 8, batch, a_store, a_map, b_store, b_map).steps[0].row_slices

    assert slices(1024, 512) == 2            # tall: each thread packs its rows of A and all of B
    assert slices(128, 512) == 1 and slices(512, 512) == 1
    assert slices(1024, 10) == 4             # one panel: cut into MIN_UNITS row slices
    assert slices(14, 10) == 1               # one row block: nothing to cut
    assert slices(100, 64, (3,)) == 1        # a batch has units enough


@pytest.mark.parametrize("m, n, k, b_t", [(13, 48, 20, False), (16, 10, 33, False), (3, 16, 1, False),
                                          (32, 10, 100, True), (4, 12, 70, True)])     # the dot form
def test_gemm_writes_nothing_outside_its_output(engine, lanes, m, n, k, b_t):
    """The output sits in the arena between two sentinel buffers (no gap): they keep their values."""
    rng = np.random.default_rng(11)
    a_np = rng.standard_normal((m, k)).astype(np.float32)
    b_np = rng.standard_normal((k, n)).astype(np.float32)
    a, b = Buffer("a", float32, (m, k)), Buffer("b", float32, (n, k) if b_t else (k, n))
    fill = Buffer("fill", float32, (16,))
    before, after = Buffer("before", float32, (16,)), Buffer("after", float32, (16,))
    product = Buffer("product", float32, (m, n))
    outs = [Buffer(name, float32, shape) for name, shape in (("o_before", (16,)), ("o_product", (m, n)),
                                                             ("o_after", (16,)))]
    flat = {"x": (fill, IndexMap.contiguous((16,)))}
    steps = [elementwise_kernel("sentinels", (16,), flat, [(before, Arg("x", float32)), (after, Arg("x", float32))]),
             MatmulKernel("gemm", a, b, product, (), m, n, k, IndexMap.contiguous((m, k)),
                          IndexMap((1, k)) if b_t else IndexMap((n, 1)), lanes),
             elementwise_kernel("copy_before", (16,), {"x": (before, IndexMap.contiguous((16,)))},
                                [(outs[0], Arg("x", float32))]),
             elementwise_kernel("copy_product", (m, n), {"x": (product, IndexMap.contiguous((m, n)))},
                                [(outs[1], Arg("x", float32))]),
             elementwise_kernel("copy_after", (16,), {"x": (after, IndexMap.contiguous((16,)))},
                                [(outs[2], Arg("x", float32))])]
    program = Program(f"gemm_bounds_{m}_{n}_{k}_{b_t}", tuple(steps), (a, b, fill), tuple(outs))
    size = product.nbytes
    assert size % 64 == 0
    plan = MemoryPlan({"before": 0, "product": 64, "after": 64 + size},
                      {"before": 64, "product": size, "after": 64}, 128 + size)
    compiled = engine.compile(program, plan)
    sentinel = np.full(16, 7.25, np.float32)
    got_before, got, got_after = compiled(a_np, np.ascontiguousarray(b_np.T) if b_t else b_np, sentinel)
    np.testing.assert_array_equal(got_before, sentinel)
    np.testing.assert_array_equal(got_after, sentinel)
    np.testing.assert_allclose(got, a_np.astype(np.float64) @ b_np, rtol=1e-5, atol=1e-5)


def test_the_dot_form_takes_few_columns_contiguous_along_k():
    rng = np.random.default_rng(2)

    def kernel(m, n, k, a_t=False, b_t=True, lanes=16):
        a_store, a_map, _ = _operand(rng, (m, k), a_t, 0, 0)
        b_store, b_map, _ = _operand(rng, (k, n), b_t, 0, 0)
        return _program("form", m, n, k, (), a_store, a_map, b_store, b_map, lanes).steps[0]

    assert kernel(40, 10, 512).dot_form and kernel(3, 1, 64).dot_form and kernel(20, 12, 784).dot_form
    assert not kernel(40, 13, 512).dot_form               # too many columns: panels
    assert not kernel(40, 10, 32).dot_form                # too short a k for the sums across lanes
    assert not kernel(40, 10, 9000).dot_form              # its packed B would not fit the scratch
    assert not kernel(40, 10, 512, b_t=False).dot_form    # an operand not contiguous along k
    assert not kernel(40, 10, 512, a_t=True).dot_form
    assert kernel(14, 40, 300, b_t=False).b_in_place and kernel(28, 40, 300, b_t=False).b_in_place
    assert not kernel(14, 40, 300).b_in_place and not kernel(100, 40, 300, b_t=False).b_in_place
    # AVX2's micro-kernels have 6 rows: units of at most 6 read B in place
    assert kernel(6, 40, 300, b_t=False, lanes=8).b_in_place and kernel(12, 16, 300, b_t=False, lanes=8).b_in_place
    assert not kernel(14, 40, 300, b_t=False, lanes=8).b_in_place


def test_kernel_rejects_maps_outside_its_buffers_and_layouts_without_a_unit_stride():
    a, b, out = Buffer("a", float32, (6, 4)), Buffer("b", float32, (4, 5)), Buffer("out", float32, (6, 5))
    with pytest.raises(IndexError):
        MatmulKernel("bad", a, b, out, (), 6, 5, 4, IndexMap((4, 1), 1), IndexMap((5, 1)))
    with pytest.raises(ValueError, match="unit stride"):
        MatmulKernel("bad", Buffer("a2", float32, (48,)), b, out, (), 6, 5, 4, IndexMap((8, 2)), IndexMap((5, 1)))
    with pytest.raises(ValueError, match="output"):
        MatmulKernel("bad", a, b, a, (), 6, 4, 4, IndexMap((4, 1)), IndexMap((5, 1)))


# ---------------------------------------------------------------- through tt.compile
def _layouts(x, w, y, q, kk):
    return (x @ w.t()).relu(), x.t() @ y, q @ kk.transpose(-1, -2), (q[:, :, 1:] @ kk[:, :, :-1].transpose(-1, -2))


def _layout_inputs():
    rng = np.random.default_rng(3)
    shapes = [(96, 70), (50, 70), (96, 40), (3, 17, 24), (3, 19, 24)]
    return [tt.tensor(rng.standard_normal(s).astype(np.float32)) for s in shapes]


def test_compiled_matmuls_use_the_gemm_and_match_eager():
    f = tt.compile(_layouts)
    inputs = _layout_inputs()
    got, want = f(*inputs), _layouts(*inputs)
    for g, w in zip(got, want):
        np.testing.assert_allclose(g.numpy(), w.numpy(), rtol=1e-5, atol=1e-5)
    steps = f.programs[0].executable.lowered.program.steps
    assert sum(isinstance(s, MatmulKernel) for s in steps) == 4
    text = f.explain(*inputs)
    assert "matmul: generated GEMM kernel" in text and "[gemm over [96, 50]]: matmul" in text


def test_explain_names_each_matmul_form():
    # a classifier's x @ w.T (dot form), a plain product (panels) and one of 8 rows (B read in place)
    rng = np.random.default_rng(8)
    x, w, v, y = (tt.tensor(rng.standard_normal(s).astype(np.float32)) for s in ((64, 100), (10, 100), (100, 40),
                                                                              (8, 100)))
    fn = lambda x, w, v, y: (x @ w.t(), x @ v, y @ v)
    f = tt.compile(fn)
    for got, want in zip(f(x, w, v, y), fn(x, w, v, y)):
        np.testing.assert_allclose(got.numpy(), want.numpy(), rtol=1e-5, atol=1e-4)
    notes = [line.strip() for line in f.explain(x, w, v, y).splitlines() if "matmul: generated GEMM" in line]
    assert len(notes) == 3
    assert "a dot product per element" in notes[0]
    assert "-column panels" in notes[1] and "in place" not in notes[1]
    assert "B read in place" in notes[2]


def test_gemm_can_be_turned_off(monkeypatch):
    monkeypatch.setenv("TRACETORCH_GEMM", "0")
    f = tt.compile(_layouts)
    inputs = _layout_inputs()
    for g, w in zip(f(*inputs), _layouts(*inputs)):
        np.testing.assert_allclose(g.numpy(), w.numpy(), rtol=1e-5, atol=1e-5)
    steps = f.programs[0].executable.lowered.program.steps
    assert not any(isinstance(s, MatmulKernel) for s in steps)


def test_float64_matmuls_keep_numpy_and_vectors_work():
    rng = np.random.default_rng(4)
    x64 = tt.tensor(rng.standard_normal((8, 6)))
    f = tt.compile(lambda a: a @ a.t())
    np.testing.assert_allclose(f(x64).numpy(), x64.numpy() @ x64.numpy().T, rtol=1e-12)
    steps = f.programs[0].executable.lowered.program.steps
    assert not any(isinstance(s, MatmulKernel) for s in steps)
    x32, v = (tt.tensor(rng.standard_normal(s).astype(np.float32)) for s in ((8, 6), (6,)))
    g = tt.compile(lambda a, b: (a @ b, b @ a.t()))
    for got, want in zip(g(x32, v), (x32.numpy() @ v.numpy(), v.numpy() @ x32.numpy().T)):
        np.testing.assert_allclose(got.numpy(), want, rtol=1e-5, atol=1e-6)


def test_the_gemm_library_is_compiled_once_and_a_warm_engine_compiles_nothing(tmp_path):
    # program modules hold only a table of the library's functions, filled when they are loaded
    from codegen.llvm_ir import render_program
    from codegen.rendered import GEMM_TABLE
    rng = np.random.default_rng(11)
    cases = []
    for m, n, k, b_t in ((20, 40, 30, False), (33, 10, 70, True)):
        a_store, a_map, a = _operand(rng, (m, k), False, 0, 0)
        b_store, b_map, b = _operand(rng, (k, n), b_t, 0, 0)
        cases.append((_program(f"lib{m}", m, n, k, (), a_store, a_map, b_store, b_map), a_store, b_store,
                      a.astype(np.float64) @ b.astype(np.float64)))
    rendered = render_program(cases[0][0])
    assert rendered.gemm and GEMM_TABLE in rendered.exports
    assert "define void @\"tt_gemm." not in rendered.ir and "micro_wide\"(" not in rendered.ir
    for warm in (False, True):
        engine = LLVMEngine(cache=DiskCache(tmp_path), threads=2)
        for n, (program, a_store, b_store, want) in enumerate(cases):
            got, = engine.compile(program)(a_store, b_store)
            np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-4)
            assert engine.stats.compiles == (0 if warm else 2 + n)      # the library, then each program
