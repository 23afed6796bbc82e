"""Small programs the runtime tests compile (importable from a subprocess too)."""
from __future__ import annotations

from codegen.kernel import Arg, Buffer, CheckedIndex, Const, IndexMap, Load, Op, Program, Var
from codegen.scalar import op
from codegen.templates import Reduction, SoftmaxStats, elementwise_kernel, reduction_kernel
from tracetorch.dtypes import float32, int64


def two_stage_program(n: int, name: str = "two_stage") -> Program:
    """t = exp(x) * 0.5 (a temporary in the arena); y = t + x; s = sum(t)."""
    x, t = Buffer("x", float32, (n,)), Buffer("t", float32, (n,))
    y, s = Buffer("y", float32, (n,)), Buffer("s", float32, ())
    k1 = elementwise_kernel("half_exp", (n,), {"x": (x, IndexMap((1,)))},
                            [(t, op("mul", op("exp", Arg("x", float32)), 0.5))])
    k2 = elementwise_kernel("plus", (n,), {"t": (t, IndexMap((1,))), "x": (x, IndexMap((1,)))},
                            [(y, op("add", Arg("t", float32), Arg("x", float32)))])
    k3 = reduction_kernel("total", (n,), (0,), {"t": (t, IndexMap((1,)))},
                          [Reduction("acc", "add", Arg("t", float32))], row_outputs=[(s, Var("acc", float32))])
    return Program(name, (k1, k2, k3), (x,), (y, s))


def big_program(rows: int, cols: int) -> Program:
    """y = x * sigmoid(1.702 x) and rowsum = logsumexp of each row: two kernels big enough for threads."""
    shape = (rows, cols)
    x, y = Buffer("x", float32, shape), Buffer("y", float32, shape)
    ssum = Buffer("rowsum", float32, (rows,))
    X = Arg("x", float32)
    k1 = elementwise_kernel("gelu_like", shape, {"x": (x, IndexMap.contiguous(shape))},
                            [(y, op("mul", X, op("sigmoid", op("mul", X, 1.702))))])
    k2 = reduction_kernel("softmax_sum", shape, (1,), {"x": (x, IndexMap.contiguous(shape))},
                          [SoftmaxStats("m", "s", X)], row_outputs=[(ssum, op("add", Var("m", float32),
                                                                                   op("log", Var("s", float32))))])
    return Program("big", (k1, k2), (x,), (y, ssum))


def mixed_program(rows: int = 601, cols: int = 1031, vocab: int = 10, dim: int = 33) -> Program:
    """Serial kernels around big_program's two parallel ones: an embedding gather of `idx` (bounds-checked)
    and its double, then the big kernels, then two more small ones (the gather's row sums, plus one)."""
    big = big_program(rows, cols)
    table, idx = Buffer("table", float32, (vocab, dim)), Buffer("idx", int64, (6,))
    gathered, doubled = Buffer("gathered", float32, (6, dim)), Buffer("doubled", float32, (6, dim))
    sums, plus = Buffer("sums", float32, (6,)), Buffer("plus", float32, (6,))

    def gather(at):
        row = CheckedIndex(Load(idx, at[0]), vocab, "embedding index")
        return Op("add", (Op("mul", (row, Const(dim, int64)), int64), at[1]), int64)

    G = Arg("g", float32)
    k_gather = elementwise_kernel("gather", (6, dim), {"w": (table, gather)}, [(gathered, Arg("w", float32))])
    k_double = elementwise_kernel("double", (6, dim), {"g": (gathered, IndexMap.contiguous((6, dim)))},
                                  [(doubled, op("mul", G, 2.0))])
    k_sums = reduction_kernel("sums", (6, dim), (1,), {"g": (gathered, IndexMap.contiguous((6, dim)))},
                              [Reduction("acc", "add", G)], row_outputs=[(sums, Var("acc", float32))])
    k_plus = elementwise_kernel("plus_one", (6,), {"s": (sums, IndexMap((1,)))},
                                [(plus, op("add", Arg("s", float32), 1.0))])
    return Program("mixed", (k_gather, k_double) + big.steps + (k_sums, k_plus), big.inputs + (table, idx),
                   big.outputs + (doubled, plus))
