"""Runs every case on every system: builds, checks against tracetorch eager, times, reads compiler stats.

A system that cannot run here is recorded as skipped with its reason; one that
fails is recorded as an error with its traceback. Nothing a workload does can
stop the suite.
"""
from __future__ import annotations

import gc
import json
import math
import os
import shutil
import subprocess
import sys
import tempfile
import time
import traceback
from contextlib import contextmanager
from dataclasses import dataclass
from statistics import median
from typing import Any, Callable

import numpy as np

from . import CACHE_DIR_ENV, STATS_KEYS
from .workloads import COMPILE_TIME_WORKLOADS, REPO_ROOT, Case, Instance

CHECK_CALLS = 3            # calls compared against eager: the first traces, the later ones run the program
DEFAULT_BACKENDS = ("interp", "llvm")


@dataclass
class Options:
    quick: bool = False
    device: str = "cpu"
    only: list[str] | None = None            # workload ids (W1, C1) or case names; None runs everything
    backends: tuple[str, ...] = DEFAULT_BACKENDS
    budget_s: float = 1.0                     # time spent on the timed calls of one system on one case
    min_repeats: int = 7
    rounds: int = 12                          # blocks of samples per system, taken in turn: load on a shared
                                              # machine comes in phases of seconds, which short turns share out
    probe_timeout_s: float = 600.0
    quiet_s: float = 0.25                     # a pause before each block: numpy's OpenBLAS workers spin
                                              # ~0.1-0.2 s after its last call and halve the speed of the
                                              # next system's threads meanwhile (W3 B=1024 right after a
                                              # numpy matmul: 22.6 ms; 0.2 s later: 16.8 ms). A pause, not
                                              # calls: W5 trains one batch over and over, and after ~2 s
                                              # of steps its values turn denormal and every system slows
                                              # 2-3x, the fastest first

    @classmethod
    def for_run(cls, quick: bool, device: str, only=None, backends=None) -> "Options":
        backends = tuple(backends) if backends else DEFAULT_BACKENDS + (("cuda",) if device == "cuda" else ())
        if quick:
            return cls(True, device, only, backends, budget_s=0.15, min_repeats=5, rounds=2, probe_timeout_s=150.0,
                       quiet_s=0.0)
        return cls(False, device, only, backends)

    def selects(self, name: str) -> bool:
        """Whether `--only` asks for this workload id (W3, C1) or case name ("W3 B=128")."""
        if not self.only:
            return True
        wanted = {token.strip().lower() for token in self.only}
        return name.lower() in wanted or name.split()[0].lower() in wanted


class Skip(Exception):
    """This system cannot run this case here; the message says why."""


@dataclass
class Systems:
    """What this process can run. A reason string is set where something is unavailable."""
    device: str
    compile: Callable | None
    compile_reason: str | None
    backends: tuple[str, ...]
    torch: Any = None
    torch_reason: str | None = None
    torch_compile_reason: str | None = None

    def names(self) -> list[str]:
        return (["tt-eager"] + [f"tt-{b}" for b in self.backends] + ["numpy", "torch-eager", "torch-compile"])

    def describe(self) -> dict:
        torch = f"available ({self.torch.__version__})" if self.torch is not None else "not used"
        return {"tt.compile": self.compile_reason or "available", "backends": list(self.backends),
                "torch": self.torch_reason or torch,
                "torch.compile": self.torch_reason or self.torch_compile_reason or torch}


def find_compiler() -> tuple[Callable | None, str | None]:
    """`tt.compile` if this checkout has it, else None and why."""
    import tracetorch as tt
    try:
        return tt.compile, None
    except AttributeError:
        pass
    try:
        from tracetorch.jit import compile as compile_fn
        return compile_fn, None
    except Exception as e:
        return None, f"tt.compile is not available ({type(e).__name__}: {e})"


def find_torch(options: Options) -> tuple[Any, str | None, str | None]:
    """PyTorch (an optional comparison), why it is missing, and why torch.compile is skipped."""
    try:
        import torch
    except ImportError:
        return None, "PyTorch: not installed (optional; `pip install torch` to compare)", None
    except Exception as e:
        return None, f"PyTorch: import failed ({type(e).__name__}: {e})", None
    if options.device == "cuda" and not torch.cuda.is_available():
        return None, "PyTorch: no CUDA device visible to torch", None
    compile_reason = None
    if options.quick:
        compile_reason = "torch.compile: not run with --quick (its compiles take 10-20 s per workload)"
    elif options.device == "cpu" and not any(shutil.which(c) for c in ("c++", "g++", "clang++")):
        compile_reason = "torch.compile: needs a C++ compiler on the PATH for the CPU, none found"
    return torch, None, compile_reason


def discover_systems(options: Options) -> Systems:
    compile_fn, compile_reason = find_compiler()
    torch, torch_reason, torch_compile_reason = find_torch(options)
    return Systems(options.device, compile_fn, compile_reason, options.backends, torch, torch_reason,
                   torch_compile_reason)


# ---------------------------------------------------------------- timing

@dataclass
class Timed:
    """A call to time: `inner` calls make one sample, so that a sample lasts `min_sample_s` at least."""
    call: Callable
    sync: Callable
    estimate_s: float = 0.0
    inner: int = 1


def warm_up(timed: Timed, budget_s: float, min_sample_s: float = 1e-3) -> None:
    """Two calls at least, more up to a tenth of `budget_s`; the fastest is the per-call estimate."""
    times = []
    while len(times) < 2 or (len(times) < 50 and sum(times) < 0.1 * budget_s):
        t0 = time.perf_counter()
        timed.call()
        timed.sync()
        times.append(time.perf_counter() - t0)
    timed.estimate_s = max(min(times), 1e-9)
    timed.inner = max(1, math.ceil(min_sample_s / timed.estimate_s))


def measure_interleaved(timed: dict[str, Timed], budget_s: float, min_repeats: int, rounds: int,
                        settle_s: float = 0.02, max_repeats: int = 1000, quiet_s: float = 0.0) -> dict[str, dict]:
    """Median seconds per call of each warmed-up entry, sampled in `rounds` rounds of one block per
    entry, so that load from elsewhere on a shared machine hits every system alike and the ratios of one
    run hold. Blocks, not single samples: right after a system ran, its thread pools (OpenBLAS,
    OpenMP) still spin and on a 2-core machine slow the next system's calls up to threefold; so each
    block starts with a pause of `quiet_s` and `settle_s` of untimed calls. The samples fit
    `budget_s` per entry, `min_repeats` at least. Each entry's median per round is kept too
    (`round_medians_s`): the ratio of two systems is best taken round by round (`targets.speedup`),
    each round's pair having run under the same load. A call that raises ends that entry's sampling;
    its result is the error."""
    per_block = {name: int(min(max_repeats / rounds, max(math.ceil(min_repeats / rounds),
                                                         budget_s / rounds / (t.estimate_s * t.inner))))
                 for name, t in timed.items()}
    samples: dict[str, list[float]] = {name: [] for name in timed}
    rounds_of: dict[str, list[float]] = {name: [] for name in timed}
    failed: dict[str, dict] = {}
    gc.collect()
    for _ in range(rounds):
        for name, t in timed.items():
            if name in failed:
                continue
            try:
                if quiet_s:
                    time.sleep(quiet_s)
                _settle(t, settle_s)
                for _ in range(per_block[name]):
                    t0 = time.perf_counter()
                    for _ in range(t.inner):
                        t.call()
                    t.sync()
                    samples[name].append((time.perf_counter() - t0) / t.inner)
                rounds_of[name].append(median(samples[name][-per_block[name]:]))
            except Exception as e:
                failed[name] = _error(e, "the timed calls")
    out = {}
    for name, values in samples.items():
        if name in failed:
            out[name] = failed[name]
            continue
        out[name] = {"median_s": median(values), "min_s": min(values), "max_s": max(values),
                     "repeats": len(values), "inner": timed[name].inner, "rounds": rounds, "samples_s": values,
                     "round_medians_s": rounds_of[name]}
    return out


def _settle(timed: Timed, seconds: float) -> None:
    """Untimed calls, one at least, until `seconds` passed."""
    start, calls = time.perf_counter(), 0
    while calls < 1 or time.perf_counter() - start < seconds:
        timed.call()
        timed.sync()
        calls += 1


def _no_sync():
    pass


# ---------------------------------------------------------------- results as numpy, and checks

def to_numpy(value) -> Any:
    """A result of any system as numpy arrays (nested tuples/lists/dicts kept), copied."""
    if isinstance(value, dict):
        return {k: to_numpy(v) for k, v in value.items()}
    if isinstance(value, (tuple, list)):
        return [to_numpy(v) for v in value]
    if isinstance(value, np.ndarray) or np.isscalar(value):
        return np.array(value, copy=True)
    for method in ("detach", "cpu"):
        if hasattr(value, method):
            value = getattr(value, method)()
    return np.array(value.numpy(), copy=True)


def _flatten(value, label: str) -> list[tuple[str, np.ndarray]]:
    if isinstance(value, dict):
        return [pair for k, v in value.items() for pair in _flatten(v, f"{label}[{k!r}]")]
    if isinstance(value, list):
        return [pair for i, v in enumerate(value) for pair in _flatten(v, f"{label}[{i}]")]
    return [(label, value)]


def compare(record: dict, reference: dict, rtol: float, atol: float) -> dict:
    """Every call's result and every final state array of `record` against `reference`, allclose."""
    got = _flatten(record["calls"], "call") + _flatten(record["state"], "state")
    want = dict(_flatten(reference["calls"], "call") + _flatten(reference["state"], "state"))
    max_err, mismatches = 0.0, []
    for label, a in got:
        b = want.get(label)
        if b is None or np.shape(a) != np.shape(b):
            mismatches.append(f"{label}: shape {np.shape(a)} vs {None if b is None else np.shape(b)}")
            continue
        a64, b64 = np.asarray(a, np.float64), np.asarray(b, np.float64)
        diff = np.abs(a64 - b64)
        diff = diff[np.isfinite(diff)]
        if diff.size:
            max_err = max(max_err, float(diff.max()))
        if not np.allclose(a64, b64, rtol=rtol, atol=atol, equal_nan=True):
            mismatches.append(label)
    return {"ok": not mismatches and len(got) == len(want), "against": "tt-eager", "compared": len(got),
            "max_abs_err": max_err, "rtol": rtol, "atol": atol, "mismatches": mismatches[:5]}


# ---------------------------------------------------------------- one system on one case

def _build(factory: Callable[[], Instance]) -> Instance:
    try:
        return factory()
    except ImportError as e:
        raise Skip(f"needs {e.name or 'a module'} ({type(e).__name__}: {e})") from e


def _instance(case: Case, system: str, inputs: dict, systems: Systems) -> tuple[Instance, Callable]:
    """A fresh instance of `case` for `system`, compiled where the system compiles, and its sync."""
    device = systems.device
    if system == "numpy":
        if case.numpy is None:
            raise Skip("no hand-written numpy version of this workload")
        if device != "cpu":
            raise Skip("numpy runs on the CPU only")
        return case.numpy(inputs), _no_sync
    if system.startswith("torch-"):
        torch = systems.torch
        if torch is None:
            raise Skip(systems.torch_reason)
        if case.torch is None:
            raise Skip("no PyTorch version of this workload")
        if system == "torch-compile" and systems.torch_compile_reason:
            raise Skip(systems.torch_compile_reason)
        instance = _build(lambda: case.torch(inputs, torch, device))
        if system == "torch-compile":
            instance.fn = torch.compile(instance.fn)
        return instance, (torch.cuda.synchronize if device == "cuda" else _no_sync)
    if case.tracetorch is None:
        raise Skip("no tracetorch version of this workload")
    import tracetorch as tt
    sync = tt.cuda.synchronize if device == "cuda" else _no_sync
    backend = system[len("tt-"):]
    if backend != "eager" and systems.compile is None:
        raise Skip(systems.compile_reason)
    instance = _build(lambda: case.tracetorch(inputs, device))
    if backend != "eager":
        try:
            instance.fn = systems.compile(instance.fn, backend=backend)
        except Exception as e:
            raise Skip(f"tt.compile(backend={backend!r}) raised {type(e).__name__}: {e}") from e
    return instance, sync


def prepare_system(case: Case, system: str, inputs: dict, systems: Systems, options: Options,
                   reference: dict | None) -> tuple[dict, dict | None, Instance | None, Timed | None]:
    """One system on one case up to timing: build, CHECK_CALLS calls compared with `reference`, warm-up.

    Returns the result so far, the numpy results of the check calls (the reference, for tt-eager), and
    the instance and its warmed-up call, or None for both where the system did not get that far.
    """
    compiled = system.startswith("tt-") and system != "tt-eager" or system == "torch-compile"
    try:
        instance, sync = _instance(case, system, inputs, systems)
    except Skip as e:
        return {"status": "skipped", "reason": str(e)}, None, None, None
    except Exception as e:
        return _error(e, "building the workload"), None, None, None
    call = lambda: instance.fn(*instance.args)  # noqa: E731
    try:
        t0 = time.perf_counter()
        first = call()
        sync()
        first_call_s = time.perf_counter() - t0
    except NotImplementedError as e:
        return {"status": "skipped", "reason": f"first call raised NotImplementedError: {e}"}, None, None, None
    except Exception as e:
        during = "the first call (tracing and compiling)" if compiled else "the first call"
        return _error(e, during), None, None, None
    result: dict = {"status": "ok", "first_call_s": first_call_s}
    try:
        calls = [to_numpy(first)] + [to_numpy(call()) for _ in range(CHECK_CALLS - 1)]
        record = {"calls": calls, "state": {k: to_numpy(v) for k, v in instance.state().items()}}
        del first
        if system != "tt-eager" and (system.startswith("tt-") or case.cross_check):
            result["check"] = (compare(record, reference, *case.tolerance) if reference is not None else
                               {"ok": None, "reason": "no tracetorch eager result to compare with"})
        timed = Timed(call, sync)
        warm_up(timed, options.budget_s)
    except Exception as e:
        return {**result, **_error(e, "the checked calls and warm-up")}, None, None, None
    return result, record, instance, timed


def _read_stats(fn) -> dict:
    """The `.stats()` dict as JSON, and the contract's figures (None where the compiler lacks a key)."""
    try:
        stats = fn.stats()
    except Exception as e:
        return {"stats_error": f"{type(e).__name__}: {e}"}
    stats = json.loads(json.dumps(stats, default=str)) if isinstance(stats, dict) else {"value": str(stats)}
    return {"stats": stats, "figures": {k: stats.get(k) for k in STATS_KEYS}}


PROFILE_CALLS = 5          # calls of a compiled system under tt.compiler.profile, after its timing
PROFILE_TOP = 5            # kernels kept per case: the slowest


def profile_calls(timed: "Timed", calls: int = PROFILE_CALLS, top: int = PROFILE_TOP) -> dict:
    """Where a compiled call's time goes: `calls` calls under tt.compiler.profile (after the timed ones,
    so the timing does not include the profile's cost): time per call, the part outside the programs
    (guards, inputs, write-backs) and the slowest kernels, with the names `.explain()` gives them."""
    try:
        import tracetorch as tt
        with tt.compiler.profile():          # once untimed: a program's first profiled run plans its steps
            timed.call()
            timed.sync()
        with tt.compiler.profile() as prof:
            for _ in range(calls):
                timed.call()
            timed.sync()
        functions = [f for f in prof.functions() if f.calls]
        if not functions:
            return {"status": "empty"}
        f = max(functions, key=lambda f: f.seconds)
        rows = sorted((r for r in prof.rows() if r["function"] == f.name), key=lambda r: -r["seconds"])
        kernels = [{"step": r["step"], "program": r["kind_of_program"], "kind": r["kind"],
                    "seconds_per_call": r["seconds"] / f.calls, "share": r["seconds"] / f.seconds,
                    "gb_per_s": r["gb_per_s"], "gflop_per_s": r["gflop_per_s"], "what": r["what"]}
                   for r in rows[:top]]
        return {"status": "ok", "calls": f.calls, "seconds_per_call": f.seconds / f.calls,
                "outside_seconds_per_call": f.outside_per_call, "steps": len(rows), "top": kernels}
    except Exception as e:                   # a report without a profile, never a failed suite
        return {"status": "error", "error": f"{type(e).__name__}: {e}"}


def _add_bandwidth(result: dict, ideal_bytes: int | None, copy_gbs: float | None) -> None:
    """Effective bandwidth (least bytes a call must move / time) and, from the memory plan, achieved."""
    seconds = result.get("median_s")
    if not seconds:
        return
    moved = (result.get("figures") or {}).get("bytes_moved")
    for key, nbytes in (("effective", ideal_bytes), ("achieved", moved)):
        if isinstance(nbytes, (int, float)) and nbytes > 0:
            gbs = nbytes / seconds / 1e9
            result[f"{key}_gb_per_s"] = gbs
            result[f"{key}_copy_fraction"] = gbs / copy_gbs if copy_gbs else None


def _error(e: BaseException, during: str) -> dict:
    return {"status": "error", "error": f"{type(e).__name__}: {e}", "during": during,
            "traceback": traceback.format_exc(limit=12)}


# ---------------------------------------------------------------- a case, the suite

def run_case(case: Case, systems: Systems, options: Options, copy_gbs: float | None) -> dict:
    """Every system on one case: each is built and checked in turn, then all are timed together."""
    t0 = time.perf_counter()
    out = {"workload": case.workload, "case": case.name, "title": case.title, "params": case.params,
           "ideal_bytes": case.ideal_bytes, "tolerance": list(case.tolerance), "results": {}}
    try:
        inputs = case.make_inputs()
    except Exception as e:
        failure = _error(e, "making the inputs")
        out["results"] = {name: failure for name in systems.names()}
        out["seconds"] = time.perf_counter() - t0
        return out
    reference, instances, timed = None, {}, {}
    for name in systems.names():
        result, record, instance, ready = prepare_system(case, name, inputs, systems, options, reference)
        if name == "tt-eager":
            reference = record
        out["results"][name] = result
        if ready is not None:
            instances[name], timed[name] = instance, ready
    del reference
    gc.collect()
    for name, timing in measure_interleaved(timed, options.budget_s, options.min_repeats, options.rounds,
                                            quiet_s=options.quiet_s).items():
        result = out["results"][name]
        result.update(timing)
        if hasattr(instances[name].fn, "stats"):
            result.update(_read_stats(instances[name].fn))
            if name.startswith("tt-"):
                result["profile"] = profile_calls(timed[name])
        _add_bandwidth(result, case.ideal_bytes, copy_gbs)
    out["seconds"] = time.perf_counter() - t0
    return out


def run_suite(options: Options, systems: Systems | None = None, log: Callable[[str], None] = print) -> dict:
    """Everything `--only` selects: the machine, the copy roof, each case, then C1. Returns report.json's data.

    Compiles in this process start from an empty on-disk cache (a temporary `TRACETORCH_CACHE_DIR`), so
    their first calls are cold whatever earlier runs left behind.
    """
    from . import workloads
    from .machine import copy_bandwidth, describe_machine
    started = time.time()
    load_at_start = os.getloadavg()[0] if hasattr(os, "getloadavg") else None
    with tempfile.TemporaryDirectory(prefix="tracetorch-bench-cache-") as cache_dir, \
            _environment(CACHE_DIR_ENV, cache_dir):
        systems = systems or discover_systems(options)
        all_cases = workloads.build_cases(options.quick, options.device)
        cases = [c for c in all_cases if options.selects(c.name)]
        run_c1 = options.selects("C1")
        log(f"bench: {len(cases)} cases{' + C1' if run_c1 else ''} on {options.device}"
            f"{' (quick)' if options.quick else ''}; systems: {', '.join(systems.names())}")
        copy = copy_bandwidth(options.device, elements=1 << (24 if options.quick else 26))
        log(f"copy bandwidth ({copy['system']}, {copy['elements']} float32): {copy['gb_per_s']:.1f} GB/s")
        data = {"schema": 1, "created": time.strftime("%Y-%m-%dT%H:%M:%S%z"), "argv": sys.argv[1:],
                "quick": options.quick, "device": options.device, "machine": describe_machine(),
                "load_average_at_start": load_at_start, "copy": copy, "systems": systems.names(),
                "availability": systems.describe(), "cases": [], "compile_times": []}
        for i, case in enumerate(cases, 1):
            log(f"[{i}/{len(cases)}] {case.name} ...")
            result = run_case(case, systems, options, copy["gb_per_s"])
            data["cases"].append(result)
            log(f"[{i}/{len(cases)}] {progress_line(result)}")
    if run_c1:
        data["compile_times"] = run_compile_times(_compile_time_cases(all_cases, cases), systems, options, log)
    data["seconds"] = time.time() - started
    return data


@contextmanager
def _environment(name: str, value: str):
    """`os.environ[name] = value` for the duration of the block."""
    old = os.environ.get(name)
    os.environ[name] = value
    try:
        yield
    finally:
        if old is None:
            os.environ.pop(name, None)
        else:
            os.environ[name] = old


def progress_line(case_result: dict) -> str:
    from .report import format_seconds
    parts = []
    for name, r in case_result["results"].items():
        if r["status"] == "ok":
            check = r.get("check") or {}
            flag = " CHECK FAILED" if check.get("ok") is False else ""
            parts.append(f"{name} {format_seconds(r['median_s'])}{flag}")
        else:
            parts.append(f"{name} {r['status']}")
    return f"{case_result['case']}: {', '.join(parts)} ({case_result['seconds']:.1f} s)"


# ---------------------------------------------------------------- C1: compile time in fresh processes

def _compile_time_cases(all_cases: list[Case], selected: list[Case]) -> list[Case]:
    """The first (smallest) case of each selected workload; of W3 and W5 (BENCH.md's C1) if none is."""
    workloads = {c.workload for c in selected} or set(COMPILE_TIME_WORKLOADS)
    firsts = {}
    for case in all_cases:
        if case.workload in workloads:
            firsts.setdefault(case.workload, case)
    return list(firsts.values())


def run_compile_times(cases: list[Case], systems: Systems, options: Options, log=print) -> list[dict]:
    """Per case and backend: a cold process on an empty cache directory, then a warm one on the same."""
    rows = []
    for case in cases:
        for backend in systems.backends:
            row = {"workload": case.workload, "case": case.name, "backend": backend}
            if systems.compile is None:
                rows.append({**row, "status": "skipped", "reason": systems.compile_reason})
                continue
            with tempfile.TemporaryDirectory(prefix="tracetorch-cache-") as cache_dir:
                for phase in ("cold", "warm"):
                    probe = _run_probe(case, backend, cache_dir, options)
                    row[phase] = probe
                    if probe.get("status") != "ok":
                        break
            statuses = {row[p].get("status") for p in ("cold", "warm") if p in row}
            row["status"] = "ok" if statuses == {"ok"} else "skipped" if "skipped" in statuses else "error"
            log(f"C1 {case.name} [{backend}]: " + ", ".join(
                f"{p} {_probe_summary(row[p])}" for p in ("cold", "warm") if p in row))
            rows.append(row)
    return rows


def _run_probe(case: Case, backend: str, cache_dir: str, options: Options) -> dict:
    env = dict(os.environ)
    env[CACHE_DIR_ENV] = cache_dir
    # Python as a user runs it: the cold process may write bytecode a warm one reads (a sandbox's
    # PYTHONDONTWRITEBYTECODE made each warm start recompile the library's stale sources: ~15 ms)
    env.pop("PYTHONDONTWRITEBYTECODE", None)
    env["PYTHONPATH"] = os.pathsep.join([str(REPO_ROOT)] + [p for p in [env.get("PYTHONPATH")] if p])
    cmd = [sys.executable, "-m", "bench.compile_probe", "--case", case.name, "--backend", backend,
           "--device", options.device] + (["--quick"] if options.quick else [])
    try:
        proc = subprocess.run(cmd, cwd=REPO_ROOT, env=env, capture_output=True, text=True,
                              timeout=options.probe_timeout_s)
    except subprocess.TimeoutExpired:
        return {"status": "error", "error": f"timed out after {options.probe_timeout_s:.0f} s"}
    lines = proc.stdout.strip().splitlines()
    try:
        return json.loads(lines[-1])
    except (IndexError, json.JSONDecodeError):
        return {"status": "error", "error": f"probe exited {proc.returncode}: {proc.stderr.strip()[-2000:]}"}


def _probe_summary(probe: dict) -> str:
    if probe.get("status") != "ok":
        return probe.get("status", "error")
    return f"overhead {probe['overhead_s']:.3f} s (first call {probe['first_call_s']:.3f} s)"
