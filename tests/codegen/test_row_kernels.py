"""Row-wise multi-stage kernels (softmax, log_softmax, layer norm, cross-entropy) against numpy.

The statistics stages (SoftmaxStats, Moments) take one pass over memory in L1-sized blocks;
the row lengths below cover one partial block, exact blocks and blocks plus a tail.
"""
from __future__ import annotations

import numpy as np
import pytest

from codegen.kernel import Arg, Buffer, CheckedIndex, Const, IndexMap, Load, Op, Var
from codegen.scalar import op
from codegen.templates import BLOCK, Moments, SoftmaxStats, reduction_kernel
from tracetorch.dtypes import float32, float64, int64

COLS = [1, 7, BLOCK, 2 * BLOCK + 77]


def tol(dt):
    return dict(rtol=1e-12, atol=1e-13) if dt is float64 else dict(rtol=2e-5, atol=1e-6)


def softmax_kernel(x, out, logout, shape, dims):
    dt = x.dtype
    X, m, s = Arg("x", dt), Var("m", dt), Var("s", dt)
    shifted = op("sub", X, m)
    return reduction_kernel("softmax", shape, dims, {"x": (x, IndexMap.contiguous(shape))},
                            [SoftmaxStats("m", "s", X)],
                            elem_outputs=[(out, op("div", op("exp", shifted), s)),
                                          (logout, op("sub", shifted, op("log", s)))])


def np_softmax(x, axis):
    with np.errstate(invalid="ignore"):
        e = np.exp(x - x.max(axis=axis, keepdims=True))
        return e / e.sum(axis=axis, keepdims=True)


@pytest.mark.parametrize("dt", [float32, float64], ids=lambda d: d.name)
@pytest.mark.parametrize("cols", COLS)
def test_softmax_and_log_softmax(run, dt, cols):
    rows = 5
    x_np = (np.random.default_rng(cols).standard_normal((rows, cols)) * 4).astype(dt.np)
    x, y, ly = Buffer("x", dt, (rows, cols)), Buffer("y", dt, (rows, cols)), Buffer("ly", dt, (rows, cols))
    got = run([softmax_kernel(x, y, ly, (rows, cols), (1,))], {x: x_np}, [y, ly])
    want = np_softmax(x_np.astype(np.float64), 1)
    np.testing.assert_allclose(got["y"], want, **tol(dt))
    np.testing.assert_allclose(got["ly"], np.log(want), **tol(dt))


def test_softmax_with_masked_blocks_and_nan_rows(run):
    """Causal-mask style -inf (a whole first block of -inf), an all -inf row and a NaN row."""
    rows, cols = 4, BLOCK + 100
    x_np = np.random.default_rng(0).standard_normal((rows, cols)).astype(np.float32)
    x_np[0, :BLOCK + 10] = -np.inf
    x_np[1, ::2] = -np.inf
    x_np[2, :] = -np.inf
    x_np[3, 5] = np.nan
    x, y, ly = (Buffer(n, float32, (rows, cols)) for n in ("x", "y", "ly"))
    got = run([softmax_kernel(x, y, ly, (rows, cols), (1,))], {x: x_np}, [y, ly])
    want = np_softmax(x_np.astype(np.float64), 1)
    np.testing.assert_allclose(got["y"], want, rtol=2e-5, atol=1e-7, equal_nan=True)
    assert np.isnan(got["y"][2]).all() and np.isnan(got["y"][3]).all()


def test_softmax_over_several_dims_uses_two_passes(run):
    shape = (3, 4, 5)
    x_np = np.random.default_rng(1).standard_normal(shape).astype(np.float64)
    x, y, ly = (Buffer(n, float64, shape) for n in ("x", "y", "ly"))
    got = run([softmax_kernel(x, y, ly, shape, (0, 2))], {x: x_np}, [y, ly])
    np.testing.assert_allclose(got["y"], np_softmax(x_np, (0, 2)), rtol=1e-12)


@pytest.mark.parametrize("dt", [float32, float64], ids=lambda d: d.name)
@pytest.mark.parametrize("cols", COLS)
def test_layer_norm(run, dt, cols):
    rows, eps = 6, 1e-5
    rng = np.random.default_rng(cols + 1)
    x_np = (rng.standard_normal((rows, cols)) * 3 + 100).astype(dt.np)   # large mean: cancellation check
    w_np, b_np = rng.standard_normal(cols).astype(dt.np), rng.standard_normal(cols).astype(dt.np)
    shape = (rows, cols)
    x, w, b = Buffer("x", dt, shape), Buffer("w", dt, (cols,)), Buffer("b", dt, (cols,))
    y, mean_out, rstd_out = Buffer("y", dt, shape), Buffer("mean", dt, (rows, 1)), Buffer("rstd", dt, (rows, 1))
    X, mean, var = Arg("x", dt), Var("mean", dt), Var("var", dt)
    rstd = op("rsqrt", op("add", var, eps))
    normed = op("mul", op("sub", X, mean), rstd)
    k = reduction_kernel("layer_norm", shape, (1,),
                         {"x": (x, IndexMap.contiguous(shape)), "w": (w, IndexMap.broadcast((cols,), shape)),
                          "b": (b, IndexMap.broadcast((cols,), shape))},
                         [Moments("mean", "var", X)],
                         row_outputs=[(mean_out, mean), (rstd_out, rstd)],
                         elem_outputs=[(y, op("add", op("mul", normed, Arg("w", dt)), Arg("b", dt)))])
    got = run([k], {x: x_np, w: w_np, b: b_np}, [y, mean_out, rstd_out])
    x64 = x_np.astype(np.float64)
    mu = x64.mean(1, keepdims=True)
    r = 1 / np.sqrt(x64.var(1, keepdims=True) + eps)
    np.testing.assert_allclose(got["mean"], mu, **tol(dt))
    np.testing.assert_allclose(got["rstd"], r, rtol=1e-10 if dt is float64 else 1e-4)
    np.testing.assert_allclose(got["y"], (x64 - mu) * r * w_np + b_np,
                               rtol=1e-9 if dt is float64 else 1e-4, atol=1e-9 if dt is float64 else 1e-4)


def test_cross_entropy_rows_with_target_gather(run):
    """loss[i] = logsumexp(x[i]) - x[i, target[i]]: the statistics stage plus a bounds-checked gather."""
    rows, classes = 9, 1000
    rng = np.random.default_rng(2)
    x_np = (rng.standard_normal((rows, classes)) * 5).astype(np.float32)
    t_np = rng.integers(-classes, classes, rows)          # negative targets wrap, like PyTorch indexing
    x, t, loss = Buffer("x", float32, (rows, classes)), Buffer("t", int64, (rows,)), Buffer("loss", float32, (rows,))
    def target_logit(at):       # x[row, target[row]]: a data-dependent index, bounds-checked
        row = at[0]
        col = CheckedIndex(Load(t, row), classes, "target")
        return Op("add", (Op("mul", (row, Const(classes, int64)), int64), col), int64)

    m, s = Var("m", float32), Var("s", float32)
    k = reduction_kernel("xent", (rows, classes), (1,),
                         {"x": (x, IndexMap.contiguous((rows, classes))), "xt": (x, target_logit)},
                         [SoftmaxStats("m", "s", Arg("x", float32))],
                         row_outputs=[(loss, op("sub", op("add", m, op("log", s)), Arg("xt", float32)))])
    got = run([k], {x: x_np, t: t_np}, [loss])["loss"]
    x64 = x_np.astype(np.float64)
    lse = np.log(np.exp(x64 - x64.max(1, keepdims=True)).sum(1)) + x64.max(1)
    np.testing.assert_allclose(got, lse - x64[np.arange(rows), t_np], rtol=1e-5, atol=1e-5)

