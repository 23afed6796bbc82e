"""The benchmark report: `python -m bench --quick` writes report.md/report.json of the expected shape,
compiled results are checked against eager, and a failing or missing system never stops the suite."""
from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pytest

REPO = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(REPO))

from bench import STATS_KEYS  # noqa: E402
from bench.__main__ import main  # noqa: E402
from bench.runner import Options, Systems, find_compiler, run_compile_times  # noqa: E402
from bench.workloads import build_cases  # noqa: E402

QUICK_CASES = {"W1 N=2^16", "W1b 128x512", "W2 softmax 256x256", "W2 layernorm 256x256", "W4 50 ops 16x16"}


def _load(out: Path) -> tuple[dict, str]:
    return json.loads((out / "report.json").read_text()), (out / "report.md").read_text()


def test_quick_run_writes_report_with_checked_results(tmp_path):
    out = tmp_path / "report"
    proc = subprocess.run([sys.executable, "-m", "bench", "--quick", "--out", str(out), "--only", "W1,W1b,W2,W4"],
                          cwd=REPO, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    data, markdown = _load(out)

    # one progress line per case, the machine and the copy roof
    for name in QUICK_CASES:
        assert any(line.startswith("[") and f"] {name}: " in line for line in proc.stdout.splitlines()), name
    machine = data["machine"]
    assert machine["cpu_model"] and machine["logical_cpus"] >= 1
    assert machine["libraries"]["numpy"] == np.__version__ and machine["libraries"]["tracetorch"]
    assert data["copy"]["gb_per_s"] > 0 and data["copy"]["bytes_per_copy"] == 8 * data["copy"]["elements"]
    assert {"tt-eager", "tt-interp", "tt-llvm", "numpy", "torch-eager", "torch-compile"} <= set(data["systems"])
    assert {c["case"] for c in data["cases"]} == QUICK_CASES
    assert data["compile_times"] == []           # C1 not selected

    compile_available = find_compiler()[0] is not None
    for case in data["cases"]:
        results = case["results"]
        for system in ("tt-eager", "numpy"):
            r = results[system]
            assert r["status"] == "ok", (case["case"], system, r)
            assert 0 < r["min_s"] <= r["median_s"] <= r["max_s"] and r["repeats"] >= 5
        assert results["numpy"]["check"]["ok"] is True, (case["case"], results["numpy"]["check"])
        for system, r in results.items():
            assert r["status"] in ("ok", "skipped", "error")
            assert r["status"] != "skipped" or r["reason"]
            if system.startswith("tt-") and system != "tt-eager" and r["status"] == "ok":
                assert r["check"]["ok"] is True, (case["case"], system, r["check"])   # compiled == eager
        if compile_available:
            assert results["tt-interp"]["status"] == "ok", (case["case"], results["tt-interp"])
        else:
            assert "tt.compile" in results["tt-interp"]["reason"]

    # where the compiled time goes: the slowest steps of each LLVM case, by the names explain() gives
    for case in data["cases"]:
        r = case["results"]["tt-llvm"]
        if r["status"] != "ok":
            continue
        prof = r["profile"]
        assert prof["status"] == "ok" and prof["calls"] == 5 and 0 < len(prof["top"]) <= 5, (case["case"], prof)
        shares = [k["share"] for k in prof["top"]]
        assert shares == sorted(shares, reverse=True) and 0 < sum(shares) <= 1 + 1e-9
        assert all(k["step"].startswith(("k", "writeback")) and k["seconds_per_call"] > 0 for k in prof["top"])
        assert f"| {prof['top'][0]['step']} (" in markdown.split("## Where the time goes")[1]

    # the tables a person reads first
    assert "## Summary" in markdown and "## Checks" in markdown
    summary = markdown.split("## Summary")[1].split("##")[0]
    assert "| workload | tt-eager |" in summary and "| numpy |" in summary
    for name in QUICK_CASES:
        assert f"| {name} |" in summary
    if data["availability"]["torch"].startswith("PyTorch: not installed"):
        assert "PyTorch: not installed" in markdown


class _FakeCompiled:
    """Stands in for tt.compile's callable: runs eagerly, optionally corrupts results, reports stats."""

    def __init__(self, fn, backend):
        self.fn, self.backend = fn, backend

    def __call__(self, *args):
        if self.backend == "broken":
            raise RuntimeError("kernel launch failed")
        out = self.fn(*args)
        return out * 1.5 if self.backend == "wrong" else out

    def stats(self):
        return {"kernels_before_fusion": 12, "kernels_after_fusion": 1, "bytes_moved": 4096,
                "planned_peak_bytes": 2048, "compile_seconds": 0.25, "traces": 1, "guards": {"shape": 0}}


def _fake_compile(fn, backend):
    if backend == "llvm":
        raise NotImplementedError("the LLVM backend comes later")
    return _FakeCompiled(fn, backend)


def test_stats_checks_skips_and_errors_reach_the_report(tmp_path):
    systems = Systems("cpu", _fake_compile, None, ("interp", "wrong", "broken", "llvm"),
                      torch=None, torch_reason="PyTorch: not installed")
    assert main(["--quick", "--out", str(tmp_path), "--only", "W4,W1"], systems=systems) == 0
    data, markdown = _load(tmp_path)
    assert [c["workload"] for c in data["cases"]] == ["W1", "W4"]
    for case in data["cases"]:
        results = case["results"]
        interp = results["tt-interp"]
        assert interp["status"] == "ok" and interp["check"]["ok"] is True
        assert set(interp["figures"]) == set(STATS_KEYS) and interp["figures"]["kernels_after_fusion"] == 1
        assert interp["stats"]["guards"] == {"shape": 0}
        assert interp["achieved_gb_per_s"] == pytest.approx(4096 / interp["median_s"] / 1e9)
        wrong = results["tt-wrong"]
        assert wrong["status"] == "ok" and wrong["check"]["ok"] is False and wrong["check"]["mismatches"]
        assert results["tt-broken"]["status"] == "error" and "kernel launch failed" in results["tt-broken"]["error"]
        assert results["tt-llvm"]["status"] == "skipped" and "LLVM backend comes later" in results["tt-llvm"]["reason"]
        assert results["torch-eager"] == {"status": "skipped", "reason": "PyTorch: not installed"}

    summary = markdown.split("## Summary")[1].split("##")[0]
    assert "| W4 50 ops 16x16 |" in summary and "tt-interp" in summary and "12 → 1" in summary
    assert "(check failed)" in summary                       # the corrupted backend's times are flagged
    assert "FAILED" in markdown.split("## Checks")[1]
    skipped = markdown.split("## Skipped and failed")[1]
    assert "**tt-llvm** skipped on all workloads" in skipped and "**tt-broken** error" in skipped
    assert "PyTorch: not installed" in skipped
    assert "4 KiB" in markdown.split("## Compiled tracetorch")[1]   # bytes moved from the stats


def test_compile_time_probe_runs_cold_then_warm():
    case = next(c for c in build_cases(True, "cpu") if c.workload == "W4")
    systems = Systems("cpu", _fake_compile, None, ("interp",))
    [row] = run_compile_times([case], systems, Options.for_run(True, "cpu"), log=lambda line: None)
    assert row["backend"] == "interp" and row["status"] in ("ok", "skipped"), row
    if find_compiler()[0] is None:
        assert "tt.compile" in row["cold"]["reason"]
    else:
        assert row["status"] == "ok", row
        for phase in ("cold", "warm"):
            assert row[phase]["first_call_s"] > 0 and set(row[phase]["figures"]) == set(STATS_KEYS)


def test_interleaved_rounds_pair_systems_under_the_same_load(monkeypatch):
    """A fake clock: load on the machine changes from round to round (3x slow in rounds 0 and 3), and in
    round 1 it changes between the two systems' blocks. Each system's round medians follow its load,
    and the speedup is the median of the per-round ratios (2.0, what b costs over a), where the ratio
    of the overall medians (here 6) is skewed by the round that changed mid-way."""
    import bench.runner as runner
    from bench.targets import speedup

    clock = {"now": 0.0, "round": -1, "last": None}
    load = {0: (3, 3), 1: (1, 3), 2: (1, 1), 3: (3, 3), 4: (1, 1)}      # round -> (load for a, load for b)

    def call(system, cost):
        def run():
            if system == "a" and clock["last"] != "a":
                clock["round"] += 1
            clock["last"] = system
            clock["now"] += cost * load[clock["round"]][system == "b"]
        return run

    monkeypatch.setattr(runner, "time", SimpleNamespace(perf_counter=lambda: clock["now"]))
    timed = {"a": runner.Timed(call("a", 1e-3), lambda: None, estimate_s=1e-3),
             "b": runner.Timed(call("b", 2e-3), lambda: None, estimate_s=2e-3)}
    out = runner.measure_interleaved(timed, budget_s=0.1, min_repeats=5, rounds=5, settle_s=0.0)
    assert out["a"]["round_medians_s"] == pytest.approx([3e-3, 1e-3, 1e-3, 3e-3, 1e-3])
    assert out["b"]["round_medians_s"] == pytest.approx([6e-3, 6e-3, 2e-3, 6e-3, 2e-3])
    assert out["b"]["median_s"] / out["a"]["median_s"] == pytest.approx(6.0)
    assert speedup(out["a"], out["b"]) == pytest.approx(2.0)
    assert speedup(out["b"], out["a"]) == pytest.approx(0.5)
    # without rounds (an older report): the ratio of the medians
    assert speedup({"median_s": 1.0}, {"median_s": 3.0}) == pytest.approx(3.0)
