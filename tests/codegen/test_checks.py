"""Bounds safety: data-dependent indices are checked in the kernel, failures set the program's
int32 error flag, and the runtime raises after the call (never a wild read)."""
from __future__ import annotations

import numpy as np
import pytest

from codegen.kernel import Arg, Buffer, CheckedIndex, Const, IndexMap, Load, Op, Program
from codegen.scalar import op
from codegen.templates import elementwise_kernel
from tracetorch.dtypes import float32, int32, int64


def embedding_program(rows, vocab, dim, name="embedding"):
    table, idx = Buffer("table", float32, (vocab, dim)), Buffer("idx", int64, (rows,))
    out = Buffer("out", float32, (rows, dim))

    def gather(at):           # table[idx[i], j]
        i, j = at
        row = CheckedIndex(Load(idx, i), vocab, "embedding index")
        return Op("add", (Op("mul", (row, Const(dim, int64)), int64), j), int64)

    k = elementwise_kernel(name, (rows, dim), {"w": (table, gather)}, [(out, op("mul", Arg("w", float32), 2.0))])
    return Program(name, (k,), (table, idx), (out,))


@pytest.fixture(scope="module")
def embedding(engine):
    return engine.compile(embedding_program(6, 10, 33))


def test_gather_reads_rows_and_wraps_negatives(embedding):
    table = np.random.default_rng(0).standard_normal((10, 33)).astype(np.float32)
    idx = np.array([0, 9, -1, -10, 3, 3])
    (out,) = embedding(table, idx)
    np.testing.assert_array_equal(out, table[idx] * 2)


@pytest.mark.parametrize("bad", [10, -11, 2 ** 40])
def test_gather_out_of_range_raises_index_error(embedding, bad):
    table = np.ones((10, 33), np.float32)
    idx = np.array([0, 1, bad, 2, 3, 4])
    with pytest.raises(IndexError, match=r"embedding index out of range for a dimension of size 10"):
        embedding(table, idx)
    (out,) = embedding(table, np.arange(6))        # the flag was reset: the next call runs normally
    np.testing.assert_array_equal(out, 2 * np.ones((6, 33), np.float32))


def test_checks_work_on_threaded_kernels(engine):
    program = embedding_program(49152, 50, 64, name="big_embedding")     # above the threading threshold
    compiled = engine.compile(program)
    assert compiled._steps is not None and compiled._steps[0][0] == "parallel"
    table = np.random.default_rng(1).standard_normal((50, 64)).astype(np.float32)
    idx = np.random.default_rng(2).integers(0, 50, 49152)
    np.testing.assert_array_equal(compiled(table, idx)[0], table[idx] * 2)
    idx[4000] = 50
    with pytest.raises(IndexError):
        compiled(table, idx)


def test_integer_division_by_zero_and_negative_powers(run):
    n = 17
    a, b = Buffer("a", int32, (n,)), Buffer("b", int32, (n,))
    q, p = Buffer("q", int32, (n,)), Buffer("p", int32, (n,))
    A, B = Arg("a", int32), Arg("b", int32)
    ident = {"a": (a, IndexMap((1,))), "b": (b, IndexMap((1,)))}
    floordiv = elementwise_kernel("fdiv", (n,), ident, [(q, op("floordiv", A, B))])
    power = elementwise_kernel("ipow", (n,), ident, [(p, op("pow", A, B))])
    a_np = np.arange(-8, 9, dtype=np.int32)
    good = np.array([3, 2, 5, 1, 7, 2, 2, 9, 4, 1, 6, 3, 2, 8, 1, 3, 2], np.int32)
    got = run([floordiv, power], {a: a_np, b: good}, [q, p])
    np.testing.assert_array_equal(got["q"], a_np // good)
    np.testing.assert_array_equal(got["p"], a_np ** good)
    with pytest.raises(ZeroDivisionError, match="integer division by zero"):
        run([floordiv], {a: a_np, b: np.where(good == 9, 0, good).astype(np.int32)}, [q])
    with pytest.raises(ValueError, match="negative integer powers"):
        run([power], {a: a_np, b: -good}, [p])


def test_static_bounds_are_verified_before_code_generation(engine):
    from codegen.kernel import Kernel, Loop, Store, Var
    from codegen.verify import BoundsError
    x, y = Buffer("x", float32, (10,)), Buffer("y", float32, (10,))
    i = Var("i")
    past_end = Kernel("past_end", Loop("i", 10, (Store(y, i, Load(x, Op("add", (i, Const(1, int64)), int64))),)))
    with pytest.raises(BoundsError, match=r"reaches elements \[1, 10\] of 10"):
        engine.compile(Program("p1", (past_end,), (x,), (y,)))
    idx = Buffer("idx", int64, (10,))
    unchecked = Kernel("unchecked", Loop("i", 10, (Store(y, i, Load(x, Load(idx, i))),)))
    with pytest.raises(BoundsError, match="data-dependent index"):
        engine.compile(Program("p2", (unchecked,), (x, idx), (y,)))
    folded = Kernel("folded", Loop("i", 10, (Store(y, Op("sub", (Const(9, int64), i), int64), Load(x, i)),)))
    compiled = engine.compile(Program("p3", (folded,), (x,), (y,)))
    np.testing.assert_array_equal(compiled(np.arange(10, dtype=np.float32))[0], np.arange(10)[::-1])
