"""Writes a run's results: report.json (every raw figure), report.md (the tables to read first), charts."""
from __future__ import annotations

import json
import os
from collections import defaultdict

import numpy as np

from .charts import write_charts
from .targets import evaluate, speedup as paired_speedup

COMPARED_WITH = (("tt-eager", "tt eager"), ("numpy", "numpy"), ("torch-eager", "torch eager"),
                 ("torch-compile", "torch.compile"))


def write_report(data: dict, out_dir: str) -> dict:
    """Adds the target rows and chart paths to `data`, then writes every file; returns their paths."""
    os.makedirs(out_dir, exist_ok=True)
    data["targets"] = evaluate(data)
    data["charts"] = write_charts(data, out_dir)
    paths = {"json": os.path.join(out_dir, "report.json"), "markdown": os.path.join(out_dir, "report.md")}
    with open(paths["json"], "w") as f:
        json.dump(data, f, indent=1, default=_json_default)
    with open(paths["markdown"], "w") as f:
        f.write(render_markdown(data))
    return {**paths, **{name: os.path.join(out_dir, name) for name in data["charts"]["written"]}}


def _json_default(value):
    if isinstance(value, np.generic):
        return value.item()
    if isinstance(value, np.ndarray):
        return value.tolist()
    return str(value)


# ---------------------------------------------------------------- formatting

def format_seconds(seconds) -> str:
    if not isinstance(seconds, (int, float)):
        return "n/a"
    if seconds < 1e-3:
        return f"{seconds * 1e6:.3g} µs"
    if seconds < 1:
        return f"{seconds * 1e3:.3g} ms"
    return f"{seconds:.3g} s"


def format_bytes(n) -> str:
    if not isinstance(n, (int, float)):
        return "n/a"
    for unit in ("B", "KiB", "MiB", "GiB"):
        if abs(n) < 1024 or unit == "GiB":
            return f"{n:.0f} {unit}" if unit == "B" else f"{n:.3g} {unit}"
        n /= 1024


def _ratio(x) -> str:
    return f"{x:.2f}x" if isinstance(x, (int, float)) else "n/a"


def _percent(x) -> str:
    return f"{100 * x:.0f}%" if isinstance(x, (int, float)) else "n/a"


def _table(header: list[str], rows: list[list[str]]) -> str:
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    lines += ["| " + " | ".join(str(c) for c in row) + " |" for row in rows]
    return "\n".join(lines) + "\n"


def _cell(result: dict) -> str:
    if result.get("status") != "ok":
        return result.get("status", "n/a")
    text = format_seconds(result["median_s"])
    return text + " (check failed)" if (result.get("check") or {}).get("ok") is False else text


# ---------------------------------------------------------------- picking

def compiled_systems(data: dict) -> list[str]:
    return [s for s in data["systems"] if s.startswith("tt-") and s != "tt-eager"]


def best_tracetorch(case: dict, compiled: list[str]) -> str | None:
    """The fastest compiled tracetorch system whose results matched eager; eager where none ran."""
    ok = [s for s in compiled if case["results"].get(s, {}).get("status") == "ok"
          and (case["results"][s].get("check") or {}).get("ok") is not False]
    if ok:
        return min(ok, key=lambda s: case["results"][s]["median_s"])
    return "tt-eager" if case["results"].get("tt-eager", {}).get("status") == "ok" else None


def speedup(case: dict, system: str | None, other: str):
    results = case["results"]
    if system is None or results.get(other, {}).get("status") != "ok":
        return None
    return paired_speedup(results[system], results[other])


def _ran_anywhere(data: dict, system: str) -> bool:
    return any(c["results"].get(system, {}).get("status") in ("ok", "error") for c in data["cases"])


# ---------------------------------------------------------------- markdown

def render_markdown(data: dict) -> str:
    per_case = [_summary(data), _compiled_details(data)] if data["cases"] else []
    parts = [_header(data), *per_case, _profiles(data), _compile_times(data), _targets(data),
             _checks(data) if data["cases"] else "", _skipped(data), _charts(data)]
    return "\n".join(p for p in parts if p)


def _header(data: dict) -> str:
    m, copy = data["machine"], data["copy"]
    libs = ", ".join(f"{k} {v}" for k, v in m["libraries"].items() if v)
    text = [f"# tracetorch fusion benchmark ({'quick' if data['quick'] else 'full'} run, {data['device']})", "",
            f"{data['created']}, commit {m.get('git_commit') or 'unknown'}, {data.get('seconds', 0):.0f} s.",
            f"Machine: {m['cpu_model']}, {m['physical_cores'] or '?'} cores / {m['logical_cpus']} CPUs "
            f"({m['usable_cpus']} usable), {m['platform']}, Python {m['python']}; {libs}; BLAS {m['blas'] or 'n/a'}.",
            f"Copy bandwidth ({copy['system']}, {copy['elements']} float32, read + write): "
            f"**{copy['gb_per_s']:.1f} GB/s**.", "",
            "Times are medians per call after warm-up, the systems of a workload sampled in blocks taken in "
            "turn; speedups are ratios of times of this run (x > 1: tracetorch is faster), the median over the "
            "turns of the ratio within each turn. Compiles start "
            "from an empty on-disk cache: first calls are cold."]
    load, cpus = data.get("load_average_at_start"), m["usable_cpus"] or 1
    if load is not None and load >= 0.5 * cpus:
        text.append(f"**Other processes were running** (load average {load:.1f} on {cpus} CPUs at the start): "
                    "absolute times are unreliable; the ratios, sampled in turns, less so.")
    if data["quick"]:
        text.append("Quick run: small sizes, short timings; use a full run (`make bench`) for figures.")
    return "\n".join(text) + "\n"


def _summary(data: dict) -> str:
    compiled = compiled_systems(data)
    shown = [s for s in data["systems"] if _ran_anywhere(data, s)]
    comparators = [(s, label) for s, label in COMPARED_WITH if s in shown]
    header = (["workload"] + shown + ["best tracetorch"] + [f"vs {label}" for _, label in comparators]
              + ["kernels", "bw (% copy)"])
    rows = []
    for case in data["cases"]:
        best = best_tracetorch(case, compiled)
        r = case["results"].get(best, {}) if best else {}
        figures = r.get("figures") or {}
        rows.append([case["case"]] + [_cell(case["results"].get(s, {})) for s in shown]
                    + [best or "none"] + [_ratio(speedup(case, best, s)) for s, _ in comparators]
                    + [_kernels(figures), _percent(r.get("effective_copy_fraction"))])
    note = ("\n`best tracetorch` is the fastest compiled backend whose results matched eager (eager where "
            "none ran); "
            "`kernels` is before → after fusion; `bw` is the least bytes a call must move "
            "(inputs read once, outputs written once) per second, as a fraction of the copy bandwidth.\n")
    return "## Summary\n\n" + _table(header, rows) + note


def _kernels(figures: dict) -> str:
    before, after = figures.get("kernels_before_fusion"), figures.get("kernels_after_fusion")
    if before is None and after is None:
        return "n/a"
    return f"{before if before is not None else 'n/a'} → {after if after is not None else 'n/a'}"


def _compiled_details(data: dict) -> str:
    rows = []
    for case in data["cases"]:
        for system in compiled_systems(data):
            r = case["results"].get(system, {})
            if r.get("status") != "ok":
                continue
            f = r.get("figures") or {}
            rows.append([case["case"], system, format_seconds(r["median_s"]),
                         _ratio(speedup(case, system, "tt-eager")), _kernels(f), format_bytes(f.get("bytes_moved")),
                         _percent(r.get("achieved_copy_fraction")), _percent(r.get("effective_copy_fraction")),
                         format_bytes(f.get("planned_peak_bytes")), format_seconds(f.get("compile_seconds")),
                         format_seconds(r.get("first_call_s"))])
    if not rows:
        return "## Compiled tracetorch\n\nNo compiled tracetorch result in this run (see Skipped).\n"
    header = ["workload", "backend", "time", "vs tt eager", "kernels", "bytes moved / call", "bw moved (% copy)",
              "bw least (% copy)", "planned peak", "compile", "first call"]
    note = ("\n`bytes moved`, `kernels`, `planned peak` and `compile` come from the compiled function's "
            "`.stats()` (n/a: the compiler does not report it yet); `bw moved` divides the planned bytes "
            "by the time, `bw least` the least bytes a call must move.\n")
    return "## Compiled tracetorch\n\n" + _table(header, rows) + note


def _profiles(data: dict) -> str:
    """The slowest kernels of each compiled case (bench.runner.profile_calls)."""
    rows = []
    for case in data["cases"]:
        for system in compiled_systems(data):
            prof = case["results"].get(system, {}).get("profile") or {}
            if prof.get("status") != "ok" or not prof["top"]:
                continue             # (the interpreter has no kernels to show)
            outside = prof.get("outside_seconds_per_call")
            rows.append([case["case"], system, format_seconds(prof["seconds_per_call"]),
                         format_seconds(outside) if outside is not None else "n/a"] + [""] * 7)
            for k in prof["top"]:
                what = k["what"] if len(k["what"]) <= 60 else k["what"][:57] + "..."
                rows.append(["", "", "", "", f"{k['step']} ({k['program']})", k["kind"],
                             format_seconds(k["seconds_per_call"]), _percent(k["share"]),
                             f"{k['gb_per_s']:.1f}" if k["gb_per_s"] else "-",
                             f"{k['gflop_per_s']:.0f}" if k["gflop_per_s"] else "-", what.replace("|", "/")])
    if not rows:
        return ""
    header = ["workload", "backend", "per call", "outside programs", "slowest steps", "kind", "per call",
              "share", "GB/s", "GFLOP/s", "what"]
    note = (f"\nFrom a few calls under `tt.compiler.profile()` after the timed ones (each step timed alone, so "
            "the sum runs a little over the timed median); `outside programs` is guards, inputs and "
            "write-backs; GB/s counts each buffer a step touches once.\n")
    return "## Where the time goes\n\n" + _table(header, rows) + note


def _compile_times(data: dict) -> str:
    rows = []
    for row in data.get("compile_times", []):
        cells = [row["case"], row["backend"]]
        for phase in ("cold", "warm"):
            probe = row.get(phase) or {}
            if probe.get("status") == "ok":
                figures = probe.get("figures") or {}
                cells += [format_seconds(probe["overhead_s"]), format_seconds(figures.get("trace_seconds")),
                          format_seconds(figures.get("compile_seconds"))]
            else:
                cells += [probe.get("status") or row.get("status"), "", ""]
        rows.append(cells)
    if not rows:
        return ""
    header = ["workload", "backend", "cold overhead", "cold trace", "cold compile", "warm overhead", "warm trace",
              "warm compile"]
    torch_firsts = [f"{c['case']} {format_seconds(r['first_call_s'])}" for c in data["cases"]
                    if c["workload"] in {row["workload"] for row in data["compile_times"]}
                    and (r := c["results"].get("torch-compile", {})).get("status") == "ok"]
    note = (f"\ntorch.compile's first call in the main process (its own caches): {', '.join(torch_firsts)}.\n"
            if torch_firsts else "")
    return ("## Compile time (C1)\n\nEach in a fresh process; warm reuses the cold run's on-disk cache "
            "(`TRACETORCH_CACHE_DIR`). Overhead: what the first three calls took beyond a steady call, "
            "what a user waits for; "
            "trace and compile: from `.stats()`.\n\n" + _table(header, rows) + note)


def _targets(data: dict) -> str:
    """Rows for the cases of this run only; a quick run has other sizes than the targets name."""
    rows = []
    for t in data.get("targets", []):
        if t["why_missing"] == "not run":
            continue
        value = t["value"]
        if value is None:
            shown = "n/a"
        elif t["measure"] == "copy_fraction":
            shown = _percent(value)
        elif t["measure"].startswith("speedup"):
            shown = _ratio(value)
        else:
            shown = format_seconds(value)
        met = {True: "yes", False: "no", None: "—"}[t["met"]]
        rows.append([t["case"], t["system"], t["goal"], shown, met])
    title = "## Figures to reach (shared/BENCH.md)\n\n"
    if not rows:
        return title + ("No compiled backend ran, or no target names a case of this run "
                        "(targets name the full sizes).\n")
    return title + _table(["case", "system", "goal", "this run", "met"], rows)


def _checks(data: dict) -> str:
    checked = [s for s in data["systems"] if any((c["results"].get(s) or {}).get("check") for c in data["cases"])]
    if not checked:
        return "## Checks\n\nNo result was compared with tracetorch eager in this run.\n"
    rows, failed = [], 0
    for case in data["cases"]:
        cells = [case["case"]]
        for s in checked:
            check = case["results"].get(s, {}).get("check")
            if not check:
                cells.append("—")
            elif check["ok"] is None:
                cells.append("no reference")
            else:
                failed += not check["ok"]
                cells.append(("ok" if check["ok"] else "FAILED") + f" ({check['max_abs_err']:.1e})")
        rows.append(cells)
    verdict = "all matched" if not failed else f"**{failed} failed**"
    return (f"## Checks\n\nEach system's results over {3} calls and its final state (parameters) against "
            f"tracetorch eager, allclose; max abs error in brackets: {verdict}.\n\n"
            + _table(["workload"] + checked, rows))


def _skipped(data: dict) -> str:
    groups = defaultdict(list)
    for case in data["cases"]:
        for system, r in case["results"].items():
            if r["status"] == "skipped":
                groups[(system, "skipped", r["reason"])].append(case["case"])
            elif r["status"] == "error":
                groups[(system, "error", f"{r['error']} (during {r['during']})")].append(case["case"])
    for row in data.get("compile_times", []):
        for phase in ("cold", "warm"):
            probe = row.get(phase) or {}
            if probe.get("status") in ("skipped", "error"):
                groups[(f"C1 {row['backend']} {phase}", probe["status"],
                        probe.get("reason") or probe.get("error"))].append(row["case"])
        if row.get("status") == "skipped" and "reason" in row:
            groups[(f"C1 {row['backend']}", "skipped", row["reason"])].append(row["case"])
    if not groups:
        return ""
    lines = ["## Skipped and failed", ""]
    for (system, status, reason), cases in groups.items():
        where = "all workloads" if len(cases) == len(data["cases"]) and len(cases) > 1 else ", ".join(cases)
        lines.append(f"- **{system}** {status} on {where}: {_one_line(reason)}")
    lines.append("\nTracebacks of failures are in report.json.")
    return "\n".join(lines) + "\n"


def _one_line(text) -> str:
    text = " ".join(str(text).split())
    return text if len(text) <= 300 else text[:297] + "..."


def _charts(data: dict) -> str:
    charts = data.get("charts") or {}
    if not charts.get("written"):
        return f"## Charts\n\nNone: {charts.get('reason', 'not written')}.\n"
    return "## Charts\n\n" + "\n".join(f"![{name}]({name})" for name in charts["written"]) + "\n"
