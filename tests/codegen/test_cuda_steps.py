"""Device steps of codegen.cuda_steps, cuda_index and cuda_sort, and the float64 / strided / float16 /
unfolded-batch forms of codegen.cuda_matmul: every variant in ONE program, run once on the CPU emulator
(threads forward, then reversed with one block so grid-stride loops take several steps) against numpy /
the CPU random stream, and compiled by one nvcc call."""
from __future__ import annotations

import numpy as np
import pytest

from codegen.cuda_c import render_program
from codegen.cuda_matmul import MatmulSpec
from codegen.cuda_index import IndexRegion, SegmentSumSpec, index_keys_kernel, index_scatter_kernel
from codegen.cuda_sort import SortPlan, randperm_steps
from codegen.cuda_steps import RandSpec, arg_kernel, copy_kernel, cumsum_kernel, int_matmul_kernel, span, strided_map
from codegen.kernel import Buffer, IndexMap, Program
from tracetorch.dtypes import bfloat16, bool_, float16, float32, float64, int32, int64, round_bfloat16
from tracetorch.ops import REGISTRY

import cuda_emulator
from cuda_testing import nvcc_compile

SEED, OFFSET, N = 1234567, 987, 301          # N: not a multiple of the block


def _rand_cases(seed, offset):
    """Normal draws (uniform ones are the `random` op of ordinary kernels: tests/codegen/test_random_op.py)."""
    steps, wants = [], {}
    for dt in (float16, bfloat16, float32, float64):
        out = Buffer(f"rand_{dt.name}_normal", dt, (N,))
        steps.append(RandSpec(out.name, seed, offset, out))
        want = REGISTRY["rand"].eager(np.int64(SEED), np.int64(OFFSET), shape=(N,), dtype=dt, normal=True)
        wants[out] = round_bfloat16(want) if dt is bfloat16 else want
    return steps, wants


def _copy_cases(rng):
    """A strided write into the middle of a buffer (src broadcast along dim 0), and an int32 cast copy."""
    steps, inputs, wants = [], {}, {}
    shape = (3, 4)
    dst_map = strided_map(shape, (10, 2), 5)                     # rows 10 apart, every other element, from 5
    dst = Buffer("copy_dst", float32, (span(shape, dst_map) + 3,))
    src = Buffer("copy_src", float32, (4,))
    src_np = rng.standard_normal(4).astype(np.float32)
    inputs[src] = src_np
    steps.append(copy_kernel("copy_strided", shape, dst, dst_map, src, IndexMap((0, 1), 0)))
    want = np.full(dst.shape, np.nan, np.float32)                # the emulator poisons outputs with NaN
    for i in range(3):
        want[5 + 10 * i: 5 + 10 * i + 8: 2] = src_np
    wants[dst] = want
    ints = Buffer("copy_ints", int32, (2, 3))
    floats = Buffer("copy_floats", float64, (3, 2))
    f_np = rng.standard_normal((3, 2)) * 10
    inputs[floats] = f_np
    steps.append(copy_kernel("copy_cast", (2, 3), ints, IndexMap.contiguous((2, 3)), floats, IndexMap((1, 2), 0)))
    wants[ints] = f_np.T.astype(np.int32)
    filled = Buffer("copy_filled", float64, (7,))
    steps.append(copy_kernel("copy_number", (3,), filled, IndexMap((3,), 0), 2.5))
    wants[filled] = np.where(np.arange(7) % 3 == 0, 2.5, np.nan)
    return steps, inputs, wants


def _scatter_cases(rng):
    """index_put without accumulate: along dim 1 (negative indices wrap; v broadcast along dim 0), a number
    along dim 0, and two index tensors on dims 0 and 2 broadcast to (2, 3) (region (2, 3, 3))."""
    steps, inputs, wants = [], {}, {}
    base = Buffer("scatter_base", float32, (3, 5))
    idx = Buffer("scatter_idx", int64, (3,))
    v = Buffer("scatter_v", float32, (3,))
    out = Buffer("scatter_out", float32, (3, 5))
    base_np, v_np, idx_np = rng.standard_normal((3, 5)).astype(np.float32), np.float32([1, 2, 3]), np.array([4, -5, 2])
    inputs.update({base: base_np, idx: idx_np, v: v_np})
    steps.append(copy_kernel("scatter_copy", (3, 5), out, IndexMap.contiguous((3, 5)), base, IndexMap((5, 1), 0)))
    steps.append(index_scatter_kernel("scatter_put", out, IndexRegion((3, 5), (1,), (3,)), [(idx, IndexMap((1,), 0))],
                                      v, IndexMap((0, 1), 0)))
    want = base_np.copy()
    want[:, idx_np] = v_np
    wants[out] = want
    ints = Buffer("scatter_ints", int32, (6,))
    small = Buffer("scatter_small", int32, (2,))
    inputs[small] = np.int32([5, -1])
    steps.append(index_scatter_kernel("scatter_number", ints, IndexRegion((6,), (0,), (2,)),
                                      [(small, IndexMap((1,), 0))], 7))
    want = np.full(6, 0x5A5A5A5A, np.int32)                   # the emulator's poison for integers
    want[[5, -1]] = 7
    wants[ints] = want
    cube = Buffer("scatter_cube", float64, (4, 3, 5))
    i, j = Buffer("scatter_i", int64, (2, 1)), Buffer("scatter_j", int32, (3,))
    vals = Buffer("scatter_vals", float32, (3, 3))            # broadcast over the region's first dim, cast
    i_np, j_np, vals_np = np.array([[3], [-4]]), np.int32([0, 4, 2]), rng.standard_normal((3, 3)).astype(np.float32)
    inputs.update({i: i_np, j: j_np, vals: vals_np})
    region = IndexRegion((4, 3, 5), (0, 2), (2, 3))
    steps.append(index_scatter_kernel("scatter_two", cube, region, [(i, IndexMap((1, 0), 0)), (j, IndexMap((0, 1), 0))],
                                      vals, IndexMap((0, 3, 1), 0)))
    want = np.full((4, 3, 5), np.nan)
    want[i_np, :, j_np] = vals_np
    wants[cube] = want
    return steps, inputs, wants


def _accumulate_cases(rng):
    """index_put with accumulate: float16 rows with repeated (and negative) indices, summed in numpy's order
    with float16 rounding after each add; a number into int32 along dim 1; float32 with two index tensors."""
    steps, inputs, wants = [], {}, {}

    def add(name, x_np, dtype, dims, index_arrays, index_maps, v, v_map, want):
        x = Buffer(f"{name}_x", dtype, x_np.shape)
        out = Buffer(f"{name}_out", dtype, x_np.shape)
        inputs[x] = x_np
        indices = []
        for k, (a, m) in enumerate(zip(index_arrays, index_maps)):
            buf = Buffer(f"{name}_i{k}", int64, a.shape)
            inputs[buf] = a
            indices.append((buf, m))
        region = IndexRegion(x_np.shape, dims, np.broadcast_shapes(*(a.shape for a in index_arrays)))
        sort = SortPlan.make(name, region.positions)
        steps.extend([copy_kernel(f"{name}_copy", x_np.shape, out, IndexMap.contiguous(x_np.shape), x,
                                  IndexMap.contiguous(x_np.shape)),
                      index_keys_kernel(f"{name}_keys", region, indices, sort.keys[0], sort.vals[0]),
                      *sort.steps(),
                      SegmentSumSpec(f"{name}_add", region, sort.sorted_keys, sort.sorted_vals, out, v, v_map)])
        wants[out] = want

    rows = (rng.standard_normal((5, 3)) * 8).astype(np.float16)
    idx = np.array([2, 0, 2, 2, -1, 4, 2, 0, 2, 3, 2])             # 11 positions: 4 merge passes, a partial run
    v_np = (rng.standard_normal((11, 3)) * 100).astype(np.float16)
    v = Buffer("acc16_v", float16, v_np.shape)
    inputs[v] = v_np
    want = rows.copy()
    np.add.at(want, idx, v_np)
    add("acc16", rows, float16, (0,), [idx], [IndexMap((1,), 0)], v, IndexMap((3, 1), 0), want)
    counts = np.arange(12, dtype=np.int32).reshape(3, 4)
    idx = np.array([1, 3, 1, 1])
    want = counts.copy()
    np.add.at(want, (slice(None), idx), 5)
    add("acc_ints", counts, int32, (1,), [idx], [IndexMap((1,), 0)], 5, None, want)
    grid = rng.standard_normal((3, 4, 2)).astype(np.float32)
    i_np, j_np = np.array([[0], [2], [0]]), np.array([1, 1])        # repeated pairs
    vals_np = rng.standard_normal((3, 1, 2)).astype(np.float32)
    vals = Buffer("acc_two_v", float32, vals_np.shape)
    inputs[vals] = vals_np
    want = grid.copy()
    np.add.at(want, (i_np, j_np), vals_np)
    add("acc_two", grid, float32, (0, 1), [i_np, j_np], [IndexMap((1, 0), 0), IndexMap((0, 1), 0)], vals,
        IndexMap((2, 0, 1), 0), want)
    return steps, inputs, wants


def _perm_cases(seed, offset):
    out = Buffer("perm_out", int64, (N,))
    one = Buffer("perm_one", int64, (1,))
    want = REGISTRY["randperm"].eager(np.int64(SEED), np.int64(OFFSET), n=N)
    return (randperm_steps("perm", seed, offset, out) + randperm_steps("perm1", seed, offset, one),
            {out: want, one: np.zeros(1, np.int64)})


def _matmul_cases(rng):
    """float64 batched with a broadcast B; float32 reading slices of bigger buffers (offsets, leading dims)."""
    steps, inputs, wants = [], {}, {}
    a64 = Buffer("mm64_a", float64, (3, 9, 11))
    b64 = Buffer("mm64_b", float64, (11, 13))
    o64 = Buffer("mm64_out", float64, (3, 9, 13))
    inputs[a64], inputs[b64] = rng.standard_normal(a64.shape), rng.standard_normal(b64.shape)
    steps.append(MatmulSpec("mm64", a64, b64, o64, 9, 13, 11, batch=3, a_batch_stride=99, b_batch_stride=0))
    wants[o64] = inputs[a64] @ inputs[b64]
    big_a = rng.standard_normal((2, 20, 30)).astype(np.float32)  # A = big_a[:, 2:19, 3:11] (17 x 8), batch 2
    big_b = rng.standard_normal((40, 12)).astype(np.float32)     # B^T stored: B = big_b[5:26, 1:9].T (8 x 21)
    a = Buffer("mms_a", float32, (big_a.size,))
    b = Buffer("mms_b", float32, (big_b.size,))
    out = Buffer("mms_out", float32, (2, 17, 21))
    inputs[a], inputs[b] = big_a.ravel(), big_b.ravel()
    steps.append(MatmulSpec("mms", a, b, out, 17, 21, 8, batch=2, trans_b=True, a_batch_stride=600,
                            b_batch_stride=0, a_offset=2 * 30 + 3, b_offset=5 * 12 + 1, lda=30, ldb=12))
    wants[out] = big_a[:, 2:19, 3:11].astype(np.float64) @ big_b[5:26, 1:9].T.astype(np.float64)
    a = Buffer("mm_bdims_a", float32, (2, 1, 3, 4))                 # (2,1,3,4) @ (3,4,5): batch dims that do not fold
    b = Buffer("mm_bdims_b", float32, (3, 4, 5))
    out = Buffer("mm_bdims_out", float32, (2, 3, 3, 5))
    inputs[a], inputs[b] = (rng.standard_normal(x.shape).astype(np.float32) for x in (a, b))
    steps.append(MatmulSpec("mm_bdims", a, b, out, 3, 5, 4, batch=6, batch_dims=((2, 12, 0), (3, 0, 20))))
    wants[out] = np.matmul(inputs[a].astype(np.float64), inputs[b])
    h = [rng.standard_normal(shape).astype(np.float16) for shape in ((9, 40), (6, 40))]
    ha, hb = Buffer("mmh_a", float16, (9, 40)), Buffer("mmh_b", float16, (6, 40))
    hout = Buffer("mmh_out", float16, (9, 6))
    inputs[ha], inputs[hb] = h
    steps.append(MatmulSpec("mmh", ha, hb, hout, 9, 6, 40, trans_b=True))
    wants[hout] = (h[0].astype(np.float32) @ h[1].T.astype(np.float32)).astype(np.float16)
    bf = [round_bfloat16(rng.standard_normal(shape).astype(np.float32)) for shape in ((5, 30), (30, 3))]
    ba, bb = Buffer("mmh_bf_a", bfloat16, (5, 30)), Buffer("mmh_bf_b", bfloat16, (30, 3))
    bout = Buffer("mmh_bf_out", bfloat16, (5, 3))
    inputs[ba], inputs[bb] = bf
    steps.append(MatmulSpec("mmh_bf", ba, bb, bout, 5, 3, 30))
    wants[bout] = round_bfloat16(bf[0] @ bf[1])
    ia, ib = Buffer("imm_a", int32, (2, 3, 20)), Buffer("imm_b", int32, (20, 4))
    iout = Buffer("imm_out", int32, (2, 3, 4))
    inputs[ia], inputs[ib] = rng.integers(-2 ** 20, 2 ** 20, (2, 3, 20)), rng.integers(-2 ** 20, 2 ** 20, (20, 4))
    steps.append(int_matmul_kernel("imm", iout, ia, IndexMap((60, 20, 1), 0), ib, IndexMap((0, 4, 1), 0), 20))
    wants[iout] = np.matmul(inputs[ia].astype(np.int64), inputs[ib].astype(np.int64)).astype(np.int32)   # wraps
    return steps, inputs, wants


def _scan_cases(rng):
    """cumsum along rows long enough for a team and along a transposed dim; argmax/argmin with ties, NaNs,
    bools, integers and over all dims."""
    steps, inputs, wants = [], {}, {}

    def add(name, kernel_of, value, want, dtype, out_dtype, out_shape):
        x = Buffer(f"{name}_x", dtype, value.shape)
        out = Buffer(f"{name}_out", out_dtype, out_shape)
        inputs[x] = value
        steps.append(kernel_of(name, out, x))
        wants[out] = want

    long_rows = rng.standard_normal((4, 37)).astype(np.float32)
    add("cumsum_rows", lambda n, o, x: cumsum_kernel(n, o, 1, x, IndexMap((37, 1), 0)), long_rows,
        np.cumsum(long_rows, axis=1), float32, float32, (4, 37))
    ints = rng.integers(-9, 9, (3, 9)).astype(np.int32)             # read transposed: cumsum of ints.T along dim 0
    add("cumsum_ints", lambda n, o, x: cumsum_kernel(n, o, 0, x, IndexMap((1, 9), 0)), ints,
        np.cumsum(ints.T, axis=0, dtype=np.int64), int32, int64, (9, 3))
    scores = rng.integers(0, 4, (5, 40)).astype(np.float32)           # ties: the first one wins
    scores[2, [7, 30]] = np.nan
    add("argmax_rows", lambda n, o, x: arg_kernel(n, "max", o, x, IndexMap((40, 1), 0), (5, 40), (1,)), scores,
        np.argmax(scores, axis=1), float32, int64, (5,))
    cube = rng.standard_normal((3, 4, 5))
    add("argmin_all", lambda n, o, x: arg_kernel(n, "min", o, x, IndexMap((20, 5, 1), 0), (3, 4, 5), (0, 1, 2)), cube,
        np.argmin(cube).reshape(()), float64, int64, ())
    flags = rng.random((6, 3)) > 0.6
    add("argmax_bool", lambda n, o, x: arg_kernel(n, "max", o, x, IndexMap((3, 1), 0), (6, 3), (0,)), flags,
        np.argmax(flags, axis=0), bool_, int64, (3,))
    small = rng.integers(-5, 5, (4, 6)).astype(np.int32)
    add("argmin_ints", lambda n, o, x: arg_kernel(n, "min", o, x, IndexMap((6, 1), 0), (4, 6), (1,)), small,
        np.argmin(small, axis=1), int32, int64, (4,))
    return steps, inputs, wants


def _program():
    rng = np.random.default_rng(5)
    seed, offset = Buffer("seed", int64, ()), Buffer("offset", int64, ())
    rand_steps, wants = _rand_cases(seed, offset)
    copy_steps, inputs, copy_wants = _copy_cases(rng)
    mm_steps, mm_inputs, mm_wants = _matmul_cases(rng)
    sc_steps, sc_inputs, sc_wants = _scatter_cases(rng)
    acc_steps, acc_inputs, acc_wants = _accumulate_cases(rng)
    perm_steps, perm_wants = _perm_cases(seed, offset)
    scan_steps, scan_inputs, scan_wants = _scan_cases(rng)
    inputs = {seed: np.int64(SEED), offset: np.int64(OFFSET), **inputs, **mm_inputs, **sc_inputs, **acc_inputs,
              **scan_inputs}
    wants = {**wants, **copy_wants, **mm_wants, **sc_wants, **acc_wants, **perm_wants, **scan_wants}
    program = Program("device_steps", tuple(rand_steps + copy_steps + mm_steps + sc_steps + acc_steps + perm_steps
                                            + scan_steps), tuple(inputs), tuple(wants))
    return program, [inputs[b] for b in program.inputs], wants


PROGRAM, INPUTS, WANTS = _program()


def test_device_steps_match_numpy_on_the_emulator():
    if not cuda_emulator.available():
        pytest.skip("g++ not found")
    emulated = cuda_emulator.EmulatedProgram(PROGRAM)
    forward = emulated(*INPUTS)
    backward = emulated(*INPUTS, reverse=True, max_blocks=1)
    for buf, got, again in zip(PROGRAM.outputs, forward, backward):
        want = WANTS[buf]
        np.testing.assert_array_equal(got, again, err_msg=buf.name)
        if buf.name.startswith("rand_"):                                    # libm's last bit aside
            tol = {"float64": 1e-14, "float32": 1e-6}.get(buf.dtype.name, 1e-2)
            np.testing.assert_allclose(got.astype(np.float64), want.astype(np.float64), rtol=tol, atol=tol,
                                       err_msg=buf.name)
        elif buf.dtype is float32 and buf.name.startswith("mm"):
            np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-5, err_msg=buf.name)
        elif buf.name.startswith("mmh"):                # float32 sums rounded once: equal but at a boundary
            ulp = 2.0 ** (-7 if buf.dtype is bfloat16 else -10)
            np.testing.assert_allclose(got.astype(np.float32), want.astype(np.float32), rtol=ulp, atol=ulp,
                                       err_msg=buf.name)
        elif buf.name.startswith(("cumsum", "arg", "acc", "perm", "imm")):
            np.testing.assert_array_equal(got, want, err_msg=buf.name)         # in order: numpy's rounding
        else:
            np.testing.assert_allclose(got, want, rtol=1e-13, atol=1e-13, err_msg=buf.name)


def test_rand_reads_the_state_from_memory():
    """One kernel serves every call: the seed and offset are arguments, not literals."""
    text = render_program(Program("r", PROGRAM.steps[:1], PROGRAM.inputs[:2], PROGRAM.outputs[:1])).source
    assert str(SEED) not in text and str(OFFSET) not in text


def test_matmul_spec_rejects_reads_outside_its_buffers():
    a, b = Buffer("a", float32, (100,)), Buffer("b", float32, (64,))
    out = Buffer("o", float32, (8, 8))
    MatmulSpec("ok", a, b, out, 8, 8, 8, lda=12, a_offset=4)                 # 4 + 7 * 12 + 8 = 96 elements
    with pytest.raises(IndexError, match="needs 104"):
        MatmulSpec("far", a, b, out, 8, 8, 8, lda=12, a_offset=12)
    with pytest.raises(TypeError, match="float32 or float64"):
        MatmulSpec("mixed", a, Buffer("b64", float64, (64,)), out, 8, 8, 8)


def test_every_step_compiles_with_nvcc(tmp_path):
    nvcc_compile(render_program(PROGRAM), tmp_path, "device_steps")
