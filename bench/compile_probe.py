"""C1 child process: compile one case with one backend and time its first calls.

    python -m bench.compile_probe --case "W3 B=128" --backend llvm [--device cpu] [--quick]

Run by the runner in a fresh process with `TRACETORCH_CACHE_DIR` set, so the
first call pays the whole compile (cold) or finds the on-disk cache (warm).
Prints one JSON line last: status, first_call_s, steady_call_s, overhead_s (what the
first calls took beyond steady calls: the compile cost a user waits for), the stats.
"""
from __future__ import annotations

import argparse
import json
import sys
import time
import traceback


FIRST_CALLS = 3      # a compiler may trace on the first call and compile on the second: all count
STEADY_CALLS = 5     # the fastest of these is a call's cost without compiling


def probe(case_name: str, backend: str, device: str, quick: bool) -> dict:
    from .runner import _read_stats, find_compiler
    from .workloads import build_cases
    compile_fn, reason = find_compiler()
    if compile_fn is None:
        return {"status": "skipped", "reason": reason}
    cases = {c.name: c for c in build_cases(quick, device)}
    if case_name not in cases:
        return {"status": "error", "error": f"no case {case_name!r}; cases: {sorted(cases)}"}
    case = cases[case_name]
    instance = case.tracetorch(case.make_inputs(), device)
    try:
        fn = compile_fn(instance.fn, backend=backend)
    except Exception as e:
        return {"status": "skipped", "reason": f"tt.compile(backend={backend!r}) raised {type(e).__name__}: {e}"}
    sync = _sync(device)
    times = []
    for _ in range(FIRST_CALLS + STEADY_CALLS):
        t0 = time.perf_counter()
        fn(*instance.args)
        sync()
        times.append(time.perf_counter() - t0)
    steady = min(times[FIRST_CALLS:])
    overhead = sum(max(0.0, t - steady) for t in times[:FIRST_CALLS])
    return {"status": "ok", "first_call_s": times[0], "steady_call_s": steady, "overhead_s": overhead,
            "call_times_s": times, **_read_stats(fn)}


def _sync(device: str):
    if device == "cuda":
        import tracetorch as tt
        return tt.cuda.synchronize
    return lambda: None


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--case", required=True)
    ap.add_argument("--backend", required=True)
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--quick", action="store_true")
    args = ap.parse_args(argv)
    try:
        result = probe(args.case, args.backend, args.device, args.quick)
    except (ImportError, NotImplementedError) as e:
        result = {"status": "skipped", "reason": f"{type(e).__name__}: {e}"}
    except Exception as e:
        result = {"status": "error", "error": f"{type(e).__name__}: {e}", "traceback": traceback.format_exc(limit=12)}
    sys.stdout.flush()
    print(json.dumps(result))
    return 0


if __name__ == "__main__":
    sys.exit(main())
