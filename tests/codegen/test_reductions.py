"""Reduction kernels against numpy: sum/max/min/prod over any dims, keepdim layouts,
elementwise prologue and epilogue, empty and size-1 dims, integer accumulation."""
from __future__ import annotations

import math

import numpy as np
import pytest

from codegen.kernel import Arg, Buffer, IndexMap, Var
from codegen.scalar import op
from codegen.templates import Reduction, reduction_kernel
from tracetorch.dtypes import float32, float64, int32, int64

NUMPY = {"add": np.sum, "max": np.max, "min": np.min, "mul": np.prod}


def tol(dt):
    return dict(rtol=1e-12, atol=1e-12) if dt is float64 else dict(rtol=1e-5, atol=1e-5)


def reduce_program(name, x_np, dt, dims, combine, keepdim=False):
    shape = x_np.shape
    x = Buffer("x", dt, shape)
    kept = tuple(1 if d in dims else s for d, s in enumerate(shape)) if keepdim else \
        tuple(s for d, s in enumerate(shape) if d not in dims)
    out = Buffer("out", dt, kept)
    k = reduction_kernel(name, shape, dims, {"x": (x, IndexMap.contiguous(shape))},
                         [Reduction("acc", combine, Arg("x", dt))], row_outputs=[(out, Var("acc", dt))])
    return k, x, out


@pytest.mark.parametrize("dt", [float32, float64], ids=lambda d: d.name)
@pytest.mark.parametrize("combine", ["add", "max", "min", "mul"])
@pytest.mark.parametrize("shape,dims", [((37,), (0,)), ((5, 33), (1,)), ((5, 33), (0,)), ((4, 3, 6), (0, 2)),
                                        ((4, 3, 6), (0, 1, 2)), ((3, 1, 5), (1,)), ((1,), (0,)),
                                        ((2, 700), (1,))], ids=str)
def test_reduce_matches_numpy(run, dt, combine, shape, dims):
    rng = np.random.default_rng(0)
    x_np = (rng.uniform(0.5, 1.5, shape) if combine == "mul" else rng.standard_normal(shape)).astype(dt.np)
    k, x, out = reduce_program("r", x_np, dt, dims, combine, keepdim=(combine == "max"))
    got = run([k], {x: x_np}, [out])["out"]
    want = NUMPY[combine](x_np, axis=dims, keepdims=(combine == "max"))
    assert got.shape == want.shape
    np.testing.assert_allclose(got, want, **tol(dt))


def test_max_propagates_nan(run):
    x_np = np.array([[1.0, np.nan, 3.0], [1.0, 2.0, 3.0]], np.float32)
    k, x, out = reduce_program("nanmax", x_np, float32, (1,), "max")
    got = run([k], {x: x_np}, [out])["out"]
    assert np.isnan(got[0]) and got[1] == 3.0


def test_empty_reduced_dim_gives_identity(run):
    x_np = np.zeros((3, 0), np.float32)
    k, x, out = reduce_program("empty", x_np, float32, (1,), "add")
    np.testing.assert_array_equal(run([k], {x: x_np}, [out])["out"], np.zeros(3, np.float32))


def test_prologue_and_epilogue(run):
    """out[i] = sqrt(sum_j (x[i,j] - c[j])^2) / n + bias[i], x read through a transposed map."""
    rng = np.random.default_rng(1)
    rows, cols = 6, 129
    base = rng.standard_normal((cols, rows)).astype(np.float32)   # x = base.T
    c_np = rng.standard_normal(cols).astype(np.float32)
    b_np = rng.standard_normal(rows).astype(np.float32)
    x, c, b = Buffer("x", float32, (cols, rows)), Buffer("c", float32, (cols,)), Buffer("b", float32, (rows, 1))
    out = Buffer("out", float32, (rows, 1))
    d = op("sub", Arg("x", float32), Arg("c", float32))
    inputs = {"x": (x, IndexMap.contiguous((cols, rows)).permute((1, 0))),
              "c": (c, IndexMap.broadcast((cols,), (rows, cols))),
              "b": (b, IndexMap.broadcast((rows, 1), (rows, cols)))}
    epilogue = op("add", op("div", op("sqrt", Var("acc", float32)), float(cols)), Arg("b", float32))
    k = reduction_kernel("norm", (rows, cols), (1,), inputs, [Reduction("acc", "add", op("mul", d, d))],
                         row_outputs=[(out, epilogue)])
    got = run([k], {x: base, c: c_np, b: b_np.reshape(rows, 1)}, [out])["out"]
    want = np.sqrt(((base.T - c_np) ** 2).sum(1)) / cols + b_np
    np.testing.assert_allclose(got.ravel(), want, rtol=1e-5)


def test_row_output_must_not_vary_along_reduced_dims():
    x, out = Buffer("x", float32, (3, 4)), Buffer("out", float32, (3,))
    with pytest.raises(ValueError, match="varies along the reduced dims"):
        reduction_kernel("bad", (3, 4), (1,), {"x": (x, IndexMap.contiguous((3, 4)))},
                         [Reduction("acc", "add", Arg("x", float32))],
                         row_outputs=[(out, op("add", Var("acc", float32), Arg("x", float32)))])


def test_integer_sum_accumulates_in_int64(run):
    x_np = np.full((4, 1000), 2 ** 30, np.int32)
    x, out = Buffer("x", int32, x_np.shape), Buffer("out", int64, (4,))
    k = reduction_kernel("isum", x_np.shape, (1,), {"x": (x, IndexMap.contiguous(x_np.shape))},
                         [Reduction("acc", "add", op("cast", Arg("x", int32), dtype=int64))],
                         row_outputs=[(out, Var("acc", int64))])
    np.testing.assert_array_equal(run([k], {x: x_np}, [out])["out"], x_np.sum(1, dtype=np.int64))


def test_float32_sum_is_accurate_for_long_rows(run):
    """Reassociated (vectorized) sums keep many partial sums: far better than a sequential float32 loop."""
    n = 1 << 20
    x_np = np.random.default_rng(4).uniform(0, 1, n).astype(np.float32)
    k, x, out = reduce_program("longsum", x_np, float32, (0,), "add")
    got = float(run([k], {x: x_np}, [out])["out"])
    exact = math.fsum(x_np.astype(np.float64))
    assert abs(got - exact) / exact < 1e-5


def test_column_reduction_accumulates_in_the_output_row(run):
    """Reducing the outer dim of (rows, 3, cols): the output row is the accumulator (no strided loads)."""
    from codegen.kernel import Reduce, walk_stmts
    rng = np.random.default_rng(5)
    shape = (300, 3, 40)
    x_np = rng.standard_normal(shape).astype(np.float32)
    x_np[7, 1, 5] = np.nan
    x = Buffer("x", float32, shape)
    mean, twice, top = (Buffer(n, float32, (3, 40)) for n in ("mean", "twice", "top"))
    X = Arg("x", float32)
    full = IndexMap.contiguous(shape)
    k_sum = reduction_kernel("colsum", shape, (0,), {"x": (x, full)}, [Reduction("acc", "add", X)],
                             row_outputs=[(mean, op("div", Var("acc", float32), 300.0)),
                                          (twice, op("mul", Var("acc", float32), 2.0))])
    k_max = reduction_kernel("colmax", shape, (0,), {"x": (x, full)}, [Reduction("m", "max", op("abs", X))],
                             row_outputs=[(top, Var("m", float32))])
    assert not any(isinstance(s, Reduce) for s in walk_stmts(k_sum.outer))
    assert k_sum.outer.extent == 1 and k_sum.outer.body[0].extent == 120     # kept dims coalesced
    got = run([k_sum, k_max], {x: x_np}, [mean, twice, top])
    np.testing.assert_allclose(got["mean"], x_np.mean(0), rtol=1e-5, atol=1e-6, equal_nan=True)
    np.testing.assert_allclose(got["twice"], 2 * x_np.sum(0), rtol=1e-5, atol=1e-5, equal_nan=True)
    np.testing.assert_array_equal(got["top"], np.abs(x_np).max(0))


@pytest.mark.parametrize("dt", [float32, float64], ids=lambda d: d.name)
@pytest.mark.parametrize("combine", ["add", "max"])
def test_long_column_reduction_splits_into_partial_sums_per_row_chunk(run, dt, combine):
    """A bias-gradient-like sum over 1024 rows with no kept outer dim: given scratch memory, one kernel of
    8 row chunks (what threads split) writes partials, a second combines them and stores the outputs."""
    from codegen.templates import PARTIAL_CHUNKS
    rng = np.random.default_rng(6)
    cols = (1 << 19) // (1024 * dt.itemsize) + 8          # just past the size that is split
    shape = (4, 256, cols)
    x_np = rng.standard_normal(shape).astype(dt.np)
    x = Buffer("x", dt, shape)
    total, half = Buffer("total", dt, (cols,)), Buffer("half", dt, (cols,))
    made = []

    def scratch(shape, dtype):
        made.append(Buffer(f"scratch{len(made)}", dtype, shape))
        return made[-1]

    kernels = reduction_kernel("colsum", shape, (0, 1), {"x": (x, IndexMap.contiguous(shape))},
                               [Reduction("acc", combine, Arg("x", dt))],
                               row_outputs=[(total, Var("acc", dt)), (half, op("mul", Var("acc", dt), 0.5))],
                               scratch=scratch)
    partials, final = kernels
    assert [b.shape for b in made] == [(PARTIAL_CHUNKS, cols)]
    assert partials.outer.extent == PARTIAL_CHUNKS and final.outer.extent == 1
    got = run(list(kernels), {x: x_np}, [total, half])
    want = NUMPY[combine](x_np.astype(np.float64), axis=(0, 1))
    np.testing.assert_allclose(got["total"], want, **tol(dt))
    np.testing.assert_allclose(got["half"], want * 0.5, **tol(dt))

    small = reduction_kernel("small", (1020, cols), (0,), {"x": (x, IndexMap.contiguous((1020, cols)))},
                             [Reduction("acc", "add", Arg("x", dt))], row_outputs=[(total, Var("acc", dt))],
                             scratch=scratch)     # 1020 rows do not split into 8 equal chunks: one pass
    assert not isinstance(small, tuple) and len(made) == 1


@pytest.mark.parametrize("dt", [float32, float64], ids=lambda d: d.name)
@pytest.mark.parametrize("rows, cols, blocks", [(300, 40, 1), (1024, 192, 3)], ids=["small", "blocks"])
def test_statistics_over_rows_run_column_wise_given_scratch(run, dt, rows, cols, blocks):
    """Batch-norm-like: mean and variance over the rows of [rows, cols] (Moments), a second sum using them,
    row outputs and an elementwise output. Given scratch memory: one kernel updating scratch rows row
    after row, the column-invariant rsqrt computed once per column, a large matrix cut into blocks of
    columns (what threads share); the same values as without."""
    from codegen.kernel import Loop, Op, Reduce, walk_exprs, walk_stmts
    from codegen.templates import Moments
    rng = np.random.default_rng(8)
    shape = (rows, cols)
    x_np, g_np = (rng.standard_normal(shape).astype(dt.np) * 2 + 1 for _ in range(2))
    x, g = Buffer("x", dt, shape), Buffer("g", dt, shape)
    mean, var, dot = (Buffer(n, dt, (cols,)) for n in ("mean", "var", "dot"))
    y = Buffer("y", dt, shape)
    X, G, M, V, S = Arg("x", dt), Arg("g", dt), Var("m", dt), Var("v", dt), Var("s", dt)
    inv = op("rsqrt", op("add", V, 1e-5))
    full = IndexMap.contiguous(shape)
    made = []

    def scratch(shape, dtype):
        made.append(Buffer(f"scratch{len(made)}", dtype, shape))
        return made[-1]

    def kernel(name, scratch):
        return reduction_kernel(name, shape, (0,), {"x": (x, full), "g": (g, full)},
                                [Moments("m", "v", X), Reduction("s", "add", op("mul", G, op("mul", op("sub", X, M), inv)))],
                                row_outputs=[(mean, M), (var, V), (dot, S)],
                                elem_outputs=[(y, op("sub", op("mul", op("sub", X, M), inv), op("div", S, float(rows))))],
                                scratch=scratch)

    columns, general = kernel("columns", scratch), kernel("general", None)
    assert made and columns.outer.extent == blocks and general.outer.extent == cols
    assert not any(isinstance(s, Reduce) for s in walk_stmts(columns.outer))
    for loop in walk_stmts(columns.outer):
        if isinstance(loop, Loop) and loop.var.startswith("r"):
            assert "rsqrt" not in {e.op for e in walk_exprs(loop) if isinstance(e, Op)}
    x64, g64 = x_np.astype(np.float64), g_np.astype(np.float64)
    m64, v64 = x64.mean(0), x64.var(0)
    norm = (x64 - m64) / np.sqrt(v64 + 1e-5)
    want = {"mean": m64, "var": v64, "dot": (g64 * norm).sum(0), "y": norm - (g64 * norm).sum(0) / rows}
    close = tol(dt) if dt is float64 else dict(rtol=1e-4, atol=3e-3)   # float32 sums of many terms
    for k in (columns, general):
        got = run([k], {x: x_np, g: g_np}, [mean, var, dot, y])
        for name, w in want.items():
            np.testing.assert_allclose(got[name], w, **close, err_msg=f"{k.name} {name}")


def test_column_blocks_are_whole_lines_that_divide_the_columns():
    from codegen.templates import _column_blocks
    assert _column_blocks(100, 100, 4) == 1                  # small: one block
    assert _column_blocks(512, 1024, 4) == 8 and _column_blocks(192, 1024, 4) == 3
    assert _column_blocks(100, 2000, 4) == 1                 # no divisor leaves 64 columns a block
    assert _column_blocks(509, 4096, 4) == 1                 # a prime
