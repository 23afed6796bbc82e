"""What machine the figures come from, and its copy bandwidth: the roof for memory-bound kernels."""
from __future__ import annotations

import os
import platform
import subprocess
import sys
import time
from importlib import metadata
from statistics import median

import numpy as np

LIBRARIES = ("numpy", "llvmlite", "torch", "matplotlib", "pycuda")


def describe_machine() -> dict:
    """CPU model, core counts, OS, Python, library versions, BLAS and the git commit."""
    return {
        "cpu_model": _cpu_model(),
        "physical_cores": _physical_cores(),
        "logical_cpus": os.cpu_count(),
        "usable_cpus": len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count(),
        "platform": platform.platform(),
        "python": sys.version.split()[0],
        "libraries": _library_versions(),
        "blas": _numpy_blas(),
        "git_commit": _git_commit(),
    }


def copy_bandwidth(device: str = "cpu", elements: int = 1 << 26, repeats: int = 10) -> dict:
    """Median bandwidth of copying `elements` float32 (bytes read + bytes written) on `device`."""
    if device == "cpu":
        src = np.random.default_rng(0).random(elements, dtype=np.float32)
        dst = np.empty_like(src)
        copy, sync = (lambda: np.copyto(dst, src)), (lambda: None)
        system = "numpy.copyto"
    else:
        import tracetorch as tt
        src = tt.from_numpy(np.ones(elements, dtype=np.float32)).to(device)
        copy, sync = src.clone, tt.cuda.synchronize
        system = "tracetorch clone"
    copy()
    sync()
    times = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        copy()
        sync()
        times.append(time.perf_counter() - t0)
    moved = 2 * 4 * elements
    return {"system": system, "device": device, "elements": elements, "bytes_per_copy": moved,
            "median_s": median(times), "gb_per_s": moved / median(times) / 1e9, "repeats": repeats}


def _cpu_model() -> str:
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def _physical_cores() -> int | None:
    """Distinct (socket, core) pairs of /proc/cpuinfo; None where it cannot tell."""
    try:
        with open("/proc/cpuinfo") as f:
            text = f.read()
    except OSError:
        return None
    cores = set()
    for block in text.strip().split("\n\n"):
        fields = dict(line.split(":", 1) for line in block.splitlines() if ":" in line)
        fields = {k.strip(): v.strip() for k, v in fields.items()}
        if "core id" in fields:
            cores.add((fields.get("physical id"), fields["core id"]))
    return len(cores) or None


def _library_versions() -> dict:
    versions = {}
    for name in LIBRARIES:
        try:
            versions[name] = metadata.version(name)
        except metadata.PackageNotFoundError:
            versions[name] = None
    import tracetorch
    versions["tracetorch"] = tracetorch.__version__
    return versions


def _numpy_blas() -> str | None:
    try:
        blas = np.show_config(mode="dicts")["Build Dependencies"]["blas"]
        return f"{blas.get('name')} {blas.get('version')}".strip()
    except Exception:        # the config layout changes between numpy versions; this is informative only
        return None


def _git_commit() -> str | None:
    root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    try:
        out = subprocess.run(["git", "rev-parse", "--short", "HEAD"], cwd=root, capture_output=True,
                             text=True, timeout=10)
        dirty = subprocess.run(["git", "status", "--porcelain", "--untracked-files=no"], cwd=root,
                               capture_output=True, text=True, timeout=10)
    except (OSError, subprocess.SubprocessError):
        return None
    if out.returncode != 0:
        return None
    return out.stdout.strip() + ("-dirty" if dirty.stdout.strip() else "")
