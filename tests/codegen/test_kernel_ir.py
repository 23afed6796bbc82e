"""The kernel IR itself: index maps, DAG-safe traversal, program validation, printing."""
from __future__ import annotations

import time

import numpy as np
import pytest

from codegen.kernel import (Arg, Buffer, Const, IndexMap, Kernel, Load, Loop, Op, Program, Store, Var, substitute,
                            walk_exprs)
from codegen.scalar import op
from codegen.templates import elementwise_kernel
from tracetorch.dtypes import float32, int64


def element_offsets(m: IndexMap, shape) -> np.ndarray:
    grids = np.meshgrid(*[np.arange(s) for s in shape], indexing="ij")
    return m.offset + sum(g * s for g, s in zip(grids, m.strides))


def numpy_offsets(view: np.ndarray, base: np.ndarray) -> np.ndarray:
    addr = lambda a: a.__array_interface__["data"][0]
    start = (addr(view) - addr(base)) // base.itemsize
    m = IndexMap(tuple(s // base.itemsize for s in view.strides), start)
    return element_offsets(m, view.shape)


def test_index_maps_match_numpy_views():
    base = np.arange(60, dtype=np.float32).reshape(3, 4, 5)
    c = IndexMap.contiguous((3, 4, 5))
    np.testing.assert_array_equal(base.ravel()[element_offsets(c, (3, 4, 5))], base)
    p = c.permute((2, 0, 1))
    np.testing.assert_array_equal(base.ravel()[element_offsets(p, (5, 3, 4))], base.transpose(2, 0, 1))
    s = c.slice((1, 0, 1), (1, 2, 3))
    view = base[1:, ::2, 1::3]
    np.testing.assert_array_equal(base.ravel()[element_offsets(s, view.shape)], view)
    np.testing.assert_array_equal(element_offsets(s, view.shape), numpy_offsets(view, base))
    row = np.arange(5.0)
    b = IndexMap.broadcast((5,), (3, 4, 5))
    np.testing.assert_array_equal(row[element_offsets(b, (3, 4, 5))], np.broadcast_to(row, (3, 4, 5)))
    with pytest.raises(ValueError):
        IndexMap.broadcast((4,), (3, 5))


def test_index_map_check_catches_out_of_bounds():
    buf = Buffer("x", float32, (3, 4))
    IndexMap.contiguous((3, 4)).check((3, 4), buf)
    with pytest.raises(IndexError, match="reaches elements"):
        IndexMap((5, 1), 0).check((3, 4), buf)
    with pytest.raises(IndexError):
        IndexMap((-1,), 0).check((2,), buf)
    IndexMap((4, 1), 100).check((0, 4), buf)          # empty: nothing is read


def test_deep_shared_expressions_stay_linear():
    """x_{k+1} = x_k * x_k shares its operand: 200 levels would be 2^200 nodes as a tree."""
    e = Arg("x", float32)
    for _ in range(200):
        e = Op("mul", (e, e), float32)
    t0 = time.perf_counter()
    hash(e)
    nodes = list(walk_exprs(e))
    swapped = substitute(e, {"x": Const(1.0, float32)})
    assert len(nodes) == 201 and len(list(walk_exprs(swapped))) == 201
    assert time.perf_counter() - t0 < 1.0


def test_program_validation():
    x, y = Buffer("x", float32, (4,)), Buffer("y", float32, (4,))
    k = elementwise_kernel("k", (4,), {"x": (x, IndexMap((1,)))}, [(y, Arg("x", float32))])
    writes_input = Kernel("bad", Loop("i", 4, (Store(x, Var("i"), Const(0.0, float32)),)))
    with pytest.raises(ValueError, match="writes input"):
        Program("p", (writes_input,), (x,), (y,))
    with pytest.raises(ValueError, match="kernel names must be unique"):
        Program("p", (k, k), (x,), (y,))
    with pytest.raises(ValueError, match="buffer names must be unique"):
        Program("p", (k,), (x,), (Buffer("x", float32, (4,)),))
    t = Buffer("t", float32, (4,))
    k1 = elementwise_kernel("k1", (4,), {"x": (x, IndexMap((1,)))}, [(t, Arg("x", float32))])
    k2 = elementwise_kernel("k2", (4,), {"t": (t, IndexMap((1,)))}, [(y, Arg("t", float32))])
    assert Program("p", (k1, k2), (x,), (y,)).temps == (t,)


def test_op_arity_and_names_are_checked():
    with pytest.raises(ValueError, match="unknown scalar op"):
        Op("frobnicate", (), float32)
    with pytest.raises(ValueError, match="takes 2 operands"):
        Op("add", (Const(1.0, float32),), float32)


def test_printed_kernel_reads_like_code():
    x, y = Buffer("x", float32, (3, 8)), Buffer("y", float32, (3, 8))
    row = Buffer("r", float32, (8,))
    k = elementwise_kernel("add_row", (3, 8), {"x": (x, IndexMap.contiguous((3, 8))),
                                               "r": (row, IndexMap.broadcast((8,), (3, 8)))},
                           [(y, op("add", Arg("x", float32), Arg("r", float32)))])
    text = str(k)
    assert "kernel add_row(x:float32[3, 8], r:float32[8], y:float32[3, 8]):" in text
    assert "parallel for i0 in range(3):" in text and "for i1 in range(8):" in text
    assert "y[add(mul(i0, 8), i1)] = add(x[add(mul(i0, 8), i1)], r[i1])" in text
    assert k.buffers == (x, row, y) and k.written == (y,) and k.work == 24
    assert isinstance(Load(x, Var("i", int64)).index, Var)
