"""PNG charts of a run (matplotlib, the optional `bench` extra): speedups, and bandwidth against the copy roof."""
from __future__ import annotations

import os

import numpy as np


def write_charts(data: dict, out_dir: str) -> dict:
    """Writes speedup.png and bandwidth.png into `out_dir`; returns {"written": [names], "reason": why not}."""
    try:
        import matplotlib
        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        return {"written": [], "reason": "matplotlib is not installed (`pip install -e '.[bench]'`)"}
    written = []
    for name, draw in (("speedup.png", _speedup), ("bandwidth.png", _bandwidth)):
        fig = draw(plt, data)
        if fig is not None:
            fig.savefig(os.path.join(out_dir, name), dpi=100)
            plt.close(fig)
            written.append(name)
    return {"written": written, "reason": None if written else "no result to draw"}


def _colors(plt, data: dict) -> dict:
    """One color per system, the same in every chart."""
    palette = plt.get_cmap("tab10").colors
    return {name: palette[i % len(palette)] for i, name in enumerate(data["systems"])}


def _ok_time(case: dict, system: str):
    r = case["results"].get(system, {})
    return r["median_s"] if r.get("status") == "ok" else None


def _grouped_bars(plt, labels: list[str], series: dict[str, list], colors: dict, ylabel: str, title: str):
    """One group of bars per label, one bar per series (missing values are left out)."""
    fig, ax = plt.subplots(figsize=(max(6.0, 1.2 * len(labels) + 2), 4.5))
    width = 0.8 / max(1, len(series))
    x = np.arange(len(labels))
    for i, (name, values) in enumerate(series.items()):
        heights = [v if v is not None else 0 for v in values]
        ax.bar(x + (i - (len(series) - 1) / 2) * width, heights, width, label=name, color=colors[name])
    ax.set_xticks(x)
    ax.set_xticklabels(labels, rotation=20, ha="right", fontsize=8)
    ax.set_ylabel(ylabel)
    ax.set_title(title)
    return fig, ax


def _speedup(plt, data: dict):
    cases = [c for c in data["cases"] if _ok_time(c, "tt-eager")]
    systems = [s for s in data["systems"] if s != "tt-eager" and any(_ok_time(c, s) for c in cases)]
    if not cases or not systems:
        return None
    series = {s: [(_ok_time(c, "tt-eager") / t) if (t := _ok_time(c, s)) else None for c in cases] for s in systems}
    fig, ax = _grouped_bars(plt, [c["case"] for c in cases], series, _colors(plt, data),
                            "speedup over tracetorch eager (log)",
                            "Speedup per workload (same run)")
    ax.set_yscale("log")
    ax.axhline(1.0, color="gray", linewidth=0.8)
    ax.legend(fontsize=8)
    fig.tight_layout()
    return fig


def _bandwidth(plt, data: dict):
    cases = [c for c in data["cases"] if c.get("ideal_bytes")]
    systems = [s for s in data["systems"] if any(_ok_time(c, s) for c in cases)]
    if not cases or not systems:
        return None
    series = {s: [(c["ideal_bytes"] / t / 1e9) if (t := _ok_time(c, s)) else None for c in cases] for s in systems}
    fig, ax = _grouped_bars(plt, [c["case"] for c in cases], series, _colors(plt, data),
                            "GB/s (least bytes moved / time)",
                            "Bandwidth vs the copy roof")
    roof = data["copy"]["gb_per_s"]
    ax.axhline(roof, color="red", linestyle="--", linewidth=1, label=f"copy {roof:.1f} GB/s")
    ax.legend(fontsize=8)
    fig.tight_layout()
    return fig
