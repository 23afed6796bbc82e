"""The figures to reach of shared/BENCH.md, checked against one run's results, per compiled backend.

Targets name full-size cases; a quick run has other sizes, so its rows read "not run".
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np


@dataclass(frozen=True)
class Target:
    case: str            # a case name of a full run, or "C1 <workload>"
    goal: str
    measure: str         # "speedup:<system>", "copy_fraction", "seconds", "compile:cold" or "compile:warm"
    threshold: float
    higher_is_better: bool = True


CPU_TARGETS = (
    Target("W1 N=2^24", ">= 4x numpy", "speedup:numpy", 4.0),
    Target("W1 N=2^24", ">= 50% of copy bandwidth", "copy_fraction", 0.5),
    Target("W1b 4096x4096", ">= 4x numpy", "speedup:numpy", 4.0),
    Target("W1b 4096x4096", ">= 50% of copy bandwidth", "copy_fraction", 0.5),
    Target("W2 softmax 4096x4096", ">= 1.7x numpy", "speedup:numpy", 1.7),
    Target("W2 layernorm 4096x4096", ">= 5x numpy", "speedup:numpy", 5.0),
    Target("W3 B=128", ">= 1.5x PyTorch eager", "speedup:torch-eager", 1.5),
    Target("W3 B=1024", ">= 1.2x PyTorch eager", "speedup:torch-eager", 1.2),
    Target("W3 B=128", ">= 2x tracetorch eager", "speedup:tt-eager", 2.0),
    Target("W3 B=1024", ">= 2x tracetorch eager", "speedup:tt-eager", 2.0),
    Target("W4 50 ops 16x16", "<= 10 µs per call", "seconds", 10e-6, higher_is_better=False),
    Target("C1 W3", "cold compile <= 0.5 s (first-call overhead)", "compile:cold", 0.5, higher_is_better=False),
    Target("C1 W3", "warm compile <= 0.05 s (first-call overhead)", "compile:warm", 0.05,
           higher_is_better=False),
)

GPU_TARGETS = (
    Target("W1 N=2^26", ">= 1.0x torch.compile", "speedup:torch-compile", 1.0),
    Target("W1 N=2^26", ">= 85% of copy bandwidth", "copy_fraction", 0.85),
    Target("W2 softmax 4096x4096", ">= 1.0x torch.compile", "speedup:torch-compile", 1.0),
    Target("W2 softmax 8192x8192", ">= 1.0x torch.compile", "speedup:torch-compile", 1.0),
    Target("W2 layernorm 4096x4096", ">= 1.0x torch.compile", "speedup:torch-compile", 1.0),
    Target("W2 layernorm 8192x8192", ">= 1.0x torch.compile", "speedup:torch-compile", 1.0),
    Target("W3 B=128", "<= 0.3 ms per step", "seconds", 0.3e-3, higher_is_better=False),
    Target("W4 50 ops 16x16", "<= 30 µs per call", "seconds", 30e-6, higher_is_better=False),
)


def evaluate(data: dict) -> list[dict]:
    """One row per target and compiled backend: the value reached in this run and whether it meets the goal."""
    targets = GPU_TARGETS if data["device"] == "cuda" else CPU_TARGETS
    backends = [s for s in data["systems"] if s.startswith("tt-") and s != "tt-eager" and _ran(data, s)]
    cases = {c["case"]: c for c in data["cases"]}
    compile_rows = {(r["workload"], r["backend"]): r for r in data.get("compile_times", [])}
    rows = []
    for target in targets:
        for system in backends:
            value, why = _value(target, system, cases, compile_rows)
            met = None if value is None else (value >= target.threshold if target.higher_is_better
                                              else value <= target.threshold)
            rows.append({"case": target.case, "goal": target.goal, "system": system, "measure": target.measure,
                         "threshold": target.threshold, "value": value, "why_missing": why, "met": met})
    return rows


def _ran(data: dict, system: str) -> bool:
    """Whether a compiled backend produced any figure in this run (only those get target rows)."""
    return (any(c["results"].get(system, {}).get("status") == "ok" for c in data["cases"])
            or any(r.get("status") == "ok" and f"tt-{r['backend']}" == system for r in data.get("compile_times", [])))


def _value(target: Target, system: str, cases: dict, compile_rows: dict) -> tuple[float | None, str | None]:
    if target.measure.startswith("compile:"):
        row = compile_rows.get((target.case.split()[1], system[len("tt-"):]))
        if row is None:
            return None, "not run"
        probe = row.get(target.measure.split(":")[1]) or {}
        if probe.get("status") != "ok":
            return None, row.get("reason") or probe.get("reason") or probe.get("error") or row.get("status")
        return probe["overhead_s"], None
    case = cases.get(target.case)
    if case is None:
        return None, "not run"
    result = case["results"].get(system, {})
    if result.get("status") != "ok":
        return None, result.get("status", "not run")
    if target.measure == "seconds":
        return result["median_s"], None
    if target.measure == "copy_fraction":
        fraction = result.get("effective_copy_fraction")
        return fraction, None if fraction is not None else "no byte count"
    other = case["results"].get(target.measure.split(":")[1], {})
    if other.get("status") != "ok":
        return None, f"{target.measure.split(':')[1]} {other.get('status', 'not run')}"
    return speedup(result, other), None


def speedup(result: dict, other: dict) -> float:
    """How many times faster `result` ran than `other`: the median over rounds of the ratio of their
    round medians where both were sampled in the same rounds (each pair ran under the same load; the
    ratio of overall medians mixes a slow phase of one with a fast phase of the other), else the ratio
    of their medians."""
    mine, theirs = result.get("round_medians_s") or [], other.get("round_medians_s") or []
    if mine and len(mine) == len(theirs):
        return float(np.median([t / m for m, t in zip(mine, theirs)]))
    return other["median_s"] / result["median_s"]
