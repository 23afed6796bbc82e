"""`python -m bench [--quick] [--device cpu|cuda] [--out DIR] [--only NAMES]`: run the suite, write the report."""
from __future__ import annotations

import argparse
import os
import sys

from .report import write_report
from .runner import Options, run_suite

DEFAULT_OUT = os.path.join(os.path.dirname(os.path.abspath(__file__)), "results")


def parse_args(argv=None) -> argparse.Namespace:
    ap = argparse.ArgumentParser(prog="python -m bench", description="tracetorch fusion benchmark report")
    ap.add_argument("--quick", action="store_true", help="small sizes and short timings (a smoke run)")
    ap.add_argument("--device", choices=("cpu", "cuda"), default="cpu")
    ap.add_argument("--out", default=DEFAULT_OUT, help="report directory (default: bench/results)")
    ap.add_argument("--only", type=lambda s: [t for t in s.split(",") if t.strip()],
                    help="comma-separated workloads (W1,W1b,W2,W3,W4,W5,W6,C1) or case names")
    ap.add_argument("--backends", type=lambda s: [t.strip() for t in s.split(",") if t.strip()],
                    help="tt.compile backends to try (default: interp,llvm, and cuda on --device cuda)")
    return ap.parse_args(argv)


def main(argv=None, systems=None) -> int:
    args = parse_args(argv)
    if args.device == "cuda":
        import tracetorch as tt
        if not tt.cuda.is_available():
            print("bench: --device cuda needs a CUDA device and pycuda (tt.cuda.is_available() is False)",
                  file=sys.stderr)
            return 2
    options = Options.for_run(args.quick, args.device, args.only, args.backends)
    data = run_suite(options, systems=systems, log=lambda line: print(line, flush=True))
    paths = write_report(data, args.out)
    print(f"report: {paths['markdown']} ({', '.join(os.path.basename(p) for p in paths.values())})")
    return 0


if __name__ == "__main__":
    sys.exit(main())
