"""Benchmarks of the LLVM backend foundation (run by hand, not collected by pytest).

    python3 tests/codegen/bench_llvm.py            # all
    python3 tests/codegen/bench_llvm.py w1 call    # a selection: w1, w1b, w2, call, compile

Every figure is a median of repeats after warm-up; ratios are taken in the same run
(BENCH.md): W1 is compared with numpy and with a numpy copy of the same bytes.
"""
from __future__ import annotations

import json
import os
import subprocess
import sys
import tempfile
import textwrap
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT))

from codegen.kernel import Arg, Buffer, IndexMap, Program, Var  # noqa: E402
from codegen.scalar import op  # noqa: E402
from codegen.templates import Moments, SoftmaxStats, elementwise_kernel, reduction_kernel  # noqa: E402
from runtime.disk_cache import DiskCache  # noqa: E402
from runtime.llvm_engine import LLVMEngine  # noqa: E402
from tracetorch.dtypes import float32  # noqa: E402

F = float32


def median_time(fn, repeats=9, warmup=2) -> float:
    for _ in range(warmup):
        fn()
    times = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t0)
    return float(np.median(times))


def gelu_program(n: int) -> Program:
    """W1: z = x*a + b; y = 0.5*z*(1 + tanh(0.79788456*(z + 0.044715*z^3))), a and b 0-d tensors."""
    x, a, b, y = Buffer("x", F, (n,)), Buffer("a", F, ()), Buffer("b", F, ()), Buffer("y", F, (n,))
    z = op("add", op("mul", Arg("x", F), Arg("a", F)), Arg("b", F))
    inner = op("mul", 0.79788456, op("add", z, op("mul", 0.044715, op("pow", z, 3.0))))
    gelu = op("mul", op("mul", 0.5, z), op("add", 1.0, op("tanh", inner)))
    k = elementwise_kernel("gelu", (n,), {"x": (x, IndexMap((1,))), "a": (a, IndexMap((0,))),
                                          "b": (b, IndexMap((0,)))}, [(y, gelu)])
    return Program("w1", (k,), (x, a, b), (y,))


def numpy_gelu(x, a, b):
    z = x * a + b
    return 0.5 * z * (1 + np.tanh(np.float32(0.79788456) * (z + np.float32(0.044715) * (z * z * z))))


def bench_w1(engine: LLVMEngine, n: int = 1 << 24) -> dict:
    compiled = engine.compile(gelu_program(n))
    x = np.random.default_rng(0).standard_normal(n, dtype=np.float32)
    a, b = np.array(1.1, np.float32), np.array(0.1, np.float32)
    np.testing.assert_allclose(compiled(x, a, b)[0], numpy_gelu(x, a, b), rtol=1e-5, atol=1e-6)
    dst = np.empty_like(x)
    ours, copy, numpy = [], [], []
    for _ in range(5):            # interleaved, so that noise hits every contender alike
        ours.append(median_time(lambda: compiled(x, a, b), repeats=5, warmup=1))
        copy.append(median_time(lambda: np.copyto(dst, x), repeats=5, warmup=1))
        numpy.append(median_time(lambda: numpy_gelu(x, a, b), repeats=1, warmup=0))
    t, c, npy = np.median(ours), np.median(copy), np.median(numpy)
    w0, p0 = time.perf_counter(), time.process_time()
    for _ in range(10):
        compiled(x, a, b)
    busy = (time.process_time() - p0) / (time.perf_counter() - w0)   # ~threads when the cores are ours
    moved = 2 * n * 4            # read x, write y
    return {"W1 n": n, "ours ms": t * 1e3, "numpy ms": npy * 1e3, "copy ms": c * 1e3,
            "speedup vs numpy": npy / t, "ours GB/s": moved / t / 1e9, "copy GB/s": moved / c / 1e9,
            "fraction of copy bandwidth": c / t, "threads": engine.threads, "cpu time / wall time": busy}


def bench_w2(engine: LLVMEngine, rows: int = 4096, cols: int = 4096) -> dict:
    shape = (rows, cols)
    x, y, w, bb = Buffer("x", F, shape), Buffer("y", F, shape), Buffer("w", F, (cols,)), Buffer("b", F, (cols,))
    X, m, s = Arg("x", F), Var("m", F), Var("s", F)
    full = IndexMap.contiguous(shape)
    softmax = reduction_kernel("softmax", shape, (1,), {"x": (x, full)}, [SoftmaxStats("m", "s", X)],
                               elem_outputs=[(y, op("div", op("exp", op("sub", X, m)), s))])
    mean, var = Var("mean", F), Var("var", F)
    normed = op("mul", op("sub", X, mean), op("rsqrt", op("add", var, 1e-5)))
    ln = reduction_kernel("layer_norm", shape, (1,), {"x": (x, full), "w": (w, IndexMap.broadcast((cols,), shape)),
                                                      "b": (bb, IndexMap.broadcast((cols,), shape))},
                          [Moments("mean", "var", X)],
                          elem_outputs=[(y, op("add", op("mul", normed, Arg("w", F)), Arg("b", F)))])
    sm = engine.compile(Program("w2_softmax", (softmax,), (x,), (y,)))
    lnp = engine.compile(Program("w2_layer_norm", (ln,), (x, w, bb), (y,)))
    xs = np.random.default_rng(0).standard_normal(shape, dtype=np.float32)
    ws, bs = np.ones(cols, np.float32), np.zeros(cols, np.float32)

    def np_softmax(v):
        e = np.exp(v - v.max(1, keepdims=True))
        return e / e.sum(1, keepdims=True)

    def np_ln(v):
        mu = v.mean(1, keepdims=True)
        return (v - mu) / np.sqrt(v.var(1, keepdims=True) + 1e-5) * ws + bs

    np.testing.assert_allclose(sm(xs)[0], np_softmax(xs), rtol=1e-4, atol=1e-7)
    np.testing.assert_allclose(lnp(xs, ws, bs)[0], np_ln(xs), rtol=1e-3, atol=1e-4)
    t_sm, t_np_sm = median_time(lambda: sm(xs)), median_time(lambda: np_softmax(xs), repeats=3)
    t_ln, t_np_ln = median_time(lambda: lnp(xs, ws, bs)), median_time(lambda: np_ln(xs), repeats=3)
    return {"softmax ms": t_sm * 1e3, "numpy softmax ms": t_np_sm * 1e3, "softmax speedup": t_np_sm / t_sm,
            "layer norm ms": t_ln * 1e3, "numpy layer norm ms": t_np_ln * 1e3, "layer norm speedup": t_np_ln / t_ln}


def bench_w1b(engine: LLVMEngine, rows: int = 4096, cols: int = 4096) -> dict:
    """W1b-like: a 10-op chain mixing a broadcast row vector."""
    shape = (rows, cols)
    x, r, y = Buffer("x", F, shape), Buffer("r", F, (cols,)), Buffer("y", F, shape)
    X, R = Arg("x", F), Arg("r", F)
    e = op("add", X, R)
    e = op("mul", e, 1.5)
    e = op("sub", e, op("mul", R, R))
    e = op("max", e, 0.0)
    e = op("add", e, op("exp", op("neg", op("abs", X))))
    e = op("div", e, op("add", R, 3.0))
    k = elementwise_kernel("chain10", shape, {"x": (x, IndexMap.contiguous(shape)),
                                              "r": (r, IndexMap.broadcast((cols,), shape))}, [(y, e)])
    compiled = engine.compile(Program("w1b", (k,), (x, r), (y,)))
    xs = np.random.default_rng(0).standard_normal(shape, dtype=np.float32)
    rs = np.random.default_rng(1).uniform(0, 1, cols).astype(np.float32)

    def np_chain(x, r):
        v = np.maximum((x + r) * np.float32(1.5) - r * r, 0) + np.exp(-np.abs(x))
        return v / (r + np.float32(3.0))

    np.testing.assert_allclose(compiled(xs, rs)[0], np_chain(xs, rs), rtol=1e-5, atol=1e-6)
    t, tn = median_time(lambda: compiled(xs, rs)), median_time(lambda: np_chain(xs, rs), repeats=3)
    return {"W1b ms": t * 1e3, "numpy ms": tn * 1e3, "speedup vs numpy": tn / t}


def tiny_program(ops: int = 50) -> Program:
    """W4: 50 chained elementwise ops on a 16x16 tensor, fused into one kernel."""
    x, y = Buffer("x", F, (16, 16)), Buffer("y", F, (16, 16))
    e = Arg("x", F)
    for i in range(ops):
        e = op("mul", e, 1.01) if i % 2 == 0 else op("add", e, 0.5)
    k = elementwise_kernel("w4", (16, 16), {"x": (x, IndexMap.contiguous((16, 16)))}, [(y, e)])
    return Program("w4", (k,), (x,), (y,))


def bench_call(engine: LLVMEngine) -> dict:
    """Per-call cost of a tiny program: the same input every call, and a chain y = f(y) (new input each call)."""
    compiled = engine.compile(tiny_program())
    x = np.ones((16, 16), np.float32)
    n = 20000

    def same():
        for _ in range(n):
            compiled(x)

    def chain():
        y = x
        for _ in range(n):
            (y,) = compiled(y)

    out = {}
    for label, loop in (("W4 per call us (same input)", same), ("W4 per call us (y = f(y))", chain)):
        loop()
        times = []
        for _ in range(5):
            t0 = time.perf_counter()
            loop()
            times.append((time.perf_counter() - t0) / n)
        out[label] = float(np.median(times)) * 1e6
    return out


COLD_SCRIPT = textwrap.dedent("""
    import json, sys, time
    t0 = time.perf_counter()
    sys.path[:0] = [{root!r}, {here!r}]
    from bench_llvm import tiny_program, gelu_program
    from runtime.llvm_engine import LLVMEngine
    engine = LLVMEngine()
    t1 = time.perf_counter()
    small = engine.compile(tiny_program())
    t2 = time.perf_counter()
    gelu = engine.compile(gelu_program(1 << 10))
    t3 = time.perf_counter()
    print(json.dumps(dict(import_s=t1 - t0, w4_compile_s=t2 - t1, w1_compile_s=t3 - t2,
                          llvm_compiles=engine.stats.compiles, disk_hits=engine.stats.disk_hits)))
""")


def bench_compile() -> dict:
    """Cold (first process, empty cache) and warm (second process, disk cache) compile times."""
    with tempfile.TemporaryDirectory() as cache:
        env = dict(os.environ, TRACETORCH_CACHE_DIR=cache)
        script = COLD_SCRIPT.format(root=str(ROOT), here=str(Path(__file__).parent))
        out = {}
        for label in ("cold", "warm"):
            res = json.loads(subprocess.run([sys.executable, "-c", script], env=env, capture_output=True,
                                            text=True, check=True).stdout)
            out[label] = res
    return out


def main(which: list[str]) -> None:
    engine = LLVMEngine(cache=DiskCache(tempfile.mkdtemp()))
    runs = {"w1": lambda: bench_w1(engine), "w1b": lambda: bench_w1b(engine), "w2": lambda: bench_w2(engine),
            "call": lambda: bench_call(engine), "compile": bench_compile}
    for name in which or list(runs):
        result = runs[name]()
        print(name, json.dumps(result, indent=1, default=float))


if __name__ == "__main__":
    main(sys.argv[1:])
