"""The CUDA C renderer: every registry elementwise op and every template kernel kind, rendered to CUDA C,
compiled with nvcc for sm_90 (one module per batch), run against numpy.

Without a GPU the same modules run on the CPU through `cuda_emulator` (g++, block threads as fibers,
both thread orders); with one (`pytest -m cuda`) they run through `runtime.cuda_engine` with poisoned
outputs. Text checks pin the GPU mapping: grid-stride loops, vector loads, team reductions with warp
shuffles, the online softmax / Welford stages, the error flag of checked gathers."""
from __future__ import annotations

import math
import re
import shutil

import numpy as np
import pytest

import tracetorch  # noqa: F401  (fills the registry)
from codegen.cuda_c import plan_kernel, render_kernel, render_program
from codegen.cuda_prelude import PRELUDE
from codegen.kernel import (Accumulator, Arg, CheckedIndex, Const, IndexMap, Kernel, Load, Loop, Op, Program,
                            Reduce, Store, Var)
from codegen.scalar import lower, op
from codegen.templates import BLOCK, FLAT_INDEX, Moments, Reduction, SoftmaxStats, elementwise_kernel, \
    reduction_kernel
from tracetorch.dtypes import bfloat16, bool_, float16, float32, float64, int8, int32, int64, round_bfloat16
from tracetorch.ops.registry import REGISTRY

import cuda_emulator
from cuda_testing import Batch, NvccJob, cuda_runner, run_batch
from test_registry_lowering import CASES, N, _case_id, _operands

RUNNERS = ["emulator", pytest.param("gpu", marks=pytest.mark.cuda)]


# ---------------------------------------------------------------- batches
def registry_batch() -> Batch:
    batch = Batch("cuda_registry")
    for case in CASES:
        name, dtypes, attrs, out_dt = case
        cid = _case_id(case).replace("-", "_")
        xs = _operands(name, dtypes)
        bufs = [batch.input(cid, f"x{i}", dt, x) for i, (dt, x) in enumerate(zip(dtypes, xs))]
        args = [Arg(f"x{i}", dt) for i, dt in enumerate(dtypes)]
        out = batch.buffer(cid, "out", out_dt, (N,))
        batch.add(elementwise_kernel(cid, (N,), {f"x{i}": (b, IndexMap((1,))) for i, b in enumerate(bufs)},
                                     [(out, lower(REGISTRY[name].lowering, args, out_dt))]))
        with np.errstate(all="ignore"):
            want = np.asarray(REGISTRY[name].eager(*xs, **attrs))
        rtol = {float64: 1e-12, float32: 2e-6}.get(out_dt, 1e-2)
        atol = {float64: 1e-15, float32: 1e-7}.get(out_dt, 1e-3)
        batch.expect(cid, out, want, rtol=rtol, atol=atol)
    return batch


def _tol(dt, f32=(2e-5, 1e-6)):
    return dict(rtol=1e-12, atol=1e-13) if dt is float64 else dict(rtol=f32[0], atol=f32[1])


def _np_softmax(x, axis):
    with np.errstate(invalid="ignore"):
        e = np.exp(x - x.max(axis=axis, keepdims=True))
        return e / e.sum(axis=axis, keepdims=True)


def template_batch() -> Batch:
    """Every template kernel kind of tests/codegen (elementwise, reductions, rows, gathers)."""
    b = Batch("cuda_templates")
    rng = np.random.default_rng(0)

    # elementwise: two outputs, every rank, empty and 0-d shapes
    for dt in (float32, float64):
        for shape in [(0,), (1,), (7,), (33,), (3, 5), (4, 1, 17), (2, 3, 4, 5), ()]:
            case = f"chain_{dt.name}_{'x'.join(map(str, shape)) or 'scalar'}"
            a_np, b_np = (rng.standard_normal(shape).astype(dt.np) for _ in range(2))
            a, bb = b.input(case, "a", dt, a_np), b.input(case, "b", dt, b_np)
            y, z = b.buffer(case, "y", dt, shape), b.buffer(case, "z", dt, shape)
            A, B = Arg("a", dt), Arg("b", dt)
            ident = IndexMap.contiguous(shape)
            b.add(elementwise_kernel(case, shape, {"a": (a, ident), "b": (bb, ident)},
                                     [(y, op("mul", op("tanh", op("add", A, B)), op("exp", op("neg", op("abs", A))))),
                                      (z, op("where", op("gt", A, B), op("sub", A, 1.5), op("mul", B, B)))]))
            b.expect(case, y, np.tanh(a_np + b_np) * np.exp(-np.abs(a_np)), **_tol(dt, (2e-6, 1e-6)))
            b.expect(case, z, np.where(a_np > b_np, a_np - 1.5, b_np * b_np), **_tol(dt, (2e-6, 1e-6)))

    # views: broadcast (stride 0), permute, strided slice with an offset
    for dt in (float32, float64):
        case = f"views_{dt.name}"
        shape = (9, 13)
        m = b.input(case, "m", dt, rng.standard_normal(shape))
        row = b.input(case, "row", dt, rng.standard_normal(13))
        col = b.input(case, "col", dt, rng.standard_normal((9, 1)))
        t = b.input(case, "t", dt, rng.standard_normal((13, 9)))
        s = b.input(case, "s", dt, rng.standard_normal((20, 30)))
        maps = {"m": (m, IndexMap.contiguous(shape)), "row": (row, IndexMap.broadcast((13,), shape)),
                "col": (col, IndexMap.broadcast((9, 1), shape)),
                "t": (t, IndexMap.contiguous((13, 9)).permute((1, 0))),
                "s": (s, IndexMap.contiguous((20, 30)).slice((2, 1), (2, 2)))}
        X = {k: Arg(k, dt) for k in maps}
        out = b.buffer(case, "out", dt, shape)
        b.add(elementwise_kernel(case, shape, maps, [(out, op("add", op("mul", X["m"], X["row"]),
                                                                 op("sub", op("mul", X["col"], X["t"]), X["s"])))]))
        v = {k: b.inputs[buf] for k, (buf, _) in maps.items()}
        b.expect(case, out, v["m"] * v["row"] + (v["col"] * v["t"].T - v["s"][2:20:2, 1:27:2]), **_tol(dt))

    # a 0-d input broadcast over a vector
    case = "axpb"
    xs = np.linspace(-3, 3, 1001).astype(np.float32)
    x, a = b.input(case, "x", float32, xs), b.input(case, "a", float32, np.float32(1.5))
    y = b.buffer(case, "y", float32, (1001,))
    b.add(elementwise_kernel(case, (1001,), {"x": (x, IndexMap((1,))), "a": (a, IndexMap((0,)))},
                             [(y, op("add", op("mul", Arg("x", float32), Arg("a", float32)), 0.25))]))
    b.expect(case, y, xs * np.float32(1.5) + np.float32(0.25), rtol=1e-7)

    # narrow float storage: float16 buffers, bfloat16 rounding, widening back
    case = "narrow"
    xs = (rng.standard_normal(257) * 100).astype(np.float32)
    x = b.input(case, "x", float32, xs)
    h, bf = b.buffer(case, "h", float16, (257,)), b.buffer(case, "bf", bfloat16, (257,))
    back = b.buffer(case, "back", float32, (257,))
    X = Arg("x", float32)
    b.add(elementwise_kernel(case + "_1", (257,), {"x": (x, IndexMap((1,)))},
                             [(h, lower("cast(x0)", [X], float16)), (bf, lower("cast(x0)", [X], bfloat16))]),
          elementwise_kernel(case + "_2", (257,), {"h": (h, IndexMap((1,)))},
                             [(back, lower("cast(x0)", [op("mul", Arg("h", float16), 2.0)], float32))]))
    b.expect(case, h, xs.astype(np.float16), exact=True)
    b.expect(case, bf, round_bfloat16(xs), exact=True)
    b.expect(case, back, xs.astype(np.float16).astype(np.float32) * 2, rtol=1e-3)

    # a float16/bfloat16 chain rounds every op's result, as eager (it rounded only at the store)
    for dt in (float16, bfloat16):
        case = f"half_chain_{dt.name}"
        xs = (rng.standard_normal(257) * 3).astype(np.float32)
        x, y = b.input(case, "x", float32, xs), b.buffer(case, "y", dt, (257,))
        H = lower("cast(x0)", [Arg("x", float32)], dt)
        b.add(elementwise_kernel(case, (257,), {"x": (x, IndexMap((1,)))},
                                 [(y, op("add", op("mul", H, 1.1), 0.3))]))

        def rnd(a, dt=dt):
            return a.astype(np.float16).astype(np.float32) if dt is float16 else round_bfloat16(a)
        want = rnd(rnd(rnd(xs) * np.float32(1.1)) + np.float32(0.3))
        b.expect(case, y, want.astype(dt.np), exact=True)

    case = "sqrt_power"                # x ** 0.5 is sqrt (numpy, PyTorch): -inf ** 0.5 is NaN, not inf
    xs = np.array([-np.inf, -0.0, 0.0, 4.0, -1.0, 2.0, np.inf, np.nan], np.float32)
    x, y = b.input(case, "x", float32, xs), b.buffer(case, "y", float32, (8,))
    b.add(elementwise_kernel(case, (8,), {"x": (x, IndexMap((1,)))}, [(y, op("pow", Arg("x", float32), 0.5))]))
    with np.errstate(invalid="ignore"):
        b.expect(case, y, np.sqrt(xs), exact=True)

    # integer and bool arithmetic, several outputs
    case = "ints"
    ai = rng.integers(-100, 100, 129).astype(np.int32)
    mi = rng.random(129) < 0.3
    A, M = b.input(case, "a", int32, ai), b.input(case, "m", bool_, mi)
    oi, ob = b.buffer(case, "oi", int32, (129,)), b.buffer(case, "ob", bool_, (129,))
    b.add(elementwise_kernel(case, (129,), {"a": (A, IndexMap((1,))), "m": (M, IndexMap((1,)))},
                             [(oi, op("where", Arg("m", bool_), op("floordiv", Arg("a", int32), 7),
                                      op("mod", Arg("a", int32), -3))),
                              (ob, op("xor", Arg("m", bool_), op("gt", Arg("a", int32), 0)))]))
    b.expect(case, oi, np.where(mi, ai // 7, ai % -3))
    b.expect(case, ob, mi ^ (ai > 0))

    # values built from positions
    case = "positions"
    shape = (3, 1, 7)
    ar, mask = b.buffer(case, "ar", float32, shape), b.buffer(case, "mask", bool_, shape)
    b.add(elementwise_kernel(case, shape, {}, [(ar, op("add", op("mul", op("cast", FLAT_INDEX, dtype=float32), 0.5),
                                                          -1.0)),
                                               (mask, op("eq", op("mod", FLAT_INDEX, 3), 0))]))
    flat = np.arange(21).reshape(shape)
    b.expect(case, ar, (flat * 0.5 - 1).astype(np.float32), exact=True)
    b.expect(case, mask, flat % 3 == 0)

    # reductions over any dims (row teams of warps and blocks, one row per thread, column form)
    numpy_reduce = {"add": np.sum, "max": np.max, "min": np.min, "mul": np.prod}
    shapes = [((37,), (0,)), ((5, 33), (1,)), ((5, 33), (0,)), ((4, 3, 6), (0, 2)), ((4, 3, 6), (0, 1, 2)),
              ((3, 1, 5), (1,)), ((1,), (0,)), ((2, 700), (1,)), ((300, 40), (1,)), ((1000, 5), (1,)),
              ((4, 50, 6), (1,))]
    for dt in (float32, float64):
        for combine in ("add", "max", "min", "mul"):
            for shape, dims in shapes:
                case = f"reduce_{combine}_{dt.name}_{'x'.join(map(str, shape))}_{''.join(map(str, dims))}"
                x_np = (rng.uniform(0.5, 1.5, shape) if combine == "mul" else rng.standard_normal(shape)).astype(dt.np)
                keep = combine == "max"
                kept = tuple(1 if d in dims else s for d, s in enumerate(shape)) if keep else \
                    tuple(s for d, s in enumerate(shape) if d not in dims)
                x = b.input(case, "x", dt, x_np)
                out = b.buffer(case, "out", dt, kept)
                b.add(reduction_kernel(case, shape, dims, {"x": (x, IndexMap.contiguous(shape))},
                                       [Reduction("acc", combine, Arg("x", dt))], row_outputs=[(out, Var("acc", dt))]))
                b.expect(case, out, numpy_reduce[combine](x_np, axis=dims, keepdims=keep), **_tol(dt, (1e-5, 1e-5)))

    for combine, dt, fn in [("or", bool_, np.any), ("and", bool_, np.all), ("max", int32, np.max),
                            ("min", int8, np.min), ("mul", int64, np.prod)]:
        for shape in [(300, 40), (2, 700)]:
            case = f"reduce_{combine}_{dt.name}_{'x'.join(map(str, shape))}"
            if dt is bool_:
                x_np = rng.random(shape) < (0.97 if combine == "and" else 0.03)
            else:
                x_np = rng.integers(-3, 4, shape) if combine == "mul" else rng.integers(-100, 100, shape)
            x, out = b.input(case, "x", dt, x_np), b.buffer(case, "out", dt, (shape[0],))
            b.add(reduction_kernel(case, shape, (1,), {"x": (x, IndexMap.contiguous(shape))},
                                   [Reduction("acc", combine, Arg("x", dt))], row_outputs=[(out, Var("acc", dt))]))
            with np.errstate(over="ignore"):
                b.expect(case, out, fn(b.inputs[x], axis=1).astype(dt.np))

    case = "nanmax"
    x_np = np.array([[1.0, np.nan, 3.0], [1.0, 2.0, 3.0]], np.float32)
    x, out = b.input(case, "x", float32, x_np), b.buffer(case, "out", float32, (2,))
    b.add(reduction_kernel(case, (2, 3), (1,), {"x": (x, IndexMap.contiguous((2, 3)))},
                           [Reduction("acc", "max", Arg("x", float32))], row_outputs=[(out, Var("acc", float32))]))
    b.expect(case, out, np.array([np.nan, 3.0], np.float32), exact=True)

    case = "empty_rows"
    x, out = b.input(case, "x", float32, np.zeros((3, 0))), b.buffer(case, "out", float32, (3,))
    b.add(reduction_kernel(case, (3, 0), (1,), {"x": (x, IndexMap.contiguous((3, 0)))},
                           [Reduction("acc", "add", Arg("x", float32))], row_outputs=[(out, Var("acc", float32))]))
    b.expect(case, out, np.zeros(3, np.float32), exact=True)

    case = "prologue_epilogue"          # sqrt(sum_j (x.T[i,j] - c[j])^2) / n + bias[i]
    rows, cols = 6, 129
    base = rng.standard_normal((cols, rows)).astype(np.float32)
    c_np, bias_np = rng.standard_normal(cols).astype(np.float32), rng.standard_normal((rows, 1)).astype(np.float32)
    x, c = b.input(case, "x", float32, base), b.input(case, "c", float32, c_np)
    bias, out = b.input(case, "b", float32, bias_np), b.buffer(case, "out", float32, (rows, 1))
    d = op("sub", Arg("x", float32), Arg("c", float32))
    b.add(reduction_kernel(case, (rows, cols), (1,),
                           {"x": (x, IndexMap.contiguous((cols, rows)).permute((1, 0))),
                            "c": (c, IndexMap.broadcast((cols,), (rows, cols))),
                            "b": (bias, IndexMap.broadcast((rows, 1), (rows, cols)))},
                           [Reduction("acc", "add", op("mul", d, d))],
                           row_outputs=[(out, op("add", op("div", op("sqrt", Var("acc", float32)), float(cols)),
                                                 Arg("b", float32)))]))
    b.expect(case, out, (np.sqrt(((base.T - c_np) ** 2).sum(1)) / cols)[:, None] + bias_np, rtol=1e-5)

    case = "int_sum"
    x_np = np.full((4, 1000), 2 ** 30, np.int32)
    x, out = b.input(case, "x", int32, x_np), b.buffer(case, "out", int64, (4,))
    b.add(reduction_kernel(case, x_np.shape, (1,), {"x": (x, IndexMap.contiguous(x_np.shape))},
                           [Reduction("acc", "add", op("cast", Arg("x", int32), dtype=int64))],
                           row_outputs=[(out, Var("acc", int64))]))
    b.expect(case, out, x_np.sum(1, dtype=np.int64))

    case = "long_sum"
    x_np = rng.uniform(0, 1, 1 << 16).astype(np.float32)
    x, out = b.input(case, "x", float32, x_np), b.buffer(case, "out", float32, ())
    b.add(reduction_kernel(case, x_np.shape, (0,), {"x": (x, IndexMap((1,)))},
                           [Reduction("acc", "add", Arg("x", float32))], row_outputs=[(out, Var("acc", float32))]))
    b.expect(case, out, np.float32(math.fsum(x_np.astype(np.float64))), rtol=1e-5)

    case = "columns"                   # reducing the outer dim: the output row is the accumulator
    shape = (300, 3, 40)
    x_np = rng.standard_normal(shape).astype(np.float32)
    x_np[7, 1, 5] = np.nan
    x = b.input(case, "x", float32, x_np)
    mean, twice, top = (b.buffer(case, n, float32, (3, 40)) for n in ("mean", "twice", "top"))
    full = IndexMap.contiguous(shape)
    b.add(reduction_kernel(case + "_sum", shape, (0,), {"x": (x, full)}, [Reduction("acc", "add", Arg("x", float32))],
                           row_outputs=[(mean, op("div", Var("acc", float32), 300.0)),
                                        (twice, op("mul", Var("acc", float32), 2.0))]),
          reduction_kernel(case + "_max", shape, (0,), {"x": (x, full)},
                           [Reduction("m", "max", op("abs", Arg("x", float32)))],
                           row_outputs=[(top, Var("m", float32))]))
    b.expect(case, mean, x_np.mean(0), rtol=1e-5, atol=1e-6)
    b.expect(case, twice, 2 * x_np.sum(0), rtol=1e-5, atol=1e-5)
    b.expect(case, top, np.abs(x_np).max(0), exact=True)

    # row kernels: softmax and log_softmax, layer norm (one pass of statistics per row)
    for dt in (float32, float64):
        for rows, cols in [(5, 1), (5, 7), (5, BLOCK), (5, 2 * BLOCK + 77), (400, 50)]:
            case = f"softmax_{dt.name}_{rows}x{cols}"
            x_np = (rng.standard_normal((rows, cols)) * 4).astype(dt.np)
            _softmax_case(b, case, x_np, (1,))
            case = f"layer_norm_{dt.name}_{rows}x{cols}"
            _layer_norm_case(b, case, (rng.standard_normal((rows, cols)) * 3 + 100).astype(dt.np),
                             rng.standard_normal(cols).astype(dt.np), rng.standard_normal(cols).astype(dt.np))
    x_np = rng.standard_normal((4, BLOCK + 100)).astype(np.float32)
    x_np[0, :BLOCK + 10] = -np.inf
    x_np[1, ::2] = -np.inf
    x_np[2, :] = -np.inf
    x_np[3, 5] = np.nan
    _softmax_case(b, "softmax_masked", x_np, (1,), tol=dict(rtol=2e-5, atol=1e-7))
    _softmax_case(b, "softmax_two_dims", rng.standard_normal((3, 4, 5)), (0, 2))

    # cross-entropy: the statistics stage plus a bounds-checked gather of the target logit
    case = "cross_entropy"
    rows, classes = 9, 1000
    x_np = (rng.standard_normal((rows, classes)) * 5).astype(np.float32)
    t_np = rng.integers(-classes, classes, rows)
    x, t = b.input(case, "x", float32, x_np), b.input(case, "t", int64, t_np)
    loss = b.buffer(case, "loss", float32, (rows,))

    def target_logit(at):
        col = CheckedIndex(Load(t, at[0]), classes, "target")
        return Op("add", (Op("mul", (at[0], Const(classes, int64)), int64), col), int64)

    m, s = Var("m", float32), Var("s", float32)
    b.add(reduction_kernel(case, (rows, classes), (1,),
                           {"x": (x, IndexMap.contiguous((rows, classes))), "xt": (x, target_logit)},
                           [SoftmaxStats("m", "s", Arg("x", float32))],
                           row_outputs=[(loss, op("sub", op("add", m, op("log", s)), Arg("xt", float32)))]))
    x64 = x_np.astype(np.float64)
    lse = np.log(np.exp(x64 - x64.max(1, keepdims=True)).sum(1)) + x64.max(1)
    b.expect(case, loss, lse - x64[np.arange(rows), t_np], rtol=1e-5, atol=1e-5)

    case = "store_then_load"            # a later statement reads what an earlier one stored
    x_np = rng.standard_normal(1001).astype(np.float32)
    x, y, z = b.input(case, "x", float32, x_np), b.buffer(case, "y", float32, (1001,)), \
        b.buffer(case, "z", float32, (1001,))
    i = Var("i")
    b.add(Kernel(case, Loop("i", 1001, (Store(y, i, op("mul", Load(x, i), 2.0)),
                                        Store(z, i, op("add", Load(y, i), 1.0))))))
    b.expect(case, y, x_np * 2, exact=True)
    b.expect(case, z, x_np * 2 + 1, exact=True)

    for rows, cols in [(3, 100), (300, 40)]:
        _barrier_case(b, f"barriers_{rows}x{cols}", rng.standard_normal((rows, cols)).astype(np.float32))
    error_kernels(b, "checked")             # the kernels of the error tests, with good inputs
    return b


def _barrier_case(b: Batch, case: str, x_np: np.ndarray) -> None:
    """A row kernel whose phases read what other threads of the team wrote (and overwrite what they
    read): it needs barriers, including at the back edge of a loop and after a store by one thread."""
    rows, cols = x_np.shape
    x = b.input(case, "x", float32, x_np)
    t, u, y = (b.buffer(case, n, float32, (rows, cols)) for n in ("t", "u", "y"))
    out = b.buffer(case, "out", float32, (rows,))
    r, j = Var("r"), Var("j")
    at = Op("add", (Op("mul", (r, Const(cols, int64)), int64), j), int64)
    mirror = Op("add", (Op("mul", (r, Const(cols, int64)), int64), Op("sub", (Const(cols - 1, int64), j), int64)),
                int64)
    it = Op("cast", (Var("it"),), float32)
    body = (
        Loop("j", cols, (Store(t, at, op("mul", Load(x, at), 2.0)),)),
        Loop("it", 3, (Loop("j", cols, (Store(u, at, op("add", Load(t, mirror), it)),)),
                       Loop("j", cols, (Store(t, at, op("mul", Load(u, at), 0.5)),)))),
        Accumulator("acc", Const(0.0, float32)),
        Loop("j", cols, (Reduce("acc", "add", Load(t, mirror)),)),
        Store(out, r, Var("acc", float32)),
        Loop("j", cols, (Store(y, at, op("add", Load(t, at), Load(out, r))),)),
    )
    b.add(Kernel(case, Loop("r", rows, body)))
    tt = x_np.astype(np.float64) * 2
    for step in range(3):
        uu = tt[:, ::-1] + step
        tt = uu * 0.5
    total = tt.sum(1)
    b.expect(case, t, tt, rtol=1e-6, atol=1e-6)
    b.expect(case, u, uu, rtol=1e-6, atol=1e-6)
    b.expect(case, out, total, rtol=1e-5, atol=1e-5)
    b.expect(case, y, tt + total[:, None], rtol=1e-5, atol=1e-5)


def _softmax_case(b: Batch, case: str, x_np: np.ndarray, dims, tol=None):
    dt = float64 if x_np.dtype == np.float64 else float32
    shape = x_np.shape
    x = b.input(case, "x", dt, x_np)
    y, ly = b.buffer(case, "y", dt, shape), b.buffer(case, "ly", dt, shape)
    X, m, s = Arg("x", dt), Var("m", dt), Var("s", dt)
    shifted = op("sub", X, m)
    b.add(reduction_kernel(case, shape, dims, {"x": (x, IndexMap.contiguous(shape))}, [SoftmaxStats("m", "s", X)],
                           elem_outputs=[(y, op("div", op("exp", shifted), s)),
                                         (ly, op("sub", shifted, op("log", s)))]))
    want = _np_softmax(x_np.astype(np.float64), dims)
    tol = tol or _tol(dt)
    b.expect(case, y, want, **tol)
    with np.errstate(divide="ignore"):
        b.expect(case, ly, np.log(want), **tol)


def _layer_norm_case(b: Batch, case: str, x_np, w_np, b_np, eps=1e-5):
    dt = float64 if x_np.dtype == np.float64 else float32
    rows, cols = shape = x_np.shape
    x, w, bias = b.input(case, "x", dt, x_np), b.input(case, "w", dt, w_np), b.input(case, "b", dt, b_np)
    y = b.buffer(case, "y", dt, shape)
    mean_out, rstd_out = b.buffer(case, "mean", dt, (rows, 1)), b.buffer(case, "rstd", dt, (rows, 1))
    X, mean, var = Arg("x", dt), Var("mean", dt), Var("var", dt)
    rstd = op("rsqrt", op("add", var, eps))
    normed = op("mul", op("sub", X, mean), rstd)
    b.add(reduction_kernel(case, shape, (1,),
                           {"x": (x, IndexMap.contiguous(shape)), "w": (w, IndexMap.broadcast((cols,), shape)),
                            "b": (bias, IndexMap.broadcast((cols,), shape))},
                           [Moments("mean", "var", X)], row_outputs=[(mean_out, mean), (rstd_out, rstd)],
                           elem_outputs=[(y, op("add", op("mul", normed, Arg("w", dt)), Arg("b", dt)))]))
    x64 = x_np.astype(np.float64)
    mu = x64.mean(1, keepdims=True)
    r = 1 / np.sqrt(x64.var(1, keepdims=True) + eps)
    f64 = dt is float64
    b.expect(case, mean_out, mu, **_tol(dt))
    b.expect(case, rstd_out, r, rtol=1e-10 if f64 else 1e-4)
    b.expect(case, y, (x64 - mu) * r * w_np + b_np, rtol=1e-9 if f64 else 1e-4, atol=1e-9 if f64 else 1e-4)


def error_kernels(b: Batch, case: str) -> None:
    """An embedding gather (checked index), integer floor division and integer power, with good inputs."""
    rows, vocab, dim = 6, 10, 33
    table_np = np.random.default_rng(5).standard_normal((vocab, dim)).astype(np.float32)
    table = b.input(case, "table", float32, table_np)
    idx = b.input(case, "idx", int64, np.array([0, 9, -1, -10, 3, 3]))
    emb = b.buffer(case, "emb", float32, (rows, dim))

    def gather(at):
        row = CheckedIndex(Load(idx, at[0]), vocab, "embedding index")
        return Op("add", (Op("mul", (row, Const(dim, int64)), int64), at[1]), int64)

    a_np = np.arange(-8, 9, dtype=np.int32)
    good = np.array([3, 2, 5, 1, 7, 2, 2, 9, 4, 1, 6, 3, 2, 8, 1, 3, 2], np.int32)
    a, d = b.input(case, "a", int32, a_np), b.input(case, "d", int32, good)
    md = b.input(case, "md", int32, -good)
    q, p = b.buffer(case, "q", int32, (17,)), b.buffer(case, "p", int32, (17,))
    r = b.buffer(case, "r", int32, (17,))
    ident = {"a": (a, IndexMap((1,))), "d": (d, IndexMap((1,))), "md": (md, IndexMap((1,)))}
    b.add(elementwise_kernel(case + "_embedding", (rows, dim), {"w": (table, gather)},
                             [(emb, op("mul", Arg("w", float32), 2.0))]),
          elementwise_kernel(case + "_floordiv", (17,), ident, [(q, op("floordiv", Arg("a", int32),
                                                                       Arg("d", int32)))]),
          elementwise_kernel(case + "_ipow", (17,), ident, [(p, op("pow", Arg("a", int32), Arg("d", int32)))]),
          elementwise_kernel(case + "_mod", (17,), ident, [(r, op("mod", Arg("a", int32), Arg("md", int32)))]))
    b.expect(case, emb, table_np[[0, 9, -1, -10, 3, 3]] * 2, exact=True)
    b.expect(case, q, a_np // good)
    b.expect(case, p, a_np ** good)
    b.expect(case, r, a_np % -good)


REGISTRY_BATCH = registry_batch()
TEMPLATE_BATCH = template_batch()


def _sample_programs():
    """tests/runtime/sample_programs.py, loaded by path (it lives beside the runtime tests)."""
    import importlib.util
    from pathlib import Path
    path = Path(__file__).parent.parent / "runtime" / "sample_programs.py"
    spec = importlib.util.spec_from_file_location("cuda_sample_programs", path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


SAMPLE_PROGRAM = _sample_programs().two_stage_program(1000)


@pytest.fixture(scope="module", autouse=True)
def nvcc_jobs(tmp_path_factory):
    """Start nvcc on every module of this file at once, in the background (beside the emulator's g++);
    the nvcc tests at the end of the file wait for them. The registry module stops at PTX (the front
    end, where C++ errors show); the others go through ptxas to cubins."""
    if shutil.which("nvcc") is None:
        return {}
    directory = tmp_path_factory.mktemp("nvcc")
    return {"cuda_registry": NvccJob(render_program(REGISTRY_BATCH.program()), directory, "registry", "ptx"),
            "cuda_templates": NvccJob(render_program(TEMPLATE_BATCH.program()), directory, "templates"),
            "two_stage": NvccJob(render_program(SAMPLE_PROGRAM), directory, "two_stage")}


# ---------------------------------------------------------------- execution (emulated, or on the GPU)
def _emulated(program, inputs):
    if not cuda_emulator.available():
        pytest.skip("g++ not found (the CUDA emulator needs it)")
    emulated = cuda_emulator.EmulatedProgram(program)
    forward = emulated(*inputs)
    backward = emulated(*inputs, reverse=True, max_blocks=1)     # threads in reverse, grid-stride loops
    for buf, a, b in zip(program.outputs, forward, backward):   # a missing barrier shows as a difference
        np.testing.assert_array_equal(a, b, err_msg=f"{buf.name}: thread order or grid size changes the result")
    return forward


@pytest.fixture(scope="module", params=RUNNERS)
def failures(request):
    if request.param == "emulator" and cuda_emulator.available():
        for b in (REGISTRY_BATCH, TEMPLATE_BATCH):          # both g++ builds at once
            cuda_emulator.EmulatedProgram(b.program(), wait=False)
    call = _emulated if request.param == "emulator" else cuda_runner()
    return {b.name: run_batch(b, call) for b in (REGISTRY_BATCH, TEMPLATE_BATCH)}


@pytest.mark.parametrize("case", REGISTRY_BATCH.cases)
def test_registry_op(failures, case):
    assert case not in failures["cuda_registry"], "\n".join(failures["cuda_registry"][case])


@pytest.mark.parametrize("case", TEMPLATE_BATCH.cases)
def test_template_kernel(failures, case):
    assert case not in failures["cuda_templates"], "\n".join(failures["cuda_templates"][case])


@pytest.mark.parametrize("runner", RUNNERS)
def test_sample_program(runner):
    call = _emulated if runner == "emulator" else cuda_runner()
    x = np.linspace(-2, 2, 1000).astype(np.float32)
    y, s = call(SAMPLE_PROGRAM, [x])
    t = np.exp(x.astype(np.float64)) * 0.5
    np.testing.assert_allclose(y, t + x, rtol=1e-6, atol=1e-6)
    np.testing.assert_allclose(s, t.sum(), rtol=1e-5)


def test_every_registry_case_is_rendered():
    assert len(REGISTRY_BATCH.cases) == len(CASES) > 100


# ---------------------------------------------------------------- errors through the flag
def _error_program():
    b = Batch("cuda_errors")
    error_kernels(b, "e")
    return b


@pytest.mark.parametrize("runner", RUNNERS)
def test_failed_checks_raise_after_the_run(runner):
    b = _error_program()
    program = b.program()
    names = [buf.name.split("__")[1] for buf in program.inputs]
    good = dict(zip(names, b.input_arrays()))
    if runner == "emulator":
        if not cuda_emulator.available():
            pytest.skip("g++ not found")
        call = cuda_emulator.EmulatedProgram(program)
    else:
        run = cuda_runner()
        call = lambda *xs: run(program, list(xs))  # noqa: E731
    cases = [("idx", np.array([0, 1, 10, 2, 3, 4]), IndexError, "embedding index out of range for a dimension of "
                                                                  "size 10"),
             ("idx", np.array([0, 1, -11, 2, 3, 4]), IndexError, "out of range"),
             ("idx", np.array([0, 1, 2 ** 40, 2, 3, 4]), IndexError, "out of range"),
             ("d", np.where(good["d"] == 9, 0, good["d"]).astype(np.int32), ZeroDivisionError, "division by zero"),
             ("d", -good["d"], ValueError, "negative integer powers"),
             ("md", np.where(good["md"] == -9, 0, good["md"]).astype(np.int32), ZeroDivisionError,
              "division by zero")]
    for name, bad, error, message in cases:
        inputs = dict(good, **{name: bad})
        with pytest.raises(error, match=message):
            call(*[inputs[n] for n in names])
    outputs = call(*[good[n] for n in names])          # the flag was reset: the next run is normal
    assert not b.failures(dict(zip(program.outputs, outputs)))


# ---------------------------------------------------------------- the generated text
def _kernel_text(kernel):
    return render_kernel(kernel, "k", [])[0]


def test_elementwise_kernels_are_grid_stride_loops_with_vector_accesses():
    case = REGISTRY_BATCH.kernels[0]
    text, launch = render_kernel(case, "k", [])
    assert "gridDim.x * blockDim.x" in text and launch.plan == "flat"
    add = next(k for k in REGISTRY_BATCH.kernels if k.name == "add_float32_float32")
    text = _kernel_text(add)
    assert text.count("reinterpret_cast<const float4*>") == 2 and "make_float4" in text
    assert "__fadd_rn" in text                           # unfused, like numpy
    assert "reinterpret_cast<const int4*>" in _kernel_text(
        next(k for k in REGISTRY_BATCH.kernels if k.name == "add_int32_int32"))


def test_no_vectors_when_a_stored_value_is_read_back():
    kernel = next(k for k in TEMPLATE_BATCH.kernels if k.name == "store_then_load")
    assert "float4" not in _kernel_text(kernel)


def test_only_contiguous_accesses_are_vectorized():
    views = next(k for k in TEMPLATE_BATCH.kernels if k.name == "views_float32")
    text = _kernel_text(views)
    vector_reads = re.findall(r"reinterpret_cast<const float4\*>\((\w+)\)", text)
    assert [name.split("__")[1] for name in vector_reads] == ["m"]       # not the broadcast, permuted, strided
    assert "make_float4" in text and "p2_views_float32__col[" in text
    assert "float4" not in _kernel_text(next(k for k in TEMPLATE_BATCH.kernels if k.name == "views_float64"))


def test_reductions_use_team_reductions_with_warp_shuffles():
    assert "__shfl_down_sync" in PRELUDE and "__syncthreads" in PRELUDE
    by_name = {k.name: k for k in TEMPLATE_BATCH.kernels}
    block_row = by_name["reduce_add_float32_2x700_1"]
    warp_row = by_name["reduce_add_float32_300x40_1"]
    assert plan_kernel(block_row).team == 1024 and plan_kernel(warp_row).team == 32
    for k in (block_row, warp_row):
        text = _kernel_text(k)
        assert "tt_team_reduce<" in text and "tt_op_add()" in text
    assert "tt_scratch" in _kernel_text(block_row) and "tt_scratch" not in _kernel_text(warp_row)
    assert plan_kernel(by_name["reduce_add_float32_4x50x6_1"]).dist == (("k0", 4), ("k1", 6))   # rows over 2 dims
    serial = by_name["reduce_add_float32_1000x5_1"]
    assert plan_kernel(serial).kind == "flat" and "tt_team_reduce" not in _kernel_text(serial)


def test_softmax_and_layer_norm_use_the_block_parallel_online_stages():
    by_name = {k.name: k for k in TEMPLATE_BATCH.kernels}
    softmax = _kernel_text(by_name[f"softmax_float32_5x{2 * BLOCK + 77}"])
    assert softmax.count("tt_softmax_push") == 2 and "tt_softmax_merge" in softmax   # full blocks and the tail
    layer_norm = _kernel_text(by_name["layer_norm_float64_400x50"])
    assert "tt_moments_push" in layer_norm and "tt_moments_merge" in layer_norm
    two_pass = _kernel_text(by_name["softmax_two_dims"])                      # several reduced dims: plain
    assert "tt_softmax_push" not in two_pass and "tt_op_max()" in two_pass and "tt_op_add()" in two_pass


def test_barriers_where_threads_share_memory():
    by_name = {k.name: k for k in TEMPLATE_BATCH.kernels}
    block, warp = _kernel_text(by_name["barriers_3x100"]), _kernel_text(by_name["barriers_300x40"])
    assert plan_kernel(by_name["barriers_3x100"]).team == 128 and plan_kernel(by_name["barriers_300x40"]).team == 32
    # RAW entering the loop (every iteration: also the back edge), WAR and RAW inside it, the leader's store
    assert block.count("__syncthreads();") == 4 and warp.count("__syncwarp();") == 4
    assert "if (tt_tid == 0)" in block
    layer_norm = _kernel_text(by_name["layer_norm_float32_5x1101"])       # phases that own their elements
    assert "__syncthreads();" not in layer_norm


def test_parallel_only_where_iterations_touch_disjoint_memory():
    from codegen.kernel import Buffer
    x, y = Buffer("x", float32, (44,)), Buffer("y", float32, (45,))
    i, j = Var("i"), Var("j")
    at = Op("add", (Op("mul", (i, Const(11, int64)), int64), j), int64)
    one = Op("add", (at, Const(1, int64)), int64)
    elementwise = Kernel("ok", Loop("i", 4, (Loop("j", 11, (Store(y, at, Load(x, at)),)),)))
    assert plan_kernel(elementwise).dist == (("i", 4), ("j", 11))
    overlapping = Kernel("overlap", Loop("i", 4, (Loop("j", 11, (Store(y, at, Load(x, at)),
                                                                  Store(y, one, Load(x, at)))),)))
    assert plan_kernel(overlapping).dist == (("i", 4),)           # y[i*11+j+1] meets y[(i+1)*11+j-10]...
    shifted = Kernel("shifted", Loop("i", 4, (Loop("j", 11, (Store(y, one, Load(y, at)),)),)))
    assert plan_kernel(shifted).dist == (("i", 4),)               # reads what the previous j wrote
    columns = next(k for k in TEMPLATE_BATCH.kernels if k.name == "columns_sum")
    text = _kernel_text(columns)      # rows accumulate into the output row: in order, threads own columns
    assert "__syncthreads" not in text and len(re.findall(r"q\d+ \+= 1024\)", text)) == 3


def test_checked_gathers_report_through_the_error_flag():
    by_name = {k.name: k for k in TEMPLATE_BATCH.kernels}
    checks = []
    text, _ = render_kernel(by_name["cross_entropy"], "k", checks)
    assert "tt_fail(tt_err, 1)" in text and "atomicCAS(err, 0, id)" in PRELUDE
    assert [c.error for c in checks] == [IndexError] and "target out of range" in checks[0].message
    assert "tt_fail" not in _kernel_text(by_name["softmax_float32_5x7"])


def test_program_headers_only_where_needed():
    plain = render_program(Program("p", (TEMPLATE_BATCH.kernels[0],), tuple(TEMPLATE_BATCH.kernels[0].buffers[:2]),
                                   tuple(TEMPLATE_BATCH.kernels[0].buffers[2:])))
    assert "#include" not in plain.source            # pycuda preprocesses (slowly) any source with an include
    narrow = next(k for k in TEMPLATE_BATCH.kernels if k.name == "narrow_1")
    text = render_program(Program("n", (narrow,), narrow.buffers[:1], narrow.buffers[1:])).source
    assert "#include <cuda_fp16.h>" in text and "#include <cuda_bf16.h>" in text


# ---------------------------------------------------------------- the emulator itself
RACY = r"""
extern "C" __global__ void racy(float* out, int* err) {
    if (threadIdx.x == 0) out[0] = 1.0f;
    %s
    if (threadIdx.x > 0) out[threadIdx.x] = out[0];
}
"""


def test_emulator_exposes_missing_barriers_and_deadlocks(tmp_path):
    """The emulator is only useful if it can fail: a read without a barrier differs between thread orders."""
    if not cuda_emulator.available():
        pytest.skip("g++ not found")
    import ctypes
    import subprocess
    results = {}
    for name, barrier in [("missing", ""), ("present", "__syncthreads();"),
                          ("deadlock", "if (threadIdx.x == 0) __syncthreads(); else __syncwarp();")]:
        src = tmp_path / f"{name}.cpp"
        src.write_text(cuda_emulator.HEADER + RACY % barrier + """
extern "C" int go(float* out, int reverse) {
    std::function<void()> f = [&]() { racy(out, nullptr); };
    return tt_emu::launch(1, 1, 1, 64, f, reverse);
}""")
        lib = tmp_path / f"{name}.so"
        subprocess.run(["g++", "-std=c++17", "-w", "-fPIC", "-shared", str(src), "-o", str(lib)], check=True)
        go = ctypes.CDLL(str(lib)).go
        for reverse in (0, 1):
            out = np.zeros(64, np.float32)
            rc = go(ctypes.c_void_p(out.ctypes.data), reverse)
            results[name, reverse] = (rc, out[1:].min())
    assert results["present", 0] == results["present", 1] == (0, 1.0)
    assert results["missing", 1][1] != 1.0                # thread 1.. read before thread 0 wrote
    assert results["deadlock", 0][0] == -1


# ---------------------------------------------------------------- nvcc (started by the nvcc_jobs fixture)
@pytest.mark.parametrize("module", ["cuda_registry", "cuda_templates", "two_stage"])
def test_module_compiles_with_nvcc(nvcc_jobs, module):
    if not nvcc_jobs:
        pytest.skip("nvcc not found")
    nvcc_jobs[module].check()
