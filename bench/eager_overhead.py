"""Per-op eager overhead on a 16x16 float32 tensor (issue 2's figure for the README).

    python -m bench.eager_overhead [tracetorch|torch]

Best of 5 runs of 20,000 calls each, in microseconds per op; run both
libraries back to back on a quiet machine and compare the ratios.
"""
from __future__ import annotations

import importlib
import sys
import timeit

CALLS, RUNS = 20_000, 5


def per_call(fn) -> float:
    return min(timeit.repeat(fn, number=CALLS, repeat=RUNS)) / CALLS * 1e6


def measure(lib) -> dict:
    x = lib.randn(16, 16)
    w = lib.randn(16, 16, requires_grad=True)

    def chain():
        y = x
        for _ in range(25):
            y = y * 1.01
            y = y + 0.5
        return y

    out = {}
    with lib.no_grad():
        out["no-grad x*1.01"] = per_call(lambda: x * 1.01)
        out["no-grad x+x"] = per_call(lambda: x + x)
        out["no-grad exp"] = per_call(lambda: x.exp())
        out["no-grad sum(1)"] = per_call(lambda: x.sum(1))
        out["no-grad x@x"] = per_call(lambda: x @ x)
        out["no-grad 50 chained ops (W4)"] = per_call(chain)
    out["grad w*1.01"] = per_call(lambda: w * 1.01)
    out["grad w+w"] = per_call(lambda: w + w)
    return out


def main(argv=None) -> None:
    name = (argv or sys.argv[1:] or ["tracetorch"])[0]
    lib = importlib.import_module(name)
    for what, us in measure(lib).items():
        print(f"{name:>10}  {what:<28} {us:8.2f} us")


if __name__ == "__main__":
    main()
