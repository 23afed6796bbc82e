"""Elementwise kernels against numpy: broadcast, permuted and strided inputs (free index maps),
several outputs, odd sizes, sizes 0 and 1, 0-d tensors, narrow float types."""
from __future__ import annotations

import numpy as np
import pytest

from codegen.kernel import Arg, Buffer, IndexMap, Loop
from codegen.scalar import lower, op
from codegen.templates import elementwise_kernel
from tracetorch.dtypes import bfloat16, bool_, float16, float32, float64, int8, int32, int64, round_bfloat16, uint8

FLOATS = [float32, float64]


def view_map(view: np.ndarray, base: np.ndarray) -> IndexMap:
    """The index map that reads numpy view `view` out of its contiguous base array `base`."""
    item = base.itemsize
    offset = (view.__array_interface__["data"][0] - base.__array_interface__["data"][0]) // item
    return IndexMap(tuple(s // item for s in view.strides), offset)


def tol(dt):
    return dict(rtol=1e-12, atol=1e-14) if dt is float64 else dict(rtol=2e-6, atol=1e-6)


@pytest.mark.parametrize("dt", FLOATS, ids=lambda d: d.name)
@pytest.mark.parametrize("shape", [(0,), (1,), (7,), (33,), (3, 5), (4, 1, 17), (2, 3, 4, 5), ()], ids=str)
def test_fused_chain_over_shapes(run, dt, shape):
    rng = np.random.default_rng(0)
    a = rng.standard_normal(shape).astype(dt.np)
    b = rng.standard_normal(shape).astype(dt.np)
    x = [Buffer("a", dt, shape), Buffer("b", dt, shape)]
    y, z = Buffer("y", dt, shape), Buffer("z", dt, shape)
    A, B = Arg("a", dt), Arg("b", dt)
    expr_y = op("mul", op("tanh", op("add", A, B)), op("exp", op("neg", op("abs", A))))
    expr_z = op("where", op("gt", A, B), op("sub", A, 1.5), op("mul", B, B))
    ident = IndexMap.contiguous(shape)
    k = elementwise_kernel("chain", shape, {"a": (x[0], ident), "b": (x[1], ident)}, [(y, expr_y), (z, expr_z)])
    got = run([k], {x[0]: a, x[1]: b}, [y, z])
    np.testing.assert_allclose(got["y"], np.tanh(a + b) * np.exp(-np.abs(a)), **tol(dt))
    np.testing.assert_allclose(got["z"], np.where(a > b, a - 1.5, b * b), **tol(dt))
    assert got["y"].shape == shape


@pytest.mark.parametrize("dt", FLOATS, ids=lambda d: d.name)
def test_views_are_index_maps(run, dt):
    """Broadcast (stride 0), permute, strided slice and offset read straight from the bases."""
    rng = np.random.default_rng(1)
    base_m = rng.standard_normal((9, 13)).astype(dt.np)
    base_row = rng.standard_normal(13).astype(dt.np)
    base_col = rng.standard_normal((9, 1)).astype(dt.np)
    base_t = rng.standard_normal((13, 9)).astype(dt.np)
    base_s = rng.standard_normal((20, 30)).astype(dt.np)
    shape = (9, 13)
    views = {
        "m": (base_m, base_m),
        "row": (np.broadcast_to(base_row, shape), base_row),
        "col": (np.broadcast_to(base_col, shape), base_col),
        "t": (base_t.T, base_t),
        "s": (base_s[2:20:2, 1:27:2], base_s),
    }
    inputs, buffers = {}, {}
    for name, (view, base) in views.items():
        buf = Buffer(name, dt, base.shape)
        buffers[name] = (buf, view_map(view, base))
        inputs[buf] = base
    args = {name: Arg(name, dt) for name in views}
    expr = op("add", op("mul", args["m"], args["row"]), op("sub", op("mul", args["col"], args["t"]), args["s"]))
    out = Buffer("out", dt, shape)
    got = run([elementwise_kernel("views", shape, buffers, [(out, expr)])], inputs, [out])
    v = {k: view for k, (view, _) in views.items()}
    np.testing.assert_allclose(got["out"], v["m"] * v["row"] + (v["col"] * v["t"] - v["s"]), **tol(dt))


def test_contiguous_dims_coalesce_into_one_loop():
    shape = (4, 6, 10)
    x, y = Buffer("x", float32, shape), Buffer("y", float32, shape)
    k = elementwise_kernel("k", shape, {"x": (x, IndexMap.contiguous(shape))}, [(y, Arg("x", float32))])
    assert k.outer.extent == 240 and not any(isinstance(s, Loop) for s in k.outer.body)
    row = Buffer("row", float32, (10,))
    k2 = elementwise_kernel("k2", shape, {"x": (x, IndexMap.contiguous(shape)),
                                          "r": (row, IndexMap.broadcast((10,), shape))},
                            [(y, op("add", Arg("x", float32), Arg("r", float32)))])
    assert k2.outer.extent == 24 and k2.outer.body[0].extent == 10


def test_scalars_and_zero_dim_inputs(run):
    n = 1001
    xs = np.linspace(-3, 3, n).astype(np.float32)
    x, a, y = Buffer("x", float32, (n,)), Buffer("a", float32, ()), Buffer("y", float32, (n,))
    expr = op("add", op("mul", Arg("x", float32), Arg("a", float32)), 0.25)
    k = elementwise_kernel("axpb", (n,), {"x": (x, IndexMap((1,))), "a": (a, IndexMap((0,)))}, [(y, expr)])
    got = run([k], {x: xs, a: np.float32(1.5)}, [y])
    # one rounding (a fused multiply-add) or two: within float32 rounding of the exact value
    exact = xs.astype(np.float64) * 1.5 + 0.25
    np.testing.assert_allclose(got["y"], exact, rtol=1.2e-7, atol=3e-8)


def test_narrow_float_storage_rounds_on_store(run):
    rng = np.random.default_rng(2)
    n = 257
    xs = (rng.standard_normal(n) * 100).astype(np.float32)
    x = Buffer("x", float32, (n,))
    h, bf = Buffer("h", float16, (n,)), Buffer("bf", bfloat16, (n,))
    back = Buffer("back", float32, (n,))
    X = Arg("x", float32)
    k1 = elementwise_kernel("narrow", (n,), {"x": (x, IndexMap((1,)))},
                            [(h, lower("cast(x0)", [X], float16)), (bf, lower("cast(x0)", [X], bfloat16))])
    hx = Arg("h", float16)
    k2 = elementwise_kernel("widen", (n,), {"h": (h, IndexMap((1,)))},
                            [(back, lower("cast(x0)", [op("mul", hx, 2.0)], float32))])
    got = run([k1, k2], {x: xs}, [h, bf, back])
    np.testing.assert_array_equal(got["h"], xs.astype(np.float16))
    np.testing.assert_array_equal(got["bf"], round_bfloat16(xs))
    np.testing.assert_allclose(got["back"], xs.astype(np.float16).astype(np.float32) * 2, rtol=1e-3)


@pytest.mark.parametrize("src", FLOATS, ids=lambda d: d.name)
def test_float_to_int_out_of_range_and_nan_as_numpy(run, src):
    """NaN, inf and values beyond the integer range convert to INT_MIN, as eager (numpy) and PyTorch on x86;
    the saturating conversion gave INT_MAX for inf and 2.5e9 and 0 for NaN. int8/uint8 truncate int32's."""
    xs = np.array([3e10, -3e10, np.inf, -np.inf, np.nan, 2.5e9, -2.5e9, 1e19, 2.0 ** 31, -2.0 ** 31, 300.0, -1.7],
                  src.np)
    x = Buffer("x", src, xs.shape)
    outs = [Buffer(f"y_{d.name}", d, xs.shape) for d in (int32, int64, int8, uint8)]
    k = elementwise_kernel("to_int", xs.shape, {"x": (x, IndexMap((1,)))},
                           [(o, lower("cast(x0)", [Arg("x", src)], o.dtype)) for o in outs])
    got = run([k], {x: xs}, outs)
    with np.errstate(invalid="ignore"):
        for o in outs:
            np.testing.assert_array_equal(got[o.name], xs.astype(o.dtype.np), err_msg=o.name)


def test_bool_and_int_kernels(run):
    n = 129
    rng = np.random.default_rng(3)
    a = rng.integers(-100, 100, n).astype(np.int32)
    m = rng.random(n) < 0.3
    A, M = Buffer("a", int32, (n,)), Buffer("m", bool_, (n,))
    out_i, out_b = Buffer("oi", int32, (n,)), Buffer("ob", bool_, (n,))
    ai, mi = Arg("a", int32), Arg("m", bool_)
    k = elementwise_kernel("ints", (n,), {"a": (A, IndexMap((1,))), "m": (M, IndexMap((1,)))},
                           [(out_i, op("where", mi, op("floordiv", ai, 7), op("mod", ai, -3))),
                            (out_b, op("xor", mi, op("gt", ai, 0)))])
    got = run([k], {A: a, M: m}, [out_i, out_b])
    np.testing.assert_array_equal(got["oi"], np.where(m, a // 7, a % -3))
    np.testing.assert_array_equal(got["ob"], m ^ (a > 0))


def test_bad_index_map_is_rejected_when_built():
    x, y = Buffer("x", float32, (10,)), Buffer("y", float32, (10,))
    with pytest.raises(IndexError, match="reaches elements"):
        elementwise_kernel("oob", (10,), {"x": (x, IndexMap((1,), 1))}, [(y, Arg("x", float32))])
    with pytest.raises(ValueError, match="index map of 2 dims"):
        elementwise_kernel("dims", (10,), {"x": (x, IndexMap((1, 0)))}, [(y, Arg("x", float32))])


def test_flat_index_builds_values_from_positions(run):
    """arange-like and mask-like values from the element's position (no input at all)."""
    from codegen.templates import FLAT_INDEX
    shape = (3, 1, 7)
    ar, mask = Buffer("ar", float32, shape), Buffer("mask", bool_, shape)
    value = op("add", op("mul", op("cast", FLAT_INDEX, dtype=float32), 0.5), -1.0)
    k = elementwise_kernel("positions", shape, {}, [(ar, value), (mask, op("eq", op("mod", FLAT_INDEX, 3), 0))])
    got = run([k], {}, [ar, mask])
    flat = np.arange(21).reshape(shape)
    np.testing.assert_array_equal(got["ar"], (flat * 0.5 - 1).astype(np.float32))
    np.testing.assert_array_equal(got["mask"], flat % 3 == 0)


def test_inputs_stored_over_are_loaded_before_any_store():
    # a' = a + b and b' = b * a, each stored over its input: both read the old a and b, whatever the order
    from codegen.kernel import Let, Load, Store, walk_exprs
    a, b, c, d = (Buffer(n, float32, (40,)) for n in "abcd")
    flat = IndexMap.contiguous((40,))
    A, B, C = Arg("a", float32), Arg("b", float32), Arg("c", float32)
    k = elementwise_kernel("inplace", (40,), {"a": (a, flat), "b": (b, flat), "c": (c, flat)},
                           [(a, op("add", A, B)), (b, op("mul", B, A)), (d, op("neg", C))])
    body = k.outer.body
    assert [type(s).__name__ for s in body] == ["Let", "Let", "Store", "Store", "Store"]   # c: read in place
    assert {s.value.buffer for s in body if isinstance(s, Let)} == {a, b}
    stores = [s for s in body if isinstance(s, Store)]
    assert not any(isinstance(n, Load) and n.buffer in (a, b) for s in stores for n in walk_exprs(s.value))
