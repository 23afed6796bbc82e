"""The fusion benchmark suite: `python -m bench [--quick] [--device cpu|cuda] [--out DIR] [--only NAMES]`.

Runs the workloads of shared/BENCH.md on every system available in this
process (tracetorch eager, tracetorch compiled per backend, hand-written
numpy, PyTorch eager and `torch.compile`) and writes `report.md`,
`report.json` and PNG charts into `--out` (default `bench/results/`).
Every time is a median of repeated calls after warm-up; every comparison is
a ratio of times taken in the same run: the systems of a case are sampled in
12 short turns, and a speedup is the median over the turns of the ratio
within each turn (load on a shared machine comes in phases of seconds).

Modules: `workloads` (what is run), `runner` (timing, checks, systems),
`machine` (machine description, copy-bandwidth probe), `compile_probe`
(C1: compile time in a fresh process), `report` and `charts` (output),
`targets` (the figures to reach of BENCH.md).

Contract with the compiler (`tt.compile`)
-----------------------------------------
The bench discovers what exists at run time. It compiles with
`tt.compile(fn, backend=NAME)` for NAME in `interp`, `llvm` (and `cuda` on
`--device cuda`); a backend whose compile or first call raises is reported
as skipped, with the exception as the reason.

After timing, it calls the compiled callable's `.stats()` (when it has one)
and reads these keys of the returned dict, each describing the program that
ran last; a missing key shows as "n/a":

=======================  =====  ==============================================
key                      type   meaning
=======================  =====  ==============================================
kernels_before_fusion    int    kernels one call would launch with one kernel
                                per non-view primitive op (after simplify)
kernels_after_fusion     int    kernels one call launches (extern calls such
                                as matmul count as kernels)
bytes_moved              int    bytes all kernels of one call read and write
                                in memory, from the memory plan
planned_peak_bytes       int    peak bytes of intermediates in the planned
                                arena (inputs and outputs excluded)
compile_seconds          float  seconds spent running passes and generating
                                code for this function, in total
trace_seconds            float  seconds spent tracing (running the function
                                under the tracer) for it, in total
=======================  =====  ==============================================

The whole dict is also stored in report.json (values that are not JSON are
written as strings).

C1 (compile time cold and warm) runs `python -m bench.compile_probe` twice in
fresh processes with `TRACETORCH_CACHE_DIR` set to one new empty directory:
the first run is cold, the second must find the on-disk cache there. Its
headline figure, the one the targets use, needs no stats: the overhead of
the first calls, the time the first three calls took beyond a steady call
(tracing and compiling, wherever the compiler does them): what a user waits for.
"""
from __future__ import annotations

STATS_KEYS = ("kernels_before_fusion", "kernels_after_fusion", "bytes_moved", "planned_peak_bytes",
              "compile_seconds", "trace_seconds")
CACHE_DIR_ENV = "TRACETORCH_CACHE_DIR"
