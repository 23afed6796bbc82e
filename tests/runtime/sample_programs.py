"""Small programs the runtime tests compile (importable from a subprocess too)."""
from __future__ import annotations

from codegen.kernel import Arg, Buffer, IndexMap, Program, Var
from codegen.scalar import op
from codegen.templates import Reduction, SoftmaxStats, elementwise_kernel, reduction_kernel
from tracetorch.dtypes import float32


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
